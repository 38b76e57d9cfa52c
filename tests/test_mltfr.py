"""The MLTFR branch: filtering, experts, router, pooling protocols, variants (small random tables)."""
import math

import pytest
import torch
import torch.nn.functional as F

from mltfr.errors import ConfigError
from mltfr.models import build_backbone
from mltfr.models.mltfr import (
    BranchConfig,
    PrototypeMap,
    TokenFilter,
    add_gumbel_noise_,
    attach,
    build_branch,
    cosine_scores,
    masked_mean,
    sample_softmax_ids,
    straight_through_topk,
)
from mltfr.models.variant_branch import default_consensus_group, variant_config, variant_names
from mltfr.spec.backbones import branch_defaults
from mltfr.spec.round_plan import needs_round2
from mltfr.spec.run_config import RunConfig
from mltfr.spec.variants import POSITIVE_CONTROLS
from mltfr.train.loop import make_optimizer

D_MODEL, MAX_LEN, N_ITEMS = 16, 8, 40
LLMS = ["a", "b", "c"]
DIMS = [12, 12, 20]


def tables_for(names):
    """Small random tables; `random-x` has x's shape (as the token-table layer guarantees)."""
    shapes = {"a": (50, 12), "b": (60, 12), "c": (70, 20)}
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(*shapes[n.removeprefix("random-")], generator=gen) for n in names]


def tiny_model(cfg=None, tables=None, seed=0):
    torch.manual_seed(seed)
    model = build_backbone("sasrec", N_ITEMS, {"d": D_MODEL, "max_len": MAX_LEN, "n_blocks": 2})
    if cfg is not None:
        attach(model, build_branch(cfg, tables))
    return model


def random_seqs(n, seed=1):
    """(n, MAX_LEN) left-padded sequences of 1..MAX_LEN items."""
    gen = torch.Generator().manual_seed(seed)
    seqs = torch.randint(1, N_ITEMS + 1, (n, MAX_LEN), generator=gen)
    lengths = torch.randint(1, MAX_LEN + 1, (n,), generator=gen)
    return seqs * (torch.arange(MAX_LEN) >= MAX_LEN - lengths[:, None])


def base_cfg(**kw):
    return BranchConfig(d=D_MODEL, **kw)


@pytest.mark.parametrize("variant", [v for v in variant_names(LLMS) if v not in POSITIVE_CONTROLS])
def test_every_variant_gives_b_l_d_and_trains(variant):   # (the planted table: tests/test_llm_planted.py)
    cfg, names = variant_config(variant, LLMS, base_cfg(), dims=DIMS)
    model = tiny_model(cfg, tables_for(names)) if cfg else tiny_model()
    seqs = random_seqs(6)
    assert model(seqs).shape == (6, MAX_LEN, D_MODEL)
    loss = model.loss(torch.cat([seqs, random_seqs(6, 2)[:, -1:]], 1), torch.Generator().manual_seed(0))
    loss.backward()
    assert math.isfinite(loss.item())
    if cfg is not None:   # (with K = 1 and user pooling one key: query/key get no gradient)
        assert model.branch.experts[0].value.weight.grad.abs().sum() > 0


def test_masked_mean_ignores_padding():
    h0 = torch.tensor([[[0.0, 0.0], [2.0, 4.0], [4.0, 8.0]]])          # first position is padding
    assert torch.allclose(masked_mean(h0, torch.tensor([[0, 5, 7]])), torch.tensor([[3.0, 6.0]]))


def test_straight_through_learn_forward_one_over_k_gradient_through_softmax():
    logits = torch.tensor([[0.0, math.log(2.0), 0.0]], requires_grad=True)  # y = 1/4, 1/2, 1/4
    idx, w = straight_through_topk(logits, K=1, tau=1.0, filter_grad="learn")
    assert idx.tolist() == [[1]] and w.item() == 1.0
    w.sum().backward()                      # d y_1 / d logits = y_1 (e_1 - y)
    assert torch.allclose(logits.grad, torch.tensor([[-0.125, 0.25, -0.125]]))
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0]], requires_grad=True)
    idx, w = straight_through_topk(scores, K=2, tau=0.5, filter_grad="learn")
    assert idx.tolist() == [[1, 2]] and torch.allclose(w, torch.tensor([[0.5, 0.5]]))
    w[0, 0].backward()          # = y_1 / 2 with y = softmax(2 * scores): grad = y_1 (e_1 - y) * 2 / 2
    y = torch.softmax(torch.tensor([0.0, 6.0, 4.0, 2.0]), 0)
    assert torch.allclose(scores.grad[0], y[1] * (torch.eye(4)[1] - y))


