"""The protocol ladder and the protocol-factor settings: their definitions (mltfr.spec.rungs) and
their runs through `mltfr train`.

The runs use tiny synthetic inputs (the ring dataset and a 12-d token table of test_fisher_cli)
and the single-LLM variant filter-a, whose branch has every branch factor (noise, pooling).
"""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from test_fisher_cli import FAST, inputs  # noqa: F401  (a fixture: the dataset and token tables)

from mltfr.cli import main
from mltfr.errors import ConfigError
from mltfr.spec import rungs as ladder
from mltfr.spec.run_config import RunConfig, apply_overrides

ORDER = ladder.DEFAULT_ORDER


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)


# ------------------------------------------------------------------ rung definitions
def test_ladder_is_torch_free():
    code = "import mltfr.spec.rungs, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def changed_settings(a: dict, b: dict) -> set:
    return {k for k in a.keys() | b.keys() if a.get(k, "unset") != b.get(k, "unset")}


@pytest.mark.parametrize("order", [ORDER, ("pooling", "user_vector", "holdout_valid", "selection")])
def test_each_rung_differs_from_its_previous_in_exactly_one_setting(order):
    all_rungs = ladder.rungs(order, alone=True)
    by_name = {r.name: r for r in all_rungs}
    assert [r.name for r in all_rungs[:len(order) + 1]] == ["faithful", *(f"rung-{f}" for f in order)]
    assert len(all_rungs) == 1 + 2 * len(order) and [r.index for r in all_rungs] == list(range(len(all_rungs)))
    for r in all_rungs[1:]:
        previous = by_name[r.previous]
        assert len(changed_settings(r.overrides, previous.overrides)) == 1, r.name
        assert r.overrides == ladder.overrides(r.name, order)
    assert ladder.overrides("alone-user_vector", order) == {"branch.pooling": "user",
                                                            "branch.user_vector": "causal"}


def resolved(c: RunConfig) -> tuple:
    """Every setting a run resolves by protocol, and its branch settings."""
    from mltfr.models.variant_branch import base_config

    return (c.selects_on, c.holds_out_valid, c.masks_history, c.max_epochs, c.uses_train_vocab,
            c.resolved_model, c.round1_length, c.shuffles_fisher, c.window_items,
            base_config(c.protocol, c.backbone, 64, c.branch, impl=c.backbone_impl))


@pytest.mark.parametrize("backbone", ["sasrec", "bert4rec", "fmlprec"])
def test_the_rung_before_user_vector_is_the_corrected_protocol(backbone):
    """Every setting the two protocols resolve differently, resolved the same; on
    round 1 of mltfr, where the round-1 budget and each backbone's branch quirks matter."""
    faithful = RunConfig(protocol="faithful", backbone=backbone, variant="mltfr")
    rung = apply_overrides(faithful, ladder.overrides("rung-holdout_valid"))
    corrected = RunConfig(protocol="corrected", backbone=backbone, variant="mltfr")
    assert resolved(rung) == resolved(corrected)
    assert all(a != b for a, b in zip(resolved(rung)[1:], resolved(faithful)[1:]))   # each one differs
    assert ladder.overrides("rung-user_vector") == {**ladder.overrides("rung-holdout_valid"),
                                                    "branch.user_vector": "causal"}
    assert ladder.rung("rung-pooling").record(ORDER) == {
        "name": "rung-pooling", "index": 3, "factors": ["selection", "eval_noise", "pooling"],
        "previous": "rung-eval_noise", "order": list(ORDER)}


def test_every_setting_resolved_by_protocol_is_a_factor():
    """A RunConfig setting left at None takes the protocol's value; each such setting (and
    model.impl, and the branch's protocol settings) is a ladder factor, so the ladder reaches
    the corrected protocol. epochs goes with the selection rule; consensus_file is not a setting."""
    import dataclasses

    by_protocol = {f.name for f in dataclasses.fields(RunConfig) if f.default is None}
    by_protocol = by_protocol - {"epochs", "consensus_file"} | {"model.impl", "branch.pooling", "branch.eval_noise"}
    assert by_protocol == {key for key, _ in ladder.FACTORS.values()} - {"branch.user_vector"}


@pytest.mark.parametrize("order, message", [
    (("selection", "noise"), r"unknown: \['noise'\]"),
    (("selection", "selection"), "must name distinct factors"),
    ((), "must name distinct factors"),
    (("user_vector", "pooling"), "sets user_vector without pooling before it.*put pooling earlier"),
    (("selection", "user_vector"), "sets user_vector without pooling before it"),
])
def test_bad_orders_are_config_errors(order, message):
    with pytest.raises(ConfigError, match=message):
        ladder.rungs(order)


