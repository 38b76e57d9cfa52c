"""Full ranking: pessimistic ties, history masking, blocked == naive dense, sampled-100."""
import contextlib

import numpy as np
import pytest
import torch
from torch import nn

from mltfr.data import EvalSet
from mltfr.errors import MltfrError
from mltfr.evaluate import rank, rank_sampled, sample_negatives


class FixedModel(nn.Module):
    """Scores given by fixed matrices: user u (inputs[:, -1] holds u) has representation U[u]."""

    def __init__(self, users: torch.Tensor, items: torch.Tensor):
        super().__init__()
        self.U, self.I = nn.Parameter(users), nn.Parameter(items)
        self.n_items = items.shape[0] - 1

    def user_representation(self, inputs):
        assert not self.training and torch.is_inference_mode_enabled()
        return self.U[inputs[:, -1]]

    def item_representation(self):
        return self.I

    def users_of(self, users):
        """No LLM branch: the user ids the evaluator hands over change nothing."""
        return contextlib.nullcontext()


def evalset(targets, histories):
    lengths = [len(h) for h in histories]
    return EvalSet(users=np.arange(len(targets)), inputs=np.arange(len(targets))[:, None].repeat(3, 1),
                   targets=np.asarray(targets, dtype=np.int64),
                   hist_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                   hist_items=np.concatenate([np.asarray(h, dtype=np.int64) for h in histories]))


def naive_ranks(U, I, es, mask_history):
    """Dense float64 reference: 1 + #(candidates scoring >= target), candidates exclude pad and target."""
    scores = U.double().numpy() @ I.double().numpy().T
    out = []
    for u, t in enumerate(es.targets):
        cand = np.ones(I.shape[0], dtype=bool)
        cand[0] = cand[t] = False
        if mask_history:
            cand[es.hist_items[es.hist_offsets[u]:es.hist_offsets[u + 1]]] = False
        out.append(1 + int((scores[u, cand] >= scores[u, t]).sum()))
    return np.array(out)


def test_all_equal_scores_rank_last():
    model = FixedModel(torch.ones(3, 4), torch.ones(8, 4)).eval()   # 7 items, every score 4.0
    es = evalset([1, 4, 7], [[2], [], [1, 2, 3]])
    np.testing.assert_array_equal(rank(model, es, mask_history=False), [7, 7, 7])
    np.testing.assert_array_equal(rank(model, es, mask_history=True), [6, 7, 4])


def test_hand_computed_with_and_without_history_mask():
    items = torch.tensor([[0.0], [5.0], [4.0], [3.0], [2.0], [1.0]])  # item i scores 6-i for user weight 1
    model = FixedModel(torch.ones(2, 1), items)
    es = evalset([3, 5], [[1, 3], [2]])       # user 0: target 3 (score 3), history holds items 1 and 3
    np.testing.assert_array_equal(rank(model, es, mask_history=False), [3, 5])
    np.testing.assert_array_equal(rank(model, es, mask_history=True), [2, 4])  # item 1 (resp. 2) masked
    assert model.training                      # the evaluator restores the mode it found


@pytest.mark.parametrize("user_block, item_block", [(1, 1), (3, 7), (16, 64), (1000, 5000)])
@pytest.mark.parametrize("mask_history", [False, True])
def test_blocked_equals_naive_dense(user_block, item_block, mask_history):
    g = torch.Generator().manual_seed(0)
    n_users, n_items = 37, 101
    U = torch.randint(-2, 3, (n_users, 4), generator=g).float()  # small ints: exact scores, many ties
    I = torch.randint(-2, 3, (n_items + 1, 4), generator=g).float()
    rng = np.random.default_rng(0)
    hist = [rng.integers(1, n_items + 1, rng.integers(0, 12)) for _ in range(n_users)]
    es = evalset(rng.integers(1, n_items + 1, n_users), hist)
    got = rank(FixedModel(U, I), es, mask_history, user_block=user_block, item_block=item_block)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, naive_ranks(U, I, es, mask_history))


def test_nan_target_score_is_worst():
    items = torch.tensor([[0.0], [1.0], [float("nan")], [0.5]])
    es = evalset([2, 1], [[], []])
    np.testing.assert_array_equal(rank(FixedModel(torch.ones(2, 1), items), es, False), [3, 2])


