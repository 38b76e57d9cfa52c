"""Fisher consensus: the diagonal Fisher, the merge, the file between rounds, the frozen round 2."""
from dataclasses import replace

import pytest
import torch
from test_mltfr import D_MODEL, DIMS, LLMS, random_seqs, tables_for, tiny_model

from mltfr.errors import ConfigError, DataError
from mltfr.models.fisher_merge import (
    consensus_state,
    fisher_diagonal,
    load_consensus,
    merge_experts,
    merge_round1,
    per_expert,
    save_consensus,
)
from mltfr.models.mltfr import BranchConfig, attach, build_branch
from mltfr.models.variant_branch import variant_config


def windows(n, seed):
    """(n, L+1) training windows."""
    seqs = random_seqs(n, seed)
    return torch.cat([seqs, random_seqs(n, seed + 100)[:, -1:]], 1)


def round1_model():
    cfg, names = variant_config("mltfr", LLMS, BranchConfig(d=D_MODEL, pooling="batch"), dims=DIMS)
    return tiny_model(cfg, tables_for(names)), cfg, names


def test_merge_of_identical_experts_is_that_expert():
    expert = build_branch(BranchConfig(d=D_MODEL, names=["a"]), tables_for(["a"])).experts[0].state_dict()
    fishers = [{k: torch.rand_like(v) for k, v in expert.items()} for _ in range(3)]
    for merged in (merge_experts([expert] * 3, fishers), merge_experts([expert] * 3, None)):
        assert merged.keys() == expert.keys()
        assert all(torch.allclose(merged[k], expert[k], atol=1e-6) for k in expert)


def test_merge_follows_the_fisher_weights_by_hand():
    thetas = [{"w": torch.tensor([1.0, 2.0, 5.0])}, {"w": torch.tensor([3.0, 4.0, 7.0])}]
    fishers = [{"w": torch.tensor([1.0, 2.0, 0.0])}, {"w": torch.tensor([3.0, 0.0, 0.0])}]
    # (1*1 + 3*3) / 4 = 2.5;  (2*2 + 0*4) / 2 = 2;  no information anywhere: 0 / 1e-12 = 0
    assert torch.allclose(merge_experts(thetas, fishers)["w"], torch.tensor([2.5, 2.0, 0.0]))
    assert torch.allclose(merge_experts(thetas, None)["w"], torch.tensor([2.0, 3.0, 6.0]))
    with pytest.raises(ConfigError, match="at least two experts"):
        merge_experts(thetas[:1], None)


def test_fisher_is_the_mean_squared_batch_gradient_with_dropout_off():
    model, _, _ = round1_model()
    model.train()
    seen_modes = []

    def loss_fn(m, scale):   # gradient of out.bias of expert 1 is `scale` in every element
        seen_modes.append(m.training)
        return scale * m.branch.experts[1].out.bias.sum()

    fisher = fisher_diagonal(model, [1.0, 3.0], loss_fn)
    assert torch.allclose(fisher["branch.experts.1.out.bias"], torch.full((D_MODEL,), 5.0))  # (1+9)/2
    assert fisher["branch.experts.0.out.bias"].abs().sum() == 0
    assert seen_modes == [False, False] and model.training              # eval during, restored after
    assert all(name.startswith("branch.experts.") for name in fisher)


def squared_gradient_mean(model, batches, name, seed=0):
    """The Fisher of one parameter by hand: per batch, loss.backward() in eval mode (the backbone's
    loss, negatives from one generator seeded `seed`, global RNG seeded `seed`), grad ** 2, then
    the mean over batches."""
    param = dict(model.named_parameters())[name]
    gen = torch.Generator().manual_seed(seed)
    squares = []
    model.eval()
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for batch in batches:
            model.zero_grad()
            model.loss(batch, gen).backward()
            squares.append(param.grad.clone() ** 2)
    model.train()
    return torch.stack(squares).mean(0)


