"""FMLP-Rec: Zhou et al., "Filter-enhanced MLP is All You Need for Sequential
Recommendation", WWW 2022.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mltfr.models.base import PAD, BackboneConfig, SequentialRecommender
from mltfr.models.layers import Dropout, SequenceEmbedding, init_weights, xavier_uniform_rows_
from mltfr.models.losses import bce_loss
from mltfr.models.sampling import distinct_negatives, sample_negatives


class FilterBlock(nn.Module):
    """Learnable complex filter over the sequence axis, then a feed-forward layer.

    x -> LN(x + dropout(irfft(rfft(x) * W))) -> LN(. + dropout(FFN(.)))   (post-LN, as in
    the paper); W (L//2+1, d) complex, one weight per frequency and channel.
    """

    def __init__(self, d: int, max_len: int, dropout: float):
        super().__init__()
        self.filter = nn.Parameter(torch.randn(max_len // 2 + 1, d, 2) * 0.02)  # real, imag
        self.filter_norm = nn.LayerNorm(d, eps=1e-12)
        self.ffn = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d), Dropout(dropout))
        self.ffn_norm = nn.LayerNorm(d, eps=1e-12)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # (B, L, d), L = max_len
        spectrum = torch.fft.rfft(x, dim=1, norm="ortho")  # (B, L//2+1, d) complex
        filtered = torch.fft.irfft(spectrum * torch.view_as_complex(self.filter),
                                   n=x.shape[1], dim=1, norm="ortho")
        h = self.filter_norm(x + self.dropout(filtered))
        return self.ffn_norm(h + self.ffn(h))


class FMLPRec(SequentialRecommender):
    """All-MLP backbone: embedding (item + learned position, LayerNorm, dropout), n_blocks
    filter blocks, dot-product scores; BCE with one sampled negative per position, as in the
    paper.

    As in the authors' code, the filter is a global circular convolution: it is *not*
    causal, so during training the output at position t can see later items (including
    its own target). Ours: the embedding is LayerNorm(item + position) and padding positions
    are not zeroed inside the blocks (as in the FMLP-Rec paper's code); inputs shorter than
    max_len are left-padded to max_len (the filter has one length), and the branch receives h0
    with padding zeroed.

    impl "authors" (the MLTFR authors' FMLPRec_module, docs/method.md): h0 = dropout(sqrt(d) *
    item + position), positions from the oldest item, padding zeroed before the filter and again
    after the branch is added; Linear weights N(0, 0.02) with zero biases, item and position
    tables Xavier-uniform; distinct negatives that avoid the input items (their sampler). Their
    rows are right-padded: a circular convolution of a circular shift is the same shift of the
    output, so our left-padded rows give the same outputs at the real positions. Their
    init_weights also redraws the LLM branch and its token tables (BranchConfig.reinitialise).
    """

    shape_defaults = {"n_blocks": 1}  # the MLTFR authors' FMLPRec.conf

    def __init__(self, n_items: int, cfg: BackboneConfig):
        super().__init__(n_items, cfg)
        cfg = self.cfg  # n_blocks resolved
        self.embed = (SequenceEmbedding(n_items + 1, cfg.d, cfg.max_len, cfg.dropout, left_positions=True)
                      if cfg.authors else SequenceEmbedding(n_items + 1, cfg.d, cfg.max_len, cfg.dropout,
                                                            scale=False, layer_norm=True))
        self.blocks = nn.ModuleList(FilterBlock(cfg.d, cfg.max_len, cfg.dropout)
                                    for _ in range(cfg.n_blocks))
        init_weights(self, std=0.02)
        if cfg.authors:
            self._init_authors(n_items, cfg.max_len)

    def _init_authors(self, n_items: int, max_len: int) -> None:
        """The authors' init_weights leaves Linear biases at 0, and their item and position
        tables (n+1 and L+1 rows, plain Parameters) at Xavier-uniform."""
        for layer in self.modules():
            if isinstance(layer, nn.Linear):
                nn.init.zeros_(layer.bias)
        xavier_uniform_rows_(self.embed.item_emb.weight, n_items + 1)
        xavier_uniform_rows_(self.embed.pos_emb.weight, max_len + 1)

    def embedding(self, seqs: Tensor) -> Tensor:
        """(B, L) -> (B, L, d): LN(item + position), padding not zeroed, as the FMLP-Rec paper's
        `add_position_embedding`; the MLTFR authors define it but never call it (impl authors)."""
        emb = self.embed
        positions = torch.arange(seqs.shape[1], device=seqs.device)
        return emb.dropout(emb.norm(emb.item_emb(seqs) + emb.pos_emb(positions)))

    def forward(self, seqs: Tensor) -> Tensor:  # (B, L) -> (B, L, d)
        length = seqs.shape[1]
        if length > self.max_len:  # F.pad would silently crop
            raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
        seqs = F.pad(seqs, (self.max_len - length, 0), value=PAD)  # (B, max_len)
        if self.cfg.authors:
            return self.authors_forward(seqs)[:, -length:]
        h0 = self.embedding(seqs)
        h0_zeroed = h0 * (seqs != PAD).unsqueeze(-1)
        h = h0
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == 0:
                h = self.inject(h, h0_zeroed, seqs)
        return h[:, -length:]

    def authors_forward(self, seqs: Tensor) -> Tensor:  # (B, max_len) -> (B, max_len, d)
        """The authors' forward: h0 zero at padding; after the first block the branch is added
        and the padding zeroed again."""
        h0 = self.embed(seqs)  # (B, L, d), padding zeroed
        real = (seqs != PAD).unsqueeze(-1)
        h = h0
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == 0:
                h = self.inject(h, h0, seqs) * real
        return h

    def loss(self, seqs: Tensor, gen: torch.Generator) -> Tensor:
        """seqs (B, L+1): BCE for seqs[:, 1:] vs one negative, given seqs[:, :-1]."""
        h = self.forward(seqs[:, :-1])
        negatives = (distinct_negatives(seqs[:, :-1], self.n_items, gen) if self.cfg.authors
                     else sample_negatives(seqs, self.n_items, gen))
        return bce_loss(h, seqs[:, 1:], negatives, self.item_representation())