def test_straight_through_authors_weights_are_renormalised():
    """K = 1: w = y_st / (y_st + 1e-8) is exactly 1 in fp32 with an exactly zero gradient. K = 2:
    w_k = y_st_k / (S + 1e-8), so dL/dy_j = (g_j - (g_1 + g_2) / c) / c, c = 2 + 1e-8."""
    logits = torch.tensor([[0.0, math.log(2.0), 0.0]], requires_grad=True)
    idx, w = straight_through_topk(logits, K=1, tau=1.0)
    assert idx.tolist() == [[1]] and w.item() == 1.0
    w.sum().backward()
    assert torch.equal(logits.grad, torch.zeros(1, 3))
    scores = torch.tensor([[0.0, 3.0, 2.0, 1.0]], dtype=torch.float64, requires_grad=True)
    idx, w = straight_through_topk(scores, K=2, tau=0.5)
    assert idx.tolist() == [[1, 2]] and torch.allclose(w, torch.full((1, 2), 0.5, dtype=torch.float64))
    (3.0 * w[0, 0] + 1.0 * w[0, 1]).backward()                   # g = (3, 1)
    y = torch.softmax(torch.tensor([0.0, 6.0, 4.0, 2.0], dtype=torch.float64), 0)
    c = 2 + 1e-8
    grad_y = torch.tensor([3.0 - 4.0 / c, 1.0 - 4.0 / c], dtype=torch.float64) / c   # (1, -1) / 2
    jacobian = torch.stack([y[j] * (torch.eye(4, dtype=torch.float64)[j] - y) * 2 for j in (1, 2)])
    torch.testing.assert_close(scores.grad[0], grad_y @ jacobian)


def test_filter_picks_the_token_closest_to_the_user():
    filt = TokenFilter(dim=2, d=2)
    with torch.no_grad():
        filt.proj.weight.copy_(torch.eye(2))
        filt.proj.bias.zero_()
    table = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-1.0, -1.0]])
    x, idx = filt(torch.tensor([[0.1, 0.9], [2.0, -0.1]]), table, K=1, tau=0.5, noise=False)
    assert idx.tolist() == [[1], [0]]
    assert torch.allclose(x, torch.tensor([[[0.0, 3.0]], [[1.0, 0.0]]]))  # w = 1: raw LLM rows


def reference_filter(self, u, table, K, tau, noise, filter_grad="authors"):
    """TokenFilter.forward as the module docstring writes it, in plain autograd ops (full softmax,
    and for "authors" the one-hot straight-through and renormalisation of the authors' code).
    Same noise as the module for the same RNG state: one rand_like over the (B, |V|) scores, or
    at K = 1 with the authors' weights the module's sampler."""
    scores = F.normalize(u, dim=-1) @ F.normalize(self.proj(table), dim=-1).T      # (B, |V|)
    if noise and (filter_grad, K) == ("authors", 1):   # no gradient: the module's draw from softmax(s)
        idx = sample_softmax_ids(F.normalize(u, dim=-1).detach(), table.detach(), self.proj, K)
        y = torch.softmax(scores / tau, dim=-1)        # (whose law is tested against Gumbel-max)
    else:
        if noise:
            scores = scores + -torch.log(-torch.log(torch.rand_like(scores)))
        y = torch.softmax(scores / tau, dim=-1)
        idx = y.topk(K, dim=-1).indices                                           # (B, K)
    if filter_grad == "learn":
        y_k = y.gather(-1, idx)
        w = (y_k - y_k.detach() + 1.0) / K
    else:
        y_st = (torch.zeros_like(y).scatter_(1, idx, 1.0) - y).detach() + y
        w = y_st.gather(1, idx)
        w = w / (w.sum(-1, keepdim=True) + 1e-8)
    return w.unsqueeze(-1) * table[idx], idx                                     # (B, K, D)


def filter_outputs_and_grads(forward, filt, u, table, K, noise, filter_grad, seed=7):
    """(x, idx, grad u, grad weight, grad bias, grad table) of one call with a fixed random loss."""
    u, table = u.clone().requires_grad_(True), table.detach().clone().requires_grad_(table.requires_grad)
    filt.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    x, idx = forward(filt, u, table, K, 0.7, noise, filter_grad=filter_grad)
    weights = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    (x * weights).sum().backward()
    return x, idx, u.grad, filt.proj.weight.grad, filt.proj.bias.grad, table.grad


NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=NO_GPU)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("filter_grad, K", [("learn", 1), ("learn", 3), ("authors", 3)])
@pytest.mark.parametrize("noise", [False, True])
@pytest.mark.parametrize("learned", ["all", "frozen-table", "frozen-projection", "nothing"])
def test_fused_filter_matches_plain_autograd(filter_grad, K, noise, learned, device):
    """Forward values and the gradients for u, the projection and the table equal autograd's
    (authors at K = 1, where fp64 differs from fp32 by the 1e-8: its own test below)."""
    gen = torch.Generator().manual_seed(0)
    filt = TokenFilter(dim=12, d=6).double().to(device)
    filt.proj.requires_grad_(learned in ("all", "frozen-table"))
    table = torch.randn(300, 12, generator=gen, dtype=torch.float64)
    table[5] = 0.0                                          # a zero row: its norm is clamped to eps
    table = table.to(device).requires_grad_(learned in ("all", "frozen-projection"))
    u = torch.randn(9, 6, generator=gen, dtype=torch.float64).to(device)
    fused = filter_outputs_and_grads(TokenFilter.forward, filt, u, table, K, noise, filter_grad)
    plain = filter_outputs_and_grads(reference_filter, filt, u, table, K, noise, filter_grad)
    if learned != "nothing":                                 # else the cached projection (autograd) is used
        assert type(fused[0].grad_fn).__name__ == "FusedTokenFilterBackward"
    assert torch.equal(fused[1], plain[1])
    for mine, ref in zip(fused[:1] + fused[2:], plain[:1] + plain[2:]):
        assert (mine is None) == (ref is None)
        if ref is not None:
            torch.testing.assert_close(mine, ref, rtol=1e-9, atol=1e-12)
    if not noise:                                            # evaluation (no_grad, cache) picks the same
        with torch.no_grad():
            x, idx = filt(u, table, K, 0.7, False, filter_grad=filter_grad)
        assert torch.equal(idx, fused[1]) and torch.allclose(x, fused[0])


@pytest.mark.parametrize("noise", [False, True])
def test_authors_weights_at_k1_train_only_the_selected_table_rows(noise):
    """fp32, K = 1: w = 1 has zero gradient, so u, the projection and the scores get none (None:
    no dense vocabulary backward runs) and the table gets exactly the autograd reference's
    gradient, non-zero at the selected rows only."""
    gen = torch.Generator().manual_seed(0)
    filt, table = TokenFilter(dim=12, d=6), torch.randn(300, 12, generator=gen).requires_grad_(True)
    u = torch.randn(9, 6, generator=gen)
    mine = filter_outputs_and_grads(TokenFilter.forward, filt, u, table, 1, noise, "authors")
    ref = filter_outputs_and_grads(reference_filter, filt, u, table, 1, noise, "authors")
    assert torch.equal(mine[1], ref[1]) and torch.equal(mine[0], ref[0])    # x = E[idx] exactly
    assert mine[2] is None and mine[3] is None and mine[4] is None          # u, weight, bias
    assert all(g.abs().max() == 0 for g in ref[2:5])                        # the reference: exact zeros
    torch.testing.assert_close(mine[5], ref[5], rtol=0, atol=0)
    picked = torch.zeros(300, dtype=torch.bool)
    picked[mine[1].flatten()] = True
    assert torch.equal(mine[5].abs().sum(1) > 0, picked)


