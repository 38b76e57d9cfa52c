"""Leave-one-out splits: a hand-built case with exact arrays, and invariants on real Pantry.
The item numbering (every item, or the training split's only: train_vocab) has its own tests."""
import gzip

import numpy as np
import pytest

from mltfr.data import Prepared, make_split, prepare_dataset, validate_entry
from mltfr.errors import ConfigError

PANTRY_FILES = ["data/amazon-pantry/train.txt.gz", "data/amazon-pantry/test.txt.gz"]


@pytest.fixture(scope="module")
def pantry(repo):
    entry = validate_entry({"source": [{"path": str(repo / f)} for f in PANTRY_FILES],
                            "format": "mltfr-pair"})
    return prepare_dataset(entry, "pantry")


def _hand():
    # user 0: 1 2 3 4 5 | user 1: 6 7 | user 2: 8
    return Prepared(np.array([0, 5, 7, 8]), np.array([1, 2, 3, 4, 5, 6, 7, 8]), 8, {})


def test_faithful_by_hand():
    s = make_split(_hand(), "faithful", max_len=3, train_vocab=False)
    assert s.valid is None and s.n_items == 8
    assert s.train_offsets.tolist() == [0, 4, 5, 5] and s.train_items.tolist() == [1, 2, 3, 4, 6]
    assert s.test.users.tolist() == [0, 1]                       # user 2 has no input item
    assert s.test.targets.tolist() == [5, 7]
    assert s.test.inputs.tolist() == [[2, 3, 4], [0, 0, 6]]      # most recent 3, left padded
    assert s.test.hist_offsets.tolist() == [0, 4, 5]
    assert s.test.hist_items.tolist() == [1, 2, 3, 4, 6]         # full history, longer than L


def test_corrected_by_hand():
    s = make_split(_hand(), "corrected", max_len=3)
    assert s.train_offsets.tolist() == [0, 3, 3, 3] and s.train_items.tolist() == [1, 2, 3]
    assert s.valid.users.tolist() == [0] and s.valid.targets.tolist() == [4]
    assert s.valid.inputs.tolist() == [[1, 2, 3]]
    assert s.test.users.tolist() == [0, 1] and s.test.targets.tolist() == [5, 7]
    assert s.test.inputs.tolist() == [[2, 3, 4], [0, 0, 6]]     # the valid item is input at test time


def test_validation_item_kept_in_training_with_a_validation_set_by_hand():
    # the ladder's selection rung: faithful training data, early stopping on validation
    s = make_split(_hand(), "faithful", max_len=3, holdout_valid=False, with_valid=True, train_vocab=False)
    assert s.train_items.tolist() == [1, 2, 3, 4, 6]              # 4 (user 0's valid item) trains
    assert s.valid.users.tolist() == [0] and s.valid.targets.tolist() == [4]
    assert s.valid.inputs.tolist() == [[1, 2, 3]]
    assert s.test.targets.tolist() == [5, 7]
    held = make_split(_hand(), "faithful", max_len=3, holdout_valid=True, train_vocab=False)  # corrected's data
    corrected = make_split(_hand(), "corrected", max_len=3)
    assert held.train_items.tolist() == corrected.train_items.tolist() == [1, 2, 3]
    assert held.valid.targets.tolist() == [4]
    assert make_split(_hand(), "corrected", max_len=3, with_valid=False).valid is None


def test_faithful_numbers_the_training_items_only_by_hand():
    # training items 1 2 3 4 6 -> 1..5; 5 and 7 (test only) and 8 (user 2, no training item) unnumbered
    s = make_split(_hand(), "faithful", max_len=3)
    assert s.n_items == 5 and s.train_items.tolist() == [1, 2, 3, 4, 5]
    assert s.test.users.tolist() == [0, 1] and s.test.targets.tolist() == [0, 0]   # never hit
    assert s.test.inputs.tolist() == [[2, 3, 4], [0, 0, 5]]
    assert s.test.hist_items.tolist() == [1, 2, 3, 4, 5]


