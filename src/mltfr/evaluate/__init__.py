"""Evaluation: per-user ranks over all items (or sampled candidates) and metrics from ranks.

Evaluation never trains: it takes a model and an EvalSet and returns ranks. The metric
definitions (`mltfr.evaluate.metrics`) are numpy-only and imported eagerly; the ranking names
(torch) load on first use, so the analysis can use the metrics without importing torch."""
from mltfr.evaluate.metrics import (
    DEFAULT_KS,
    majority_metrics,
    metric_names,
    metrics_from_ranks,
    per_user_metrics,
    wins_majority,
)

_RANKING = ("FULL_LABEL", "SAMPLED_LABEL", "rank", "rank_sampled", "ranks_from_representations",
            "sample_negatives")

__all__ = ["DEFAULT_KS", "FULL_LABEL", "SAMPLED_LABEL", "majority_metrics", "metric_names",
           "metrics_from_ranks", "per_user_metrics", "rank", "rank_sampled", "ranks_from_representations",
           "sample_negatives", "wins_majority"]


def __getattr__(name: str):
    """The ranking names (they import torch), loaded when first asked for."""
    if name in _RANKING:
        from mltfr.evaluate import ranking
        return getattr(ranking, name)
    raise AttributeError(f"module 'mltfr.evaluate' has no attribute {name!r}")