def test_autocast_keeps_the_autograd_path():
    """Under autocast the filter runs autograd's ops in autocast's dtype, as before the fused path."""
    filt, table = TokenFilter(dim=12, d=6), torch.randn(50, 12)
    u = torch.randn(4, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x, idx = filt(u, table, 2, 0.5, True)
    assert type(x.grad_fn).__name__ != "FusedTokenFilterBackward" and idx.shape == (4, 2)
    x.float().sum().backward()
    assert filt.proj.weight.grad is not None and u.grad is not None


@pytest.mark.parametrize("filter_grad", ["authors", "learn"])
@pytest.mark.parametrize("pooling", ["user", "batch"])
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("trainable", [True, False])
def test_branch_trains_as_with_plain_autograd_filter(filter_grad, pooling, K, trainable, monkeypatch):
    """A float32 training forward/backward of the whole model: same output and every gradient
    (a gradient we skip, None, is exactly zero in the reference: authors' weights at K = 1)."""
    cfg = base_cfg(names=["a", "c"], pooling=pooling, K=K, trainable_tables=trainable, filter_grad=filter_grad)
    seqs = random_seqs(6)

    def run():
        model = tiny_model(cfg, tables_for(["a", "c"]))
        torch.manual_seed(3)                                  # same dropout and Gumbel noise
        out = model(seqs)
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(1))).sum().backward()
        return out, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    fused_out, fused_grads = run()
    monkeypatch.setattr(TokenFilter, "forward", reference_filter)
    plain_out, plain_grads = run()
    torch.testing.assert_close(fused_out, plain_out, rtol=1e-5, atol=1e-6)
    skipped = plain_grads.keys() - fused_grads.keys()
    assert fused_grads.keys() <= plain_grads.keys() and ("branch.table0" in fused_grads) == trainable
    assert {n.split(".")[-2] for n in skipped} == ({"proj"} if (filter_grad, K) == ("authors", 1) else set())
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads.get(name, torch.zeros_like(grad)), grad, rtol=1e-4, atol=1e-7,
                                   msg=name)


@pytest.mark.parametrize("K", [1, 2])
def test_softmax_sampler_has_the_law_of_gumbel_top_k(K):
    """sample_softmax_ids draws without replacement from softmax(s): the pick frequencies (first
    and second pick) equal those of top-K(s + Gumbel) within Monte-Carlo error."""
    torch.manual_seed(0)
    n, proj = 100_000, torch.nn.Linear(3, 3)
    with torch.no_grad():
        proj.weight.copy_(torch.eye(3))
        proj.bias.zero_()
    table = torch.randn(12, 3)
    u_n = F.normalize(torch.tensor([[1.0, 0.5, -0.2]]), dim=-1).expand(n, 3)
    mine = sample_softmax_ids(u_n, table, proj, K)                            # (n, K)
    scores = (u_n @ F.normalize(table, dim=-1).T).clone()                     # (n, 12)
    gumbel = add_gumbel_noise_(scores).topk(K, dim=-1).indices
    assert all(len(set(row)) == K for row in mine[:1000].tolist())
    for k in range(K):
        f_mine, f_gumbel = (torch.bincount(x[:, k], minlength=12) / n for x in (mine, gumbel))
        assert (f_mine - f_gumbel).abs().max() < 0.006                        # ~ 4 standard errors
    probs = torch.softmax(u_n[0] @ F.normalize(table, dim=-1).T, 0)
    assert (torch.bincount(mine[:, 0], minlength=12) / n - probs).abs().max() < 0.005


def test_gumbel_noise_has_the_gumbel_distribution():
    """scores - log(-log U) adds the same values as -log(-log U) did, so Gumbel(0, 1) noise."""
    torch.manual_seed(0)
    noise = add_gumbel_noise_(torch.zeros(400_000))
    torch.manual_seed(0)
    assert torch.equal(noise, torch.zeros(400_000) + -torch.log(-torch.log(torch.rand(400_000))))
    x = noise.double().sort().values
    gumbel_cdf = torch.exp(-torch.exp(-x))
    empirical = torch.arange(1, x.numel() + 1, dtype=torch.float64) / x.numel()
    assert (gumbel_cdf - empirical).abs().max() < 0.005                   # Kolmogorov-Smirnov
    assert abs(x.mean() - 0.5772) < 0.01 and abs(x.var() - math.pi ** 2 / 6) < 0.02


def test_blocked_cosine_scores_equal_one_matmul():
    gen = torch.Generator().manual_seed(0)
    u_n, proj_n = torch.randn(5, 8, generator=gen), torch.randn(23, 8, generator=gen)
    torch.testing.assert_close(cosine_scores(u_n, proj_n, block=7), u_n @ proj_n.T)


