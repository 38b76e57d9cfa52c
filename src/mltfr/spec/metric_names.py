"""The names of the reported metrics and of the authors' best-epoch rule's metrics.

Keys are lower case: "hr@10", "ndcg@10", "mrr" (mltfr.evaluate.metrics computes them).
"""
from __future__ import annotations

DEFAULT_KS = (5, 10, 20)  # cut-offs reported in every result (method.md)
MAJORITY_K = 20  # the authors' per-epoch evaluation computes the largest cut-off (20) only
MAJORITY_KEYS = tuple(f"{m}@{MAJORITY_K}" for m in ("hr", "precision", "recall", "ndcg"))


def metric_names(ks: tuple[int, ...] = DEFAULT_KS) -> list[str]:
    """The metric keys in the order they are reported: hr@k..., ndcg@k..., mrr."""
    return [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks] + ["mrr"]
