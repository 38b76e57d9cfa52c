"""SASRec: Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018.

Two losses on one network: `sasrec` (the paper's binary cross-entropy, one sampled negative
per position) and `sasrec-ce` (full softmax cross-entropy over all items, the strong
baseline of later work, e.g. Klenitskiy & Vasilev 2023).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mltfr.models.base import PAD, BackboneConfig, SequentialRecommender
from mltfr.models.layers import (
    SequenceEmbedding,
    TransformerBlock,
    init_authors_attention,
    init_weights,
    transformer_forward,
)
from mltfr.models.losses import bce_loss, full_ce_loss
from mltfr.models.sampling import distinct_negatives, sample_negatives


class SASRec(SequentialRecommender):
    """Causal Transformer over item ids with learned positions and a final LayerNorm.

    Deviations from the paper, all following the authors' code (kang205/SASRec, as ported by
    pmixer/SASRec.pytorch): the block's residuals start from the normalised input (see
    TransformerBlock); weights are Xavier-normal. Ours: attention also masks padding keys
    and positions are counted from the right, so outputs at real positions do not depend on
    the amount of left padding; negatives avoid the L+1 items of the training window rather
    than the user's whole history.

    impl "authors" (the MLTFR authors' SASRec_module, docs/method.md): positions numbered from
    the oldest item (their right-padded rows count 1..n; causal attention never reaches their
    padding, so masking our left padding computes the same), feed-forward Linear-ReLU-Linear-
    Dropout, Xavier-uniform item and position tables and PyTorch's defaults elsewhere, and per
    row distinct negatives that avoid the input items only (their sampler).
    """
    ignores_left_padding = True  # outputs at real positions ignore left padding (evaluator trims it)
    shape_defaults = {"n_blocks": 2, "n_heads": 8}  # the MLTFR authors' SASRec.conf

    def __init__(self, n_items: int, cfg: BackboneConfig, loss_type: str = "bce"):
        super().__init__(n_items, cfg)
        cfg = self.cfg  # n_blocks / n_heads resolved
        if loss_type not in ("bce", "ce"):
            raise ValueError(f"loss_type must be 'bce' or 'ce', got {loss_type!r}")
        self.loss_type = loss_type
        self.embed = SequenceEmbedding(n_items + 1, cfg.d, cfg.max_len, cfg.dropout, left_positions=cfg.authors)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.d, cfg.n_heads, cfg.dropout, cfg.attn_dropout, ffn_inner_dropout=not cfg.authors)
            for _ in range(cfg.n_blocks))
        self.final_norm = nn.LayerNorm(cfg.d, eps=1e-8)
        if cfg.authors:
            init_authors_attention(self, (n_items + 1, cfg.max_len + 1))
        else:
            init_weights(self)

    def forward(self, seqs: Tensor) -> Tensor:  # (B, L) -> (B, L, d)
        return transformer_forward(self, seqs, causal=True)

    def loss(self, seqs: Tensor, gen: torch.Generator) -> Tensor:
        """seqs (B, L+1): predict seqs[:, 1:] from seqs[:, :-1] at every real position."""
        inputs, targets = seqs[:, :-1], seqs[:, 1:]
        h = self.forward(inputs)  # (B, L, d)
        items = self.item_representation()
        if self.loss_type == "bce":
            negatives = (distinct_negatives(inputs, self.n_items, gen) if self.cfg.authors
                         else sample_negatives(seqs, self.n_items, gen))
            return bce_loss(h, targets, negatives, items)
        real = targets != PAD
        return full_ce_loss(h[real], targets[real], items)