def test_unknown_rung_names_the_rungs():
    with pytest.raises(ConfigError, match="'rung-pooling' is not a protocol-ladder rung.*rung-selection"):
        ladder.rung("rung-pooling", ("selection",))
    assert ladder.is_rung("rung-pooling") and ladder.is_rung("alone-user_vector")
    assert not ladder.is_rung("faithful") and not ladder.is_rung("rung-nothing")


# ------------------------------------------------------------------ protocol-factor settings
def evaluation_settings(cfg):
    """Every protocol setting a RunConfig resolves to (the branch's as the model builds it)."""
    from mltfr.models.variant_branch import base_config

    branch = base_config(cfg.protocol, cfg.backbone, 64, cfg.branch)
    return {"select_on": cfg.selects_on, "holdout_valid": cfg.holds_out_valid, "mask_history": cfg.masks_history,
            "epochs": cfg.max_epochs, "eval_noise": branch.eval_noise, "pooling": branch.pooling,
            "user_vector": branch.user_vector}


CORRECTED = {"select_on": "valid", "holdout_valid": True, "mask_history": True, "epochs": 200, "eval_noise": False,
             "pooling": "user", "user_vector": "window"}


@pytest.mark.parametrize("name, changed", [
    ("with-eval_noise", {"eval_noise": True}),
    ("with-pooling", {"pooling": "batch"}),
    ("with-eval_noise+pooling", {"eval_noise": True, "pooling": "batch"}),
    ("with-selection", {"select_on": "test", "epochs": 100}),      # the authors' rule with its 100 epochs
    ("with-mask_history", {"mask_history": False}),
    ("with-holdout_valid", {"holdout_valid": False}),
])
def test_a_factor_setting_is_corrected_with_that_factor_faithful(name, changed):
    setting = ladder.rung(name, ladder.default_order(name))
    cfg = apply_overrides(RunConfig(protocol=setting.start), setting.overrides)
    assert setting.start == "corrected" == setting.previous
    assert evaluation_settings(cfg) == {**CORRECTED, **changed}
    faithful = evaluation_settings(RunConfig(protocol="faithful"))
    assert all(faithful[key] == value for key, value in changed.items())   # each one the authors' value


def test_factor_settings_alone_then_together():
    settings = ladder.factor_settings(["eval_noise", "pooling"], together=True)
    assert [(s.name, s.index, s.factors) for s in settings] == [
        ("with-eval_noise", 1, ("eval_noise",)), ("with-pooling", 2, ("pooling",)),
        ("with-eval_noise+pooling", 3, ("eval_noise", "pooling"))]
    assert [s.name for s in ladder.factor_settings(["pooling"], together=True)] == ["with-pooling"]
    assert settings[1].record(("eval_noise", "pooling")) == {
        "name": "with-pooling", "index": 2, "factors": ["pooling"], "previous": "corrected",
        "order": ["eval_noise", "pooling"], "start": "corrected"}
    assert "start" not in ladder.rung("rung-pooling").record(ORDER)        # ladder records are unchanged
    assert ladder.is_rung("with-eval_noise+pooling") and ladder.is_factor_setting("with-selection")
    assert not ladder.is_factor_setting("with-user_vector") and not ladder.is_factor_setting("with-")
    assert [ladder.starts_from(n) for n in ("corrected", "with-pooling", "faithful", "rung-selection")] == [
        "corrected", "corrected", "faithful", "faithful"]
    # base has no LLM branch: evaluation noise and pooling do not act on it, selection does
    assert not ladder.acts_on(("eval_noise", "pooling"), has_branch=False)
    assert ladder.acts_on(("eval_noise", "selection"), has_branch=False) and ladder.acts_on(("pooling",), True)
    with pytest.raises(ConfigError, match=r"must name distinct factors from .*\(unknown: \['user_vector'\]\)"):
        ladder.factor_settings(["eval_noise", "user_vector"])


# ------------------------------------------------------------------ ladder runs
def train(inputs, out, protocol, *extra, backbone="sasrec", variant="filter-a"):  # noqa: F811
    llm = [f"--llm=a={inputs / 'llm' / 'a'}"] if variant != "base" else []
    code = main(["train", "--data", str(inputs / "data"), "--out", str(out), "--backbone", backbone,
                 "--protocol", protocol, "--seed", "2", "--variant", variant, *FAST, *extra, *llm])
    assert code == 0
    result = json.loads((out / "result.json").read_text())
    with np.load(out / "ranks.npz") as z:
        return result, {k: z[k] for k in z.files if k.endswith(("_ranks", "_users"))}


