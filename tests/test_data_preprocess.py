"""Preprocessing: k-core fixed point, rating threshold, stable time order, id remapping."""
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mltfr.data import parse_file, prepare_dataset, validate_entry
from mltfr.data.preprocess import build_prepared, k_core_mask, time_order
from mltfr.errors import DataError

FIX = Path(__file__).parent / "fixtures" / "data"


def _frame(rows):
    user, item, ts = zip(*rows)
    return pd.DataFrame({"user": user, "item": item, "rating": np.nan, "timestamp": np.asarray(ts, float)})


def _assert_fixed_point(users, items, keep, k_user, k_item):
    u_count = np.bincount(users[keep])
    i_count = np.bincount(items[keep])
    assert (u_count[np.unique(users[keep])] >= k_user).all()
    assert (i_count[np.unique(items[keep])] >= k_item).all()
    again, _ = k_core_mask(users[keep], items[keep], k_user, k_item)
    assert again.all()                                     # a second pass changes nothing


def test_k_core_cascade_by_hand():
    """2-core: d drops (1 row) -> z falls to 1 -> c falls to 1 -> y still has a, b: stop."""
    users = np.array([0, 0, 1, 1, 2, 2, 3])                # a a b b c c d
    items = np.array([0, 1, 0, 1, 1, 2, 2])                # x y x y y z z
    keep, passes = k_core_mask(users, items, 2, 2)
    assert keep.tolist() == [True, True, True, True, False, False, False]
    assert passes == 4
    _assert_fixed_point(users, items, keep, 2, 2)


def test_k_core_off_keeps_everything():
    keep, passes = k_core_mask(np.array([0, 1]), np.array([0, 1]), 0, 0)
    assert keep.all() and passes == 0


def test_k_core_fixed_point_on_ml1m(ml1m_file):
    df = parse_file(ml1m_file, "recbole-inter")
    assert len(df) == 1_000_209
    users, _ = pd.factorize(df["user"])
    items, _ = pd.factorize(df["item"])
    keep, passes = k_core_mask(users, items, 200, 200)
    assert passes >= 3                                    # the filter cascades
    assert 0 < keep.sum() < len(df)
    _assert_fixed_point(users, items, keep, 30, 30)


def test_stable_tie_break_keeps_file_order():
    # one user, five interactions, three at t=5: file order b, c, d must survive among the ties
    ts = np.array([5.0, 1.0, 5.0, 5.0, 9.0, 3.0])
    users = np.array([0, 0, 0, 0, 0, 1])
    assert time_order(users, ts).tolist() == [1, 0, 2, 3, 4, 5]
    many = np.zeros(10_000)                               # all equal: identity, not quicksort's shuffle
    assert (time_order(np.zeros(10_000, int), many) == np.arange(10_000)).all()


def test_ids_first_appearance_and_time_order():
    rows = [("bob", "y", 3), ("ann", "x", 2), ("bob", "x", 1), ("ann", "z", 2), ("ann", "y", 1)]
    entry = validate_entry({"source": {"path": "unused"}, "format": "user-item-pairs"})
    p = build_prepared(_frame(rows), entry, "hand", [{"path": "hand.txt"}])
    assert p.user_raw.tolist() == ["bob", "ann"]          # 0-based rows, first appearance
    assert p.item_raw.tolist() == ["", "y", "x", "z"]     # 1..n, 0 = padding
    assert p.offsets.tolist() == [0, 2, 5]
    # bob: x(1) y(3); ann: y(1), then x(2) z(2) tied -> file order x, z
    assert p.items.tolist() == [2, 1, 1, 2, 3]
    assert p.meta["counts"] == {"raw_interactions": 5, "after_min_rating": 5, "users": 2,
                                "items": 3, "interactions": 5}


def test_min_rating_on_fixture():
    entry = validate_entry({"source": {"path": str(FIX / "amazon2014.csv")}, "format": "amazon-csv",
                            "columns": ["user", "item", "rating", "timestamp"],
                            "preprocess": {"min_rating": 3}})
    p = prepare_dataset(entry, "tiny")
    # (u1,i2,2) and (u3,i1,1) drop; u3 vanishes; item ids keep raw first-appearance order
    assert p.offsets.tolist() == [0, 2, 4] and p.items.tolist() == [3, 1, 2, 3]
    assert p.meta["counts"]["after_min_rating"] == 4


def test_min_rating_without_ratings_is_an_error():
    entry = validate_entry({"source": {"path": str(FIX / "pairs.txt")}, "format": "user-item-pairs",
                            "preprocess": {"min_rating": 4}})
    with pytest.raises(DataError, match=r"pairs\.txt: this format has no ratings.*set it to null"):
        prepare_dataset(entry, "tiny")


def test_k_core_to_nothing_names_files_and_fix():
    entry = validate_entry({"source": {"path": str(FIX / "tiny.inter")}, "format": "recbole-inter",
                            "preprocess": {"k_core": {"user": 5, "item": 5}}})
    with pytest.raises(DataError, match=r"tiny\.inter: dataset 'tiny' is empty after preprocessing.*"
                                        r"lower `preprocess\.k_core`"):
        prepare_dataset(entry, "tiny")
