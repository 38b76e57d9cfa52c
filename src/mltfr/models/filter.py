"""User-guided token filtering for one LLM (`TokenFilter`): pick K tokens per user vector from
the LLM's token table, with its fused training kernel, its no-gradient sampler and its cache.

Filter weights (`BranchConfig.filter_grad`):
- "authors" (the default under both protocols): the renormalised weights
  w = y_st[idx] / (sum_k y_st[idx_k] + 1e-8), as in the authors' code. Forward value 1/(K + 1e-8), exactly 1 at K = 1 in fp32. At K = 1 the weight's
  gradient is zero, so the projection Linear_m, the scores and u get no gradient and the table
  gets gradient only at the selected rows (through X). At K > 1 the gradient into y at pick j is
  (g_j - sum_k g_k / c) / c, c = K + 1e-8, g_k = <dL/dX_k, E[idx_k]>: it sums to ~0 over the picks.
- "learn" (a variant, not the authors' method): w = (y_k - sg(y_k) + 1) / K, forward 1/K,
  gradient 1/K into y at the picks, no renormalisation, so the projection learns.
Logit scale (`BranchConfig.score_scale`, c): the scores are c * cos(u, P), so the training pick
is drawn from softmax(c s); c = 1 is the authors' (a near-uniform pick over tens of thousands of
tokens), the sharp filter sets c = 50 (docs/method.md, "The sharp filter").
Controls: `selection="random"` draws K tokens uniformly per user (no user signal);
`user_vector="causal"` uses at position t the mean of h0 over the real positions <= t, so each
position picks its own K tokens and attends only to them (needs user pooling).

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
by `ProjectionCache`, which recomputes only the table rows that changed since it was built (at
K = 1 by `cosine_argmax`, block by block, without the (B, |V|) scores).
Measured step times: docs/benchmarks.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mltfr.errors import ConfigError

NORM_EPS = 1e-12   # F.normalize's eps: a row with a smaller norm is divided by eps instead
AUTHORS_EPS = 1e-8  # the authors' renormalisation: w = y_st / (sum y_st + 1e-8)


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
    tokens whose output (B x block) stays in cache (faster than one MKL call: docs/benchmarks.md)."""
    if u_n.device.type != "cpu" or (torch.is_grad_enabled() and (u_n.requires_grad or proj_n.requires_grad)):
        return u_n @ proj_n.T                                     # (out= does not support autograd)
    scores = u_n.new_empty(u_n.shape[0], proj_n.shape[0])
    for rows, out in zip(proj_n.split(block), scores.split(block, dim=1)):
        torch.mm(u_n, rows.T, out=out)
    return scores


def cosine_argmax(u_n: Tensor, proj_n: Tensor, block: int = 512) -> Tensor:
    """argmax_j u_n . proj_n[j] per row: (B,), the first maximal index. topk(1), which it replaces
    at evaluation, may return another of tied ids; ties come from equal rows (zero rows, duplicate
    tokens), so the picked rows are the same.

    On CPU without the (B, |V|) scores: each block of `block` tokens is scored into one buffer that
    stays in cache and only its row maxima are kept (a later block wins only when strictly
    greater), ~2x faster than `cosine_scores` + topk at evaluation sizes (docs/benchmarks.md)."""
    if u_n.device.type != "cpu":
        return cosine_scores(u_n, proj_n).topk(1, dim=-1).indices.squeeze(-1)
    best = u_n.new_full((u_n.shape[0],), float("-inf"))                      # (B,)
    arg = torch.zeros(u_n.shape[0], dtype=torch.long, device=u_n.device)     # (B,)
    buffer = u_n.new_empty(u_n.shape[0], min(block, proj_n.shape[0]))        # (B, block)
    for start, rows in zip(range(0, proj_n.shape[0], block), proj_n.split(block)):
        scores = buffer[:, :rows.shape[0]]
        torch.mm(u_n, rows.T, out=scores)
        value, index = scores.max(-1)
        better = value > best
        best = torch.where(better, value, best)
        arg = torch.where(better, index + start, arg)
    return arg


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
    elementwise pass. Inputs: u_n = c * normalize(u) (B, d) (c the logit scale), table (|V|, D),
    weight (d, D), bias (d,).
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
    torch.equal first (one pass, faster than ne + any: docs/benchmarks.md), rows only in the blocks
    that differ."""
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

    def get(self, table: Tensor, linear: nn.Linear) -> Tensor:
        """The normalised projection of `table` (|V|, D) by `linear`, up to date; always computed in
        the table's dtype (autocast off), so evaluation and training share one cache. Never built as
        inference tensors: a cache an evaluation builds (torch.inference_mode; first after a resumed
        epoch with no diagnostics step left) is refreshed in place by the training after it."""
        with torch.inference_mode(False), torch.no_grad(), torch.autocast(table.device.type, enabled=False):
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
    """User-guided filtering for one LLM: picks K tokens per user from its table.

    The scores are c * cos(u, P) with a fixed logit scale c (`BranchConfig.score_scale`; 1 = the
    authors' plain cosine): the training pick is a draw from softmax(c s), so a larger c makes it
    choose (the sharp filter, docs/method.md)."""

    def __init__(self, dim: int, d: int, score_scale: float = 1.0):
        super().__init__()
        self.proj = nn.Linear(dim, d)                              # D_m -> d
        self.cache = ProjectionCache()
        self.scale = float(score_scale)

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
        u_c = u_n * self.scale            # (B, d): u_c . P_n = c cos(u, P), the scores of every path
        learns = self._projection_learns(table)
        if learns and not torch.is_autocast_enabled(table.device.type):
            self.cache.clear()
            return FusedTokenFilter.apply(u_c, table, self.proj.weight, self.proj.bias, K, tau, noise, filter_grad)
        # autograd path: autocast, or only u learns (projection and table frozen: cached)
        proj_n = F.normalize(self.proj(table), dim=-1) if learns else self.cache.get(table, self.proj)
        scores = cosine_scores(u_c, proj_n)                                  # (B, |V|)
        if noise:
            add_gumbel_noise_(scores)
        idx, w = straight_through_topk(scores, K, tau, filter_grad)
        return w.unsqueeze(-1) * table[idx], idx                             # (B, K, D)

    def _pick_without_gradient(self, u_n: Tensor, table: Tensor, K: int, noise: bool,
                               filter_grad: str) -> tuple[Tensor, Tensor]:
        """Ids drawn from softmax(c s) (noise) or top-K of s from the cached projection (no noise);
        X = w E[idx] with w constant (the table still gets the gradient of its gathered rows).
        The rejection sampler needs s <= 1 (c = 1); a sharper law is drawn with Gumbel noise."""
        with torch.no_grad(), torch.autocast(table.device.type, enabled=False):
            u_n = u_n.detach().to(table.dtype)
            if noise and self.scale == 1.0:
                idx = sample_softmax_ids(u_n, table, self.proj, K)                     # (B, K)
            elif not noise and K == 1:   # the noiseless pick at evaluation
                idx = cosine_argmax(u_n * self.scale, self.normalised_projection(table)).unsqueeze(-1)
            else:
                scores = cosine_scores(u_n * self.scale, self.normalised_projection(table))  # (B, |V|)
                idx = (add_gumbel_noise_(scores) if noise else scores).topk(K, dim=-1).indices
        return table[idx] * selected_weight(K, filter_grad), idx
