"""The MLTFR LLM branch: user-guided token filtering, one expert per LLM, a router, consensus.

MLTFR (Multi-LLM Token Filtering and Routing, arXiv 2604.18200) adds one vector per position
to an ID-based backbone after its first block, computed from the *token embedding tables* of
several LLMs (no text, no LLM forward pass). See docs/method.md for the method and the
faithful/corrected protocols; every study variant is a `BranchConfig` of this one module.

    u      = masked mean of h0                                     (B, d)
    s      = c * cosine(u, Linear_m(E_m)),  c = 1 (50: sharp)      (B, |V_m|)
    y      = softmax((s + Gumbel) / tau);  idx = top-K(y);  y_st = sg(onehot(idx) - y) + y
    w      = y_st[idx] / (sum_k y_st[idx_k] + 1e-8)                (B, K)
    X_m    = w * E_m[idx]                                          (B, K, D_m)
    y_m    = CrossAttention_m(h0 -> X_m)                           (B, L, d)
    o      = sum_m router_m(h0) * y_m  (+ lambda_s * shared(h0 -> mean_G X_m))

Filter weights, the logit scale c, the random/causal controls and the filter's cost:
mltfr.models.filter; the positive control's lookup pick (the row of the window's own user, whose
id the model's users_of hands over, mltfr.models.base): docs/method.md.

Deviation from the authors' code, deliberate: the branch output is zeroed at padding positions
(so padding never leaks into later blocks), except under the authors' BERT4Rec (zero_padding).
Consequence of the method, not a choice: with user pooling and K = 1 each position attends to a
single key, so the attention weight is 1 and the expert's query/key weights get no gradient
(their Fisher is zero and the Fisher merge sets them to 0, which changes nothing there).

The parts live beside this module: branch_config (BranchConfig), filter (TokenFilter and its
kernel, sampler and projection cache), experts (CrossAttentionExpert, PrototypeMap), consensus
(the consensus group). Their public names are re-exported here, where callers import them.
"""
from __future__ import annotations

import contextlib
from functools import partial

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mltfr.errors import ConfigError
from mltfr.models.consensus import check_consensus_group, default_consensus_group, resolve_consensus_group  # noqa: F401 (re-exported)
from mltfr.models.experts import CrossAttentionExpert, PrototypeMap
from mltfr.models.filter import (  # noqa: F401 (re-exported)
    TokenFilter,
    add_gumbel_noise_,
    cosine_scores,
    random_token_ids,
    sample_softmax_ids,
    straight_through_topk,
)
from mltfr.spec.branch_config import BranchConfig

SCORE_ELEMENTS = 1 << 24   # causal user vector: positions scored at once x |V| (64 MiB of fp32)
INIT_STD = 0.02   # reinitialise: the authors' FMLP-Rec init_weights draws N(0, 0.02)


