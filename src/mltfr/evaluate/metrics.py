"""Top-k metrics from per-user ranks (1 = best).

Every metric is a mean over users of a per-user value that depends on the target's rank only:
HR@k = [rank <= k], NDCG@k = [rank <= k] / log2(rank + 1) (one relevant item, so IDCG = 1),
MRR = 1 / rank (over the full ranking, no cut-off). Keys are lower case: "hr@10", "ndcg@10", "mrr".
"""
from __future__ import annotations

import numpy as np

from mltfr.errors import MltfrError

DEFAULT_KS = (5, 10, 20)  # cut-offs reported in every result (method.md)


def metric_names(ks: tuple[int, ...] = DEFAULT_KS) -> list[str]:
    """The metric keys in the order they are reported: hr@k..., ndcg@k..., mrr."""
    return [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]


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
