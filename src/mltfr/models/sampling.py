"""Negative sampling for the BCE losses (SASRec, FMLP-Rec): one negative per position."""
from __future__ import annotations

import torch
from torch import Tensor

from mltfr.models.base import PAD


def sample_negatives(window: Tensor, n_items: int, gen: torch.Generator) -> Tensor:
    """One negative per position, uniform over the items 1..n_items absent from the row.

    window (B, L+1): the row's whole training window (inputs and targets); exclusion is over
    these L+1 items only, not the user's full history. Exact and vectorised, no rejection
    rounds: draw rank r among the free items, then map r to the r-th free id by counting the
    excluded ids that precede it. Returns (B, L) ids. If a window covers every item, the
    row's negatives may collide (no free item exists).
    """
    batch, width = window.shape
    excluded = _sorted_distinct_items(window, n_items)  # (B, L+1), sentinel-filled
    n_free = (n_items - (excluded <= n_items).sum(1)).clamp(min=1)  # (B,)
    u = torch.rand(batch, width - 1, device=window.device, generator=gen)
    r = (u * n_free[:, None]).long().clamp(max=n_free[:, None] - 1) + 1  # (B, L) in 1..n_free
    # id = r + #{j : s_j - j < r} for distinct sorted excluded ids s_1 < s_2 < ... (1-based j)
    rank = torch.arange(1, width + 1, device=window.device)
    gaps = excluded - rank  # (B, L+1), non-decreasing over the real ids
    return r + (gaps[:, None, :] < r[:, :, None]).sum(-1)


def _sorted_distinct_items(window: Tensor, n_items: int) -> Tensor:
    """(B, W) -> (B, W): each row's distinct non-padding ids ascending, then a sentinel."""
    sentinel = n_items + window.shape[1] + 1  # larger than any r + j, so never counted
    s, _ = window.sort(dim=1)
    repeat = torch.zeros_like(s, dtype=torch.bool)
    repeat[:, 1:] = s[:, 1:] == s[:, :-1]
    s = s.masked_fill(repeat | (s == PAD), sentinel)
    return s.sort(dim=1).values
