"""Top-k metrics from per-user ranks (1 = best).

Every metric is a mean over users of a per-user value that depends on the target's rank only:
HR@k = [rank <= k], NDCG@k = [rank <= k] / log2(rank + 1) (one relevant item, so IDCG = 1),
MRR = 1 / rank (over the full ranking, no cut-off). Keys are lower case: "hr@10", "ndcg@10", "mrr".
"""
from __future__ import annotations

import numpy as np

from mltfr.errors import MltfrError
from mltfr.spec.metric_names import DEFAULT_KS, MAJORITY_K, MAJORITY_KEYS, metric_names  # noqa: F401 (re-exported)


def per_user_metrics(ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, np.ndarray]:
    """Per-user metric values (n,) float64 for each key; for paired tests between runs."""
    ranks = np.asarray(ranks)
    if ranks.ndim != 1 or ranks.size == 0:
        raise MltfrError(f"ranks must be a non-empty 1-d array, got shape {ranks.shape}")
    if (ranks < 1).any():
        raise MltfrError(f"ranks start at 1 (best); got a minimum of {ranks.min()}")
    r = ranks.astype(np.float64)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        out[f"hr@{k}"] = (r <= k).astype(np.float64)
    for k in ks:
        out[f"ndcg@{k}"] = np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
    out["mrr"] = 1.0 / r
    return out


def metrics_from_ranks(ranks: np.ndarray, ks: tuple[int, ...] = DEFAULT_KS) -> dict[str, float]:
    """Mean over users of HR@k, NDCG@k (k in ks) and MRR, as plain floats."""
    return {name: float(v.mean()) for name, v in per_user_metrics(ranks, ks).items()}


# ---------------------------------------------------------------- the authors' best-epoch rule


def majority_metrics(ranks: np.ndarray, k: int = MAJORITY_K) -> dict[str, float]:
    """HR, Precision, Recall and NDCG @k as the authors' per-epoch evaluation reports them.

    One target per user, so Precision@k = hit / k and Recall@k = hit (per user, then the mean).
    """
    per_user = per_user_metrics(ranks, (k,))
    hit, ndcg = per_user[f"hr@{k}"], per_user[f"ndcg@{k}"]  # (n,) each
    hr = hit.mean()  # a count / n: equal hit counts give bit-equal values (ties stay ties)
    values = (hr, hr / k, hr, ndcg.mean())  # hr, precision, recall, ndcg
    return {f"{name}@{k}": float(v) for name, v in zip(("hr", "precision", "recall", "ndcg"), values)}


def wins_majority(new: dict[str, float], best: dict[str, float]) -> bool:
    """The authors' rule (SELFRec's fast_evaluation): each metric where the best epoch is strictly
    higher counts +1, every other one -1 (a tie counts for the new epoch); the new epoch replaces
    the best when the sum is negative, i.e. it is at least as good on 3 or more of the 4 metrics
    (2 of 4 is a tie: kept). With one target per user Precision and Recall move with HR, so the
    rule reads: HR@20 at least the best's."""
    count = sum(1 if best[key] > new[key] else -1 for key in best)
    return count < 0
