"""Metrics from ranks against hand-computed closed forms."""
import math

import numpy as np
import pytest

from mltfr.errors import MltfrError
from mltfr.evaluate import metric_names, metrics_from_ranks, per_user_metrics


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
