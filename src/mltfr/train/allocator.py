"""Keep large freed CPU memory blocks in the process heap during training.

glibc hands every block above its mmap threshold back to the operating system when it is
freed, so each training step page-faults its item-table-sized gradient buffers in again:
on Beauty (54,543 x 64 item table) that was a quarter of a SASRec step on CPU. Raising the
mmap and trim thresholds makes freed blocks reusable, as tcmalloc/jemalloc do. Peak memory
is unchanged; the heap simply keeps what the peak already needed.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_done = False


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Raise glibc's mmap/trim thresholds once per process; False where not glibc (no-op)."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl or no libc.so.6: leave the allocator alone
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _done