def test_fisher_with_the_backbone_loss_and_merge_of_the_group():
    model, cfg, _ = round1_model()
    batches = [windows(8, s) for s in range(3)]
    fisher = fisher_diagonal(model, batches, seed=0)
    assert len(fisher) == 3 * 8                                          # 3 experts x (4 Linear x w, b)
    assert model.branch.interp_stats()["n_positions"] == 0            # the pass does not record
    for name in ("branch.experts.0.value.weight", "branch.experts.2.out.bias"):
        by_hand = squared_gradient_mean(model, batches, name)
        assert by_hand.abs().sum() > 0
        torch.testing.assert_close(fisher[name], by_hand, rtol=1e-5, atol=0)
    assert per_expert(fisher, 3)[2]["key.weight"].shape == (D_MODEL, 20)
    merged = consensus_state(model, cfg.consensus_group, fisher)
    assert merged["key.weight"].shape == (D_MODEL, 12)


def test_round2_consensus_expert_stays_frozen_while_training(tmp_path):
    model, cfg, names = round1_model()
    merged, meta = merge_round1(model, [windows(8, 0)])
    assert meta == {"llms": ["a", "b"], "dim": 12, "d": D_MODEL, "method": "fisher"}
    path = tmp_path / "fisher.safetensors"
    save_consensus(path, merged, meta)
    state, meta = load_consensus(path, expect_llms=["a", "b"])
    assert meta["llms"] == ["a", "b"]
    with pytest.raises(DataError, match=r"merged from \['a', 'b'\], but round 2 uses the group \['a', 'c'\]"):
        load_consensus(path, expect_llms=["a", "c"])

    round2 = tiny_model(None, seed=1)
    attach(round2, build_branch(cfg, tables_for(names), shared_state=state))
    shared = round2.branch.shared
    before = {k: v.clone() for k, v in shared.state_dict().items()}
    assert all(torch.equal(before[k], merged[k]) for k in merged)
    assert not any(p.requires_grad for p in shared.parameters())
    opt = torch.optim.Adam(round2.parameters(), lr=0.01, weight_decay=0.1)
    for step in range(3):
        opt.zero_grad()
        round2.loss(windows(8, step), torch.Generator().manual_seed(step)).backward()
        opt.step()
    assert all(torch.equal(shared.state_dict()[k], before[k]) for k in before)
    assert not torch.equal(round2.branch.experts[0].value.weight, model.branch.experts[0].value.weight)


def test_the_consensus_expert_adds_lambda_s_times_its_output():
    _, cfg, names = round1_model()
    cfg = BranchConfig(**{**cfg.__dict__, "pooling": "user"})
    torch.manual_seed(0)
    state = build_branch(cfg, tables_for(names)).experts[0].state_dict()
    with_shared = build_branch(cfg, tables_for(names), shared_state=state).eval()
    without = build_branch(replace(cfg, consensus="none"), tables_for(names)).eval()
    without.load_state_dict({k: v for k, v in with_shared.state_dict().items() if not k.startswith("shared.")})
    h0, seqs = torch.randn(4, 8, D_MODEL), random_seqs(4)
    tokens, _ = with_shared.token_sets(h0, seqs)
    expected = without(h0, seqs) + cfg.lambda_s * with_shared.shared(h0, (tokens[0] + tokens[1]) / 2) * (seqs > 0)[..., None]
    assert torch.allclose(with_shared(h0, seqs), expected, atol=1e-6)