def test_target_outside_item_range_refused():
    with pytest.raises(MltfrError, match=r"item ids in 1\.\.3"):
        rank(FixedModel(torch.ones(1, 1), torch.ones(4, 1)), evalset([4], [[]]), False)


def test_an_unnumbered_target_ranks_below_every_item():
    """Target 0: an item outside a train-only vocabulary (the faithful split) is never hit."""
    items = torch.tensor([[9.0], [1.0], [2.0], [3.0]])              # row 0 (padding) scores highest
    es = evalset([0, 3], [[], [1]])
    model = FixedModel(torch.ones(2, 1), items)
    np.testing.assert_array_equal(rank(model, es, False), [4, 1])
    np.testing.assert_array_equal(rank(model, es, True), [4, 1])
    np.testing.assert_array_equal(rank_sampled(model, es, n_neg=5, seed=0)[:1], [6])


def test_sampled_negatives_avoid_history_and_are_seeded():
    es = evalset([1, 2], [[3, 4, 5], list(range(1, 30))])
    negs = sample_negatives(es, n_items=40, n_neg=100, seed=7)
    assert negs.shape == (2, 100)
    assert not np.isin(negs[0], [1, 3, 4, 5]).any() and negs[0].min() >= 1 and negs[0].max() <= 40
    assert set(negs[1]) <= set(range(30, 41))
    np.testing.assert_array_equal(negs, sample_negatives(es, 40, 100, seed=7))
    assert not np.array_equal(negs, sample_negatives(es, 40, 100, seed=8))


def test_sampled_rank_pessimistic_and_bounded():
    model = FixedModel(torch.ones(2, 1), torch.ones(201, 1))       # all scores tie
    es = evalset([1, 2], [[], [5]])
    np.testing.assert_array_equal(rank_sampled(model, es, n_neg=100, seed=0), [101, 101])
    items = torch.arange(201, dtype=torch.float32)[:, None]        # item 200 beats every other item
    np.testing.assert_array_equal(rank_sampled(FixedModel(torch.ones(1, 1), items), evalset([200], [[]])), [1])


def test_length_sorted_trimmed_representations_equal_padded():
    """For a left-padding-invariant backbone (SASRec), trimming padding changes nothing."""
    from mltfr.evaluate.ranking import user_representations
    from mltfr.models import build_backbone

    torch.manual_seed(0)
    model = build_backbone("sasrec", 30, {"d": 8, "max_len": 8}).eval()
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 9, 50)
    inputs = np.where(np.arange(8)[None, :] >= 8 - lengths[:, None], rng.integers(1, 31, (50, 8)), 0)
    with torch.inference_mode():
        model.ignores_left_padding = False
        padded = user_representations(model, inputs, 16, torch.device("cpu"))
        model.ignores_left_padding = True
        trimmed = user_representations(model, inputs, 16, torch.device("cpu"))
    torch.testing.assert_close(trimmed, padded, rtol=1e-5, atol=1e-6)


def test_sorted_blocks_hand_the_branch_each_rows_own_user():
    """The positive control's lookup reads the row of each input's user: sorted by length and cut
    into blocks, every input still gets its own user's row (as when it is evaluated alone)."""
    from mltfr.evaluate.ranking import user_representations
    from mltfr.models import build_backbone
    from mltfr.models.mltfr import BranchConfig, attach, build_branch

    torch.manual_seed(0)
    model = build_backbone("sasrec", 30, {"d": 8, "max_len": 8})
    attach(model, build_branch(BranchConfig(d=8, selection="lookup", trainable_tables=False), [torch.randn(60, 4)]))
    model.eval()
    rng = np.random.default_rng(0)
    lengths, users = rng.integers(1, 9, 50), rng.permutation(60)[:50]
    inputs = np.where(np.arange(8)[None, :] >= 8 - lengths[:, None], rng.integers(1, 31, (50, 8)), 0)
    assert model.left_padding_invariant
    with torch.inference_mode():
        blocked = user_representations(model, inputs, 16, torch.device("cpu"), users)
        alone = []
        for k in range(50):
            with model.users_of(torch.from_numpy(users[k:k + 1])):
                alone.append(model.user_representation(torch.from_numpy(inputs[k:k + 1])))
        other = user_representations(model, inputs, 16, torch.device("cpu"), np.roll(users, 1))
    torch.testing.assert_close(blocked, torch.cat(alone), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(blocked, other)                        # the rows do reach the output