def test_blockwise_argmax_is_the_first_maximal_index_of_the_scores():
    """The evaluation pick at K = 1 is the first id with the largest score, across block
    boundaries; ties (equal rows, as zero rows or duplicate tokens) give the earlier id."""
    from mltfr.models.filter import cosine_argmax

    gen = torch.Generator().manual_seed(0)
    u_n, proj_n = torch.randn(64, 8, generator=gen), torch.randn(23, 8, generator=gen)
    proj_n[[3, 9, 20]] = 0.0                                          # ties at 0, below most maxima
    picks = (u_n @ proj_n.T).argmax(-1)                                # (64,)
    proj_n[15] = proj_n[picks[0]]                                      # row 0's pick, duplicated
    u_n[2] = 0.0                                                       # all scores 0: id 0
    expected = torch.from_numpy((u_n @ proj_n.T).numpy().argmax(-1))  # numpy: the first maximum
    for block in (1, 5, 7, 23, 512):
        assert torch.equal(cosine_argmax(u_n, proj_n, block=block), expected)
    assert expected[2] == 0 and expected[0] == min(picks[0], 15)
    topk = (u_n @ proj_n.T).topk(1, dim=-1).indices.squeeze(-1)        # the pick it replaces gives the
    real = torch.arange(64) != 2                                       # same rows where u is not zero
    assert torch.equal(proj_n[topk[real]], proj_n[expected[real]])


def test_prototypes_are_a_linear_map_over_the_vocabulary():
    table = torch.arange(6.0).view(3, 2)                            # |V| = 3, D = 2
    proto = PrototypeMap(vocab=3, n_prototypes=2)
    with torch.no_grad():
        proto.mix.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]]))
        proto.mix.bias.copy_(torch.tensor([0.5, 0.0]))
    # prototype 0 = row0 + row2 + 0.5 = [4.5, 6.5]; prototype 1 = 2 * row1 = [4, 6]
    assert torch.allclose(proto(table), torch.tensor([[[4.5, 6.5], [4.0, 6.0]]]))


def test_gradients_reach_tables_only_when_trainable_learn():
    for trainable in (True, False):
        cfg = base_cfg(names=["a", "b"], trainable_tables=trainable, filter_grad="learn")
        model = tiny_model(cfg, tables_for(["a", "b"]))
        model(random_seqs(8)).pow(2).sum().backward()
        branch = model.branch
        assert all(s.proj.weight.grad.abs().sum() > 0 for s in branch.selectors)
        table_params = [n for n, _ in branch.named_parameters() if n.startswith("table")]
        if trainable:
            assert table_params == ["table0", "table1"]
            assert branch.table0.grad.abs().sum() > 0
        else:
            assert table_params == [] and not branch.table0.requires_grad
            assert "branch.table0" not in model.state_dict()       # frozen tables stay out of checkpoints


def test_trainable_table_is_a_copy_of_the_callers_tensor():
    tables = tables_for(["a"])
    branch = build_branch(base_cfg(names=["a"]), tables)
    with torch.no_grad():
        branch.table0.add_(1.0)
    assert not torch.equal(branch.table0, tables[0])


