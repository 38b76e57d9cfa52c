"""Filter diagnostics: the formulas on hand-built cases, the branch/trainer hooks on tiny models,
and one real training epoch on Pantry with the packaged MiniLM tables (result.json)."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from mltfr.cli import main
from mltfr.data import Prepared, load_prepared, make_split
from mltfr.models import build_backbone
from mltfr.models.diagnostics import (
    DIAGNOSTIC_KEYS,
    FilterDiagnostics,
    agreement_count,
    attach_diagnostics,
    effective_tokens,
    router_entropy,
    table_drift,
)
from mltfr.models.mltfr import BranchConfig, TokenFilter, attach, build_branch
from mltfr.spec import report_outputs as outputs
from mltfr.spec.run_config import RunConfig
from mltfr.train.batching import train_windows
from mltfr.train.loop import Trainer
from mltfr.train.seed import seed_everything

D_MODEL, MAX_LEN, N_ITEMS = 16, 8, 40


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


def test_effective_tokens_is_exp_entropy():
    probs = torch.tensor([[0.25, 0.25, 0.25, 0.25], [0.5, 0.25, 0.25, 1e-30]])
    # uniform over 4 -> 4; (1/2, 1/4, 1/4) -> H = 1.5 ln 2 -> 2^1.5
    assert effective_tokens(probs.log()).tolist() == pytest.approx([4.0, 2 ** 1.5], rel=1e-5)
    assert effective_tokens(torch.tensor([[50.0, 0.0, 0.0]])).item() == pytest.approx(1.0, abs=1e-12)


def test_agreement_counts_picks_in_the_noiseless_top_k():
    scores = torch.tensor([[0.9, 0.1, 0.5, 0.0], [0.0, 0.2, 0.1, 0.8]])
    assert agreement_count(scores, torch.tensor([[0], [3]])) == 2          # both argmax
    assert agreement_count(scores, torch.tensor([[1], [3]])) == 1
    assert agreement_count(scores, torch.tensor([[2, 1], [3, 1]])) == 3    # top-2 {0, 2} and {3, 1}


def test_a_pick_tied_with_others_counts_as_the_chance_a_random_tie_break_keeps_it():
    """Rows worn to the same vector score alike: a pick among t tied maxima is the argmax in 1/t of
    the tie-breaks, not always (a zeroed table would otherwise look like a filter that chooses)."""
    scores = torch.tensor([[0.5, 0.5, 0.5, 0.5, 0.1], [0.9, 0.3, 0.3, 0.3, 0.0]])
    assert agreement_count(scores, torch.tensor([[2], [0]])).item() == pytest.approx(1 / 4 + 1)
    assert agreement_count(scores, torch.tensor([[4], [1]])).item() == 0
    # top-2 of row 2: 0.9, then one of three tied at 0.3 -> a tied pick counts 1/3
    assert agreement_count(scores[1:], torch.tensor([[0, 2]])).item() == pytest.approx(1 + 1 / 3)
    assert agreement_count(scores[:1], torch.tensor([[0, 1]])).item() == pytest.approx(2 * 2 / 4)


def test_router_entropy_ignores_padding_and_is_log_m_for_uniform():
    gates = torch.tensor([[[0.5, 0.5], [1.0, 0.0], [0.9, 0.1]]])           # (B=1, L=3, M=2)
    total, count = router_entropy(gates, torch.tensor([[0, 4, 7]]))       # first is padding
    assert count == 2 and total.item() == pytest.approx(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1)))
    total, count = router_entropy(torch.full((2, 4, 3), 1 / 3), torch.ones(2, 4, dtype=torch.long))
    assert total.item() / count.item() == pytest.approx(math.log(3), rel=1e-6)


def test_table_drift_is_rms_change_over_std():
    initial = torch.tensor([[1.0, 3.0], [1.0, 3.0]])                      # std (ddof 1) = 2 / sqrt(3)
    assert table_drift(initial.clone(), initial) == 0.0
    assert table_drift(initial + 0.5, initial) == pytest.approx(0.5 / (2 / math.sqrt(3)), rel=1e-6)


def tiny_model(cfg: BranchConfig, tables, seed=0):
    torch.manual_seed(seed)
    model = build_backbone("sasrec", N_ITEMS, {"d": D_MODEL, "max_len": MAX_LEN, "n_blocks": 1})
    return attach(model, build_branch(cfg, tables))


def windows(n, seed=1):
    """(n, MAX_LEN + 1) left-padded training windows of 2..MAX_LEN+1 items."""
    gen = torch.Generator().manual_seed(seed)
    seqs = torch.randint(1, N_ITEMS + 1, (n, MAX_LEN + 1), generator=gen)
    lengths = torch.randint(2, MAX_LEN + 2, (n,), generator=gen)
    return seqs * (torch.arange(MAX_LEN + 1) >= MAX_LEN + 1 - lengths[:, None])


def test_record_filter_matches_a_direct_computation():
    """Picks equal to the noiseless argmax agree fully, the argmin never; effective tokens as
    computed by hand from the same user vectors and projection."""
    torch.manual_seed(0)
    table, u, selector = torch.randn(30, 12), torch.randn(5, D_MODEL), TokenFilter(12, D_MODEL)
    branch = build_branch(BranchConfig(d=D_MODEL), [table])
    diag = FilterDiagnostics(branch, every=1)
    diag.arm(0)
    scores = F.normalize(u, dim=-1) @ F.normalize(selector.proj(table), dim=-1).T   # (5, 30)
    diag.record_filter(0, u, selector, table, scores.argmax(-1, keepdim=True))
    diag.record_filter(0, u, selector, table, scores.argmin(-1, keepdim=True))
    out = diag.summary({})["diagnostics"]["llm0"]
    expected = torch.exp(-(scores.softmax(-1) * scores.log_softmax(-1)).sum(-1)).mean()
    assert out["effective_tokens"] == pytest.approx(expected.item(), rel=1e-5)
    assert 1 < out["effective_tokens"] < 30 and out["vocab"] == 30
    assert out["argmax_agreement"] == 0.5                                  # 5 of 10 picks
    assert out["distinct_selected"] == len(set(scores.argmax(-1).tolist()) | set(scores.argmin(-1).tolist()))


def test_leading_dims_of_a_per_position_user_are_flattened():
    torch.manual_seed(0)
    table, u, selector = torch.randn(30, 12), torch.randn(2, 3, D_MODEL), TokenFilter(12, D_MODEL)
    diag = FilterDiagnostics(build_branch(BranchConfig(d=D_MODEL, K=2), [table]), every=1)
    diag.arm(0)
    scores = F.normalize(u, dim=-1) @ F.normalize(selector.proj(table), dim=-1).T   # (2, 3, 30)
    diag.record_filter(0, u, selector, table, scores.topk(2).indices)              # (2, 3, 2)
    assert diag.users.item() == 6 and diag.summary({})["diagnostics"]["llm0"]["argmax_agreement"] == 1.0


def train_steps(model, diag, n_steps):
    """n_steps Adam steps with diagnostics armed as the trainer arms them."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for step in range(n_steps):
        diag.arm(step)
        opt.zero_grad(set_to_none=True)
        model.loss(windows(16, seed=step), gen).backward()
        diag.record_gradients(model.branch)
        opt.step()


