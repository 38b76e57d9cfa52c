"""The MLTFR LLM branch: user-guided token filtering, one expert per LLM, a router, consensus.

MLTFR (Multi-LLM Token Filtering and Routing, arXiv 2604.18200) adds one vector per position
to an ID-based backbone after its first block, computed from the *token embedding tables* of
several LLMs (no text, no LLM forward pass). See ../shared/docs/method.md for the method and
the faithful/corrected protocols; every study variant is a `BranchConfig` of this one module.

    u      = masked mean of h0                                     (B, d)
    s      = cosine(u, Linear_m(E_m))                              (B, |V_m|)
    y      = softmax((s + Gumbel) / tau);  idx = top-K(y)
    X_m    = w * E_m[idx], w straight-through (forward 1/K)        (B, K, D_m)
    y_m    = CrossAttention_m(h0 -> X_m)                           (B, L, d)
    o      = sum_m router_m(h0) * y_m  (+ lambda_s * shared(h0 -> mean_G X_m))

Deviations from the authors' code, each deliberate:
- the branch output is zeroed at padding positions (so padding never leaks into later blocks);
- the straight-through weight is `(y_k - sg(y_k) + 1) / K`: forward value 1/K, gradient 1/K
  into y at the selected tokens (renormalising by the sum would cancel the gradient at K = 1).
Consequence of the method, not a choice: with user pooling and K = 1 each position attends to a
single key, so the attention weight is 1 and the expert's query/key weights get no gradient
(their Fisher is zero and the Fisher merge sets them to 0, which changes nothing there).

Cost: filtering projects the whole vocabulary (|V| x D x d multiply-adds) at every training
step, plus as much again for the projection's gradient and, with trainable tables, for the
table's gradient; add the (B, |V|) work: cosine scores, Gumbel noise (a uniform draw and two
logs), top-K, one exp, two backward matmuls. A training step runs it as `FusedTokenFilter`, whose
hand-written backward gives the table one (|V|, D) gradient buffer (autograd zero-fills a second
one for the gather E[idx] and adds the two) and makes no elementwise (B, |V|) pass. Measured on
CPU, 1 thread, B = 128, d = 64, full-length windows (no padding), one 30522 x 384 table: forward
+ backward of the filter 171 -> 123 ms; SASRec step of filter-minilm 300 -> 230 ms (base 70 ms),
of the four offline tables (Gemma-3 262144 x 640 among them) 4.7 -> 2.8 s. Page faults on the
fresh (|V|, D) gradient are a third of its matmul; THP_MEM_ALLOC_ENABLE=1 (huge pages) cut the filter-minilm step by 20 ms.
The projected (and normalised) table is cached only when no gradient can flow into it (evaluation
under `torch.no_grad`, or projection and table both frozen), keyed on the tensors' version
counters, which optimizer steps and `load_state_dict` bump, so a stale cache is never used.
Caching during training would be wrong: the projection is learnable even when the table is frozen.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mltfr.errors import ConfigError

POOLINGS = ("user", "batch")
ROUTERS = ("softmax", "mean")
CONSENSUS = ("none", "fisher", "mean")
NORM_EPS = 1e-12   # F.normalize's eps: a row with a smaller norm is divided by eps instead


@dataclass
class BranchConfig:
    """Every setting of the LLM branch; each study variant is one of these."""

    d: int = 64                  # (int) backbone hidden size; the branch outputs (B, L, d)
    K: int = 1                   # (int) tokens kept per user and LLM (authors: 1 SASRec/BERT4Rec, 10 FMLP-Rec)
    tau: float = 0.5             # (float) Gumbel-softmax temperature
    pooling: str = "user"        # "user" (corrected: each user attends to its own K) | "batch" (faithful: all B*K pooled)
    eval_noise: bool = False     # (bool) Gumbel noise also at evaluation (faithful True, corrected False)
    filtering: bool = True       # (bool) user-guided filtering; False = P learned prototype tokens (direct injection)
    n_prototypes: int = 50       # (int) P, prototype tokens per LLM when filtering is off (Time-LLM style)
    router: str = "softmax"      # "softmax" (dense per-position router) | "mean" (uniform 1/M, ablation)
    consensus: str = "none"      # merge for the round-2 consensus expert: "none" | "fisher" | "mean"
    lambda_s: float = 0.01       # (float) weight of the consensus expert (0.01 SASRec, 0.2 BERT4Rec, 0.05 FMLP-Rec)
    consensus_group: list[int] | None = None  # indices of the LLMs merged (same D); None = largest same-D set
    trainable_tables: bool = True  # (bool) fine-tune the token tables (published) or keep them frozen
    n_heads: int = 4             # (int) attention heads per expert, head size d / n_heads
    attn_dropout: float = 0.1    # (float) dropout on the expert's attention weights
    out_dropout: float = 0.1     # (float) dropout on the expert's output
    names: list[str] = field(default_factory=list)  # LLM names, for messages and interpretability

    def __post_init__(self):
        for key, value, valid in (("pooling", self.pooling, POOLINGS), ("router", self.router, ROUTERS),
                                  ("consensus", self.consensus, CONSENSUS)):
            if value not in valid:
                raise ConfigError(f"branch setting {key}={value!r} is not valid; use one of {', '.join(valid)}")
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


def straight_through_topk(scores: Tensor, K: int, tau: float = 1.0) -> tuple[Tensor, Tensor]:
    """Top-K of y = softmax(scores / tau): ids (B, K) and weights (B, K), forward 1/K, gradient via y.

    y_k = exp(logit_k - logsumexp(logits)) is y at the chosen ids without materialising y (same
    gradient as softmax + gather); under no_grad only the ids are computed (top-K(y) = top-K(scores)).
    """
    idx = scores.detach().topk(K, dim=-1).indices                         # (B, K)
    if not (torch.is_grad_enabled() and scores.requires_grad):
        return idx, scores.new_full(idx.shape, 1.0 / K)
    logits = scores / tau                                                 # (B, |V|)
    y_k = (logits.gather(-1, idx) - logits.logsumexp(-1, keepdim=True)).exp()  # (B, K)
    return idx, (y_k - y_k.detach() + 1.0) / K


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
    def forward(ctx, u_n, table, weight, bias, K: int, tau: float, noise: bool):
        norms, proj_n = normalised_linear(table, weight, bias)          # (|V|, 1), (|V|, d)
        scores = cosine_scores(u_n, proj_n)                              # (B, |V|)
        if noise:
            add_gumbel_noise_(scores)
        top, idx = scores.topk(K, dim=-1)                                # (B, K)
        # p = exp((s - max) / tau) in place, one pass for the shift and scale: y = p / p.sum()
        probs = torch.add(top[:, :1] / -tau, scores, alpha=1.0 / tau, out=scores).exp_()
        total = probs.sum(-1, keepdim=True)                              # (B, 1)
        ctx.save_for_backward(u_n, table, weight, proj_n, norms, probs, total, idx)
        ctx.K, ctx.tau = K, tau
        ctx.mark_non_differentiable(idx)
        return table[idx].mul_(1.0 / K), idx                             # (B, K, D): w = 1/K

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x, _grad_idx):
        u_n, table, weight, proj_n, norms, probs, total, idx = ctx.saved_tensors
        need_u, need_table, need_weight, need_bias = ctx.needs_input_grad[:4]
        # gradient of the scores: grad_s = coef * p + a at the chosen ids (never materialised)
        y_k = probs.gather(-1, idx) / total                              # (B, K)
        a = (grad_x * table[idx]).sum(-1) * y_k / (ctx.K * ctx.tau)      # (B, K)
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
                0, idx.flatten(), grad_x.flatten(0, 1), alpha=1.0 / ctx.K)
        if need_weight:
            grad_weight = grad_proj.T @ table                            # (d, D)
        if need_bias:
            grad_bias = grad_proj.sum(0)
        return grad_u, grad_table, grad_weight, grad_bias, None, None, None


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


class TokenFilter(nn.Module):
    """User-guided filtering for one LLM: picks K tokens per user from its table."""

    def __init__(self, dim: int, d: int):
        super().__init__()
        self.proj = nn.Linear(dim, d)                              # D_m -> d
        self._cache: tuple | None = None

    def _learns_projection(self, table: Tensor) -> bool:
        """A gradient can reach the projection or the table in this call."""
        return torch.is_grad_enabled() and (
            table.requires_grad or any(p.requires_grad for p in self.proj.parameters()))

    def normalised_projection(self, table: Tensor) -> Tensor:
        """F.normalize(Linear(E)) (|V|, d): one matmul; cached while no gradient can use it."""
        if self._learns_projection(table):
            self._cache = None
            return F.normalize(self.proj(table), dim=-1)
        key = (table.data_ptr(), table._version, table.device, self.proj.weight._version,
               self.proj.bias._version, self.proj.weight.data_ptr())
        if self._cache is None or self._cache[0] != key:
            with torch.no_grad():
                self._cache = (key, F.normalize(self.proj(table), dim=-1))
        return self._cache[1]

    def forward(self, u: Tensor, table: Tensor, K: int, tau: float, noise: bool) -> tuple[Tensor, Tensor]:
        """u (B, d), table (|V|, D) -> tokens X (B, K, D), ids (B, K)."""
        u_n = F.normalize(u, dim=-1)                                         # (B, d)
        if self._learns_projection(table) and not torch.is_autocast_enabled(table.device.type):
            self._cache = None
            return FusedTokenFilter.apply(u_n, table, self.proj.weight, self.proj.bias, K, tau, noise)
        # autograd path: evaluation (cached projection), frozen projection and table, autocast
        scores = cosine_scores(u_n, self.normalised_projection(table))      # (B, |V|)
        if noise:
            add_gumbel_noise_(scores)
        idx, w = straight_through_topk(scores, K, tau)
        return w.unsqueeze(-1) * table[idx], idx                  # (B, K, D)


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
        self.shared: CrossAttentionExpert | None = None   # round 2 only, frozen
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
        """Per LLM the tokens every sequence attends to, (B or 1, T, D_m), and the chosen ids."""
        c, u = self.cfg, masked_mean(h0, seqs)                      # (B, d)
        noise = self.training or c.eval_noise
        tokens, ids = [], []
        for m, selector in enumerate(self.selectors):
            if not c.filtering:
                tokens.append(selector(self.table(m)))              # (1, P, D)
                ids.append(None)
                continue
            x, idx = selector(u, self.table(m), c.K, c.tau, noise)  # (B, K, D)
            if self.training and self.diagnostics is not None:
                self.diagnostics.record_filter(m, u, selector, self.table(m), idx)
            tokens.append(x.reshape(1, -1, x.shape[-1]) if c.pooling == "batch" else x)
            ids.append(idx)
        return tokens, ids

    def gates(self, h0: Tensor) -> Tensor:
        """Router weights (B, L, M): softmax per position, or uniform 1/M."""
        M = len(self.experts)
        if self.router is None:
            return h0.new_full((*h0.shape[:2], M), 1.0 / M)
        return torch.softmax(self.router(h0), dim=-1)

    def forward(self, h0: Tensor, seqs: Tensor) -> Tensor:
        tokens, ids = self.token_sets(h0, seqs)
        gates = self.gates(h0)                                          # (B, L, M)
        o = sum(gates[..., m:m + 1] * expert(h0, x) for m, (expert, x) in enumerate(zip(self.experts, tokens)))
        if self.shared is not None:
            consensus = torch.stack([tokens[m] for m in self.group]).mean(0)  # (B or 1, T, D)
            o = o + self.cfg.lambda_s * self.shared(h0, consensus)
        if not self.training and self.record_interp:
            self._record(gates, ids, seqs)
        if self.training and self.diagnostics is not None:
            self.diagnostics.record_router(gates, seqs)
        return o * (seqs > 0).unsqueeze(-1).to(o.dtype)

    def set_shared(self, state: dict[str, Tensor], group: list[int]) -> None:
        """Round 2: add the merged expert of `group`, frozen (requires_grad False)."""
        group = check_consensus_group(group, self.names, self.dims)
        shared = self._expert(self.dims[group[0]])
        try:
            shared.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"the merged expert does not fit the consensus group "
                              f"{[self.names[m] for m in group]} (D={self.dims[group[0]]}): {err}; "
                              "rerun the Fisher step with the same LLMs and d") from None
        self.shared = shared.to(self.table(0).device).requires_grad_(False)
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

    Round 1: shared_state None. Round 2: the merged expert (see mltfr.models.fisher), added frozen.
    """
    if cfg.names and len(cfg.names) != len(tables):
        raise ConfigError(f"{len(tables)} token tables given for {len(cfg.names)} LLMs {cfg.names}")
    branch = MltfrBranch(cfg, tables)
    if shared_state is not None:
        if cfg.consensus == "none":
            raise ConfigError("a merged consensus expert was given but consensus is 'none' for this "
                              "variant; drop the merged-expert file or use a variant with consensus")
        branch.set_shared(shared_state, resolve_consensus_group(cfg, branch.dims))
    return branch


def attach(model: nn.Module, branch: MltfrBranch | None) -> nn.Module:
    """Set `model.branch` (the backbone adds it after its first block); returns the model."""
    if branch is not None and getattr(model, "d", branch.cfg.d) != branch.cfg.d:
        raise ConfigError(f"branch hidden size d={branch.cfg.d} differs from the backbone's d={model.d}; "
                          "build the branch with BranchConfig(d=model.d)")
    model.branch = branch
    return model