def test_train_vocabulary_drops_an_unnumbered_validation_item_from_test_inputs_by_hand():
    # alone-holdout_valid: training 1 2 3; user 0's valid item 4 is a target (0) and leaves the test
    # input; user 1's only input (6, its valid item) leaves too, so user 1 is not tested
    s = make_split(_hand(), "faithful", max_len=3, holdout_valid=True)
    assert s.n_items == 3 and s.train_items.tolist() == [1, 2, 3]
    assert s.valid.users.tolist() == [0] and s.valid.targets.tolist() == [0]
    assert s.valid.inputs.tolist() == [[1, 2, 3]]
    assert s.test.users.tolist() == [0] and s.test.targets.tolist() == [0]
    assert s.test.inputs.tolist() == [[1, 2, 3]]
    assert make_split(_hand(), "corrected", max_len=3, train_vocab=True).test.users.tolist() == [0]


def test_bad_protocol():
    with pytest.raises(ConfigError, match="protocol 'loo' is unknown; use one of faithful, corrected"):
        make_split(_hand(), "loo", 3)


def test_pantry_faithful_test_is_authors_test_file(pantry, repo):
    s = make_split(pantry, "faithful", max_len=50, train_vocab=False)
    lines = gzip.open(repo / "data/amazon-pantry/test.txt.gz", "rt").read().split("\n")
    authors = [line.split()[2] for line in lines if line.strip()]
    assert len(s.test.users) == 7123                              # every Pantry user has >= 3 items
    assert pantry.item_raw[s.test.targets].tolist() == authors
    assert len(s.train_items) == 37566 - 7123


def test_pantry_faithful_vocabulary_is_the_authors_train_file(pantry, repo):
    """The authors number the items of train.txt only: 4,794 of Pantry's 4,884; the 138 test targets
    outside it are never hit and the 90 items only test.txt holds are never ranked."""
    faithful, corrected = make_split(pantry, "faithful", 50), make_split(pantry, "corrected", 50)
    assert (faithful.n_items, corrected.n_items) == (4794, 4884)
    lines = gzip.open(repo / "data/amazon-pantry/train.txt.gz", "rt").read().split("\n")
    authors = {asin for line in lines if line.strip() for asin in line.split()[2:]}
    by_new_id = np.zeros(faithful.n_items + 1, dtype=np.int64)       # new id -> prepared id
    by_new_id[faithful.train_items] = make_split(pantry, "faithful", 50, train_vocab=False).train_items
    assert set(pantry.item_raw[by_new_id[1:]]) == authors and len(authors) == 4794
    assert (faithful.test.targets == 0).sum() == 138 and len(faithful.test.users) == 7123
    assert pantry.n_items - faithful.n_items == 90
    assert (corrected.test.targets > 0).all()


@pytest.mark.parametrize("protocol, ladder", [("faithful", {}), ("corrected", {}),
                                             ("faithful", {"with_valid": True}),       # rung-selection
                                             ("faithful", {"holdout_valid": True})])   # alone-holdout_valid
def test_pantry_split_invariants(pantry, protocol, ladder):
    L = 4                                                         # short, so truncation happens
    s = make_split(pantry, protocol, max_len=L, train_vocab=False, **ladder)
    held = 2 if ladder.get("holdout_valid", protocol == "corrected") else 1
    assert (s.valid is not None) == (held == 2 or "with_valid" in ladder)
    evals = [(s.test, 1)] + ([(s.valid, 2)] if s.valid is not None else [])
    for u in range(pantry.n_users):
        seq = pantry.sequence(u)
        train = s.train_items[s.train_offsets[u]:s.train_offsets[u + 1]]
        assert train.tolist() == seq[:len(seq) - held].tolist()   # no valid/test position in training
    for ev, back in evals:
        assert ev.inputs.shape == (len(ev.users), L) and ev.inputs.dtype == np.int64
        for k, u in enumerate(ev.users[:2000]):
            seq = pantry.sequence(u)
            assert ev.targets[k] == seq[-back]                    # last / second-to-last
            before = seq[:len(seq) - back]
            row = ev.inputs[k]
            n_pad = max(L - len(before), 0)
            assert (row[:n_pad] == 0).all() and row[n_pad:].tolist() == before[-L:].tolist()
            hist = ev.hist_items[ev.hist_offsets[k]:ev.hist_offsets[k + 1]]
            assert hist.tolist() == before.tolist()