@pytest.mark.parametrize("filter_grad", ["authors", "learn"])
def test_hooks_sample_every_nth_step_and_reset(filter_grad):
    gen = torch.Generator().manual_seed(0)
    cfg = BranchConfig(d=D_MODEL, names=["a", "b"], filter_grad=filter_grad)
    model = tiny_model(cfg, [torch.randn(50, 12, generator=gen), torch.randn(60, 12, generator=gen)])
    diag = attach_diagnostics(model, every=3)
    train_steps(model, diag, 7)
    out = diag.summary({"a": 0.1})
    assert set(out) == {"diagnostics", *outputs.RUN_DIAGNOSTICS} and outputs.DIAGNOSTIC_KEYS == DIAGNOSTIC_KEYS
    assert out["diagnostics_steps"] == 3                                   # steps 0, 3, 6
    assert diag.users.tolist() == [48.0, 48.0]                             # 3 steps x 16 users
    assert 0 <= out["router_entropy"] <= math.log(2)
    a = out["diagnostics"]["a"]
    assert set(a) == set(DIAGNOSTIC_KEYS) and a["table_drift"] == 0.1
    assert out["diagnostics"]["b"]["table_drift"] is None                  # no initial table given
    assert 1 <= a["effective_tokens"] <= 50 and 0 <= a["argmax_agreement"] <= 1
    assert 1 <= a["distinct_selected"] <= min(50, 7 * 16)
    # the authors' weights at K = 1 are constant: no gradient ever reaches the projection
    assert (a["projection_grad_norm"] > 0) == (filter_grad == "learn")
    model.eval()
    with torch.no_grad():                                                  # evaluation records nothing
        model(windows(4)[:, 1:])
    assert diag.users.tolist() == [48.0, 48.0]
    diag.reset()
    empty = diag.summary({})
    assert empty["router_entropy"] is None and empty["diagnostics"]["a"]["distinct_selected"] is None


def test_prototypes_report_only_router_entropy_and_drift():
    cfg = BranchConfig(d=D_MODEL, filtering=False, router="mean", names=["a", "b"])
    model = tiny_model(cfg, [torch.randn(50, 12), torch.randn(60, 12)])
    diag = attach_diagnostics(model, every=1)
    train_steps(model, diag, 2)
    out = diag.summary({"a": 0.2, "b": 0.3})
    assert out["router_entropy"] == pytest.approx(math.log(2), rel=1e-6)
    assert out["diagnostics"]["a"] == {"effective_tokens": None, "argmax_agreement": None,
                                       "distinct_selected": None, "projection_grad_norm": None,
                                       "table_drift": 0.2, "vocab": 50}


