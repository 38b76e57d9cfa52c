"""The interface every backbone implements, its config, and the parts backbones share.

Shared parts: the config (`BackboneConfig`), the embedding layer (`SequenceEmbedding`), the
Transformer block used by SASRec and BERT4Rec (`TransformerBlock`, causal or bidirectional),
the negative sampler and the two losses (`bce_loss`, `full_ce_loss`). Everything is
vectorised torch code that runs on CPU and CUDA alike.

Sequences are left-padded with item id 0; the most recent item is last.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mltfr.errors import ConfigError

PAD = 0  # item id of padding


@dataclass
class BackboneConfig:
    """Hyper-parameters of an ID-only backbone (method.md defaults: d=64, L=50, dropout 0.2).

    n_blocks and n_heads left at None take the backbone's own default (its `shape_defaults`,
    the authors' settings), filled in by `SequentialRecommender.__init__`.
    """

    d: int = 64  # (int) hidden size = item embedding size
    max_len: int = 50  # (int) L, the longest input sequence; training windows hold L+1 items
    n_blocks: int | None = None  # (int) Transformer / filter blocks, or GRU layers for gru4rec; None =
    #                              backbone default (SASRec 2, BERT4Rec 2, FMLP-Rec 1, GRU4Rec 2)
    n_heads: int | None = None  # (int) attention heads; None = backbone default (SASRec 8, BERT4Rec 1)
    dropout: float = 0.2  # (float) dropout on embeddings and block outputs
    attn_dropout: float = 0.2  # (float) dropout on attention weights (SASRec/BERT4Rec)
    mask_prob: float = 0.5  # (float) BERT4Rec cloze masking probability per position (authors: 0.5)

    def __post_init__(self) -> None:
        for name in ("d", "max_len", "n_blocks"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"backbone config: {name}={getattr(self, name)} must be >= 1")
        if self.n_heads is not None and (self.n_heads < 1 or self.d % self.n_heads):
            raise ConfigError(f"backbone config: n_heads={self.n_heads} must be >= 1 and divide d={self.d}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"backbone config: {name}={getattr(self, name)} must be in [0, 1)")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"backbone config: mask_prob={self.mask_prob} must be in (0, 1)")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "backbone") -> "BackboneConfig":
        """Build from a mapping (e.g. YAML); unknown keys and wrong types raise ConfigError."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"{where}: unknown key '{key}'; valid keys: {', '.join(fields)}")
            _check_type(where, key, value, fields[key].type)
        return cls(**values)

    def with_defaults(self, defaults: Mapping[str, int]) -> "BackboneConfig":
        """A copy with every setting left at None taken from `defaults` (a backbone's own)."""
        fill = {key: value for key, value in defaults.items() if getattr(self, key) is None}
        heads = fill.get("n_heads")
        if heads is not None and self.d % heads:
            raise ConfigError(f"backbone config: the backbone's default n_heads={heads} does not divide "
                              f"d={self.d}; set model.n_heads to a divisor of d, or change d")
        return dataclasses.replace(self, **fill)


def _check_type(where: str, key: str, value: Any, annotation: str) -> None:
    """Reject values of the wrong type (bool is not an int here; an int is a valid float)."""
    if value is None and "None" in annotation:
        return
    want_int = annotation.startswith("int")
    ok = (isinstance(value, int) and not isinstance(value, bool)) if want_int else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok:
        kind = "an integer" if want_int else "a number"
        raise ConfigError(f"{where}: key '{key}' must be {kind}, got {value!r}")


class SequentialRecommender(nn.Module):
    """Base class: subclasses set `self.embed` (a SequenceEmbedding) and define forward, loss.

    Scores = user_representation(inputs) @ item_representation().T; row/column 0 is padding.
    """

    ignores_left_padding = False  # subclasses whose outputs at real positions ignore left padding
    shape_defaults: dict[str, int] = {}  # the backbone's n_blocks / n_heads when the config leaves them None

    @property
    def batch_dependent(self) -> bool:
        """True when a user's output depends on the other users of its batch (a faithful branch
        pools the filtered tokens over the batch)."""
        return getattr(getattr(self.branch, "cfg", None), "pooling", "user") == "batch"

    @property
    def left_padding_invariant(self) -> bool:
        """True when the evaluator may sort users by length and trim each block's padding."""
        return self.ignores_left_padding and not self.batch_dependent

    def __init__(self, n_items: int, cfg: BackboneConfig):
        super().__init__()
        if n_items < 1:
            raise ConfigError(f"a backbone needs at least one item, got n_items={n_items}")
        self.n_items, self.d, self.max_len = n_items, cfg.d, cfg.max_len
        self.cfg = cfg.with_defaults(self.shape_defaults)  # subclasses read the resolved self.cfg
        self.branch: nn.Module | None = None  # set by mltfr.models.mltfr; None = ID-only

    def inject(self, h: Tensor, h0: Tensor, seqs: Tensor) -> Tensor:
        """Add the LLM branch after the first block: h (B, L, d) + branch(h0, seqs) (B, L, d)."""
        return h if self.branch is None else h + self.branch(h0, seqs)

    def forward(self, seqs: Tensor) -> Tensor:  # (B, L) -> (B, L, d)
        raise NotImplementedError

    def loss(self, seqs: Tensor, gen: torch.Generator) -> Tensor:
        """Training loss on left-padded windows seqs (B, L+1); gen lives on seqs.device."""
        raise NotImplementedError

    def user_representation(self, inputs: Tensor) -> Tensor:
        """(B, L) -> (B, d): the hidden state at the last (most recent) position."""
        return self.forward(inputs)[:, -1, :]

    def item_representation(self) -> Tensor:
        """(n_items+1, d); row 0 is the padding item."""
        return self.embed.item_emb.weight[: self.n_items + 1]


