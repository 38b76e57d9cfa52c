"""Layers the backbones share: the sequence embedding, the Transformer block (causal or
bidirectional) and its forward pass, dropout, the packing of real positions, weight init.

Everything is vectorised torch code that runs on CPU and CUDA alike; position-wise layers run
on the real (non-padding) positions only (`real_positions`, `pack`, `unpack`).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mltfr.models.base import PAD

if TYPE_CHECKING:
    from mltfr.models.base import SequentialRecommender


class SequenceEmbedding(nn.Module):
    """h0 = dropout(norm(scale * ItemEmb[s] + PosEmb[p])), padding positions zeroed.

    Positions are counted from the right (the most recent item always has position
    max_len-1), so a sequence gets the same embedding whatever its amount of left padding.
    With `left_positions` they are counted from the oldest real item (0, 1, ...), as the MLTFR
    authors' sampler numbers a right-padded row 1..n: still independent of the left padding.
    Only real positions are computed (see `real_positions`).
    """

    def __init__(self, n_tokens: int, d: int, max_len: int, dropout: float,
                 scale: bool = True, positions: bool = True, layer_norm: bool = False,
                 left_positions: bool = False):
        super().__init__()
        self.item_emb = nn.Embedding(n_tokens, d, padding_idx=PAD)
        self.pos_emb = nn.Embedding(max_len, d) if positions else None
        self.norm = nn.LayerNorm(d, eps=1e-8) if layer_norm else nn.Identity()
        self.scale = math.sqrt(d) if scale else 1.0
        self.dropout = Dropout(dropout)
        self.max_len = max_len
        self.left_positions = left_positions

    def forward(self, seqs: Tensor, index: Tensor | None = None,
                positions: Tensor | None = None) -> Tensor:  # (B, L) -> (B, L, d)
        """index: `real_positions(seqs)` when the caller has it (it costs a host sync on GPU);
        positions: (B, L) position ids to use instead of the counted ones."""
        length = seqs.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
        index = real_positions(seqs) if index is None else index  # (n,)
        h = self.item_emb(seqs.flatten()[index]) * self.scale  # (n, d)
        if self.pos_emb is not None:
            h = h + self.pos_emb(self.position_ids(seqs, index, positions))
        return unpack(self.dropout(self.norm(h)), index, seqs.shape)

    def position_ids(self, seqs: Tensor, index: Tensor, positions: Tensor | None) -> Tensor:
        """(n,) position id of each real position: given, from the left, or from the right."""
        if positions is not None:
            return positions.flatten()[index]
        if self.left_positions:
            return ((seqs != PAD).cumsum(1) - 1).flatten()[index]
        length = seqs.shape[1]
        return index % length + (self.max_len - length)


class Dropout(nn.Module):
    """nn.Dropout with the keep mask drawn by `torch.rand` rather than `bernoulli_`.

    The same distribution, cheaper on CPU (measured in docs/benchmarks.md).
    """

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        return x * ((torch.rand_like(x) >= self.p) * (1.0 / (1.0 - self.p)))

    def extra_repr(self) -> str:
        return f"p={self.p}"


def real_positions(seqs: Tensor) -> Tensor:
    """(B, L) -> (n,) flat indices of the non-padding positions, row-major.

    Position-wise layers (norms, projections, feed-forward, dropout) run on these n rows
    only: on Beauty a training batch holds ~15% real positions.
    """
    return (seqs != PAD).flatten().nonzero().squeeze(1)


def pack(x: Tensor, index: Tensor) -> Tensor:
    """(B, L, c) -> (n, c): the rows of the real positions."""
    return x.reshape(-1, x.shape[-1]).index_select(0, index)


def unpack(rows: Tensor, index: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """(n, c) -> (B, L, c) with zeros at padding; shape starts with (B, L)."""
    batch, length = shape[0], shape[1]
    out = rows.new_zeros(batch * length, rows.shape[-1])
    return out.index_copy(0, index, rows).view(batch, length, -1)


def transformer_forward(model: "SequentialRecommender", seqs: Tensor, causal: bool,
                        positions: Tensor | None = None, attend_padding: bool = False) -> Tensor:
    """Embedding -> blocks (the LLM branch enters after the first) -> final LayerNorm.

    Shared by SASRec (causal) and BERT4Rec (bidirectional); (B, L) -> (B, L, d). positions:
    (B, L) position ids (None: the embedding counts them); attend_padding: no attention mask at
    all, padding keys included (the authors' BERT4Rec, `attn_mask=None`)."""
    index = real_positions(seqs)  # (n,), shared by the embedding and every block
    h0 = model.embed(seqs, index, positions)  # (B, L, d), padding zeroed
    mask = None if attend_padding else attention_mask(seqs, causal=causal)
    h = h0
    for i, block in enumerate(model.blocks):
        h = block(h, mask, index)  # padding stays zero
        if i == 0:
            h = model.inject(h, h0, seqs)
    return model.final_norm(h)


def attention_mask(seqs: Tensor, causal: bool) -> Tensor:
    """(B, L) -> (B, 1, L, L) bool, True = may attend: real keys (and the past, if causal).

    Every position may attend to itself, so rows of padding queries are never empty (an
    all-False row would give NaN); their outputs are discarded.
    """
    length = seqs.shape[1]
    allowed = (seqs != PAD)[:, None, None, :]  # (B, 1, 1, L) real keys
    eye = torch.eye(length, dtype=torch.bool, device=seqs.device)
    if causal:
        allowed = allowed & torch.ones_like(eye).tril()
    return allowed | eye


class TransformerBlock(nn.Module):
    """One self-attention + feed-forward block, pre-LN as in the SASRec authors' code.

    As in kang205/SASRec and pmixer/SASRec.pytorch, queries come from the normalised input
    while keys/values come from the raw input, and each residual starts from the normalised
    tensor: h = LN1(x) + Attn(LN1(x), x, x); out = LN2(h) + FFN(LN2(h)). Everything but the
    attention itself runs on the real positions only; padding keys are masked out anyway.

    ffn_inner_dropout False: FFN = Linear-act-Linear-Dropout, the MLTFR authors' PointWiseFeedForward
    (ours adds a dropout after the first Linear). attend_padding: keys and values are computed at
    every position, so a padding key (a zero input) is the projection's bias, as in the authors'
    BERT4Rec, whose attention has no mask; the caller passes mask None.
    """

    def __init__(self, d: int, n_heads: int, dropout: float, attn_dropout: float,
                 ffn_mult: int = 1, activation: str = "relu", ffn_inner_dropout: bool = True,
                 attend_padding: bool = False):
        super().__init__()
        self.n_heads, self.attn_dropout, self.attend_padding = n_heads, attn_dropout, attend_padding
        self.attn_norm = nn.LayerNorm(d, eps=1e-8)
        self.q_proj, self.kv_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.attn_drop = Dropout(attn_dropout)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-8)
        act = nn.ReLU() if activation == "relu" else nn.GELU()
        inner = [Dropout(dropout)] if ffn_inner_dropout else []
        self.ffn = nn.Sequential(nn.Linear(d, ffn_mult * d), *inner, act,
                                 nn.Linear(ffn_mult * d, d), Dropout(dropout))

    def forward(self, x: Tensor, mask: Tensor | None, index: Tensor) -> Tensor:
        """x (B, L, d) zero at padding (with attend_padding it may hold the branch's output there),
        mask (B, 1, L, L) or None (attend_padding), index (n,) from `real_positions` -> (B, L, d),
        zero at padding."""
        rows = pack(x, index)  # (n, d)
        q_in = self.attn_norm(rows)
        h = q_in + self.attention(q_in, x if self.attend_padding else rows, mask, index, x.shape)
        f_in = self.ffn_norm(h)
        return unpack(f_in + self.ffn(f_in), index, x.shape)

    def attention(self, q_in: Tensor, kv_in: Tensor, mask: Tensor | None, index: Tensor,
                  shape: torch.Size) -> Tensor:
        """Rows (n, d) -> (n, d); the attention runs on the padded (B, H, L, L) layout. kv_in:
        the real rows (n, d), or every position (B, L, d) when padding keys are attended."""
        batch, length, d = shape
        heads = lambda t: t.view(batch, length, self.n_heads, d // self.n_heads).transpose(1, 2)
        q = heads(unpack(self.q_proj(q_in), index, shape))  # (B, H, L, d/H)
        kv = self.kv_proj(kv_in) if self.attend_padding else unpack(self.kv_proj(kv_in), index, shape)
        k, v = (heads(t) for t in kv.chunk(2, dim=-1))
        if self.training and self.attn_dropout > 0.0:
            # SDPA's own dropout draws bernoulli masks; this is the same math with `Dropout`
            w = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (B, H, L, L)
            if mask is not None:
                w = w.masked_fill(~mask, float("-inf"))
            out = self.attn_drop(w.softmax(-1)) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(pack(out.transpose(1, 2).reshape(batch, length, d), index))


def init_weights(module: nn.Module, std: float | None = None) -> None:
    """Xavier-normal for every matrix (SASRec code) or N(0, std) when std is given; zero padding row."""
    for name, p in module.named_parameters():
        if p.dim() < 2 or name.startswith("branch."):
            continue
        if std is None:
            nn.init.xavier_normal_(p)
        else:
            nn.init.normal_(p, 0.0, std)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                m.weight[m.padding_idx].zero_()


def init_authors_attention(model: "SequentialRecommender", table_rows: tuple[int, int]) -> None:
    """The MLTFR authors' SASRec/BERT4Rec initialisation: item and position tables Xavier-uniform
    (their `_init_model`), every other layer PyTorch's default, where nn.MultiheadAttention draws
    its stacked (3d, d) input projection Xavier-uniform and zeroes its biases.

    table_rows: the rows of the authors' item and position tables (the Xavier bound depends on
    them): SASRec n+1 and L+1, BERT4Rec n+2 and L+2. Their padding row is not zeroed."""
    emb = model.embed
    for weight, rows in zip((emb.item_emb.weight, emb.pos_emb.weight), table_rows):
        xavier_uniform_rows_(weight, rows)
    for block in model.blocks:
        d = block.q_proj.in_features
        bound = math.sqrt(6.0 / (d + 3 * d))  # Xavier-uniform of the stacked (3d, d) matrix
        for linear in (block.q_proj, block.kv_proj):
            nn.init.uniform_(linear.weight, -bound, bound)
            nn.init.zeros_(linear.bias)
        nn.init.zeros_(block.out_proj.bias)


def xavier_uniform_rows_(weight: Tensor, rows: int) -> None:
    """Xavier-uniform as for a (rows, columns) matrix: U(+-sqrt(6 / (rows + columns)))."""
    bound = math.sqrt(6.0 / (rows + weight.shape[1]))
    with torch.no_grad():
        weight.uniform_(-bound, bound)