def masked_mean(h0: Tensor, seqs: Tensor) -> Tensor:
    """Mean of h0 over non-padding positions: (B, L, d), (B, L) -> (B, d)."""
    mask = (seqs > 0).unsqueeze(-1).to(h0.dtype)                  # (B, L, 1)
    return (h0 * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def prefix_means(h0: Tensor, seqs: Tensor) -> Tensor:
    """Causal user vectors: at each position the mean of h0 over the real positions up to and
    including it: (B, L, d), (B, L) -> (B, L, d)."""
    mask = (seqs > 0).unsqueeze(-1).to(h0.dtype)                  # (B, L, 1)
    return (h0 * mask).cumsum(1) / mask.cumsum(1).clamp(min=1.0)


class MltfrBranch(nn.Module):
    """The LLM branch: (h0 (B, L, d), seqs (B, L)) -> (B, L, d), zero at padding positions
    (unless cfg.zero_padding is False, as in the authors' BERT4Rec)."""

    def __init__(self, cfg: BranchConfig, tables: list[Tensor]):
        super().__init__()
        if not tables:
            raise ConfigError("the LLM branch needs at least one token table; variant base has none")
        self.cfg = cfg
        self.names = list(cfg.names) or [f"llm{m}" for m in range(len(tables))]
        self.dims = [self._register_table(m, t) for m, t in enumerate(tables)]
        self.selectors = nn.ModuleList(
            TokenFilter(t.shape[1], cfg.d, cfg.score_scale) if cfg.filtering
            else PrototypeMap(t.shape[0], cfg.n_prototypes) for t in tables)
        self.experts = nn.ModuleList(self._expert(dim) for dim in self.dims)
        self.router = nn.Linear(cfg.d, len(tables)) if cfg.router == "softmax" else None
        self.shared: CrossAttentionExpert | None = None   # consensus expert (build_branch), frozen
        self.group: list[int] = []
        self.record_interp = False    # on only inside recording(): a count per batch costs a device sync
        self.diagnostics = None   # training diagnostics (mltfr.models.diagnostics), set by the trainer
        self.table_seed: int | None = None   # reinitialise: the seed the random tables were drawn from
        self.users: Tensor | None = None   # (B,) user ids of the windows in the forward (users_of), for lookup
        self.reset_interp()

    def _expert(self, dim: int, shared: bool = False) -> CrossAttentionExpert:
        """An expert; the consensus expert in train mode (shared_train_mode) has no output dropout:
        the authors' MoE applies its dropouts to the experts' outputs, not to the shared one's."""
        c = self.cfg
        out_dropout = 0.0 if shared and c.shared_train_mode else c.out_dropout
        return CrossAttentionExpert(c.d, dim, c.n_heads, c.attn_dropout, out_dropout)

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

    def trainable_tables(self) -> list[nn.Parameter]:
        """The token tables the optimiser updates (none when they are frozen buffers)."""
        return [t for m in range(len(self.dims)) if isinstance(t := self.table(m), nn.Parameter)]

    def reinitialise_(self) -> None:
        """The authors' FMLP-Rec init_weights over the branch: every Linear weight N(0, 0.02), its bias
        0, and every token table N(0, 0.02), drawn from a seed taken from torch's RNG (kept in
        `table_seed`, so `initial_table` can redraw the start for the drift diagnostic)."""
        init_linears_(self)
        self.table_seed = int(torch.randint(0, 2**62, (1,)))
        with torch.no_grad():
            for m in range(len(self.dims)):
                self.table(m).copy_(self.initial_table(m))
        for selector in self.selectors:
            if isinstance(selector, TokenFilter):
                selector.cache.clear()

    def initial_table(self, m: int) -> Tensor:
        """Table m (|V|, D), on the CPU, as reinitialise_ drew it (call it after reinitialise_)."""
        gen = torch.Generator().manual_seed(self.table_seed + m)
        return torch.empty(self.table(m).shape).normal_(0.0, INIT_STD, generator=gen)

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
            x, idx = self.select(m, u, seqs)                        # (B or N, K, D)
            if self.training and self.diagnostics is not None:
                self.diagnostics.record_filter(m, u, self.selectors[m], self.table(m), idx)
            tokens.append(x.reshape(1, -1, x.shape[-1]) if c.pooling == "batch" else x)
            ids.append(idx)
        return tokens, ids

    def select(self, m: int, u: Tensor, seqs: Tensor) -> tuple[Tensor, Tensor]:
        """K tokens (R, K, D_m) and their ids (R, K) of LLM m for each user vector u (R, d)."""
        c, table = self.cfg, self.table(m)
        if c.selection == "lookup":   # the positive control's pick handed over: the user's own row
            idx = self.user_rows(seqs, table.shape[0])
            return table[idx], idx
        if c.selection == "random":   # the random control: no filter
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

    def user_rows(self, seqs: Tensor, vocab: int) -> Tensor:
        """The row of each window's own user, (B, 1); causal: one per real position, row-major (N, 1)."""
        if self.users is None or len(self.users) != len(seqs):
            raise ConfigError("selection 'lookup' reads the row of each window's user, but the forward pass got "
                              f"{'no' if self.users is None else len(self.users)} user ids for {len(seqs)} windows; "
                              "run it inside `with model.users_of(users):` (mltfr.models.base)")
        if int(self.users.max()) >= vocab:
            raise ConfigError(f"user id {int(self.users.max())} has no row in a {vocab}-row table: selection "
                              "'lookup' needs a user-keyed table (planted-<dataset>) of the run's own dataset")
        rows = self.users[:, None]                                      # (B, 1)
        return rows.expand_as(seqs)[seqs > 0][:, None] if self.cfg.user_vector == "causal" else rows

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
        return o * (seqs > 0).unsqueeze(-1).to(o.dtype) if self.cfg.zero_padding else o

    def train(self, mode: bool = True) -> "MltfrBranch":
        """nn.Module.train, except that the frozen consensus expert stays in eval mode (no dropout),
        as the authors' SASRec calls .eval() on it in every forward; with shared_train_mode it
        follows `mode`, as in their BERT4Rec and FMLP-Rec."""
        super().train(mode)
        if self.shared is not None:
            self.shared.train(mode and self.cfg.shared_train_mode)
        return self

    def set_shared(self, state: dict[str, Tensor], group: list[int]) -> None:
        """Add the consensus expert of `group` with weights `state`, frozen (requires_grad False,
        eval mode): round 1 a random copy of the first group expert, round 2 the merged expert."""
        group = check_consensus_group(group, self.names, self.dims)
        shared = self._expert(self.dims[group[0]], shared=True)
        try:
            shared.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"the merged expert does not fit the consensus group "
                              f"{[self.names[m] for m in group]} (D={self.dims[group[0]]}): {err}; "
                              "rerun the Fisher step with the same LLMs and d") from None
        self.shared = shared.to(self.table(0).device).requires_grad_(False).eval()
        self.shared.train(self.training and self.cfg.shared_train_mode)
        self.group = group

    @contextlib.contextmanager
    def recording(self):
        """Count router weights and picked tokens in the evaluation passes inside, from zero (the
        final test pass of mltfr.train.result); validation passes during training count nothing."""
        self.reset_interp()
        self.record_interp = True
        try:
            yield self
        finally:
            self.record_interp = False

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
    expert taken at its random init. Round 2: the merged expert (see mltfr.models.fisher_merge).
    cfg.reinitialise (the authors' FMLP-Rec): every weight and table redrawn after construction,
    round 1's consensus copy too (independently: their init_weights runs after the copy).
    """
    if cfg.names and len(cfg.names) != len(tables):
        raise ConfigError(f"{len(tables)} token tables given for {len(cfg.names)} LLMs {cfg.names}")
    branch = MltfrBranch(cfg, tables)
    if cfg.reinitialise:
        branch.reinitialise_()
    if cfg.consensus == "none":
        if shared_state is not None:
            raise ConfigError("a merged consensus expert was given but consensus is 'none' for this "
                              "variant; drop the merged-expert file or use a variant with consensus")
        return branch
    group = resolve_consensus_group(cfg, branch.dims)
    round1 = shared_state is None
    if round1:   # the random init of the first group expert, copied
        shared_state = branch.experts[group[0]].state_dict()
    branch.set_shared(shared_state, group)
    if round1 and cfg.reinitialise:
        init_linears_(branch.shared)
    return branch


def init_linears_(module: nn.Module, std: float = INIT_STD) -> None:
    """Every nn.Linear of `module`: weight N(0, std), bias 0 (the authors' FMLP-Rec init_weights)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.normal_(layer.weight, 0.0, std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def attach(model: nn.Module, branch: MltfrBranch | None) -> nn.Module:
    """Set `model.branch` (the backbone adds it after its first block); returns the model."""
    if branch is not None and getattr(model, "d", branch.cfg.d) != branch.cfg.d:
        raise ConfigError(f"branch hidden size d={branch.cfg.d} differs from the backbone's d={model.d}; "
                          "build the branch with BranchConfig(d=model.d)")
    model.branch = branch
    return model
