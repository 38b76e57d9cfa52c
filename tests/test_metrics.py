"""Metrics from ranks against hand-computed closed forms."""
import math

import numpy as np
import pytest

from mltfr.errors import MltfrError
from mltfr.evaluate import majority_metrics, metric_names, metrics_from_ranks, per_user_metrics, wins_majority


def test_hand_computed_ranks_1_2_11():
    m = metrics_from_ranks(np.array([1, 2, 11]))
    assert m["hr@5"] == pytest.approx(2 / 3)
    assert m["hr@10"] == pytest.approx(2 / 3)
    assert m["hr@20"] == pytest.approx(1.0)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["ndcg@20"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(12)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 11) / 3)


def test_cutoff_is_inclusive_and_keys_ordered():
    m = metrics_from_ranks(np.array([5, 6]), ks=(5,))
    assert list(m) == ["hr@5", "ndcg@5", "mrr"]
    assert m["hr@5"] == 0.5
    assert m["ndcg@5"] == pytest.approx(0.5 / math.log2(6))   # rank 5 counts, rank 6 does not
    assert metric_names() == ["hr@5", "hr@10", "hr@20", "ndcg@5", "ndcg@10", "ndcg@20", "mrr"]


def test_per_user_values_for_paired_tests():
    per = per_user_metrics(np.array([3, 30]))
    np.testing.assert_allclose(per["ndcg@10"], [0.5, 0.0])      # 1/log2(4) = 0.5
    np.testing.assert_allclose(per["mrr"], [1 / 3, 1 / 30])


@pytest.mark.parametrize("bad", [np.array([0, 1]), np.array([], dtype=np.int64), np.ones((2, 2))])
def test_bad_ranks_refused(bad):
    with pytest.raises(MltfrError, match="ranks"):
        metrics_from_ranks(bad)


def test_majority_metrics_precision_is_hit_over_20_recall_is_hit():
    m = majority_metrics(np.array([1, 3, 20, 21]))
    assert m["hr@20"] == pytest.approx(0.75) and m["recall@20"] == pytest.approx(0.75)
    assert m["precision@20"] == pytest.approx(0.75 / 20)
    assert m["ndcg@20"] == pytest.approx((1 + 0.5 + 1 / math.log2(21)) / 4)


def scores(hr, ndcg):
    return {"hr@20": hr, "precision@20": hr / 20, "recall@20": hr, "ndcg@20": ndcg}


def test_an_epoch_replaces_the_best_when_not_worse_on_3_of_4():
    best = scores(0.30, 0.10)
    assert wins_majority(scores(0.31, 0.09), best)        # better on 3 (hr, precision, recall)
    assert wins_majority(scores(0.30, 0.09), best)        # ties on 3 count for the new epoch
    assert not wins_majority(scores(0.29, 0.50), best)    # better on NDCG only
    assert not wins_majority(scores(0.29, 0.10), best)    # NDCG tied, the rest worse: 1 of 4
    # 2 of 4 better, 2 worse: a tie, the best is kept (metrics decoupled by hand)
    assert not wins_majority({"hr@20": 0.31, "precision@20": 0.2, "recall@20": 0.29, "ndcg@20": 0.09},
                             {"hr@20": 0.30, "precision@20": 0.1, "recall@20": 0.30, "ndcg@20": 0.10})
