"""BERT4Rec: Sun et al., "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
Representations from Transformer", CIKM 2019.
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
from mltfr.models.losses import ce_over_rows, full_ce_loss


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

    impl "authors" (the MLTFR authors' BERT4Rec module and trainer, docs/method.md): sqrt(d)-scaled
    item + position embedding (positions from the oldest item) with no LayerNorm; SASRec's block
    with a d -> d GELU feed-forward (Linear-GELU-Linear-Dropout); no attention mask at all, so
    every position attends to the padding too (a zero input: the projections' biases); Xavier-
    uniform item and position tables, PyTorch's defaults elsewhere; the padding slots the second
    block attends to hold the LLM branch's output (BranchConfig.zero_padding False). Training masks
    exactly max(floor(n * mask_prob), 1) of the n items of the window *without its most recent
    item* (their sampler's input), with cross-entropy over all n+2 rows of the item table (padding
    and [MASK] included). Prediction appends [MASK] after the last item but reads the output at
    the last item itself, unless the input fills all L slots (then the oldest item is dropped,
    the [MASK] read, and positions are numbered as their code shifts them). The padding count
    changes the output, so the evaluator feeds the whole window (ignores_left_padding False).
    """

    shape_defaults = {"n_blocks": 2, "n_heads": 1}  # the MLTFR authors' BERT4Rec.conf

    def __init__(self, n_items: int, cfg: BackboneConfig):
        super().__init__(n_items, cfg)
        cfg = self.cfg  # n_blocks / n_heads resolved
        self.mask_id = n_items + 1
        self.mask_prob = cfg.mask_prob
        if cfg.authors:
            self._build_authors(n_items, cfg)
            return
        # learned positions, LayerNorm + dropout on the embedding, no sqrt(d) scale (BERT)
        self.embed = SequenceEmbedding(n_items + 2, cfg.d, cfg.max_len, cfg.dropout,
                                       scale=False, layer_norm=True)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.d, cfg.n_heads, cfg.dropout, cfg.attn_dropout, ffn_mult=4, activation="gelu")
            for _ in range(cfg.n_blocks))
        self.final_norm = nn.LayerNorm(cfg.d, eps=1e-8)
        init_weights(self, std=0.02)

    def _build_authors(self, n_items: int, cfg: BackboneConfig) -> None:
        """The authors' network (see the class docstring): their item table has n+2 rows, their
        position table L+2 (the Xavier bounds use those counts)."""
        self.embed = SequenceEmbedding(n_items + 2, cfg.d, cfg.max_len, cfg.dropout, left_positions=True)
        self.blocks = nn.ModuleList(
            TransformerBlock(cfg.d, cfg.n_heads, cfg.dropout, cfg.attn_dropout, activation="gelu",
                             ffn_inner_dropout=False, attend_padding=True)
            for _ in range(cfg.n_blocks))
        self.final_norm = nn.LayerNorm(cfg.d, eps=1e-8)
        init_authors_attention(self, (n_items + 2, cfg.max_len + 2))

    def forward(self, seqs: Tensor, positions: Tensor | None = None) -> Tensor:  # (B, L) -> (B, L, d)
        return transformer_forward(self, seqs, causal=False, positions=positions,
                                   attend_padding=self.cfg.authors)

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

    def authors_cloze_mask(self, window: Tensor, gen: torch.Generator) -> Tensor:
        """(B, L) -> (B, L) bool: exactly max(floor(n * mask_prob), 1) of each row's n real
        positions, uniformly without replacement (the authors' random.sample)."""
        real = window != PAD
        n = real.sum(1, keepdim=True)  # (B, 1)
        count = (n * self.mask_prob).floor().clamp(min=1)
        u = torch.rand(window.shape, device=window.device, generator=gen).masked_fill(~real, 2.0)
        rank = u.argsort(dim=1).argsort(dim=1)  # (B, L): 0 = the smallest draw of the row
        return (rank < count) & real

    def loss(self, seqs: Tensor, gen: torch.Generator) -> Tensor:
        """Cloze loss on the last L items seqs[:, 1:]: CE over all items at masked positions.
        impl authors: on seqs[:, :-1] (their input leaves out the most recent item), CE over
        every row of the item table."""
        if self.cfg.authors:
            window = seqs[:, :-1]  # (B, L)
            masked = self.authors_cloze_mask(window, gen)
            h = self.forward(window.masked_fill(masked, self.mask_id))
            return ce_over_rows(h[masked], window[masked], self.embed.item_emb.weight)
        window = seqs[:, 1:]  # (B, L)
        masked = self.cloze_mask(window, gen)
        h = self.forward(window.masked_fill(masked, self.mask_id))
        return full_ce_loss(h[masked], window[masked], self.item_representation())

    def user_representation(self, inputs: Tensor) -> Tensor:
        """(B, L) -> (B, d): drop the oldest slot, append [MASK], read its hidden state. impl
        authors: read the last item's state instead unless the input fills all L slots."""
        mask_col = torch.full_like(inputs[:, :1], self.mask_id)
        seqs = torch.cat([inputs[:, 1:], mask_col], dim=1)  # (B, L)
        if not self.cfg.authors:
            return self.forward(seqs)[:, -1, :]
        full = inputs[:, 0] != PAD  # (B,) rows whose input fills the window
        h = self.forward(seqs, self.authors_positions(seqs, full))
        if seqs.shape[1] == 1:
            return h[:, -1, :]
        return torch.where(full[:, None], h[:, -1, :], h[:, -2, :])

    def authors_positions(self, seqs: Tensor, full: Tensor) -> Tensor:
        """(B, L) position ids of the prediction input: counted from the oldest item (the
        [MASK] after the last item), except in full rows, where the authors shift the ids with
        the items (they keep 2..L, our 1..L-1) and give [MASK] the last one again."""
        left = (seqs != PAD).cumsum(1) - 1  # (B, L)
        shifted = (left + 1).clamp(max=seqs.shape[1] - 1)
        return torch.where(full[:, None], shifted, left)