def test_bad_consensus_inputs_raise_clear_errors(tmp_path):
    _, cfg, names = round1_model()
    with pytest.raises(DataError, match="does not exist; run the Fisher step"):
        load_consensus(tmp_path / "missing.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match="unreadable"):
        load_consensus(tmp_path / "bad.safetensors")
    wrong = build_branch(cfg, tables_for(names)).experts[2].state_dict()   # a D=20 expert
    with pytest.raises(ConfigError, match="does not fit the consensus group"):
        build_branch(cfg, tables_for(names), shared_state=wrong)
    none_cfg, _ = variant_config("mltfr-noconsensus", LLMS, BranchConfig(d=D_MODEL))
    with pytest.raises(ConfigError, match="consensus is 'none'"):
        build_branch(none_cfg, tables_for(names), shared_state=wrong)


def test_merge_round1_mean_consensus_is_the_plain_mean_of_the_group():
    cfg, names = variant_config("mltfr-meanconsensus", LLMS, BranchConfig(d=D_MODEL), dims=DIMS)
    model = tiny_model(cfg, tables_for(names))
    merged, meta = merge_round1(model, batches=[])          # no Fisher pass needed for a mean
    experts = model.branch.experts
    assert meta["method"] == "mean"
    assert torch.allclose(merged["value.weight"], (experts[0].value.weight + experts[1].value.weight) / 2)
    cfg, names = variant_config("mltfr-noconsensus", LLMS, BranchConfig(d=D_MODEL))
    with pytest.raises(ConfigError, match="nothing to merge"):
        merge_round1(tiny_model(cfg, tables_for(names)), [])


def test_round1_carries_a_frozen_random_copy_of_the_first_group_expert():
    cfg, names = variant_config("mltfr", LLMS, BranchConfig(d=D_MODEL, consensus_group=[1, 0]), dims=DIMS)
    model = tiny_model(cfg, tables_for(names))
    branch = model.branch
    init = {k: v.clone() for k, v in branch.experts[1].state_dict().items()}   # group[0] = LLM b
    assert branch.group == [1, 0] and branch.shared.state_dict().keys() == init.keys()
    assert all(torch.equal(branch.shared.state_dict()[k], init[k]) for k in init)
    assert not any(p.requires_grad for p in branch.shared.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for step in range(2):
        opt.zero_grad()
        model.loss(windows(8, step), torch.Generator().manual_seed(step)).backward()
        opt.step()
    assert not torch.equal(branch.experts[1].value.weight, init["value.weight"])   # the expert trained
    assert all(torch.equal(branch.shared.state_dict()[k], init[k]) for k in init)  # its copy did not
    # its keys/values: the mean of the group's filtered tokens, added with lambda_s
    without = build_branch(replace(cfg, consensus="none"), tables_for(names)).eval()
    without.load_state_dict({k: v for k, v in branch.state_dict().items() if not k.startswith("shared.")})
    branch.eval()
    h0, seqs = torch.randn(4, 8, D_MODEL), random_seqs(4)
    tokens, _ = branch.token_sets(h0, seqs)
    consensus = cfg.lambda_s * branch.shared(h0, (tokens[0] + tokens[1]) / 2) * (seqs > 0)[..., None]
    assert consensus.abs().max() > 0
    assert torch.allclose(branch(h0, seqs), without(h0, seqs) + consensus, atol=1e-6)


def test_variants_without_consensus_have_no_consensus_expert():
    for variant in ("mltfr-noconsensus", "filter-a", "direct-b"):
        cfg, names = variant_config(variant, LLMS, BranchConfig(d=D_MODEL), dims=DIMS)
        assert build_branch(cfg, tables_for(names)).shared is None


def test_consensus_expert_stays_in_eval_mode_while_the_model_trains():
    cfg, names = variant_config("mltfr", LLMS, BranchConfig(d=D_MODEL, attn_dropout=0.5, out_dropout=0.5),
                                dims=DIMS)
    model = tiny_model(cfg, tables_for(names))
    model.train()
    shared = model.branch.shared
    assert model.branch.training and model.branch.experts[0].training and not shared.training
    h0, tokens = torch.randn(4, 8, D_MODEL), torch.randn(4, 2, 12)
    out = shared(h0, tokens)
    assert torch.equal(out, shared(h0, tokens))                          # no dropout draws
    assert not torch.equal(model.branch.experts[0](h0, tokens), model.branch.experts[0](h0, tokens))
    merged = {k: v + 1 for k, v in shared.state_dict().items()}
    round2 = tiny_model(None, seed=1)
    attach(round2, build_branch(cfg, tables_for(names), shared_state=merged))
    round2.train()
    assert not round2.branch.shared.training


def faithful_round1_model():
    base = BranchConfig.for_protocol("faithful", d=D_MODEL)    # Gumbel noise also in eval mode
    cfg, names = variant_config("mltfr", LLMS, base, dims=DIMS)
    return tiny_model(cfg, tables_for(names))


def test_fisher_pass_is_fixed_by_its_seed():
    model = faithful_round1_model()
    batches = [windows(8, s) for s in range(3)]
    torch.manual_seed(123)
    outside = torch.rand(3)
    torch.manual_seed(123)
    first = fisher_diagonal(model, batches, seed=5)
    assert torch.equal(torch.rand(3), outside)        # the caller's RNG stream is left as it was
    torch.manual_seed(999)                            # another global state: the same Fisher
    again = fisher_diagonal(model, batches, seed=5)
    other = fisher_diagonal(model, batches, seed=6)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)