@pytest.mark.parametrize("backbone, variant", [("sasrec", "filter-a"), ("pop", "base")])
def test_faithful_with_every_factor_corrected_equals_the_corrected_run(inputs, tmp_path, backbone,  # noqa: F811
                                                                       variant):
    rung, rung_ranks = train(inputs, tmp_path / "rung", "rung-holdout_valid", backbone=backbone, variant=variant)
    corrected, ranks = train(inputs, tmp_path / "corrected", "corrected", backbone=backbone, variant=variant)
    assert rung["metrics"] == corrected["metrics"] and rung["best_epoch"] == corrected["best_epoch"]
    assert rung_ranks.keys() == ranks.keys() == {"test_users", "test_ranks", "valid_users", "valid_ranks"}
    for key in ranks:
        np.testing.assert_array_equal(rung_ranks[key], ranks[key])
    assert (rung["protocol"], rung["select_on"], rung["holdout_valid"], rung["mask_history"]) == (
        "faithful", "valid", True, True)
    assert rung["rung"] == ladder.rung("rung-holdout_valid").record(ORDER) and corrected["rung"] is None
    if variant != "base":
        assert rung["branch"] == corrected["branch"] and rung["branch"]["pooling"] == "user"


def test_trace_test_under_evaluation_noise_leaves_the_run_unchanged(inputs, tmp_path):  # noqa: F811
    # rung-selection keeps the faithful Gumbel noise at evaluation: the traced test passes draw
    # noise too, and must not shift the training's random draws
    plain, plain_ranks = train(inputs, tmp_path / "plain", "rung-selection")
    traced, traced_ranks = train(inputs, tmp_path / "traced", "rung-selection", "--set", "trace_test=true")
    assert traced["branch"]["eval_noise"] and traced["select_on"] == "valid"
    assert traced["metrics"] == plain["metrics"] and traced["best_epoch"] == plain["best_epoch"]
    np.testing.assert_array_equal(traced_ranks["test_ranks"], plain_ranks["test_ranks"])
    rows = {name: list(csv.DictReader(open(tmp_path / name / "epochs.csv"))) for name in ("plain", "traced")}
    strip = lambda row: {k: v for k, v in row.items() if k.startswith("valid_") or k == "train_loss"}  # noqa: E731
    assert [strip(r) for r in rows["traced"]] == [strip(r) for r in rows["plain"]]
    assert all(r["test_hr@20"] for r in rows["traced"]) and "test_hr@20" not in rows["plain"][0]
    assert traced["rung"]["previous"] == "faithful" and traced["holdout_valid"] is False


def test_a_factor_setting_run_and_base_under_branch_factors(inputs, tmp_path):  # noqa: F811
    noisy, _ = train(inputs, tmp_path / "noisy", "with-eval_noise+pooling")
    assert (noisy["protocol"], noisy["select_on"], noisy["holdout_valid"], noisy["mask_history"]) == (
        "corrected", "valid", True, True)
    assert (noisy["branch"]["eval_noise"], noisy["branch"]["pooling"]) == (True, "batch")
    assert noisy["rung"] == {"name": "with-eval_noise+pooling", "index": 3, "factors": ["eval_noise", "pooling"],
                             "previous": "corrected", "order": ["eval_noise", "pooling"], "start": "corrected"}
    # base has no branch: the setting leaves its run as it is under corrected, so the study reuses it
    base, base_ranks = train(inputs, tmp_path / "base", "with-eval_noise+pooling", variant="base")
    corrected, ranks = train(inputs, tmp_path / "corrected", "corrected", variant="base")
    assert base["metrics"] == corrected["metrics"] and base["best_epoch"] == corrected["best_epoch"]
    np.testing.assert_array_equal(base_ranks["test_ranks"], ranks["test_ranks"])


@pytest.mark.parametrize("extra, message", [
    (["--protocol", "rung-selection", "--set", "select_on=test"], "--set changes a setting of rung rung-selection"),
    (["--protocol", "faithful", "--rung-order", "selection"], "rung order (--rung-order) applies to protocol-ladder rungs only"),
    (["--protocol", "rung-pooling", "--rung-order", "selection,eval_noise"], "'rung-pooling' is not a"),
    (["--protocol", "with-pooling", "--set", "branch.pooling=user"], "--set changes a setting of rung with-pooling"),
    (["--protocol", "with-pooling", "--rung-order", "eval_noise"], "'with-pooling' is not a"),
])
def test_contradicting_a_rung_is_a_one_line_error(inputs, tmp_path, capsys, extra, message):  # noqa: F811
    code = main(["train", "--data", str(inputs / "data"), "--out", str(tmp_path / "r"), "--backbone", "sasrec",
                 "--seed", "0", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("protocol, text", [
    ("rung-noise", "invalid choice: 'rung-noise'"), ("rung-selection --rung-order pooling,user", "unknown"),
    ("with-user_vector", "invalid choice: 'with-user_vector'"),
])
def test_unknown_rungs_and_orders_are_argument_errors(capsys, protocol, text):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", "d", "--out", "o", "--backbone", "sasrec", "--seed", "0",
              "--protocol", *protocol.split()])
    assert exit_.value.code == 2 and text in capsys.readouterr().err