@torch.no_grad()
def test_corrected_eval_is_deterministic_and_independent_of_the_batch():
    cfg = BranchConfig.for_protocol("corrected", d=D_MODEL, names=LLMS)
    model = tiny_model(cfg, tables_for(LLMS)).eval()
    seqs = random_seqs(128)
    full = model.user_representation(seqs)                              # (128, d)
    assert torch.equal(full, model.user_representation(seqs))
    single = torch.cat([model.user_representation(seqs[i:i + 1]) for i in range(128)])
    assert torch.allclose(single, full, atol=1e-5)
    perm = torch.randperm(128, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(model.user_representation(seqs[perm]), full[perm], atol=1e-5)


@torch.no_grad()
def test_faithful_batch_pooling_depends_on_the_batch():
    cfg = base_cfg(names=LLMS, pooling="batch", eval_noise=False)
    model = tiny_model(cfg, tables_for(LLMS)).eval()
    seqs = random_seqs(32)
    alone = model.user_representation(seqs[:1])
    in_batch = model.user_representation(seqs)[:1]
    assert (alone - in_batch).abs().max() > 1e-3
    noisy = tiny_model(BranchConfig.for_protocol("faithful", d=D_MODEL, names=LLMS), tables_for(LLMS)).eval()
    assert not torch.equal(noisy.user_representation(seqs), noisy.user_representation(seqs))


@pytest.mark.parametrize("table_decay", [0.0, 0.1])
def test_the_runs_weight_decay_does_not_reach_the_token_tables(table_decay):
    """Adam's coupled L2 moves a row with no data gradient by ~lr a step towards 0, so the run's
    (backbone's) weight decay on the tables would wear down every row the filter never picks. The
    tables get table_weight_decay instead: at 0 those rows stay exactly as loaded; set to the run's
    value (one Adam group, as before the rule) they all move."""
    model = tiny_model(base_cfg(names=["a"], table_weight_decay=table_decay), tables_for(["a"]))
    cfg = RunConfig(backbone="sasrec", protocol="corrected", seed=0, variant="mltfr", lr=0.01, weight_decay=0.1)
    opt = make_optimizer(model, cfg)
    table, start = model.branch.table0, model.branch.table0.detach().clone()
    assert sorted(g["weight_decay"] for g in opt.param_groups) == ([0.0, 0.1] if table_decay == 0 else [0.1])
    picked = torch.zeros(table.shape[0], dtype=torch.bool)
    for seed in (1, 2, 3):
        opt.zero_grad()
        model(random_seqs(4, seed)).sum().backward()
        picked |= table.grad.abs().sum(1) > 0                      # rows with a data gradient so far
        opt.step()
    moved = (table.detach() != start).any(1)
    assert (~picked).sum() > 30 and torch.equal(moved[picked], torch.ones(int(picked.sum()), dtype=torch.bool))
    assert (not moved[~picked].any()) if table_decay == 0 else bool(moved[~picked].all())


@pytest.mark.parametrize("fused_adam", [False, True])
@pytest.mark.parametrize("filter_grad, trainable", [("learn", False), ("authors", True)])
def test_projection_cache_follows_adam_steps(filter_grad, trainable, fused_adam):
    """Fused Adam does not bump version counters: the cache must still see the new projection
    (learn: the projection moved; authors at K = 1: the selected table rows moved, and the cache
    is kept across the training steps)."""
    cfg = base_cfg(names=["a"], trainable_tables=trainable, filter_grad=filter_grad)
    model = tiny_model(cfg, tables_for(["a"]))
    filt, table = model.branch.selectors[0], model.branch.table0
    first = filt.cache.get(table, filt.proj).clone()
    assert filt.cache.get(table, filt.proj) is filt.cache.proj_n and filt.cache.full_recomputes == 1
    opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=fused_adam)
    for seed in (1, 2):
        opt.zero_grad()
        model(random_seqs(4, seed)).sum().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        model(random_seqs(4))                                        # evaluation picks from the cache
        expected = F.normalize(filt.proj(table), dim=-1)
    assert not torch.allclose(expected, first)
    torch.testing.assert_close(filt.cache.proj_n, expected)
    assert filt.cache.full_recomputes == (2 if filter_grad == "learn" else 1)


def test_projection_cache_built_by_an_evaluation_is_refreshed_in_training():
    """A resumed run whose preempted epoch had no diagnostics step left builds the cache first in
    the evaluation (torch.inference_mode); training then moves the selected rows and refreshes it in
    place. Measured: ML-1M filter-smollm2 crashed there ("Inplace update to inference tensor")."""
    cfg = base_cfg(names=["a"], trainable_tables=True)              # the authors' filter at K = 1
    model = tiny_model(cfg, tables_for(["a"]))
    filt, table = model.branch.selectors[0], model.branch.table0
    with torch.inference_mode():
        model.eval()(random_seqs(4))                                 # the evaluation builds the cache
    assert filt.cache.full_recomputes == 1
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model.train()(random_seqs(4, 2)).sum().backward()
    opt.step()
    with torch.no_grad():                                            # the next armed diagnostics step
        refreshed = filt.normalised_projection(table)
        expected = F.normalize(filt.proj(table), dim=-1)
    assert filt.cache.rows_recomputed > 0 and filt.cache.full_recomputes == 1
    torch.testing.assert_close(refreshed, expected)


@torch.no_grad()
def test_interp_stats_count_tokens_and_router_weights():
    cfg = base_cfg(names=["a", "b"], router="mean", K=2)
    model = tiny_model(cfg, tables_for(["a", "b"])).eval()
    seqs = random_seqs(10)
    model(seqs)                                                      # outside recording(): nothing
    assert model.branch.interp_stats()["n_positions"] == 0
    with model.branch.recording():
        model(seqs)
    model(seqs)                                                      # after it: nothing either
    stats = model.branch.interp_stats(top=100)
    assert stats["router_weight"] == {"a": 0.5, "b": 0.5}
    assert stats["n_positions"] == int((seqs > 0).sum())
    assert sum(c for _, c in stats["top_tokens"]["a"]) == 10 * 2   # 10 users x K
    with model.branch.recording():
        model.train()
        model(seqs)                                                  # training does not record
    assert model.branch.interp_stats()["n_positions"] == 0


