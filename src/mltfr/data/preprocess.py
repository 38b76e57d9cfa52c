"""From parsed interactions to time-ordered user sequences with dense ids.

Order of operations (recorded in meta.json):
1. concatenate the raw files in registry order (this fixes the "file order");
2. keep rating >= min_rating (when set);
3. iterative k-core on users and items until a fixed point;
4. ids: users -> 0-based row index, items -> 1..n_items (0 = padding), both numbered in
   order of first appearance in the raw file(s) (before filtering);
5. each user's interactions sorted by timestamp with a STABLE sort: interactions with equal
   timestamps keep their file order (half of MovieLens rows tie, so this matters); formats
   without timestamps keep file order.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mltfr.data.prepared import Prepared, stats_row
from mltfr.errors import DataError

TIME_ORDER = "stable sort by timestamp within each user; equal timestamps keep file order"
ID_ORDER = ("users 0-based and items 1..n (0 = padding), numbered by first appearance in the "
            "raw file(s) in registry order, before filtering")


def k_core_mask(users: np.ndarray, items: np.ndarray, k_user: int, k_item: int) -> tuple[np.ndarray, int]:
    """Rows kept by the iterative k-core, and the number of passes.

    Each pass counts interactions (rows, duplicates included) of every user and item among the
    rows still kept and drops, at once, the rows of users below k_user and of items below
    k_item; it stops when a pass drops nothing, so every kept user has >= k_user rows and every
    kept item >= k_item rows. users, items: (N,) int64 codes.
    """
    keep = np.ones(len(users), dtype=bool)
    if k_user <= 1 and k_item <= 1:
        return keep, 0
    n_users, n_items = int(users.max(initial=-1)) + 1, int(items.max(initial=-1)) + 1
    passes = 0
    while True:
        passes += 1
        u_count = np.bincount(users[keep], minlength=n_users)
        i_count = np.bincount(items[keep], minlength=n_items)
        drop = keep & ((u_count[users] < k_user) | (i_count[items] < k_item))
        if not drop.any():
            return keep, passes
        keep &= ~drop


def dense_rank(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(kept distinct codes in ascending order, each row's 0-based rank among them)."""
    kept, rank = np.unique(codes, return_inverse=True)
    return kept, rank.astype(np.int64)


def time_order(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Permutation grouping rows by user, by time within a user; ties keep their row order."""
    if np.isnan(timestamps).all():
        return np.argsort(users, kind="stable")
    return np.lexsort((timestamps, users))   # lexsort is stable: the row order breaks ties


def build_prepared(frame: pd.DataFrame, entry: dict, name: str, raw_meta: list[dict]) -> Prepared:
    """Filter, order and remap an interactions frame (file order) into a Prepared dataset."""
    files = ", ".join(r["path"] for r in raw_meta)
    counts = {"raw_interactions": len(frame)}
    frame = _apply_min_rating(frame, entry["preprocess"]["min_rating"], files)
    counts["after_min_rating"] = len(frame)
    user_codes, user_raw_all = pd.factorize(frame["user"], sort=False)   # first appearance
    item_codes, item_raw_all = pd.factorize(frame["item"], sort=False)
    k = entry["preprocess"]["k_core"]
    keep, passes = k_core_mask(user_codes, item_codes, k["user"], k["item"])
    if not keep.any():
        raise DataError(f"{files}: dataset {name!r} is empty after preprocessing "
                        f"(min_rating={entry['preprocess']['min_rating']}, k_core={k}); lower "
                        f"`preprocess.k_core` / `min_rating` in datasets.{name}")
    kept_users, users = dense_rank(user_codes[keep])
    kept_items, items = dense_rank(item_codes[keep])
    perm = time_order(users, frame["timestamp"].to_numpy()[keep])
    users, items = users[perm], items[perm] + 1                     # item ids 1..n, 0 = padding
    offsets = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=len(kept_users)))])
    item_raw = np.concatenate([[""], np.asarray(item_raw_all, dtype=str)[kept_items]])
    prepared = Prepared(offsets.astype(np.int64), items.astype(np.int64), len(kept_items), {},
                        user_raw=np.asarray(user_raw_all, dtype=str)[kept_users], item_raw=item_raw)
    prepared.meta = _meta(entry, name, raw_meta, counts, passes, prepared)
    return prepared


def _apply_min_rating(frame: pd.DataFrame, min_rating: float | None, files: str) -> pd.DataFrame:
    if min_rating is None:
        return frame
    if frame["rating"].isna().all():
        raise DataError(f"{files}: this format has no ratings, so `preprocess.min_rating` cannot "
                        f"apply; set it to null")
    return frame[frame["rating"].to_numpy() >= min_rating]


def _meta(entry: dict, name: str, raw_meta: list[dict], counts: dict, passes: int, p: Prepared) -> dict:
    stats = stats_row(p, name)
    counts.update(users=stats["users"], items=stats["items"], interactions=stats["interactions"])
    return {
        "dataset": name, "n_items": int(p.n_items), "description": entry["description"], "format": entry["format"],
        "columns": entry["columns"], "raw_files": raw_meta,
        "preprocessing": {**entry["preprocess"], "k_core_passes": passes,
                          "time_order": TIME_ORDER, "id_order": ID_ORDER},
        "counts": counts, "stats": stats,
        "id_maps": "prepared.npz: user_raw[u] = raw id of user row u; item_raw[i] = raw id of "
                   "item i (item_raw[0] = '' is padding)",
    }