def test_diagnostics_draw_no_random_numbers():
    """The trained model does not depend on diagnostics_every: same state with and without."""
    gen = torch.Generator().manual_seed(0)
    tables = [torch.randn(50, 12, generator=gen)]
    states = []
    for every in (1, 1000):
        model = tiny_model(BranchConfig(d=D_MODEL), tables)
        torch.manual_seed(5)
        train_steps(model, attach_diagnostics(model, every), 3)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_trainer_keeps_the_last_epoch_only(tmp_path):
    """Two epochs: the accumulators hold one epoch's sampled steps (reset at each fresh epoch)."""
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 12, 100)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    prepared = Prepared(offsets=offsets, items=rng.integers(1, N_ITEMS + 1, offsets[-1]), n_items=N_ITEMS,
                        meta={"dataset": "toy"})
    split = make_split(prepared, "corrected", MAX_LEN)
    cfg = RunConfig.from_dict({"model": {"d": D_MODEL, "max_len": MAX_LEN, "n_blocks": 1}, "batch_size": 16,
                               "epochs": 2, "device": "cpu", "diagnostics_every": 2})
    model = tiny_model(BranchConfig(d=D_MODEL), [torch.randn(50, 12)])
    cpu = torch.device("cpu")
    trainer = Trainer(model, split, cfg, tmp_path, seed_everything(0, cpu), cpu)
    trainer.fit()
    steps = -(-len(trainer.windows) // 16)
    assert trainer.state.epoch == 2 and trainer.diagnostics.steps == -(-steps // 2)
    sampled_users = sum(min(16, len(trainer.windows) - 16 * s) for s in range(0, steps, 2))
    assert trainer.diagnostics.users.item() == sampled_users


# ---------------------------------------------------------------- one real epoch on Pantry
LLMS = ("minilm", "paraphrase-minilm")
FAST = ["--set", "epochs=1", "model.d=16", "model.max_len=10", "--threads", "1"]


def pantry_inputs(repo, root):
    """Pantry prepared and the packaged MiniLM tables extracted, through the CLI, under `root`."""
    pantry = {"source": [{"path": str(repo / "data/amazon-pantry/train.txt.gz")},
                         {"path": str(repo / "data/amazon-pantry/test.txt.gz")}], "format": "mltfr-pair"}
    llms = {name: {"source": "package", "package": name} for name in LLMS}
    (root / "config.yaml").write_text(yaml.safe_dump({"datasets": {"pantry": pantry}, "llms": llms}))
    assert main(["prepare", "--config", str(root / "config.yaml"), "--dataset", "pantry",
                 "--out", str(root / "data")]) == 0
    for name in LLMS:
        assert main(["extract-llm", "--config", str(root / "config.yaml"), "--llm", name,
                     "--out", str(root / "llm" / name)]) == 0
    return root


@pytest.fixture(scope="module")
def inputs(repo, tmp_path_factory):
    return pantry_inputs(repo, tmp_path_factory.mktemp("diag"))


def train(root, variant, out, llms):
    assert main(["train", "--data", str(root / "data"), "--out", str(out), "--backbone", "sasrec",
                 "--protocol", "corrected", "--seed", "0", "--variant", variant, *FAST,
                 "--llm", *[f"{n}={root / 'llm' / n}" for n in llms]]) == 0
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("variant, llms", [("filter-minilm", LLMS[:1]), ("mltfr-frozen", LLMS)])
def test_one_pantry_epoch_writes_sane_diagnostics(inputs, tmp_path, variant, llms):
    result = train(inputs, variant, tmp_path / "run", llms)
    steps = -(-n_windows(inputs / "data") // 128)                          # batch 128
    assert result["diagnostics_steps"] == -(-steps // 10)                   # default every = 10
    assert 0 <= result["router_entropy"] <= math.log(len(llms)) + 1e-6
    for name in llms:
        diag = result["diagnostics"][name]
        assert diag["vocab"] == 30522 and 1 <= diag["effective_tokens"] <= diag["vocab"]
        assert 0 <= diag["argmax_agreement"] <= 1 and 1 <= diag["distinct_selected"] <= diag["vocab"]
        assert diag["projection_grad_norm"] == 0.0       # the authors' weights at K = 1: none reaches it
        if variant == "mltfr-frozen":
            assert diag["table_drift"] == 0.0
        else:
            assert 0 < diag["table_drift"] < 1


def n_windows(data):
    """Training windows of the prepared data under the runs' protocol and length."""
    split = make_split(load_prepared(data), "corrected", 10)
    return len(train_windows(split.train_offsets, split.train_items, 10))