def test_softmax_router_weights_sum_to_one():
    branch = build_branch(base_cfg(names=LLMS), tables_for(LLMS))
    gates = branch.gates(torch.randn(3, 5, D_MODEL))
    assert gates.shape == (3, 5, 3) and torch.allclose(gates.sum(-1), torch.ones(3, 5))


def test_router_softmax_twice_is_softmax_of_the_softmax():
    branch = build_branch(base_cfg(names=LLMS), tables_for(LLMS))
    twice = build_branch(base_cfg(names=LLMS, router_softmax_twice=True), tables_for(LLMS))
    twice.load_state_dict(branch.state_dict())
    h0 = torch.randn(3, 5, D_MODEL) * 10
    once = branch.gates(h0)
    assert torch.allclose(twice.gates(h0), torch.softmax(once, -1))
    # flatter: the largest weight shrinks towards 1/M, never past e-fold apart
    assert (twice.gates(h0).amax(-1) < once.amax(-1)).all()
    assert (twice.gates(h0).amax(-1) / twice.gates(h0).amin(-1) <= math.e + 1e-5).all()


def test_branch_output_is_zero_at_padding():
    branch = build_branch(base_cfg(names=["a"]), tables_for(["a"]))
    seqs = random_seqs(5)
    out = branch(torch.randn(5, MAX_LEN, D_MODEL), seqs)
    assert out[seqs == 0].abs().max() == 0 and out[seqs > 0].abs().max() > 0


def test_variants_map_to_their_settings():
    base = base_cfg(K=3)
    cfg, names = variant_config("filter-b", LLMS, base)
    assert names == ["b"] and cfg.filtering and cfg.router == "mean" and cfg.consensus == "none" and cfg.K == 3
    cfg, names = variant_config("direct-c", LLMS, base)
    assert names == ["c"] and not cfg.filtering
    cfg, names = variant_config("mltfr-random", LLMS, base)
    assert names == ["random-a", "random-b", "random-c"] and cfg.consensus == "fisher"
    assert variant_config("mltfr-frozen", LLMS, base)[0].trainable_tables is False
    assert variant_config("mltfr-norouter", LLMS, base)[0].router == "mean"
    assert variant_config("mltfr", LLMS, base, dims=DIMS)[0].consensus_group == [0, 1]
    assert variant_config("base", LLMS, base) == (None, [])
    assert {v: needs_round2(v) for v in variant_names(LLMS) if needs_round2(v)} == {
        v: True for v in ["mltfr", "mltfr-nofilter", "mltfr-norouter", "mltfr-meanconsensus",
                          "mltfr-frozen", "mltfr-random", "mltfr-randomselect", "mltfr-learnfilter",
                          "mltfr-sharpfilter", "mltfr-causal"]}
    assert variant_config("mltfr-randomselect", LLMS, base)[0].selection == "random"
    assert variant_config("mltfr-learnfilter", LLMS, base)[0].filter_grad == "learn"
    sharp = variant_config("mltfr-sharpfilter", LLMS, base)[0]
    assert (sharp.filter_grad, sharp.score_scale, sharp.eval_noise) == ("learn", 50.0, False)
    assert sharp.consensus == "fisher" and sharp.selection == "guided"
    assert base.filter_grad == "authors" and base.selection == "guided" and base.user_vector == "window"
    causal = variant_config("mltfr-causal", LLMS, base_cfg(pooling="batch"))[0]
    assert (causal.user_vector, causal.pooling) == ("causal", "user")
    assert branch_defaults("fmlprec") == {"lambda_s": 0.05, "K": 10, "router_softmax_twice": True}
    assert branch_defaults("bert4rec")["router_softmax_twice"] is True
    assert branch_defaults("sasrec")["router_softmax_twice"] is False


def test_unknown_variant_lists_the_valid_names():
    with pytest.raises(ConfigError, match="valid variants: base, direct-a.*mltfr-random"):
        variant_config("mltfr-everything", LLMS, base_cfg())
    with pytest.raises(ConfigError, match="filter-zzz"):
        variant_config("filter-zzz", LLMS, base_cfg())


