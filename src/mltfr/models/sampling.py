"""Negative sampling for the BCE losses (SASRec, FMLP-Rec): one negative per position.

`sample_negatives` is the study's; `distinct_negatives` draws them as the MLTFR authors' sampler
does (impl authors)."""
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


def distinct_negatives(inputs: Tensor, n_items: int, gen: torch.Generator) -> Tensor:
    """(B, L) negatives as the MLTFR authors' sampler draws them: per row, distinct items drawn
    uniformly without replacement from the items that are not among the row's inputs (B, L); the
    targets are not excluded, so the row's last target (not an input) may be drawn.

    Their rejection loop (redraw the row until it misses every input) gives the same law: a
    uniform sample without replacement from the free items, here the L smallest of one uniform
    key per item. If a row has fewer than L free items, excluded items fill the rest."""
    batch, length = inputs.shape
    keys = torch.rand(batch, n_items + 1, device=inputs.device, generator=gen)  # (B, n+1)
    keys.scatter_(1, inputs, 2.0)   # the row's inputs and padding (id 0) never come first
    keys[:, PAD] = 2.0
    return keys.topk(length, dim=1, largest=False).indices  # (B, L), ascending keys: a random order
