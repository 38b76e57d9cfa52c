"""What the branch attends to and how: `CrossAttentionExpert` (one per LLM, and the consensus
expert) and `PrototypeMap` (direct injection: learned pseudo-tokens instead of filtering)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class PrototypeMap(nn.Module):
    """Direct injection: P learned pseudo-tokens X = W^T E (P, D), shared by all users."""

    def __init__(self, vocab: int, n_prototypes: int):
        super().__init__()
        self.mix = nn.Linear(vocab, n_prototypes)                 # over the vocabulary axis

    def forward(self, table: Tensor) -> Tensor:
        return self.mix(table.T).T.unsqueeze(0)                   # (|V|, D) -> (1, P, D)


class CrossAttentionExpert(nn.Module):
    """Multi-head cross-attention from positions (queries) to tokens (keys/values); no residual."""

    def __init__(self, d: int, dim: int, n_heads: int, attn_dropout: float, out_dropout: float):
        super().__init__()
        self.n_heads, self.attn_dropout = n_heads, attn_dropout
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(dim, d)
        self.value = nn.Linear(dim, d)
        self.out = nn.Linear(d, d)
        self.dropout = nn.Dropout(out_dropout)

    def heads(self, x: Tensor, batch: int) -> Tensor:
        """(b, T, d) -> (batch, H, T, d/H); b = 1 (pooled tokens) broadcasts over the batch."""
        b, t, d = x.shape
        return x.view(b, t, self.n_heads, d // self.n_heads).transpose(1, 2).expand(batch, -1, -1, -1)

    def forward(self, h0: Tensor, tokens: Tensor) -> Tensor:
        """h0 (B, L, d), tokens (B or 1, T, D) -> (B, L, d)."""
        B, L, d = h0.shape
        q = self.heads(self.query(h0), B)
        k, v = self.heads(self.key(tokens), B), self.heads(self.value(tokens), B)
        p = self.attn_dropout if self.training else 0.0
        att = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, L, d/H)
        return self.dropout(self.out(att.transpose(1, 2).reshape(B, L, d)))