class SequenceEmbedding(nn.Module):
    """h0 = dropout(norm(scale * ItemEmb[s] + PosEmb[p])), padding positions zeroed.

    Positions are counted from the right (the most recent item always has position
    max_len-1), so a sequence gets the same embedding whatever its amount of left padding.
    Only real positions are computed (see `real_positions`).
    """

    def __init__(self, n_tokens: int, d: int, max_len: int, dropout: float,
                 scale: bool = True, positions: bool = True, layer_norm: bool = False):
        super().__init__()
        self.item_emb = nn.Embedding(n_tokens, d, padding_idx=PAD)
        self.pos_emb = nn.Embedding(max_len, d) if positions else None
        self.norm = nn.LayerNorm(d, eps=1e-8) if layer_norm else nn.Identity()
        self.scale = math.sqrt(d) if scale else 1.0
        self.dropout = Dropout(dropout)
        self.max_len = max_len

    def forward(self, seqs: Tensor, index: Tensor | None = None) -> Tensor:  # (B, L) -> (B, L, d)
        """index: `real_positions(seqs)` when the caller has it (it costs a host sync on GPU)."""
        length = seqs.shape[1]
        if length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds max_len={self.max_len}")
        index = real_positions(seqs) if index is None else index  # (n,)
        h = self.item_emb(seqs.flatten()[index]) * self.scale  # (n, d)
        if self.pos_emb is not None:
            h = h + self.pos_emb(index % length + (self.max_len - length))
        return unpack(self.dropout(self.norm(h)), index, seqs.shape)


