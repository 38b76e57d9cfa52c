"""Leave-one-out splits of a prepared dataset, vectorised with numpy.

faithful:  train = all but the last item; test = last item (input = all before it); no validation.
corrected: train = all but the last two; valid = second-to-last (input = all before it);
           test = last (input = all before it, so the validation item is part of the input).
The protocol ladder sets the two apart: `holdout_valid` (whether the second-to-last item leaves
training) and `with_valid` (whether the validation set is built; a faithful split that early-stops
on validation trains on all but the last item and still has one).
`train_vocab` (faithful): only the items of the training split are numbered (1..n', in id order),
as the authors' loader builds its item map from train.txt alone. A target outside it becomes 0
(never hit: ranked below every item) and an input outside it (the validation item in a test
input, when it is held out of training) is dropped.
A user is evaluated when it has >= 1 input item. Inputs keep the most recent `max_len` items,
left-padded with 0 so that the most recent item is in the last column.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mltfr.data.prepared import Prepared
from mltfr.errors import ConfigError
from mltfr.spec.protocol import PROTOCOLS


@dataclass
class EvalSet:
    users: np.ndarray           # (n,) int64, 0-based user indices evaluated
    inputs: np.ndarray          # (n, L) int64, left-padded with 0, most recent item last
    targets: np.ndarray         # (n,) int64
    hist_offsets: np.ndarray    # (n+1,) int64 CSR of each user's full history before target
    hist_items: np.ndarray      # (H,) int64   (for history masking; may be longer than L)


@dataclass
class Split:
    protocol: str               # "faithful" | "corrected"
    n_items: int                # items numbered: the dataset's, or the training split's (train_vocab)
    train_offsets: np.ndarray   # (U+1,) CSR of the training sequences (targets allowed)
    train_items: np.ndarray
    valid: EvalSet | None       # None under faithful (unless with_valid)
    test: EvalSet


def prefix_csr(offsets: np.ndarray, items: np.ndarray, users: np.ndarray,
               lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR of the first lengths[k] items of user users[k]: (offsets (n+1,), items (sum lengths,))."""
    lengths = lengths.astype(np.int64)
    out_offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    # position in `items` = user's start + rank within the prefix
    shift = np.repeat(offsets[users] - out_offsets[:-1], lengths)
    return out_offsets, items[shift + np.arange(out_offsets[-1])]


def without_last(p: Prepared, k: int = 2) -> Prepared:
    """Each sequence without its last `k` items (validation and test): the part the backbone trains
    on. The item ids and the meta stay."""
    users = np.arange(p.n_users)
    offsets, items = prefix_csr(p.offsets, p.items, users, np.maximum(np.diff(p.offsets) - k, 0))
    return Prepared(offsets, items, p.n_items, p.meta)


def left_padded_windows(offsets: np.ndarray, items: np.ndarray, users: np.ndarray,
                        ends: np.ndarray, max_len: int) -> np.ndarray:
    """(n, max_len): the max_len items before position ends[k] of each user, 0-padded on the left."""
    pos = ends[:, None] - max_len + np.arange(max_len)[None, :]        # (n, L) positions in sequence
    idx = offsets[users][:, None] + np.maximum(pos, 0)
    return np.where(pos >= 0, items[np.minimum(idx, len(items) - 1)], 0).astype(np.int64)


def eval_set(p: Prepared, holdout: int, max_len: int) -> EvalSet:
    """Targets at position len-holdout of each user (holdout 1 = last), for users with input."""
    lengths = np.diff(p.offsets)
    target_pos = lengths - holdout                     # (U,) = number of input items
    users = np.flatnonzero(target_pos >= 1).astype(np.int64)
    ends = target_pos[users]
    hist_offsets, hist_items = prefix_csr(p.offsets, p.items, users, ends)
    return EvalSet(users=users,
                   inputs=left_padded_windows(p.offsets, p.items, users, ends, max_len),
                   targets=p.items[p.offsets[users] + ends].astype(np.int64),
                   hist_offsets=hist_offsets, hist_items=hist_items)


def make_split(prepared: Prepared, protocol: str, max_len: int, holdout_valid: bool | None = None,
               with_valid: bool | None = None, train_vocab: bool | None = None) -> Split:
    """Leave-one-out split under `protocol` with inputs of length `max_len`.

    holdout_valid: train without the second-to-last item too (None = by protocol: corrected);
    with_valid: build the validation set (None = when the item is held out); train_vocab: number
    only the training split's items (None = by protocol: faithful)."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r} is unknown; use one of {', '.join(PROTOCOLS)}")
    if max_len < 1:
        raise ConfigError(f"max_len must be >= 1, got {max_len}")
    holdout_valid = protocol == "corrected" if holdout_valid is None else holdout_valid
    with_valid = holdout_valid if with_valid is None else with_valid
    held_out = 2 if holdout_valid else 1
    lengths = np.diff(prepared.offsets)
    all_users = np.arange(len(lengths), dtype=np.int64)
    train_offsets, train_items = prefix_csr(prepared.offsets, prepared.items, all_users,
                                            np.maximum(lengths - held_out, 0))
    train_vocab = protocol == "faithful" if train_vocab is None else train_vocab
    if train_vocab:
        new_ids = training_item_ids(prepared.n_items, train_items)
        valid_from, test_from = (renumbered(prepared, new_ids, keep_last) for keep_last in (2, 1))
        return Split(protocol=protocol, n_items=int(new_ids.max()),
                     train_offsets=train_offsets, train_items=new_ids[train_items],
                     valid=eval_set(valid_from, 2, max_len) if with_valid else None,
                     test=eval_set(test_from, 1, max_len))
    return Split(protocol=protocol, n_items=prepared.n_items,
                 train_offsets=train_offsets, train_items=train_items,
                 valid=eval_set(prepared, 2, max_len) if with_valid else None,
                 test=eval_set(prepared, 1, max_len))


def training_item_ids(n_items: int, train_items: np.ndarray) -> np.ndarray:
    """(n_items+1,) new id of each item: the training split's items numbered 1..n' in id order,
    0 for padding and for every item the training split does not hold."""
    seen = np.zeros(n_items + 1, dtype=bool)
    seen[train_items] = True
    seen[0] = False
    return np.cumsum(seen) * seen


def renumbered(p: Prepared, new_ids: np.ndarray, keep_last: int) -> Prepared:
    """`p` with items renumbered by `new_ids`: an unnumbered item is dropped, except in each user's
    last `keep_last` positions (the held-out targets), where it stays as 0, an item never hit."""
    lengths = np.diff(p.offsets)
    owner = np.repeat(np.arange(len(lengths)), lengths)                   # (N,) user of each item
    from_end = np.repeat(p.offsets[1:], lengths) - np.arange(len(p.items))  # 1 = the user's last
    items = new_ids[p.items]
    keep = (items > 0) | (from_end <= keep_last)
    kept = np.bincount(owner[keep], minlength=len(lengths))
    offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    return Prepared(offsets, items[keep].astype(np.int64), int(new_ids.max()), p.meta)
