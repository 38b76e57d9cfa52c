"""BERT4Rec: Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM 2019.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mltfr.models.base import PAD, BackboneConfig, SequentialRecommender
from mltfr.models.layers import SequenceEmbedding, TransformerBlock, init_weights, transformer_forward
from mltfr.models.losses import full_ce_loss


class BERT4Rec(SequentialRecommender):
    """Bidirectional Transformer trained with the cloze task; [MASK] has id n_items+1.

    Deviations from the paper: the block is the shared pre-LN block (TransformerBlock, GELU,
    4d feed-forward) rather than BERT's post-LN block; scores are plain dot products with the
    item embeddings (no output transform or per-item bias), as the common interface requires;
    no extra training samples that mask only the last item. As in the authors' code, a
    chosen position is always replaced by [MASK] (no 80/10/10 rule). At least one real
    position per sequence is masked. Ours: each real position is masked with probability
    mask_prob (default 0.5, the authors' mask ratio); their code masks exactly
    max(floor(n * ratio), 1) of a row's n items, the same count in expectation.
    """

    shape_defaults = {"n_blocks": 2, "n_heads": 1}  # the MLTFR authors' BERT4Rec.conf

    def __init__(self, n_items: int, cfg: BackboneConfig):
        super().__init__(n_items, cfg)
        cfg = self.cfg  # n_blocks / n_heads resolved
        self.mask_id = n_items + 1
        self.mask_prob = cfg.mask_prob
        # learned positions, LayerNorm + dropout on the embedding, no sqrt(d) scale (BERT)
        self.embed = SequenceEmbedding(n_items + 2, cfg.d, cfg.max_len, cfg.dropout,
                                       scale=False, layer_norm=True)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.d, cfg.n_heads, cfg.dropout, cfg.attn_dropout, ffn_mult=4, activation="gelu")
            for _ in range(cfg.n_blocks))
        self.final_norm = nn.LayerNorm(cfg.d, eps=1e-8)
        init_weights(self, std=0.02)

    def forward(self, seqs: Tensor) -> Tensor:  # (B, L) -> (B, L, d)
        return transformer_forward(self, seqs, causal=False)

    def cloze_mask(self, window: Tensor, gen: torch.Generator) -> Tensor:
        """(B, L) -> (B, L) bool: real positions chosen with mask_prob, >= 1 per non-empty row."""
        real = window != PAD
        u = torch.rand(window.shape, device=window.device, generator=gen)
        masked = (u < self.mask_prob) & real
        # rows with nothing masked: mask their real position with the largest draw
        fallback = u.masked_fill(~real, -1.0).argmax(dim=1)  # (B,)
        need = ~masked.any(dim=1) & real.any(dim=1)
        forced = nn.functional.one_hot(fallback, window.shape[1]).bool() & need[:, None]
        return masked | forced  # no host sync, unlike boolean indexing

    def loss(self, seqs: Tensor, gen: torch.Generator) -> Tensor:
        """Cloze loss on the last L items seqs[:, 1:]: CE over all items at masked positions."""
        window = seqs[:, 1:]  # (B, L)
        masked = self.cloze_mask(window, gen)
        h = self.forward(window.masked_fill(masked, self.mask_id))
        return full_ce_loss(h[masked], window[masked], self.item_representation())

    def user_representation(self, inputs: Tensor) -> Tensor:
        """(B, L) -> (B, d): drop the oldest slot, append [MASK], read its hidden state."""
        mask_col = torch.full_like(inputs[:, :1], self.mask_id)
        return self.forward(torch.cat([inputs[:, 1:], mask_col], dim=1))[:, -1, :]
