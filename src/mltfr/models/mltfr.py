"""The MLTFR LLM branch: user-guided token filtering, one expert per LLM, a router, consensus.

MLTFR (Multi-LLM Token Filtering and Routing, arXiv 2604.18200) adds one vector per position
to an ID-based backbone after its first block, computed from the *token embedding tables* of
several LLMs (no text, no LLM forward pass). See docs/method.md for the method and the
faithful/corrected protocols; every study variant is a `BranchConfig` of this one module.

    u      = masked mean of h0                                     (B, d)
    s      = cosine(u, Linear_m(E_m))                              (B, |V_m|)
    y      = softmax((s + Gumbel) / tau);  idx = top-K(y);  y_st = sg(onehot(idx) - y) + y
    w      = y_st[idx] / (sum_k y_st[idx_k] + 1e-8)                (B, K)
    X_m    = w * E_m[idx]                                          (B, K, D_m)
    y_m    = CrossAttention_m(h0 -> X_m)                           (B, L, d)
    o      = sum_m router_m(h0) * y_m  (+ lambda_s * shared(h0 -> mean_G X_m))

Filter weights (`BranchConfig.filter_grad`):
- "authors" (the default under both protocols): the renormalised weights above, as in the
  authors' code. Forward value 1/(K + 1e-8), exactly 1 at K = 1 in fp32. At K = 1 the weight's
  gradient is zero, so the projection Linear_m, the scores and u get no gradient and the table
  gets gradient only at the selected rows (through X). At K > 1 the gradient into y at pick j is
  (g_j - sum_k g_k / c) / c, c = K + 1e-8, g_k = <dL/dX_k, E[idx_k]>: it sums to ~0 over the picks.
- "learn" (a variant, not the authors' method): w = (y_k - sg(y_k) + 1) / K, forward 1/K,
  gradient 1/K into y at the picks, no renormalisation, so the projection learns.
Controls: `selection="random"` draws K tokens uniformly per user (no user signal);
`user_vector="causal"` uses at position t the mean of h0 over the real positions <= t, so each
position picks its own K tokens and attends only to them (needs user pooling).

Deviation from the authors' code, deliberate: the branch output is zeroed at padding positions
(so padding never leaks into later blocks).
Consequence of the method, not a choice: with user pooling and K = 1 each position attends to a
single key, so the attention weight is 1 and the expert's query/key weights get no gradient
(their Fisher is zero and the Fisher merge sets them to 0, which changes nothing there).

Cost: when a gradient reaches the scores ("learn", or "authors" at K > 1) filtering projects the
whole vocabulary (|V| x D x d multiply-adds) at every training step, plus as much again for the
projection's gradient and, with trainable tables, for the table's gradient; add the (B, |V|)
work: cosine scores, Gumbel noise, top-K, one exp, two backward matmuls. That step runs as
`FusedTokenFilter`, whose hand-written backward gives the table one (|V|, D) gradient buffer and
makes no elementwise (B, |V|) pass. When no gradient can reach the scores ("authors" at K = 1,
frozen projection and table, evaluation) the picks need no backward at all: with noise they are
drawn from softmax(s) by rejection sampling (`sample_softmax_ids`: the law of top-K(s + Gumbel),
a few projected rows per user instead of the whole vocabulary; not the same random stream as the
Gumbel noise), without noise they are top-K of s over the normalised projection kept across steps
by `ProjectionCache`, which recomputes only the table rows that changed since it was built.
Measured step times: docs/benchmarks.md.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mltfr.errors import ConfigError

POOLINGS = ("user", "batch")
ROUTERS = ("softmax", "mean")
CONSENSUS = ("none", "fisher", "mean")
FILTER_GRADS = ("authors", "learn")
SELECTIONS = ("guided", "random")
USER_VECTORS = ("window", "causal")
NORM_EPS = 1e-12   # F.normalize's eps: a row with a smaller norm is divided by eps instead
AUTHORS_EPS = 1e-8  # the authors' renormalisation: w = y_st / (sum y_st + 1e-8)
SCORE_ELEMENTS = 1 << 24   # causal user vector: positions scored at once x |V| (64 MiB of fp32)


@dataclass
class BranchConfig:
    """Every setting of the LLM branch; each study variant is one of these."""

    d: int = 64                  # (int) backbone hidden size; the branch outputs (B, L, d)
    K: int = 1                   # (int) tokens kept per user and LLM (authors: 1 SASRec/BERT4Rec, 10 FMLP-Rec)
    tau: float = 0.5             # (float) Gumbel-softmax temperature
    pooling: str = "user"        # "user" (corrected: each user attends to its own K) | "batch" (faithful: all B*K pooled)
    eval_noise: bool = False     # (bool) Gumbel noise also at evaluation (faithful True, corrected False)
    filter_grad: str = "authors"  # "authors" (renormalised straight-through weights) | "learn" (gradient 1/K into y)
    selection: str = "guided"    # "guided" (user-guided top-K) | "random" (control: K tokens uniform per user)
    user_vector: str = "window"  # "window" (mean over the whole window, authors) | "causal" (prefix mean per position)
    filtering: bool = True       # (bool) user-guided filtering; False = P learned prototype tokens (direct injection)
    n_prototypes: int = 50       # (int) P, prototype tokens per LLM when filtering is off (Time-LLM style)
    router: str = "softmax"      # "softmax" (dense per-position router) | "mean" (uniform 1/M, ablation)
    router_softmax_twice: bool = False  # (bool) softmax over softmax (authors' BERT4Rec/FMLP-Rec: their
    #                                     GatingNetwork returns a softmax and their MoE applies another)
    consensus: str = "none"      # merge for the round-2 consensus expert: "none" | "fisher" | "mean"
    lambda_s: float = 0.01       # (float) weight of the consensus expert (0.01 SASRec, 0.2 BERT4Rec, 0.05 FMLP-Rec);
    #                              round 1 adds a frozen random copy of the first group expert with it too
    consensus_group: list[int] | None = None  # indices of the LLMs merged (same D); None = largest same-D set
    trainable_tables: bool = True  # (bool) fine-tune the token tables (published) or keep them frozen
    n_heads: int = 4             # (int) attention heads per expert, head size d / n_heads
    attn_dropout: float = 0.1    # (float) dropout on the expert's attention weights
    out_dropout: float = 0.1     # (float) dropout on the expert's output
    names: list[str] = field(default_factory=list)  # LLM names, for messages and interpretability

    def __post_init__(self):
        for key, valid in (("pooling", POOLINGS), ("router", ROUTERS), ("consensus", CONSENSUS),
                           ("filter_grad", FILTER_GRADS), ("selection", SELECTIONS),
                           ("user_vector", USER_VECTORS)):
            if getattr(self, key) not in valid:
                raise ConfigError(f"branch setting {key}={getattr(self, key)!r} is not valid; "
                                  f"use one of {', '.join(valid)}")
        if self.user_vector == "causal" and self.pooling == "batch":
            raise ConfigError("branch setting user_vector='causal' needs pooling='user': batch pooling "
                              "lets every position attend to the tokens picked for all positions of the "
                              "batch, later (future) positions included; set pooling=user (the corrected "
                              "protocol) or user_vector=window")
        if self.K < 1 or self.n_prototypes < 1:
            raise ConfigError(f"branch settings K={self.K} and n_prototypes={self.n_prototypes} must be >= 1")
        if self.tau <= 0:
            raise ConfigError(f"branch setting tau={self.tau} must be > 0")
        if self.d % self.n_heads:
            raise ConfigError(f"hidden size d={self.d} is not divisible by n_heads={self.n_heads}; "
                              "change one so that d / n_heads is an integer")

    @classmethod
    def for_protocol(cls, protocol: str, **overrides) -> "BranchConfig":
        """faithful = batch pooling + noise at evaluation (authors' code); corrected = neither."""
        if protocol not in ("faithful", "corrected"):
            raise ConfigError(f"protocol {protocol!r} is unknown; use faithful or corrected")
        faithful = protocol == "faithful"
        settings = {"pooling": "batch" if faithful else "user", "eval_noise": faithful}
        return cls(**{**settings, **overrides})


def masked_mean(h0: Tensor, seqs: Tensor) -> Tensor:
    """Mean of h0 over non-padding positions: (B, L, d), (B, L) -> (B, d)."""
    mask = (seqs > 0).unsqueeze(-1).to(h0.dtype)                  # (B, L, 1)
    return (h0 * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def prefix_means(h0: Tensor, seqs: Tensor) -> Tensor:
    """Causal user vectors: at each position the mean of h0 over the real positions up to and
    including it: (B, L, d), (B, L) -> (B, L, d)."""
    mask = (seqs > 0).unsqueeze(-1).to(h0.dtype)                  # (B, L, 1)
    return (h0 * mask).cumsum(1) / mask.cumsum(1).clamp(min=1.0)


def selected_weight(K: int, filter_grad: str) -> float:
    """Forward value of each straight-through weight (y_st = 1 at the picks): authors
    1/(K + 1e-8), which is exactly 1 at K = 1 in fp32; learn 1/K."""
    return 1.0 / (K + AUTHORS_EPS) if filter_grad == "authors" else 1.0 / K


def weight_gradient(grad_w: Tensor, K: int, filter_grad: str) -> Tensor:
    """dL/dy at the picks (B, K) from dL/dw (B, K). learn: w = y_st / K. authors: w_k = y_st_k / c
    with c = sum_j y_st_j + 1e-8 = K + 1e-8 (y_st = 1 forward), so dw_k/dy_j = [k = j]/c - 1/c^2."""
    if filter_grad == "learn":
        return grad_w / K
    c = K + AUTHORS_EPS
    return (grad_w - grad_w.sum(-1, keepdim=True) / c) / c


def straight_through_topk(scores: Tensor, K: int, tau: float = 1.0,
                          filter_grad: str = "authors") -> tuple[Tensor, Tensor]:
    """Top-K of y = softmax(scores / tau): ids (B, K) and straight-through weights (B, K).

    y_st = y_k - sg(y_k) + 1 is the authors' sg(onehot - y) + y at the picks (value 1, gradient
    via y); authors renormalise it, learn divides by K (see `selected_weight`). y_k =
    exp(logit_k - logsumexp(logits)) is y at the chosen ids without materialising y (same gradient
    as softmax + gather); under no_grad only the ids are computed (top-K(y) = top-K(scores)).
    """
    idx = scores.detach().topk(K, dim=-1).indices                         # (B, K)
    if not (torch.is_grad_enabled() and scores.requires_grad):
        return idx, scores.new_full(idx.shape, selected_weight(K, filter_grad))
    logits = scores / tau                                                 # (B, |V|)
    y_k = (logits.gather(-1, idx) - logits.logsumexp(-1, keepdim=True)).exp()  # (B, K)
    y_st = y_k - y_k.detach() + 1.0
    if filter_grad == "learn":
        return idx, y_st / K
    return idx, y_st / (y_st.sum(-1, keepdim=True) + AUTHORS_EPS)


def random_token_ids(rows: int, vocab: int, K: int, device: torch.device) -> Tensor:
    """K distinct token ids per row, uniform over the vocabulary, from torch's global RNG: (rows, K).
    A row that drew a repeat is drawn again (rejection: uniform over the K-sets)."""
    if K > vocab:
        raise ConfigError(f"random selection of K={K} distinct tokens from a vocabulary of {vocab}; "
                          "lower K below the vocabulary size")
    idx = torch.randint(vocab, (rows, K), device=device)
    while True:
        ordered = idx.sort(-1).values
        repeat = (ordered[:, 1:] == ordered[:, :-1]).any(-1)              # (rows,)
        if not repeat.any():
            return idx
        idx[repeat] = torch.randint(vocab, (int(repeat.sum()), K), device=device)


def cosine_scores(u_n: Tensor, proj_n: Tensor, block: int = 1024) -> Tensor:
    """u_n (B, d) @ proj_n.T (d, |V|) -> (B, |V|). On CPU without autograd, in blocks of `block`
    tokens whose output (B x block) stays in cache: 1.7x faster than one MKL call at B = 128, d = 64."""
    if u_n.device.type != "cpu" or (torch.is_grad_enabled() and (u_n.requires_grad or proj_n.requires_grad)):
        return u_n @ proj_n.T                                     # (out= does not support autograd)
    scores = u_n.new_empty(u_n.shape[0], proj_n.shape[0])
    for rows, out in zip(proj_n.split(block), scores.split(block, dim=1)):
        torch.mm(u_n, rows.T, out=out)
    return scores


def add_gumbel_noise_(scores: Tensor) -> Tensor:
    """scores + Gumbel(0, 1) in place, written scores - log(-log U) (one pass fewer than adding
    -log(-log U), same values). U = 0 gives -inf: never picked."""
    return scores.sub_(torch.rand_like(scores).log_().neg_().log_())


class FusedTokenFilter(torch.autograd.Function):
    """TokenFilter's training step with a hand-written backward (same values and gradients as
    autograd on `normalize(Linear(E))`, cosine scores, Gumbel noise, straight-through top-K, E[idx]).

    Why: autograd builds a zero-filled (|V|, D) gradient for the gather E[idx] and adds it to the
    projection's table gradient, and keeps several (B, |V|) temporaries for softmax/logsumexp.
    Here the table gradient is one matmul plus an index_add_, and the softmax enters the backward
    only through the two matmuls with the unnormalised probabilities p = exp((s - max) / tau)
    (row scalings are folded into the small (B, d) factors), so the backward makes no (B, |V|)
    elementwise pass. Inputs: u_n = normalize(u) (B, d), table (|V|, D), weight (d, D), bias (d,).
    """

    @staticmethod
    def forward(ctx, u_n, table, weight, bias, K: int, tau: float, noise: bool, filter_grad: str):
        norms, proj_n = normalised_linear(table, weight, bias)          # (|V|, 1), (|V|, d)
        scores = cosine_scores(u_n, proj_n)                              # (B, |V|)
        if noise:
            add_gumbel_noise_(scores)
        top, idx = scores.topk(K, dim=-1)                                # (B, K)
        # p = exp((s - max) / tau) in place, one pass for the shift and scale: y = p / p.sum()
        probs = torch.add(top[:, :1] / -tau, scores, alpha=1.0 / tau, out=scores).exp_()
        total = probs.sum(-1, keepdim=True)                              # (B, 1)
        ctx.save_for_backward(u_n, table, weight, proj_n, norms, probs, total, idx)
        ctx.K, ctx.tau, ctx.filter_grad = K, tau, filter_grad
        ctx.mark_non_differentiable(idx)
        return table[idx].mul_(selected_weight(K, filter_grad)), idx    # (B, K, D)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x, _grad_idx):
        u_n, table, weight, proj_n, norms, probs, total, idx = ctx.saved_tensors
        need_u, need_table, need_weight, need_bias = ctx.needs_input_grad[:4]
        # gradient of the scores: grad_s = coef * p + a at the chosen ids (never materialised)
        y_k = probs.gather(-1, idx) / total                              # (B, K)
        grad_w = (grad_x * table[idx]).sum(-1)                           # (B, K)
        a = weight_gradient(grad_w, ctx.K, ctx.filter_grad) * y_k / ctx.tau  # (B, K)
        coef = -a.sum(-1, keepdim=True) / total                          # (B, 1)
        grad_u = grad_proj = None
        if need_u:
            grad_u = (probs @ proj_n).mul_(coef) + (a.unsqueeze(-1) * proj_n[idx]).sum(1)  # (B, d)
        if need_table or need_weight or need_bias:
            grad_proj_n = (probs.T @ (coef * u_n)).index_add_(             # (|V|, d)
                0, idx.flatten(), (a.unsqueeze(-1) * u_n.unsqueeze(1)).flatten(0, 1))
            grad_proj = normalize_backward(grad_proj_n, proj_n, norms)
        grad_table = grad_weight = grad_bias = None
        if need_table:   # one (|V|, D) buffer: the projection's gradient, then the gathered rows
            grad_table = (grad_proj @ weight).index_add_(
                0, idx.flatten(), grad_x.flatten(0, 1), alpha=selected_weight(ctx.K, ctx.filter_grad))
        if need_weight:
            grad_weight = grad_proj.T @ table                            # (d, D)
        if need_bias:
            grad_bias = grad_proj.sum(0)
        return grad_u, grad_table, grad_weight, grad_bias, None, None, None, None


def normalised_linear(table: Tensor, weight: Tensor, bias: Tensor) -> tuple[Tensor, Tensor]:
    """Row norms (|V|, 1) of P = table @ weight^T + bias, and P / max(norm, eps) (|V|, d), in place."""
    proj = torch.addmm(bias, table, weight.T)                            # (|V|, d)
    norms = torch.linalg.vector_norm(proj, dim=-1, keepdim=True)
    return norms, proj.div_(norms.clamp_min(NORM_EPS))


def normalize_backward(grad_n: Tensor, proj_n: Tensor, norms: Tensor) -> Tensor:
    """Gradient through P_n = P / max(|P|, eps): (g - P_n <g, P_n>) / max(|P|, eps), in place on g
    (the radial part is absent where the norm was clamped, as in autograd)."""
    radial = torch.linalg.vecdot(grad_n, proj_n, dim=-1).unsqueeze(-1).masked_fill_(norms < NORM_EPS, 0.0)
    return grad_n.addcmul_(proj_n, radial, value=-1.0).div_(norms.clamp_min(NORM_EPS))


def sample_softmax_ids(u_n: Tensor, table: Tensor, linear: nn.Linear, K: int, proposals: int = 16) -> Tensor:
    """K distinct ids per row (B, K) with the law of top-K(s + Gumbel), s = cosine(u_n, normalize(
    linear(E))) (B, |V|): draws from softmax(s) without replacement (Gumbel-max, Plackett-Luce),
    without scoring the vocabulary.

    Rejection sampling: propose a uniform token j, accept it with probability exp(s_j - 1) (s <= 1,
    so <= 1), reject it if already chosen; the first accepted of i.i.d. proposals is a draw from
    softmax(s) over the remaining tokens. Acceptance is >= e^-2, so a row needs <= 7.4 proposals on
    average; each costs one projected row. Random numbers: torch's global RNG.
    """
    B, V = u_n.shape[0], table.shape[0]
    ids = torch.full((B, K), -1, dtype=torch.long, device=table.device)
    for k in range(K):
        todo = torch.arange(B, device=table.device)                  # rows still without pick k
        while todo.numel():
            j = torch.randint(V, (todo.numel(), proposals), device=table.device)          # (n, T)
            rows = F.normalize(linear(table[j.flatten()]), dim=-1).view(*j.shape, -1)    # (n, T, d)
            s = (rows * u_n[todo].unsqueeze(1)).sum(-1)                                   # (n, T)
            accept = torch.rand_like(s) < (s - 1.0).exp()
            accept &= ~(j.unsqueeze(-1) == ids[todo, :k].unsqueeze(1)).any(-1)         # without replacement
            hit = accept.any(-1)
            first = accept.to(torch.int8).argmax(-1)                 # the first accepted proposal
            ids[todo[hit], k] = j[hit, first[hit]]
            todo = todo[~hit]
    return ids


def changed_rows(table: Tensor, snapshot: Tensor, block: int = 1024) -> Tensor:
    """Indices (n,) of the rows where table (|V|, D) differs from snapshot. Blocks of `block` rows:
    torch.equal first (one pass, ~1.7x faster than ne + any), rows only in the blocks that differ."""
    parts = [torch.ne(rows, old).any(-1).nonzero().squeeze(-1) + start
             for start, rows, old in zip(range(0, table.shape[0], block), table.split(block), snapshot.split(block))
             if not torch.equal(rows, old)]
    return torch.cat(parts) if parts else table.new_zeros(0, dtype=torch.long)


class ProjectionCache:
    """normalize(Linear(E)) (|V|, d) kept across calls while no gradient can reach it.

    Before each use the table is compared with a snapshot of the one the cache was built from and
    only the rows that differ are recomputed (Adam keeps moving every row whose moments are
    non-zero, so changes are detected, not predicted); a changed weight, bias or table layout
    recomputes everything. Version counters are not used: fused Adam does not bump them.
    """

    def __init__(self):
        self.proj_n = self.table = self.weight = self.bias = None
        self.full_recomputes = 0       # counters, for tests and benchmarks
        self.rows_recomputed = 0

    def clear(self) -> None:
        """Free the cache (a learning step will change the projection anyway)."""
        self.proj_n = self.table = self.weight = self.bias = None

    @torch.no_grad()
    def get(self, table: Tensor, linear: nn.Linear) -> Tensor:
        """The normalised projection of `table` (|V|, D) by `linear`, up to date; always computed in
        the table's dtype (autocast off), so evaluation and training share one cache."""
        with torch.autocast(table.device.type, enabled=False):
            if self._projection_changed(table, linear):
                self._rebuild(table, linear)
            else:
                self._refresh_rows(table, linear)
        return self.proj_n

    def _projection_changed(self, table: Tensor, linear: nn.Linear) -> bool:
        if self.proj_n is None:
            return True
        pairs = ((self.table, table), (self.weight, linear.weight), (self.bias, linear.bias))
        same_layout = all(a.shape == b.shape and a.dtype == b.dtype and a.device == b.device for a, b in pairs)
        return not (same_layout and torch.equal(self.weight, linear.weight) and torch.equal(self.bias, linear.bias))

    def _rebuild(self, table: Tensor, linear: nn.Linear) -> None:
        self.proj_n = F.normalize(linear(table), dim=-1)                       # (|V|, d)
        self.table, self.weight, self.bias = table.clone(), linear.weight.clone(), linear.bias.clone()
        self.full_recomputes += 1

    def _refresh_rows(self, table: Tensor, linear: nn.Linear) -> None:
        rows = changed_rows(table, self.table)                                 # (n,)
        if rows.numel():
            fresh = table[rows]                                                # (n, D)
            self.proj_n[rows] = F.normalize(linear(fresh), dim=-1)
            self.table[rows] = fresh
            self.rows_recomputed += rows.numel()


class TokenFilter(nn.Module):
    """User-guided filtering for one LLM: picks K tokens per user from its table."""

    def __init__(self, dim: int, d: int):
        super().__init__()
        self.proj = nn.Linear(dim, d)                              # D_m -> d
        self.cache = ProjectionCache()

    def _projection_learns(self, table: Tensor) -> bool:
        """The projection or the table is trainable (a gradient could reach normalize(Linear(E)))."""
        return table.requires_grad or any(p.requires_grad for p in self.proj.parameters())

    def normalised_projection(self, table: Tensor) -> Tensor:
        """normalize(Linear(E)) (|V|, d) of the current weights, without gradient (cached)."""
        return self.cache.get(table, self.proj)

    def scores_get_gradient(self, u: Tensor, table: Tensor, K: int, filter_grad: str) -> bool:
        """A gradient reaches the scores in this call. Not under no_grad, not with the authors'
        weights at K = 1 (w is constant), not when nothing upstream of the scores learns."""
        if not torch.is_grad_enabled() or (filter_grad == "authors" and K == 1):
            return False
        return u.requires_grad or self._projection_learns(table)

    def forward(self, u: Tensor, table: Tensor, K: int, tau: float, noise: bool,
                filter_grad: str = "authors") -> tuple[Tensor, Tensor]:
        """u (B, d), table (|V|, D) -> tokens X (B, K, D), ids (B, K)."""
        u_n = F.normalize(u, dim=-1)                                         # (B, d)
        if not self.scores_get_gradient(u, table, K, filter_grad):
            return self._pick_without_gradient(u_n, table, K, noise, filter_grad)
        learns = self._projection_learns(table)
        if learns and not torch.is_autocast_enabled(table.device.type):
            self.cache.clear()
            return FusedTokenFilter.apply(u_n, table, self.proj.weight, self.proj.bias, K, tau, noise, filter_grad)
        # autograd path: autocast, or only u learns (projection and table frozen: cached)
        proj_n = F.normalize(self.proj(table), dim=-1) if learns else self.cache.get(table, self.proj)
        scores = cosine_scores(u_n, proj_n)                                  # (B, |V|)
        if noise:
            add_gumbel_noise_(scores)
        idx, w = straight_through_topk(scores, K, tau, filter_grad)
        return w.unsqueeze(-1) * table[idx], idx                             # (B, K, D)

    def _pick_without_gradient(self, u_n: Tensor, table: Tensor, K: int, noise: bool,
                               filter_grad: str) -> tuple[Tensor, Tensor]:
        """Ids drawn from softmax(s) (noise) or top-K of s from the cached projection (no noise);
        X = w E[idx] with w constant (the table still gets the gradient of its gathered rows)."""
        with torch.no_grad(), torch.autocast(table.device.type, enabled=False):
            u_n = u_n.detach().to(table.dtype)
            if noise:
                idx = sample_softmax_ids(u_n, table, self.proj, K)                     # (B, K)
            else:
                idx = cosine_scores(u_n, self.normalised_projection(table)).topk(K, dim=-1).indices
        return table[idx] * selected_weight(K, filter_grad), idx


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


def default_consensus_group(names: list[str], dims: list[int]) -> list[int]:
    """The largest set of LLMs sharing a token dimension (ties: the first in order)."""
    groups: dict[int, list[int]] = {}
    for m, dim in enumerate(dims):
        groups.setdefault(dim, []).append(m)
    best = max(groups.values(), key=len, default=[])
    if len(best) < 2:
        listing = ", ".join(f"{n} (D={dim})" for n, dim in zip(names, dims))
        raise ConfigError(f"no two LLMs share a token dimension, so the consensus expert cannot be "
                          f"formed: {listing or 'no LLMs'}; add an LLM of the same D as another, "
                          "or use variant mltfr-noconsensus")
    return best


def check_consensus_group(group: list[int], names: list[str], dims: list[int]) -> list[int]:
    """A valid group has >= 2 distinct known LLMs, all of one token dimension."""
    if any(not 0 <= m < len(dims) for m in group):
        raise ConfigError(f"consensus_group {group} refers to LLMs outside 0..{len(dims) - 1} ({names})")
    listing = ", ".join(f"{names[m]} (D={dims[m]})" for m in group)
    if len(set(group)) < 2:
        raise ConfigError(f"consensus group has fewer than two LLMs: [{listing}]; name at least two "
                          "LLMs of the same token dimension, or use variant mltfr-noconsensus")
    if len({dims[m] for m in group}) > 1:
        raise ConfigError(f"consensus group mixes token dimensions: [{listing}]; keep only LLMs of "
                          "one D in consensus_group (their experts must have the same shapes)")
    return list(group)


def resolve_consensus_group(cfg: BranchConfig, dims: list[int]) -> list[int]:
    """cfg.consensus_group checked, or the default largest same-D group."""
    names = cfg.names or [f"llm{m}" for m in range(len(dims))]
    if cfg.consensus_group is None:
        return default_consensus_group(names, dims)
    return check_consensus_group(cfg.consensus_group, names, dims)


class MltfrBranch(nn.Module):
    """The LLM branch: (h0 (B, L, d), seqs (B, L)) -> (B, L, d), zero at padding positions."""

    def __init__(self, cfg: BranchConfig, tables: list[Tensor]):
        super().__init__()
        if not tables:
            raise ConfigError("the LLM branch needs at least one token table; variant base has none")
        self.cfg = cfg
        self.names = list(cfg.names) or [f"llm{m}" for m in range(len(tables))]
        self.dims = [self._register_table(m, t) for m, t in enumerate(tables)]
        self.selectors = nn.ModuleList(
            TokenFilter(t.shape[1], cfg.d) if cfg.filtering else PrototypeMap(t.shape[0], cfg.n_prototypes)
            for t in tables)
        self.experts = nn.ModuleList(self._expert(dim) for dim in self.dims)
        self.router = nn.Linear(cfg.d, len(tables)) if cfg.router == "softmax" else None
        self.shared: CrossAttentionExpert | None = None   # consensus expert (build_branch), frozen
        self.group: list[int] = []
        self.record_interp = True                           # the Fisher pass switches it off
        self.diagnostics = None   # training diagnostics (mltfr.models.diagnostics), set by the trainer
        self.reset_interp()

    def _expert(self, dim: int) -> CrossAttentionExpert:
        c = self.cfg
        return CrossAttentionExpert(c.d, dim, c.n_heads, c.attn_dropout, c.out_dropout)

    def _register_table(self, m: int, table: Tensor) -> int:
        """Trainable: a Parameter (a copy, so the caller's tensor is never trained in place).
        Frozen: a non-persistent buffer, so checkpoints do not carry the table."""
        if table.dim() != 2:
            raise ConfigError(f"token table {m} ({self.names[m]}) has shape {tuple(table.shape)}; "
                              "expected a 2-D (|V|, D) tensor")
        table = table.detach().float()
        if self.cfg.trainable_tables:
            self.register_parameter(f"table{m}", nn.Parameter(table.clone()))
        else:
            self.register_buffer(f"table{m}", table, persistent=False)
        return table.shape[1]

    def table(self, m: int) -> Tensor:
        return getattr(self, f"table{m}")

    def token_sets(self, h0: Tensor, seqs: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        """Per LLM the tokens each query attends to and the chosen ids: window (B or 1, T, D_m);
        causal (N, K, D_m), one set per real position (row-major), prototypes (1, P, D_m)."""
        c = self.cfg
        u = masked_mean(h0, seqs) if c.user_vector == "window" else prefix_means(h0, seqs)[seqs > 0]
        tokens, ids = [], []                                         # u: (B, d) or (N, d)
        for m, selector in enumerate(self.selectors):
            if not c.filtering:
                tokens.append(selector(self.table(m)))              # (1, P, D)
                ids.append(None)
                continue
            x, idx = self.select(m, u)                              # (B or N, K, D)
            if self.training and self.diagnostics is not None:
                self.diagnostics.record_filter(m, u, self.selectors[m], self.table(m), idx)
            tokens.append(x.reshape(1, -1, x.shape[-1]) if c.pooling == "batch" else x)
            ids.append(idx)
        return tokens, ids

    def select(self, m: int, u: Tensor) -> tuple[Tensor, Tensor]:
        """K tokens (R, K, D_m) and their ids (R, K) of LLM m for each user vector u (R, d)."""
        c, table = self.cfg, self.table(m)
        if c.selection == "random":
            idx = random_token_ids(u.shape[0], table.shape[0], c.K, table.device)
            return table[idx] * (1.0 / c.K), idx
        selector, noise = self.selectors[m], self.training or c.eval_noise
        pick = partial(selector, table=table, K=c.K, tau=c.tau, noise=noise, filter_grad=c.filter_grad)
        rows = max(1, SCORE_ELEMENTS // table.shape[0])
        learns = selector.scores_get_gradient(u, table, c.K, c.filter_grad)
        if c.user_vector == "window" or u.shape[0] <= rows or (noise and not learns):  # (the sampler
            return pick(u)                                                # scores no vocabulary)
        # causal: B*L user vectors, scored `rows` at a time; where the scores get a gradient each chunk
        # is recomputed in the backward (same RNG state) rather than keeping its (rows, |V|) softmax
        parts = [checkpoint(pick, part, use_reentrant=False) if learns else pick(part) for part in u.split(rows)]
        return torch.cat([x for x, _ in parts]), torch.cat([idx for _, idx in parts])

    def queries(self, h0: Tensor, seqs: Tensor):
        """The experts' queries and the map of their outputs back to (B, L, d). window: h0 itself.
        causal: one query per real position (N, 1, d), which attends to that position's own tokens;
        outputs are scattered back, zeros at padding."""
        if self.cfg.user_vector == "window":
            return h0, lambda y: y
        B, L, d = h0.shape
        real = (seqs > 0).flatten().nonzero().squeeze(-1)               # (N,), row-major as u

        def place(y: Tensor) -> Tensor:                                  # (N, 1, d) -> (B, L, d)
            return y.new_zeros(B * L, d).index_copy(0, real, y[:, 0]).view(B, L, d)
        return h0.flatten(0, 1)[real].unsqueeze(1), place

    def gates(self, h0: Tensor) -> Tensor:
        """Router weights (B, L, M): softmax per position, or uniform 1/M."""
        M = len(self.experts)
        if self.router is None:
            return h0.new_full((*h0.shape[:2], M), 1.0 / M)
        gates = torch.softmax(self.router(h0), dim=-1)
        # twice: weights flattened towards 1/M (at most e-fold apart), as in the authors' BERT4Rec/FMLP-Rec
        return torch.softmax(gates, dim=-1) if self.cfg.router_softmax_twice else gates

    def forward(self, h0: Tensor, seqs: Tensor) -> Tensor:
        tokens, ids = self.token_sets(h0, seqs)
        queries, place = self.queries(h0, seqs)
        gates = self.gates(h0)                                          # (B, L, M)
        o = sum(gates[..., m:m + 1] * place(expert(queries, x))
                for m, (expert, x) in enumerate(zip(self.experts, tokens)))
        if self.shared is not None:
            consensus = torch.stack([tokens[m] for m in self.group]).mean(0)  # (B, 1 or N, T, D)
            o = o + self.cfg.lambda_s * place(self.shared(queries, consensus))
        if not self.training and self.record_interp:
            self._record(gates, ids, seqs)
        if self.training and self.diagnostics is not None:
            self.diagnostics.record_router(gates, seqs)
        return o * (seqs > 0).unsqueeze(-1).to(o.dtype)

    def train(self, mode: bool = True) -> "MltfrBranch":
        """nn.Module.train, except that the frozen consensus expert stays in eval mode (no dropout):
        the authors call .eval() on it in every forward."""
        super().train(mode)
        if self.shared is not None:
            self.shared.eval()
        return self

    def set_shared(self, state: dict[str, Tensor], group: list[int]) -> None:
        """Add the consensus expert of `group` with weights `state`, frozen (requires_grad False,
        eval mode): round 1 a random copy of the first group expert, round 2 the merged expert."""
        group = check_consensus_group(group, self.names, self.dims)
        shared = self._expert(self.dims[group[0]])
        try:
            shared.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"the merged expert does not fit the consensus group "
                              f"{[self.names[m] for m in group]} (D={self.dims[group[0]]}): {err}; "
                              "rerun the Fisher step with the same LLMs and d") from None
        self.shared = shared.to(self.table(0).device).requires_grad_(False).eval()
        self.group = group

    def reset_interp(self) -> None:
        """Zero the evaluation accumulators (router weight per LLM, selected-token counts)."""
        self._router_sum = torch.zeros(len(self.experts), dtype=torch.float64)
        self._positions = 0
        self._token_counts = [torch.zeros(self.table(m).shape[0], dtype=torch.int64)
                              for m in range(len(self.experts))]

    @torch.no_grad()
    def _record(self, gates: Tensor, ids: list[Tensor | None], seqs: Tensor) -> None:
        valid = seqs > 0                                                 # (B, L)
        self._router_sum += gates[valid].sum(0).double().cpu()
        self._positions += int(valid.sum())
        for counts, idx in zip(self._token_counts, ids):
            if idx is not None:
                counts += torch.bincount(idx.flatten().cpu(), minlength=counts.numel())

    def interp_stats(self, top: int = 20) -> dict:
        """Router mean weight per LLM over non-padding positions; the `top` most chosen token ids."""
        weight = self._router_sum / max(self._positions, 1)
        tops = {}
        for name, counts in zip(self.names, self._token_counts):
            values, ids = counts.topk(min(top, counts.numel()))
            tops[name] = [[int(i), int(v)] for i, v in zip(ids, values) if v > 0]
        return {"llms": self.names, "n_positions": self._positions,
                "router_weight": {n: float(w) for n, w in zip(self.names, weight)}, "top_tokens": tops}


def build_branch(cfg: BranchConfig, tables: list[Tensor],
                 shared_state: dict[str, Tensor] | None = None) -> MltfrBranch:
    """The branch over `tables` (one (|V|, D) tensor per LLM, in cfg.names order).

    A consensus variant (consensus != "none") always carries a frozen consensus expert, added with
    lambda_s. Round 1 (shared_state None): as in the authors' code, a copy of the first group
    expert taken at its random init. Round 2: the merged expert (see mltfr.models.fisher).
    """
    if cfg.names and len(cfg.names) != len(tables):
        raise ConfigError(f"{len(tables)} token tables given for {len(cfg.names)} LLMs {cfg.names}")
    branch = MltfrBranch(cfg, tables)
    if cfg.consensus == "none":
        if shared_state is not None:
            raise ConfigError("a merged consensus expert was given but consensus is 'none' for this "
                              "variant; drop the merged-expert file or use a variant with consensus")
        return branch
    group = resolve_consensus_group(cfg, branch.dims)
    if shared_state is None:   # round 1: the random init of the first group expert, copied
        shared_state = branch.experts[group[0]].state_dict()
    branch.set_shared(shared_state, group)
    return branch


def attach(model: nn.Module, branch: MltfrBranch | None) -> nn.Module:
    """Set `model.branch` (the backbone adds it after its first block); returns the model."""
    if branch is not None and getattr(model, "d", branch.cfg.d) != branch.cfg.d:
        raise ConfigError(f"branch hidden size d={branch.cfg.d} differs from the backbone's d={model.d}; "
                          "build the branch with BranchConfig(d=model.d)")
    model.branch = branch
    return model
