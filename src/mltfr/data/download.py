"""Plain-HTTP (and file://) downloads into a cache folder, checksum-verified.

The body is streamed to a temporary file beside the target, hashed on the way, and renamed
into place only when it is complete and its sha256 matches; any failure leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import http.client
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mltfr.errors import DataError
from mltfr.io import atomic_path, sha256_file

CHUNK = 1 << 20
TIMEOUT_S = 60


def cache_name(url: str) -> str:
    """File name in the cache: the URL's last path segment."""
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name:
        raise DataError(f"{url}: the URL names no file; point `source.url` at a file")
    return name


def fetch_url(url: str, sha256: str | None, cache_dir: str | Path) -> Path:
    """The cached copy of `url`, downloading it first when missing or stale."""
    target = Path(cache_dir) / cache_name(url)
    if target.is_file() and (sha256 is None or sha256_file(target) == sha256):
        return target
    fix = (f"check the URL and your network, or download it yourself to {target}"
           + (f" (sha256 {sha256})" if sha256 else ""))
    with atomic_path(target) as tmp:
        digest, size, promised = _stream(url, tmp, fix)
        if promised is not None and size < promised:
            raise DataError(f"{url}: download truncated ({size} of {promised} bytes); {fix}")
        if sha256 and digest != sha256:
            raise DataError(f"{url}: sha256 {digest} differs from the registry's {sha256} "
                            f"(file changed upstream or corrupted); nothing was kept; {fix}")
    return target


def _stream(url: str, tmp: Path, fix: str) -> tuple[str, int, int | None]:
    """Copy the body to `tmp`; return (sha256, bytes read, Content-Length or None)."""
    h, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp, open(tmp, "wb") as out:
            length = resp.headers.get("Content-Length")
            promised = int(length) if length and length.isdigit() else None
            while block := resp.read(CHUNK):
                h.update(block)
                out.write(block)
                size += len(block)
    except urllib.error.HTTPError as exc:
        raise DataError(f"{url}: HTTP {exc.code} {exc.reason}; {fix}") from None
    except http.client.IncompleteRead as exc:
        raise DataError(f"{url}: download truncated ({size + len(exc.partial)} bytes read, "
                        f"{exc.expected} more promised); {fix}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"{url}: download failed ({reason}); {fix}") from None
    return h.hexdigest(), size, promised
