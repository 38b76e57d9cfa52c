"""Filter settings of the branch: random selection (control), causal user vector, the sharp
filter's logit scale, the positive control's lookup selection, their errors."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_mltfr import D_MODEL, MAX_LEN, filter_outputs_and_grads, random_seqs, tables_for, tiny_model

from mltfr.errors import ConfigError
from mltfr.models import mltfr as mltfr_module
from mltfr.models.diagnostics import FilterDiagnostics
from mltfr.models.mltfr import BranchConfig, TokenFilter, build_branch, random_token_ids
from mltfr.models.variant_branch import base_config


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


def sharp_reference(self, u, table, K, tau, noise, filter_grad="learn"):
    """The sharp filter as docs/method.md writes it, in plain autograd ops: scores c cos(u, P),
    Gumbel noise (one rand_like, as the module), y = softmax(scores / tau), learning weights."""
    scores = self.scale * F.normalize(u, dim=-1) @ F.normalize(self.proj(table), dim=-1).T   # (B, |V|)
    if noise:
        scores = scores + -torch.log(-torch.log(torch.rand_like(scores)))
    y = torch.softmax(scores / tau, dim=-1)
    idx = y.topk(K, dim=-1).indices                                                       # (B, K)
    y_k = y.gather(-1, idx)
    return ((y_k - y_k.detach() + 1.0) / K).unsqueeze(-1) * table[idx], idx              # (B, K, D)


@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("noise", [False, True])
def test_sharp_filter_gradients_are_those_of_the_scaled_scores(K, noise):
    """c = 50: the fused kernel's picks, output and gradients (u, projection, table) equal autograd
    on c * cosine; the scale multiplies the projection's gradient (c = 1 gives another one)."""
    gen = torch.Generator().manual_seed(0)
    filt = TokenFilter(dim=12, d=6, score_scale=50.0).double()
    table = torch.randn(300, 12, generator=gen, dtype=torch.float64).requires_grad_(True)
    u = torch.randn(9, 6, generator=gen, dtype=torch.float64)
    fused = filter_outputs_and_grads(TokenFilter.forward, filt, u, table, K, noise, "learn")
    plain = filter_outputs_and_grads(sharp_reference, filt, u, table, K, noise, "learn")
    assert type(fused[0].grad_fn).__name__ == "FusedTokenFilterBackward" and torch.equal(fused[1], plain[1])
    for mine, ref in zip(fused[:1] + fused[2:], plain[:1] + plain[2:]):
        torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-12)
    assert fused[3].abs().sum() > 0                                      # the projection learns
    filt.scale = 1.0
    flat = filter_outputs_and_grads(TokenFilter.forward, filt, u, table, K, noise, "learn")
    assert not torch.allclose(flat[3], fused[3])


@pytest.mark.parametrize("filter_grad", ["authors", "learn"])
def test_the_training_pick_is_drawn_from_softmax_of_the_scaled_scores(filter_grad):
    """c = 3 on 12 tokens: pick frequencies equal softmax(c s) within Monte-Carlo error, on the
    no-gradient path (authors, K = 1: Gumbel noise, not the c = 1 sampler) and the fused one."""
    torch.manual_seed(0)
    n, filt = 60_000, TokenFilter(dim=3, d=3, score_scale=3.0)
    with torch.no_grad():
        filt.proj.weight.copy_(torch.eye(3))
        filt.proj.bias.zero_()
    table = torch.randn(12, 3).requires_grad_(filter_grad == "learn")
    u = torch.tensor([[1.0, 0.5, -0.2]]).expand(n, 3)
    _, idx = filt(u, table, K=1, tau=0.5, noise=True, filter_grad=filter_grad)
    law = torch.softmax(3.0 * F.normalize(u[0], dim=-1) @ F.normalize(table.detach(), dim=-1).T, 0)
    assert law.max() > 3 / 12                                            # c = 3: far from uniform
    assert (torch.bincount(idx[:, 0], minlength=12) / n - law).abs().max() < 0.008   # ~ 4 standard errors
    with torch.no_grad():                                                # evaluation: the noiseless argmax
        assert torch.equal(filt(u[:2], table, 1, 0.5, noise=False)[1][:, 0], law.argmax().repeat(2))


def test_diagnostics_measure_the_law_of_the_scaled_pick():
    """effective_tokens is exp(entropy) of softmax(c s): with c = 50 it is far below c = 1's."""
    torch.manual_seed(0)
    table, u = torch.randn(30, 12), torch.randn(5, D_MODEL)
    effective = {}
    for scale in (1.0, 50.0):
        branch = build_branch(BranchConfig(d=D_MODEL, score_scale=scale), [table])
        selector, diag = branch.selectors[0], FilterDiagnostics(branch, every=1)
        diag.arm(0)
        scores = scale * F.normalize(u, dim=-1) @ F.normalize(selector.proj(table), dim=-1).T   # (5, 30)
        diag.record_filter(0, u, selector, table, scores.argmax(-1, keepdim=True))
        effective[scale] = diag.summary({})["diagnostics"]["llm0"]["effective_tokens"]
        expected = torch.exp(-(scores.softmax(-1) * scores.log_softmax(-1)).sum(-1)).mean()
        assert effective[scale] == pytest.approx(expected.item(), rel=1e-5)
    assert effective[50.0] < effective[1.0] / 3


@pytest.mark.parametrize("user_vector", ["window", "causal"])
def test_lookup_selection_reads_the_row_of_each_windows_user(user_vector):
    """selection='lookup' (the positive control's pick handed over): the row of the window's own
    user, given by the model's users_of; window: one per window, causal: one per real position; no projection."""
    seqs, users = random_seqs(6), torch.tensor([4, 0, 9, 2, 2, 7])
    table = torch.randn(10, 12)                                        # one row per user 0..9
    model = tiny_model(BranchConfig(d=D_MODEL, names=["a"], selection="lookup", user_vector=user_vector,
                                    trainable_tables=False), [table]).eval()
    branch = model.branch
    with model.users_of(users):
        tokens, ids = branch.token_sets(torch.randn(6, MAX_LEN, D_MODEL), seqs)
    expected = users[:, None] if user_vector == "window" else users[:, None].expand_as(seqs)[seqs > 0][:, None]
    assert torch.equal(ids[0], expected) and torch.equal(tokens[0], table[expected])
    assert branch.selectors[0].cache.full_recomputes == 0 and branch.users is None   # users_of resets them


def test_lookup_without_user_ids_or_with_a_row_missing_is_a_clear_error():
    seqs = random_seqs(3)
    branch = build_branch(BranchConfig(d=D_MODEL, names=["a"], selection="lookup", trainable_tables=False),
                          [torch.randn(5, 12)]).eval()
    with pytest.raises(ConfigError, match=r"got no user ids for 3 windows; run it inside `with model.users_of\(users\):`"):
        branch(torch.randn(3, MAX_LEN, D_MODEL), seqs)
    branch.users = torch.tensor([0, 1, 5])
    with pytest.raises(ConfigError, match="user id 5 has no row in a 5-row table"):
        branch(torch.randn(3, MAX_LEN, D_MODEL), seqs)


def test_sharp_and_lookup_settings_are_checked():
    with pytest.raises(ConfigError, match="score_scale=0.0 must be > 0"):
        BranchConfig(score_scale=0.0)
    assert BranchConfig.for_protocol("faithful").score_scale == 1.0        # the authors' cosine
