"""The prepared dataset: time-ordered user sequences as flat CSR arrays, plus meta.json.

On disk (results/data/<name>/):
    prepared.npz  offsets (U+1,) int64, items (N,) int64, user_raw (U,) str, item_raw (n+1,) str
    meta.json     id-map description, counts, raw sha256, preprocessing, stats and the
                  sha256 of prepared.npz (checked on every load)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mltfr.errors import DataError
from mltfr.io import atomic_path, atomic_write_json, code_version, sha256_file

NPZ, META, STATS = "prepared.npz", "meta.json", "stats.json"


@dataclass
class Prepared:
    offsets: np.ndarray                 # (U+1,) int64; user u (0-based) = items[offsets[u]:offsets[u+1]]
    items: np.ndarray                   # (N,) int64, ids 1..n_items in time order, 0 = padding
    n_items: int
    meta: dict                          # everything in meta.json
    user_raw: np.ndarray | None = None  # (U,) str raw user ids (None when unknown)
    item_raw: np.ndarray | None = None  # (n_items+1,) str raw item ids, [0] = "" (padding)

    @property
    def n_users(self) -> int:
        return len(self.offsets) - 1

    def sequence(self, u: int) -> np.ndarray:
        """User u's items in time order (a view)."""
        return self.items[self.offsets[u]:self.offsets[u + 1]]


def stats_row(p: Prepared, name: str | None = None) -> dict:
    """One row of the dataset statistics table (users, items, interactions, density, lengths)."""
    lengths = np.diff(p.offsets)
    users, n = int(len(lengths)), int(len(p.items))
    row = {"users": users, "items": int(p.n_items), "interactions": n,
           "density": n / (users * p.n_items) if users and p.n_items else 0.0,
           "mean_len": float(lengths.mean()) if users else 0.0,
           "median_len": float(np.median(lengths)) if users else 0.0}
    return {"dataset": name, **row} if name is not None else row


def format_stats(row: dict) -> str:
    """The statistics row as one human-readable line."""
    return (f"{row.get('dataset') or 'dataset'}: {row['users']:,} users, {row['items']:,} items, "
            f"{row['interactions']:,} interactions, density {row['density']:.5%}, "
            f"mean length {row['mean_len']:.2f}, median {row['median_len']:g}")


def save_prepared(folder: str | Path, prepared: Prepared) -> None:
    """Write prepared.npz, then meta.json holding its sha256 (both atomic).

    `prepared.meta` is updated in place with `prepared_sha256` and `code_version`.
    """
    folder = Path(folder)
    arrays = {"offsets": prepared.offsets.astype(np.int64), "items": prepared.items.astype(np.int64)}
    for key in ("user_raw", "item_raw"):
        if getattr(prepared, key) is not None:
            arrays[key] = np.asarray(getattr(prepared, key), dtype=str)
    with atomic_path(folder / NPZ) as tmp:
        with open(tmp, "wb") as fh:                  # a handle: savez would append ".npz"
            np.savez_compressed(fh, **arrays)
    prepared.meta.update(n_items=int(prepared.n_items), prepared_sha256=sha256_file(folder / NPZ),
                         code_version=code_version())
    atomic_write_json(folder / META, prepared.meta)


def load_prepared(folder: str | Path) -> Prepared:
    """Read a prepared folder, verifying prepared.npz against the sha256 in meta.json."""
    folder = Path(folder)
    fix = f"delete {folder} and rerun `mltfr prepare`"
    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        expected = meta["prepared_sha256"]
        actual = sha256_file(folder / NPZ)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{folder}: not a prepared dataset ({exc}); {fix}") from None
    if actual != expected:
        raise DataError(f"{folder / NPZ}: checksum {actual[:12]}... differs from meta.json's "
                        f"{expected[:12]}... (corrupted or partly written); {fix}")
    with np.load(folder / NPZ, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    return Prepared(arrays["offsets"], arrays["items"], int(meta["n_items"]), meta,
                    arrays.get("user_raw"), arrays.get("item_raw"))
