"""FMLP-Rec: Zhou et al., "Filter-enhanced MLP is All You Need for Sequential
Recommendation", WWW 2022.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mltfr.models.base import PAD, BackboneConfig, SequentialRecommender
from mltfr.models.layers import Dropout, SequenceEmbedding, init_weights
from mltfr.models.losses import bce_loss
from mltfr.models.sampling import sample_negatives


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
    its own target); padding positions are not zeroed inside the blocks. Ours: inputs
    shorter than max_len are left-padded to max_len (the filter has one length), and the
    branch receives h0 with padding zeroed.
    """

    shape_defaults = {"n_blocks": 1}  # the MLTFR authors' FMLPRec.conf

    def __init__(self, n_items: int, cfg: BackboneConfig):
        super().__init__(n_items, cfg)
        cfg = self.cfg  # n_blocks resolved
        self.embed = SequenceEmbedding(n_items + 1, cfg.d, cfg.max_len, cfg.dropout,
                                       scale=False, layer_norm=True)
        self.blocks = nn.ModuleList(FilterBlock(cfg.d, cfg.max_len, cfg.dropout)
                                    for _ in range(cfg.n_blocks))
        init_weights(self, std=0.02)

    def embedding(self, seqs: Tensor) -> Tensor:
        """(B, L) -> (B, L, d) like the authors' code: LN(item + position), padding not zeroed."""
        emb = self.embed
        positions = torch.arange(seqs.shape[1], device=seqs.device)
        return emb.dropout(emb.norm(emb.item_emb(seqs) + emb.pos_emb(positions)))

    def forward(self, seqs: Tensor) -> Tensor:  # (B, L) -> (B, L, d)
        length = seqs.shape[1]
        if length > self.max_len:  # F.pad would silently crop
            raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
        seqs = F.pad(seqs, (self.max_len - length, 0), value=PAD)  # (B, max_len)
        h0 = self.embedding(seqs)
        h0_zeroed = h0 * (seqs != PAD).unsqueeze(-1)
        h = h0
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == 0:
                h = self.inject(h, h0_zeroed, seqs)
        return h[:, -length:]

    def loss(self, seqs: Tensor, gen: torch.Generator) -> Tensor:
        """seqs (B, L+1): BCE for seqs[:, 1:] vs one negative, given seqs[:, :-1]."""
        h = self.forward(seqs[:, :-1])
        negatives = sample_negatives(seqs, self.n_items, gen)
        return bce_loss(h, seqs[:, 1:], negatives, self.item_representation())
