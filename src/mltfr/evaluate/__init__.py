"""Evaluation: per-user ranks over all items (or sampled candidates) and metrics from ranks.

Evaluation never trains: it takes a model and an EvalSet and returns ranks."""
from mltfr.evaluate.metrics import (DEFAULT_KS, majority_metrics, metric_names, metrics_from_ranks,
                                    per_user_metrics, wins_majority)
from mltfr.evaluate.ranking import (FULL_LABEL, SAMPLED_LABEL, rank, rank_sampled,
                                    ranks_from_representations, sample_negatives)

__all__ = ["DEFAULT_KS", "FULL_LABEL", "SAMPLED_LABEL", "majority_metrics", "metric_names",
           "metrics_from_ranks", "per_user_metrics", "rank", "rank_sampled", "ranks_from_representations",
           "sample_negatives", "wins_majority"]