class Dropout(nn.Module):
    """nn.Dropout with the keep mask drawn by `torch.rand` rather than `bernoulli_`.

    The same distribution; on CPU `bernoulli_` costs ~2.5x as much, and dropout masks were a
    fifth of a SASRec training step.
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


def transformer_forward(model: "SequentialRecommender", seqs: Tensor, causal: bool) -> Tensor:
    """Embedding -> blocks (the LLM branch enters after the first) -> final LayerNorm.

    Shared by SASRec (causal) and BERT4Rec (bidirectional); (B, L) -> (B, L, d)."""
    index = real_positions(seqs)  # (n,), shared by the embedding and every block
    h0 = model.embed(seqs, index)  # (B, L, d), padding zeroed
    mask = attention_mask(seqs, causal=causal)
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
    """

    def __init__(self, d: int, n_heads: int, dropout: float, attn_dropout: float,
                 ffn_mult: int = 1, activation: str = "relu"):
        super().__init__()
        self.n_heads, self.attn_dropout = n_heads, attn_dropout
        self.attn_norm = nn.LayerNorm(d, eps=1e-8)
        self.q_proj, self.kv_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.attn_drop = Dropout(attn_dropout)
        self.ffn_norm = nn.LayerNorm(d, eps=1e-8)
        act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.ffn = nn.Sequential(nn.Linear(d, ffn_mult * d), Dropout(dropout), act,
                                 nn.Linear(ffn_mult * d, d), Dropout(dropout))

    def forward(self, x: Tensor, mask: Tensor, index: Tensor) -> Tensor:
        """x (B, L, d) zero at padding, mask (B, 1, L, L), index (n,) from `real_positions`
        -> (B, L, d), zero at padding."""
        rows = pack(x, index)  # (n, d)
        q_in = self.attn_norm(rows)
        h = q_in + self.attention(q_in, rows, mask, index, x.shape)
        f_in = self.ffn_norm(h)
        return unpack(f_in + self.ffn(f_in), index, x.shape)

    def attention(self, q_in: Tensor, kv_in: Tensor, mask: Tensor, index: Tensor,
                  shape: torch.Size) -> Tensor:
        """Rows (n, d) -> (n, d); the attention runs on the padded (B, H, L, L) layout."""
        batch, length, d = shape
        heads = lambda t: t.view(batch, length, self.n_heads, d // self.n_heads).transpose(1, 2)
        q = heads(unpack(self.q_proj(q_in), index, shape))  # (B, H, L, d/H)
        k, v = (heads(t) for t in unpack(self.kv_proj(kv_in), index, shape).chunk(2, dim=-1))
        if self.training and self.attn_dropout > 0.0:
            # SDPA's own dropout draws bernoulli masks; this is the same math with `Dropout`
            w = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # (B, H, L, L)
            out = self.attn_drop(w.masked_fill(~mask, float("-inf")).softmax(-1)) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(pack(out.transpose(1, 2).reshape(batch, length, d), index))


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


def bce_loss(h: Tensor, pos: Tensor, neg: Tensor, items: Tensor) -> Tensor:
    """Binary cross-entropy of positives vs one negative, mean over real positions.

    h (B, L, d) hidden states, pos/neg (B, L) ids (pos 0 = padding, skipped), items (n+1, d).
    Only real positions are gathered, so padding costs nothing; positives and negatives are
    gathered at once (one item-table-sized gradient buffer instead of two).
    """
    real = pos != PAD
    h_real = h[real]  # (n, d)
    logits = (h_real * items[torch.stack([pos[real], neg[real]])]).sum(-1)  # (2, n): pos, neg
    # BCE(x, 1) = softplus(-x), BCE(x, 0) = softplus(x)
    return F.softplus(-logits[0]).mean() + F.softplus(logits[1]).mean()


def full_ce_loss(h: Tensor, targets: Tensor, items: Tensor, chunk: int | None = None) -> Tensor:
    """Softmax cross-entropy over all items 1..n (padding column 0 excluded), mean over rows.

    h (n, d) hidden states of the real positions only, targets (n,) in 1..n_items,
    items (n_items+1, d). Column 0 is dropped rather than masked to -inf (the same softmax).
    Computed by `FusedLinearCrossEntropy` in row chunks: the (n, n_items) logits are never
    materialised, which saves memory and most of the memory traffic of a plain log-softmax.
    """
    if chunk is None:  # CPU: a (n_items, 64) chunk stays in cache; GPU: fewer, larger kernels
        chunk = 64 if h.device.type == "cpu" else 1024
    return FusedLinearCrossEntropy.apply(h, items[1:], targets - 1, chunk)


class FusedLinearCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ W.T, t_i), gradients computed in the forward pass, chunk by chunk.

    The loss is a scalar, so backward only rescales the gradients found in forward: three
    matmuls per chunk (logits, dL/dh, dL/dW) and a peak extra memory of n_items x chunk,
    instead of the (n, n_items) logits, their log-softmax and its gradient. The same idea
    as Liger-Kernel's fused linear cross-entropy. Chunks are laid out (n_items, chunk): on CPU
    `W @ h_c.T` runs near matmul peak where `h_c @ W.T` (inner size d = 64) does not, and the
    softmax is max, exp in place, sum (one pass fewer than logsumexp then exp).
    """

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, targets: Tensor, chunk: int) -> Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.zeros_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        total = h.new_zeros((), dtype=torch.float32)
        for start in range(0, h.shape[0], chunk):
            h_c, t_c = h[start:start + chunk], targets[start:start + chunk]
            cols = torch.arange(len(t_c), device=h.device)
            probs = (weight @ h_c.T).float()  # (n_items, c) logits
            top = probs.amax(dim=0)  # (c,)
            target_logit = probs[t_c, cols] - top
            z = probs.sub_(top).exp_().sum(dim=0)  # probs now exp(logit - max)
            total += (z.log() - target_logit).sum()  # log-sum-exp - logit, both shifted by max
            if need_h or need_w:
                probs.div_(z)  # softmax
                probs[t_c, cols] -= 1.0  # dCE/dlogits, (n_items, c)
                if need_h:
                    grad_h[start:start + chunk] = probs.T.to(h.dtype) @ weight
                if need_w:
                    grad_w.addmm_(probs, h_c.float())
        n = max(h.shape[0], 1)
        ctx.save_for_backward(*(g / n if g is not None else None for g in (grad_h, grad_w)))
        ctx.dtypes = h.dtype, weight.dtype  # under autocast h may be bf16 while grads accumulate in fp32
        return total / n

    @staticmethod
    def backward(ctx, grad_loss: Tensor):
        grads = [None if g is None else (g * grad_loss).to(dtype)
                 for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return grads[0], grads[1], None, None


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
