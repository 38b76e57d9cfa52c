"""Filter diagnostics: does the user-guided pick depend on the user? (training, last epoch)

top-K(softmax((s + g) / tau)) with Gumbel noise g is top-K(s + g), a Gumbel-max draw from
softmax(s) whatever tau is. With s a cosine in [-1, 1] over tens of thousands of tokens,
softmax(s) is close to uniform, so the training pick is close to a random token. These numbers
measure it, per LLM, over the training steps of one epoch (the trainer resets them at the start
of every fresh epoch, so result.json holds the last one; a resumed epoch holds only the steps
after the resume):

    effective_tokens      exp(entropy of softmax(c s)), s = noiseless cosine scores, c the filter's
                          logit scale (1 but for the sharp filter): the distribution the pick is
                          drawn from; mean over users. 1 = a sure pick, |V| = uniform.
    argmax_agreement      share of picked ids that are in the noiseless top-K(s) (K = 1: the share
                          of picks equal to the noiseless argmax), ties broken at random.
    distinct_selected     distinct token ids picked in the epoch (counted on every step).
    projection_grad_norm  mean over steps of the L2 norm of the filter projection's gradient,
                          weight and bias together (a missing gradient counts as 0).
    table_drift           rms(E_final - E_initial) / std(E_initial); computed by the trainer's
                          caller from the cached table (`table_drift`), 0 for frozen tables.
    vocab                 |V|, so effective_tokens / vocab can be read off the result.
    router_entropy        (run level) mean entropy (nats) of the router weights over non-padding
                          positions; log M for the uniform router.

Sampling: the score-based numbers (effective_tokens, argmax_agreement), the projection gradient
norm and the router entropy are taken on every `every`-th training step of the epoch (steps
0, every, 2 every, ...; `diagnostics_steps` says how many), under torch.no_grad, with the noiseless
scores recomputed from the user vector and the normalised projection: one more |V| x D x d
projection and a (B, |V|) softmax per LLM on those steps, nothing on the others. No random draw
is made, so the trained model does not depend on `every`. Prototype (no filtering) branches pick
no tokens: their effective_tokens, argmax_agreement, distinct_selected and projection_grad_norm
are None (null in result.json); table_drift, vocab and router_entropy are still reported.
A user vector with leading dims (B, L, d) and ids (B, L, K) (a per-position user) are flattened
to rows (padding positions included), scored ROW_CHUNK rows at a time.
"""
from __future__ import annotations

import torch
from torch import Tensor

from mltfr.models.mltfr import MltfrBranch, cosine_scores

DIAGNOSTIC_KEYS = ("effective_tokens", "argmax_agreement", "distinct_selected", "projection_grad_norm",
                   "table_drift", "vocab")
ROW_CHUNK = 256   # score rows per (rows, |V|) block: keeps the softmax temporaries small


def effective_tokens(scores: Tensor) -> Tensor:
    """exp(entropy of softmax(scores)) per row: (N, |V|) -> (N,).

    H = max + log Z - <p, s> / Z with p = exp(s - max), Z = sum p: three passes over (N, |V|) and
    one buffer (log_softmax would take twice the time)."""
    scores = scores.float()
    top = scores.amax(-1, keepdim=True)                                      # (N, 1)
    p = (scores - top).exp_()                                                # (N, |V|)
    z = p.sum(-1)
    return (top.squeeze(-1) + z.log() - torch.linalg.vecdot(p, scores) / z).exp()


def agreement_count(scores: Tensor, picks: Tensor) -> Tensor:
    """How many picked ids (N, K) a noiseless top-K of scores (N, |V|) holds, its ties at the K-th
    score broken at random (expected count, 0-d float).

    A pick above the K-th score counts 1; one tied with it counts (K - above) / tied, `above` ids
    scoring more and `tied` as much (K = 1: 1 / the number tied at the max). Counting a tie as in
    would read a table with many equal rows (rows worn to 0, say) as a filter that chooses."""
    K = picks.shape[-1]
    kth = scores.amax(-1, keepdim=True) if K == 1 else scores.topk(K, dim=-1).values[:, -1:]  # (N, 1)
    above = (scores > kth).sum(-1, keepdim=True)                                 # (N, 1)
    tied = (scores == kth).sum(-1, keepdim=True)                                 # (N, 1), >= 1
    picked = scores.gather(-1, picks)                                            # (N, K)
    share = torch.where(picked == kth, (K - above) / tied, (picked > kth).to(torch.float64))
    return share.sum()


def router_entropy(gates: Tensor, seqs: Tensor) -> tuple[Tensor, Tensor]:
    """Sum of the router weights' entropy (nats) over non-padding positions, and their number.

    gates (..., L, M), seqs (..., L)."""
    g = gates.float()
    entropy = -(g * g.clamp_min(torch.finfo(g.dtype).tiny).log()).sum(-1)   # (..., L)
    valid = seqs > 0
    return entropy[valid].sum(), valid.sum()


