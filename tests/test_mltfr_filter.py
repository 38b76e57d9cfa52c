"""Filter settings of the branch: random selection (control), causal user vector, their errors."""
import dataclasses

import pytest
import torch
from test_mltfr import D_MODEL, MAX_LEN, random_seqs, tables_for, tiny_model

from mltfr.errors import ConfigError
from mltfr.models import mltfr as mltfr_module
from mltfr.models.mltfr import BranchConfig, build_branch, random_token_ids
from mltfr.models.variants import base_config


def branch_for(**settings):
    """A branch over LLMs a and c (D = 12 and 20), in eval mode unless told otherwise."""
    torch.manual_seed(0)
    return build_branch(BranchConfig(d=D_MODEL, names=["a", "c"], **settings), tables_for(["a", "c"]))


def grads_of(module) -> dict:
    return {n: p.grad for n, p in module.named_parameters() if p.grad is not None}


def test_random_selection_draws_per_user_and_never_touches_the_projection():
    model = tiny_model(BranchConfig(d=D_MODEL, names=["a"], selection="random", K=3), tables_for(["a"]))
    seqs = random_seqs(16)
    torch.manual_seed(5)
    model(seqs).pow(2).sum().backward()
    branch = model.branch
    _, ids = branch.token_sets(torch.randn(16, MAX_LEN, D_MODEL), seqs)
    assert ids[0].shape == (16, 3) and len({tuple(row) for row in ids[0].tolist()}) > 1   # per user
    assert all(len(set(row)) == 3 for row in ids[0].tolist())                           # distinct
    assert branch.selectors[0].proj.weight.grad is None and branch.selectors[0].proj.bias.grad is None
    assert branch.selectors[0].cache.full_recomputes == 0                               # never projected
    assert branch.table0.grad.abs().sum() > 0
    torch.manual_seed(5)
    again = branch.token_sets(torch.randn(16, MAX_LEN, D_MODEL), seqs)[1][0]
    torch.manual_seed(5)
    assert torch.equal(branch.token_sets(torch.randn(16, MAX_LEN, D_MODEL), seqs)[1][0], again)  # seeded


def test_random_token_ids_are_uniform_and_distinct():
    torch.manual_seed(0)
    ids = random_token_ids(20_000, 10, 3, torch.device("cpu"))
    assert (ids.sort(-1).values.diff(dim=-1) > 0).all()
    share = torch.bincount(ids.flatten(), minlength=10) / ids.numel()      # 0.1 each
    assert (share - 0.1).abs().max() < 0.005
    with pytest.raises(ConfigError, match="K=11 distinct tokens from a vocabulary of 10"):
        random_token_ids(2, 10, 11, torch.device("cpu"))


@pytest.mark.parametrize("training", [False, True])
def test_causal_positions_do_not_see_later_items(training):
    """Change the item (and its h0) at position t: outputs before t stay the same under the causal
    user vector, and change under the whole-window one (so the check can fail)."""
    seqs = random_seqs(6, seed=3)
    seqs[:, -4:] = torch.randint(1, 40, (6, 4))                      # the last 4 positions are real
    h0 = torch.randn(6, MAX_LEN, D_MODEL, generator=torch.Generator().manual_seed(0))
    later_h0, later = h0.clone(), seqs.clone()
    later_h0[:, -2] += 1.0
    later[:, -2] = later[:, -2] % 40 + 1
    outputs = {}
    for user_vector in ("causal", "window"):
        branch = branch_for(user_vector=user_vector, K=2).train(training)
        runs = []
        for x, s in ((h0, seqs), (later_h0, later)):
            torch.manual_seed(1)                                      # same noise and dropout
            runs.append(branch(x, s))
        outputs[user_vector] = runs
    before, after = outputs["causal"]
    torch.testing.assert_close(before[:, :-2], after[:, :-2], rtol=0, atol=0)
    assert (before[:, -2:] - after[:, -2:]).abs().max() > 1e-4
    before, after = outputs["window"]
    assert (before[:, -4:-2] - after[:, -4:-2]).abs().max() > 1e-4


@torch.no_grad()
def test_causal_last_position_equals_the_whole_window():
    """At the last position the prefix is the whole window: same tokens, same output."""
    seqs, h0 = random_seqs(8), torch.randn(8, MAX_LEN, D_MODEL)
    causal, window = branch_for(user_vector="causal", K=2).eval(), branch_for(K=2).eval()
    tokens, ids = causal.token_sets(h0, seqs)
    assert tokens[1].shape == (int((seqs > 0).sum()), 2, 20)          # (N, K, D): per real position
    last = (seqs > 0).flatten().nonzero().squeeze(-1)
    last_rows = torch.isin(last, torch.arange(MAX_LEN - 1, 8 * MAX_LEN, MAX_LEN))
    assert torch.equal(ids[0][last_rows], window.token_sets(h0, seqs)[1][0])
    torch.testing.assert_close(causal(h0, seqs)[:, -1], window(h0, seqs)[:, -1])


@pytest.mark.parametrize("filter_grad, K, training", [("authors", 1, False), ("learn", 2, True)])
def test_causal_scores_in_chunks_give_the_same_output_and_gradients(filter_grad, K, training, monkeypatch):
    """Few positions per chunk (the learning path recomputes each chunk in the backward): same
    output and gradients as one chunk, Gumbel noise included (training)."""
    seqs = random_seqs(6)

    def run():
        branch = branch_for(user_vector="causal", K=K, filter_grad=filter_grad).train(training)
        h0 = torch.randn(6, MAX_LEN, D_MODEL, generator=torch.Generator().manual_seed(0), requires_grad=True)
        torch.manual_seed(2)
        out = branch(h0, seqs)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        return out, {**grads_of(branch), "h0": h0.grad}

    whole_out, whole = run()
    monkeypatch.setattr(mltfr_module, "SCORE_ELEMENTS", 70 * 4)      # 4 positions per chunk of LLM c
    chunked_out, chunked = run()
    torch.testing.assert_close(chunked_out, whole_out)
    assert chunked.keys() == whole.keys() and ("selectors.0.proj.weight" in whole) == (filter_grad == "learn")
    for name, grad in whole.items():
        torch.testing.assert_close(chunked[name], grad, msg=name)


def test_filter_settings_are_checked_and_recorded():
    with pytest.raises(ConfigError, match="user_vector='causal' needs pooling='user'.*future"):
        BranchConfig.for_protocol("faithful", user_vector="causal")
    for key in ("filter_grad", "selection", "user_vector"):
        with pytest.raises(ConfigError, match=f"{key}='nope' is not valid"):
            BranchConfig(**{key: "nope"})
    cfg = base_config("corrected", "sasrec", D_MODEL, {"filter_grad": "learn", "user_vector": "causal"})
    settings = dataclasses.asdict(cfg)
    assert (settings["filter_grad"], settings["selection"], settings["user_vector"]) == ("learn", "guided", "causal")
    assert BranchConfig.for_protocol("faithful").filter_grad == "authors"
