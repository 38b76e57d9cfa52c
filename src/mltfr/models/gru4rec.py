"""GRU4Rec: Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks",
ICLR 2016 (in the sequential setting of RecBole's GRU4Rec).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from mltfr.models.base import PAD, BackboneConfig, SequentialRecommender
from mltfr.models.layers import Dropout, SequenceEmbedding, init_weights
from mltfr.models.losses import full_ce_loss


class GRU4Rec(SequentialRecommender):
    """Item embedding -> n_blocks GRU layers (hidden size d); the LLM branch enters after layer 1.

    Deviations from the paper: whole user sequences instead of session-parallel mini-batches,
    and full softmax cross-entropy over all items at every position (as RecBole and
    sasrec-ce) instead of TOP1/BPR with sampled negatives; no positions (the recurrence
    orders the items). Padding never reaches the recurrence: rows are packed, so the state
    at a real position depends on the real items only.
    """
    ignores_left_padding = True  # outputs at real positions ignore left padding (evaluator trims it)
    shape_defaults = {"n_blocks": 2}  # not in the MLTFR authors' code: two layers, like SASRec's blocks

    def __init__(self, n_items: int, cfg: BackboneConfig):
        super().__init__(n_items, cfg)
        cfg = self.cfg  # n_blocks resolved
        self.embed = SequenceEmbedding(n_items + 1, cfg.d, cfg.max_len, cfg.dropout,
                                       scale=False, positions=False)
        self.first = nn.GRU(cfg.d, cfg.d, batch_first=True)
        self.between = Dropout(cfg.dropout)  # what nn.GRU(dropout=...) puts between layers
        self.rest = (nn.GRU(cfg.d, cfg.d, num_layers=cfg.n_blocks - 1, batch_first=True,
                            dropout=cfg.dropout if cfg.n_blocks > 2 else 0.0)
                     if cfg.n_blocks > 1 else None)
        init_weights(self)

    def forward(self, seqs: Tensor) -> Tensor:  # (B, L) -> (B, L, d)
        h0 = self.embed(seqs)  # (B, L, d), padding zeroed
        keep = (seqs != PAD).unsqueeze(-1)
        lengths = keep.sum(dim=(1, 2))  # (B,)
        h = self.inject(_run_left_padded(self.first, h0, lengths) * keep, h0, seqs)
        if self.rest is not None:
            h = _run_left_padded(self.rest, self.between(h), lengths)
        return h * keep

    def loss(self, seqs: Tensor, gen: torch.Generator) -> Tensor:
        """seqs (B, L+1): full CE for seqs[:, 1:] given seqs[:, :-1] at every real position."""
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        h = self.forward(inputs)
        real = targets != PAD
        return full_ce_loss(h[real], targets[real], self.item_representation())


def _run_left_padded(gru: nn.GRU, x: Tensor, lengths: Tensor) -> Tensor:
    """Run `gru` on left-padded x (B, L, d) as packed right-padded rows; output left-padded.

    Packing needs the lengths on the host (one small sync per call).
    """
    pad = x.shape[1] - lengths  # (B,)
    right = _roll_rows(x, pad)  # real items first
    packed = pack_padded_sequence(right, lengths.clamp(min=1).cpu(), batch_first=True,
                                  enforce_sorted=False)
    out, _ = gru(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return _roll_rows(out, -pad)


def _roll_rows(x: Tensor, shift: Tensor) -> Tensor:
    """out[b, j] = x[b, (j + shift[b]) % L] for x (B, L, d), shift (B,)."""
    length = x.shape[1]
    idx = (torch.arange(length, device=x.device) + shift[:, None]) % length  # (B, L)
    return x.gather(1, idx.unsqueeze(-1).expand_as(x))