def table_drift(final: Tensor, initial: Tensor) -> float:
    """rms(final - initial) / std(initial) of a token table (|V|, D); 0 when it never moved."""
    initial = initial.to(final.device, torch.float32)
    final = final.detach().float()
    rms = (final - initial).pow(2).mean().sqrt()
    return float(rms / initial.std().clamp_min(1e-12))


class FilterDiagnostics:
    """Per-epoch accumulators of one branch; the trainer arms them, the branch records into them."""

    def __init__(self, branch: MltfrBranch, every: int):
        self.every, self.names, self.filtering = every, list(branch.names), branch.cfg.filtering
        self.vocab = [branch.table(m).shape[0] for m in range(len(branch.names))]
        self.device = branch.table(0).device
        self.armed = False
        self.reset()

    def reset(self) -> None:
        """Zero every accumulator (start of a fresh epoch)."""
        M, f64 = len(self.names), dict(dtype=torch.float64, device=self.device)
        self.steps = 0                                         # sampled steps
        self.users = torch.zeros(M, **f64)                     # score rows sampled per LLM
        self.effective_sum = torch.zeros(M, **f64)
        self.agree_sum, self.picks = torch.zeros(M, **f64), torch.zeros(M, **f64)
        self.grad_norm_sum = torch.zeros(M, **f64)
        self.entropy_sum, self.positions = torch.zeros((), **f64), torch.zeros((), **f64)
        self.seen = [torch.zeros(v, dtype=torch.bool, device=self.device) for v in self.vocab]

    def arm(self, step: int) -> None:
        """Before training step `step` (0-based within the epoch): sample it when step % every == 0."""
        self.armed = step % self.every == 0
        self.steps += self.armed

    @torch.no_grad()
    def record_filter(self, m: int, u: Tensor, selector, table: Tensor, ids: Tensor) -> None:
        """LLM m's picks ids (..., K) for user vectors u (..., d); scores only on armed steps."""
        self.seen[m][ids.flatten()] = True
        if not self.armed:
            return
        with torch.autocast(self.device.type, enabled=False):
            proj_n = selector.normalised_projection(table).float()                  # (|V|, d)
            u_n = torch.nn.functional.normalize(u.reshape(-1, u.shape[-1]).float(), dim=-1)  # (N, d)
            for rows, picks in zip(u_n.split(ROW_CHUNK), ids.reshape(-1, ids.shape[-1]).split(ROW_CHUNK)):
                scores = cosine_scores(rows, proj_n).mul_(selector.scale)            # (n, |V|): c s
                self.effective_sum[m] += effective_tokens(scores).sum()
                self.agree_sum[m] += agreement_count(scores, picks)
                self.users[m] += rows.shape[0]
                self.picks[m] += picks.numel()

    @torch.no_grad()
    def record_router(self, gates: Tensor, seqs: Tensor) -> None:
        """Router weights (B, L, M) of an armed step."""
        if self.armed:
            total, count = router_entropy(gates, seqs)
            self.entropy_sum += total
            self.positions += count

    @torch.no_grad()
    def record_gradients(self, branch: MltfrBranch) -> None:
        """After backward on an armed step: the L2 norm of each filter projection's gradient."""
        if not (self.armed and self.filtering):
            return
        for m, selector in enumerate(branch.selectors):
            grads = [p.grad.float().pow(2).sum() for p in selector.proj.parameters() if p.grad is not None]
            if grads:
                self.grad_norm_sum[m] += torch.stack(grads).sum().sqrt()

    def summary(self, drift: dict[str, float | None]) -> dict:
        """{"diagnostics": {llm: {DIAGNOSTIC_KEYS...}}, "router_entropy", "diagnostics_steps"}.

        `drift`: table_drift per LLM name (None when its initial table was not available)."""
        per_llm = {}
        for m, name in enumerate(self.names):
            per_llm[name] = {"effective_tokens": _mean(self.effective_sum[m], self.users[m]),
                             "argmax_agreement": _mean(self.agree_sum[m], self.picks[m]),
                             "distinct_selected": int(self.seen[m].sum()) or None,  # None: no pick
                             "projection_grad_norm": (float(self.grad_norm_sum[m]) / self.steps
                                                      if self.filtering and self.steps else None),
                             "table_drift": drift.get(name), "vocab": self.vocab[m]}
        return {"diagnostics": per_llm, "router_entropy": _mean(self.entropy_sum, self.positions),
                "diagnostics_steps": self.steps}


def _mean(total: Tensor, count: Tensor) -> float | None:
    """total / count as a float; None when nothing was counted (no filtering, no sampled step:
    e.g. a finished run resumed only to write its results)."""
    count = float(count)
    return float(total) / count if count else None


def attach_diagnostics(model, every: int) -> FilterDiagnostics | None:
    """Give `model.branch` fresh diagnostics (None for an ID-only model); the branch records into them."""
    branch = getattr(model, "branch", None)
    if branch is None:
        return None
    branch.diagnostics = FilterDiagnostics(branch, every)
    return branch.diagnostics


__all__ = ["DIAGNOSTIC_KEYS", "FilterDiagnostics", "agreement_count", "attach_diagnostics",
           "effective_tokens", "router_entropy", "table_drift"]
