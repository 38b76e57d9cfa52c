"""Atomic file writes: a killed job never leaves a half-written file under its final name, and a
failed write (disk full, no permission) is a one-line error naming the file."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from mltfr.errors import MltfrError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *write_errors: type[Exception]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it into place.

    An OSError inside (disk full, no permission), or one of `write_errors` (a writer that wraps
    it in its own type: torch's RuntimeError, safetensors' SafetensorError), becomes a one-line
    MltfrError naming `path`; a body that reads elsewhere (a download) reports its own errors."""
    path = Path(path)
    with reporting_write_errors(path, *write_errors):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file normal permissions
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def reporting_write_errors(path: str | os.PathLike, *also: type[Exception]):
    """A failed write (disk full, no permission) becomes a one-line error naming the file, not a
    traceback; atomic_path, its user, has left the previous file, if any, intact."""
    try:
        yield
    except (OSError, *also) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:120]
        raise MltfrError(f"cannot write {path} ({reason}{free_space(Path(path).parent)}); free disk space "
                         "or fix permissions, then rerun the same command (a training run resumes from "
                         "its last checkpoint)") from None


def free_space(folder: str | os.PathLike) -> str:
    """`; N MB free there` for an error message (empty when the folder cannot be examined)."""
    try:
        return f"; {shutil.disk_usage(folder).free // 2**20} MB free there"
    except OSError:
        return ""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """The git commit of the code (with '+dirty' when modified), or the package version."""
    import subprocess

    from mltfr import __version__

    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return f"{sha}{'+dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return f"mltfr-{__version__}"
