"""Training windows: each user's most recent L+1 training items, left-padded, shuffled per epoch.

One window per user (as SASRec trains): `model.loss` predicts window[:, 1:] from window[:, :-1]
at every real position. Users with fewer than 2 training items have nothing to predict and
are left out.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


def train_windows(offsets: np.ndarray, items: np.ndarray, max_len: int,
                  keep: int | None = None) -> np.ndarray:
    """(n_users_with_>=2_items, max_len+1) int64 windows from CSR sequences; 0 = padding.

    keep: the most recent items a window holds (default max_len+1; the authors' sampler keeps
    max_len, RunConfig.window_items). Vectorised: no Python loop over users."""
    keep = max_len + 1 if keep is None else keep
    lengths = np.diff(offsets)
    users = window_users(offsets)
    take = np.minimum(lengths[users], keep)                          # items kept per user
    row = np.repeat(np.arange(len(users)), take)                     # (T,) window row of each kept item
    within = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)  # 0..take-1 per row
    src = np.repeat(offsets[users + 1] - take, take) + within        # index into `items`
    col = np.repeat(max_len + 1 - take, take) + within               # right-aligned column
    windows = np.zeros((len(users), max_len + 1), dtype=np.int64)
    windows[row, col] = items[src]
    return windows


def window_users(offsets: np.ndarray) -> np.ndarray:
    """(n_windows,) int64: the user (0-based, the order of `offsets`) of each training window."""
    return np.flatnonzero(np.diff(offsets) >= 2)


def epoch_order(n: int, gen: torch.Generator) -> torch.Tensor:
    """(n,) int64 CPU permutation of the windows for one epoch."""
    return torch.randperm(n, generator=gen)


def batches(windows: torch.Tensor, users: torch.Tensor, order: torch.Tensor, batch_size: int,
            start_step: int = 0) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """(step, (B, L+1) windows, (B,) their users) in `order`, from `start_step` on (a resumed epoch
    skips the done steps).

    `windows` and `users` live on the training device; `order` is moved there once."""
    order = order.to(windows.device)
    for step in range(start_step, n_steps(len(order), batch_size)):
        rows = order[step * batch_size:(step + 1) * batch_size]
        yield step, windows[rows], users[rows]


def n_steps(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def run_windows(split, cfg) -> np.ndarray:
    """The training windows of a run (`cfg`: a RunConfig) on `split`: its window length."""
    return train_windows(split.train_offsets, split.train_items, cfg.model.max_len, cfg.window_items)


def fisher_batches(windows: torch.Tensor, batch_size: int, shuffle_seed: int | None) -> tuple:
    """The Fisher pass's (B, L+1) batches: in user order, or (`shuffle_seed` given) in a
    permutation drawn from a CPU generator seeded with it, as the authors' sampler shuffles."""
    if shuffle_seed is not None:
        order = epoch_order(len(windows), torch.Generator().manual_seed(shuffle_seed))
        windows = windows[order.to(windows.device)]
    return windows.split(batch_size)