def test_consensus_group_errors_name_the_llms_and_dimensions():
    assert default_consensus_group(["x", "y", "z", "w"], [8, 4, 4, 8]) == [0, 3]   # tie: first
    with pytest.raises(ConfigError, match=r"no two LLMs share.*x \(D=8\), y \(D=4\)"):
        default_consensus_group(["x", "y"], [8, 4])
    with pytest.raises(ConfigError, match=r"mixes token dimensions: \[a \(D=12\), c \(D=20\)\]"):
        variant_config("mltfr", LLMS, base_cfg(consensus_group=[0, 2]), dims=DIMS)
    with pytest.raises(ConfigError, match=r"fewer than two LLMs: \[b \(D=12\)\]"):
        variant_config("mltfr", LLMS, base_cfg(consensus_group=[1]), dims=DIMS)
    # a variant without round 2 does not need a group
    assert variant_config("mltfr-noconsensus", ["x", "y"], base_cfg(), dims=[8, 4])[0] is not None


def test_bad_branch_settings_raise_config_error():
    with pytest.raises(ConfigError, match="pooling='users'"):
        BranchConfig(pooling="users")
    with pytest.raises(ConfigError, match="not divisible by n_heads"):
        BranchConfig(d=10)
    with pytest.raises(ConfigError, match="d=32 differs"):
        attach(tiny_model(), build_branch(BranchConfig(d=32, names=["a"]), tables_for(["a"])))


def test_make_branch_builds_from_named_tables():
    from mltfr.models.variant_branch import base_config, make_branch
    base = base_config("faithful", "fmlprec", D_MODEL, {"tau": 1.0})
    assert (base.pooling, base.eval_noise, base.K, base.lambda_s, base.tau) == ("batch", True, 10, 0.05, 1.0)
    assert base_config("corrected", "sasrec", D_MODEL, {"k": 3}).K == 3          # `--set branch.k=3`
    tables = dict(zip(["random-a", "random-b", "random-c"], tables_for(["a", "b", "c"])))
    branch = make_branch("mltfr-random", LLMS, tables, base)
    assert branch.names == ["random-a", "random-b", "random-c"] and branch.cfg.consensus_group == [0, 1]
    assert make_branch("base", LLMS, {}, base) is None
    with pytest.raises(ConfigError, match=r"needs the token tables of \['b'\]"):
        make_branch("filter-b", LLMS, tables, base)
    with pytest.raises(ConfigError, match="unknown branch setting"):
        base_config("corrected", "sasrec", D_MODEL, {"temperature": 1.0})


@pytest.mark.parametrize("backbone", ["sasrec-ce", "bert4rec", "gru4rec", "fmlprec"])
def test_branch_enters_every_backbone(backbone):
    cfg, names = variant_config("mltfr", LLMS, base_cfg(K=2), dims=DIMS)
    torch.manual_seed(0)
    model = attach(build_backbone(backbone, N_ITEMS, {"d": D_MODEL, "max_len": MAX_LEN}),
                   build_branch(cfg, tables_for(names)))
    seqs = random_seqs(4)
    assert model(seqs).shape == (4, MAX_LEN, D_MODEL)
    model.loss(torch.cat([seqs, random_seqs(4, 2)[:, -1:]], 1), torch.Generator().manual_seed(0)).backward()
    assert model.branch.selectors[0].proj.weight.grad.abs().sum() > 0


def test_faithful_batch_pooling_disables_length_sorting_and_uses_training_batches():
    """A faithful branch pools tokens over the batch: the evaluator must keep user order and use
    training-sized batches, so the evaluation batches are those of the authors' code."""
    from mltfr.models import build_backbone
    from mltfr.models.mltfr import BranchConfig, attach, build_branch
    from mltfr.spec.run_config import RunConfig
    from mltfr.train.loop import eval_user_block

    cfg = RunConfig(protocol="faithful", batch_size=64, eval_batch_size=1024)
    model = build_backbone("sasrec", 50, {"d": 8, "max_len": 6})
    assert model.left_padding_invariant and eval_user_block(model, cfg) == 1024
    tables = [torch.randn(40, 12)]
    attach(model, build_branch(BranchConfig.for_protocol("faithful", d=8, n_heads=2, names=["a"]), tables))
    assert model.batch_dependent and not model.left_padding_invariant
    assert eval_user_block(model, cfg) == 64
    attach(model, build_branch(BranchConfig.for_protocol("corrected", d=8, n_heads=2, names=["a"]), tables))
    assert model.left_padding_invariant and eval_user_block(model, cfg) == 1024
