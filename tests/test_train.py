"""Trainer: config checks, windows, seeding, resume == uninterrupted, NaN, SIGTERM, results."""
import csv
import json
import os
import signal

import numpy as np
import pytest
import torch

from mltfr.data import make_split
from mltfr.data.prepared import Prepared
from mltfr.errors import ConfigError, DataError, MltfrError
from mltfr.evaluate import wins_majority
from mltfr.spec.run_config import RunConfig, apply_overrides
from mltfr.study.config import load_train_section
from mltfr.train.batching import train_windows, window_users
from mltfr.train.loop import Preempted, Trainer
from mltfr.train.run import build_trainer, split_for_run, train_and_evaluate


@pytest.fixture(autouse=True)
def one_thread():
    torch.set_num_threads(1)   # the machine is shared; tiny models gain nothing from threads


def toy_prepared(n_users=120, n_items=40, seed=0) -> Prepared:
    """Users walk the item ring from a random start: a pattern SASRec learns within epochs."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 15, n_users)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    start = np.repeat(rng.integers(0, n_items, n_users), lengths)
    items = (start + np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)) % n_items + 1
    return Prepared(offsets=offsets, items=items.astype(np.int64), n_items=n_items,
                    meta={"dataset": "toy", "prepared_sha256": "0" * 64})


def tiny_cfg(**extra) -> RunConfig:
    values = {"backbone": "sasrec", "model": {"d": 8, "max_len": 8}, "batch_size": 16,
              "epochs": 3, "patience": 5, "device": "cpu", **extra}
    return RunConfig.from_dict(values)


def run(tmp_path, name, cfg, **kw):
    split = split_for_run(toy_prepared(), cfg)
    return train_and_evaluate(split, cfg, tmp_path / name, toy_prepared().meta, **kw)


def loss_columns(path):
    rows = [line.split(",") for line in path.read_text().splitlines()]
    assert rows[0][-1] == "selected"
    seconds = rows[0].index("seconds")
    return [[v for i, v in enumerate(r) if i != seconds] for r in rows]


# ------------------------------------------------------------------ config
def test_config_unknown_key_and_wrong_type():
    with pytest.raises(ConfigError, match="unknown key 'learning_rate'"):
        RunConfig.from_dict({"learning_rate": 0.1})
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int or null, got '3'"):
        RunConfig.from_dict({"epochs": "3"})
    with pytest.raises(ConfigError, match="protocol='both' is invalid"):
        RunConfig.from_dict({"protocol": "both"})


def test_overrides_parse_values_and_nested_keys():
    cfg = apply_overrides(RunConfig(), ["lr=5e-4", "model.d=32", "mask_history=false", "branch.k=10"])
    assert (cfg.lr, cfg.model.d, cfg.mask_history, cfg.branch) == (5e-4, 32, False, {"k": 10})
    assert RunConfig().model.d == 64                      # defaults untouched
    with pytest.raises(ConfigError, match="unknown key 'dd'"):
        apply_overrides(RunConfig(), ["model.dd=3"])
    with pytest.raises(ConfigError, match="must look like key=value"):
        apply_overrides(RunConfig(), ["epochs"])


FAITHFUL_SELECTION = "best-epoch-on-test-not-worse-on-3-of-hr@20/precision@20/recall@20/ndcg@20 (faithful)"


def test_protocol_defaults_for_history_mask_selection_and_budget():
    faithful, corrected = RunConfig(protocol="faithful"), RunConfig(protocol="corrected")
    assert (faithful.masks_history, corrected.masks_history) == (False, True)
    assert faithful.selection == FAITHFUL_SELECTION
    assert corrected.selection == "early-stopping-on-valid-ndcg@10 (corrected)"
    assert (faithful.epochs, faithful.max_epochs, corrected.max_epochs) == (None, 100, 200)
    assert RunConfig(protocol="faithful", epochs=7).max_epochs == 7      # an explicit budget wins
    assert apply_overrides(corrected, ["protocol=faithful"]).max_epochs == 100   # resolved late
    with pytest.raises(ConfigError, match="train.epochs=0 is invalid"):
        RunConfig(epochs=0)


def test_selection_and_holdout_default_by_protocol_and_can_be_set():
    faithful, corrected = RunConfig(protocol="faithful"), RunConfig(protocol="corrected")
    assert (faithful.selects_on, faithful.holds_out_valid) == ("test", False)
    assert (corrected.selects_on, corrected.holds_out_valid) == ("valid", True)
    ladder = apply_overrides(faithful, ["select_on=valid", "holdout_valid=true"])
    # the budget follows the selection rule: early stopping on valid runs up to 200, as corrected
    assert (ladder.selects_on, ladder.holds_out_valid, ladder.max_epochs) == ("valid", True, 200)
    assert ladder.selection == "early-stopping-on-valid-ndcg@10 (faithful)"   # follows select_on
    assert apply_overrides(corrected, ["select_on=test"]).selection == FAITHFUL_SELECTION.replace(
        "(faithful)", "(corrected)")
    with pytest.raises(ConfigError, match=r"train.select_on='best' is invalid: expected one of test, valid"):
        RunConfig(select_on="best")
    with pytest.raises(ConfigError, match=r"override.holdout_valid: expected bool or null, got 'no'"):
        apply_overrides(faithful, {"holdout_valid": "no"})


def test_train_section_of_study_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("datasets: {}\ntrain:\n  epochs: 7\n  model: {d: 16}\n")
    assert RunConfig.from_dict(load_train_section(path)).model.d == 16
    path.write_text("train: [1, 2]\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_train_section(path)


# ------------------------------------------------------------------ batching
def test_windows_keep_last_items_left_padded():
    offsets = np.array([0, 3, 4, 10, 12])
    items = np.arange(1, 13)
    w = train_windows(offsets, items, max_len=3)           # user 1 (one item) is dropped
    np.testing.assert_array_equal(w, [[0, 1, 2, 3], [7, 8, 9, 10], [0, 0, 11, 12]])
    np.testing.assert_array_equal(window_users(offsets), [0, 2, 3])   # each window's own user


# ------------------------------------------------------------------ runs
def test_same_seed_same_metrics_other_seed_differs(tmp_path):
    a = run(tmp_path, "a", tiny_cfg(epochs=2))
    b = run(tmp_path, "b", tiny_cfg(epochs=2))
    c = run(tmp_path, "c", tiny_cfg(epochs=2, seed=1))
    assert a["metrics"] == b["metrics"]
    assert a["metrics"] != c["metrics"]
    assert loss_columns(tmp_path / "a" / "epochs.csv") == loss_columns(tmp_path / "b" / "epochs.csv")


def best_epoch_by_majority(epochs: list[dict]) -> int:
    """The authors' rule over an epochs.csv: an epoch replaces the best when at least as good on 3
    of {HR, Precision, Recall, NDCG}@20 (one target per user: Precision = HR/20, Recall = HR)."""
    best_epoch, best = 0, None
    for row in epochs:
        hr, ndcg = float(row["test_hr@20"]), float(row["test_ndcg@20"])
        scores = {"hr@20": hr, "precision@20": hr / 20, "recall@20": hr, "ndcg@20": ndcg}
        if best is None or wins_majority(scores, best):
            best_epoch, best = int(row["epoch"]), scores
    return best_epoch


def test_result_fields_and_ranks(tmp_path):
    res = run(tmp_path, "r", tiny_cfg(protocol="faithful", epochs=2))
    saved = json.loads((tmp_path / "r" / "result.json").read_text())
    assert saved["metrics"] == res["metrics"] and set(saved["metrics"]) == {"test"}
    assert saved["selection"] == FAITHFUL_SELECTION and saved["eval_protocol"] == "full-ranking"
    assert saved["mask_history"] is False
    epochs = list(csv.DictReader(open(tmp_path / "r" / "epochs.csv")))
    assert saved["best_epoch"] == best_epoch_by_majority(epochs)        # the rule, replayed on the log
    assert [row["selected"] for row in epochs] == [
        FAITHFUL_SELECTION if int(row["epoch"]) == saved["best_epoch"] else "" for row in epochs]
    best = saved["best_selection_score"]
    chosen = epochs[saved["best_epoch"] - 1]
    assert (best["test_hr@20"], best["test_ndcg@20"]) == (float(chosen["test_hr@20"]), float(chosen["test_ndcg@20"]))
    assert set(best) == {"test_hr@20", "test_precision@20", "test_recall@20", "test_ndcg@20"}
    assert best["test_hr@20"] == best["test_recall@20"] == pytest.approx(20 * best["test_precision@20"])
    assert (saved["model"]["n_blocks"], saved["model"]["n_heads"], saved["model"]["d"]) == (2, 8, 8)
    assert saved["config"]["model"]["n_heads"] is None       # config keeps the overrides as given
    assert saved["epoch_budget"] == 2 and saved["epochs_run"] == 2
    for key in ("config", "seed", "protocol", "code_version", "dataset", "timings", "peak_memory_mb",
                "n_parameters"):
        assert key in saved
    assert saved["timings"]["sequences_per_s"] > 0 and len(saved["timings"]["per_epoch_s"]) == 2
    with np.load(tmp_path / "r" / "ranks.npz") as z:
        ranks = z["test_ranks"]
        assert set(z.files) == {"test_users", "test_ranks", "eval_protocol", "selection"}
        assert str(z["selection"]) == FAITHFUL_SELECTION and ranks.min() >= 1 and ranks.max() <= 40
    assert (ranks <= 10).mean() == pytest.approx(res["metrics"]["test"]["hr@10"])
    log = (tmp_path / "r" / "epochs.csv").read_text().splitlines()
    assert log[0].endswith(",selected") and log[saved["best_epoch"]].endswith(f",{FAITHFUL_SELECTION}")


def test_faithful_best_epoch_follows_the_majority_rule(tmp_path):
    res = run(tmp_path, "m", tiny_cfg(protocol="faithful", epochs=6))
    with open(tmp_path / "m" / "epochs.csv") as fh:
        rows = list(csv.DictReader(fh))
    best, best_epoch = {}, 0
    for row in rows:   # the authors' rule replayed on the logged test metrics
        hr, ndcg = float(row["test_hr@20"]), float(row["test_ndcg@20"])
        scores = {"hr@20": hr, "precision@20": hr / 20, "recall@20": hr, "ndcg@20": ndcg}
        if not best or wins_majority(scores, best):
            best, best_epoch = scores, int(row["epoch"])
    assert res["best_epoch"] == best_epoch and res["epochs_run"] == 6


@pytest.mark.parametrize("protocol", ["faithful", "corrected"])
def test_which_evaluation_replaces_the_best(tmp_path, protocol):
    split = make_split(toy_prepared(), protocol, 8)
    trainer = build_trainer(split, tiny_cfg(protocol=protocol), tmp_path / "t")
    assert trainer.improves({"anything": 0.0})                        # the first evaluation
    if protocol == "faithful":
        trainer.state.best_scores = {"hr@20": 0.3, "precision@20": 0.015, "recall@20": 0.3, "ndcg@20": 0.2}
        # same hits, worse NDCG: not worse on 3 of 4, so it replaces the best (the authors' rule)
        assert trainer.improves({"hr@20": 0.3, "precision@20": 0.015, "recall@20": 0.3, "ndcg@20": 0.1})
        assert not trainer.improves({"hr@20": 0.29, "precision@20": 0.0145, "recall@20": 0.29, "ndcg@20": 0.9})
    else:
        trainer.state.best_scores = {"ndcg@10": 0.2}
        assert not trainer.improves({"ndcg@10": 0.2}) and trainer.improves({"ndcg@10": 0.21})


def test_sampled_protocol_is_labelled(tmp_path):
    res = run(tmp_path, "s", tiny_cfg(epochs=1, sampled_negatives=100))
    assert res["eval_protocol"] == "sampled-100" and res["mask_history"] is None


@pytest.mark.parametrize("protocol", ["corrected", "faithful"])
def test_resume_after_stop_equals_uninterrupted(tmp_path, protocol):
    cfg = tiny_cfg(protocol=protocol, epochs=3)
    full = run(tmp_path, "full", cfg)
    assert run(tmp_path, "cut", cfg, stop_after_epoch=1) is None
    assert not (tmp_path / "cut" / "result.json").exists()
    resumed = run(tmp_path, "cut", cfg)
    assert resumed["metrics"] == full["metrics"] and resumed["best_epoch"] == full["best_epoch"]
    assert loss_columns(tmp_path / "cut" / "epochs.csv") == loss_columns(tmp_path / "full" / "epochs.csv")
    with np.load(tmp_path / "full" / "ranks.npz") as a, np.load(tmp_path / "cut" / "ranks.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize("protocol, keeps_last", [("corrected", False), ("faithful", True)])
def test_finished_checkpoint_is_slim_and_still_resumes_to_the_result(tmp_path, protocol, keeps_last):
    """Finished: no optimizer state, and the last-epoch weights only where the Fisher pass reads
    them (test selection); a kill between the checkpoint and result.json still reruns to it."""
    cfg = tiny_cfg(protocol=protocol, epochs=2)
    full = run(tmp_path, "r", cfg)
    saved = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert saved["state"]["finished"] and saved["optimizer"] is None
    assert (saved["model"] is not None) is keeps_last and saved["state"]["best_state"]
    (tmp_path / "r" / "result.json").unlink()
    again = run(tmp_path, "r", cfg)
    assert again["metrics"] == full["metrics"] and again["best_epoch"] == full["best_epoch"]


def test_resume_with_other_config_refused(tmp_path):
    run(tmp_path, "x", tiny_cfg(epochs=2), stop_after_epoch=1)
    with pytest.raises(ConfigError, match=r"different config \(lr: .*delete the run folder"):
        run(tmp_path, "x", tiny_cfg(epochs=2, lr=0.01))


def test_corrected_early_stopping(tmp_path):
    res = run(tmp_path, "e", tiny_cfg(epochs=50, patience=1, lr=1e-6))   # no progress: stops early
    assert res["early_stopped"] and res["epochs_run"] < 50
    assert res["epochs_run"] == res["best_epoch"] + 1
    assert set(res["metrics"]) == {"valid", "test"}


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    split = make_split(toy_prepared(), "corrected", 8)
    trainer = build_trainer(split, tiny_cfg(epochs=3), tmp_path / "n")
    trainer.fit(stop_after_epoch=1)
    with torch.no_grad():
        trainer.model.embed.item_emb.weight.fill_(float("nan"))
    with pytest.raises(MltfrError, match=r"loss became nan in epoch 2.*last good checkpoint \(epoch 1\)"):
        trainer.fit()
    saved = torch.load(tmp_path / "n" / "checkpoint.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1 and torch.isfinite(saved["model"]["embed.item_emb.weight"]).all()


def test_sigterm_saves_mid_epoch_and_resume_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = tiny_cfg(epochs=2)
    full = run(tmp_path, "full", cfg)
    step = Trainer.train_step
    calls = []

    def step_then_signal(self, seqs, users):
        calls.append(1)
        if len(calls) == 9:                                # in epoch 2 (7 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)
        return step(self, seqs, users)

    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    with pytest.raises(Preempted, match="received SIGTERM: checkpoint saved"):
        run(tmp_path, "cut", cfg)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL     # handler restored
    saved = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["state"]
    split = make_split(toy_prepared(), "corrected", 8)
    per_epoch = -(-len(train_windows(split.train_offsets, split.train_items, 8)) // 16)
    assert per_epoch == 7 and (saved["epoch"], saved["step"]) == (1, 9 - per_epoch)
    monkeypatch.setattr(Trainer, "train_step", step)
    assert run(tmp_path, "cut", cfg)["metrics"] == full["metrics"]


def test_damaged_checkpoint_is_a_data_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="checkpoint .* is unreadable.*delete it"):
        run(tmp_path, "d", tiny_cfg())


def test_allocator_keeps_freed_blocks_on_glibc():
    """The trainer's allocator setting takes effect on Linux/glibc and is idempotent."""
    import platform
    import sys

    from mltfr.train.allocator import keep_freed_memory
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc only")
    assert keep_freed_memory() is True and keep_freed_memory() is True


# ------------------------------------------------------------------ popularity (no trainable parameters)
def skewed_prepared(n_users=60, n_items=25, seed=3) -> Prepared:
    """Items drawn with probability ~ 1/id: skewed counts with many exact ties in the tail."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 12, n_users)
    p = 1.0 / np.arange(1, n_items + 1)
    items = rng.choice(np.arange(1, n_items + 1), size=lengths.sum(), p=p / p.sum())
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return Prepared(offsets=offsets, items=items.astype(np.int64), n_items=n_items,
                    meta={"dataset": "skewed", "prepared_sha256": "0" * 64})


def popularity_reference(prepared: Prepared, protocol: str) -> list[int]:
    """Test rank of each user's last item, item by item: 1 + #(other candidates counted >= it)."""
    held = 1 if protocol == "faithful" else 2
    seqs = [prepared.items[a:b].tolist() for a, b in zip(prepared.offsets[:-1], prepared.offsets[1:])]
    counts = [0] * (prepared.n_items + 1)
    for seq in seqs:
        for item in seq[:len(seq) - held]:
            counts[item] += 1
    ranks = []
    for seq in seqs:
        target, excluded = seq[-1], set(seq[:-1]) if protocol == "corrected" else set()
        others = [j for j in range(1, prepared.n_items + 1) if j != target and j not in excluded]
        ranks.append(1 + sum(counts[j] >= counts[target] for j in others))
    return ranks


@pytest.mark.parametrize("protocol", ["faithful", "corrected"])
def test_popularity_is_counted_once_and_ranked_by_the_protocol(tmp_path, protocol):
    prepared = skewed_prepared()
    cfg = tiny_cfg(backbone="pop", protocol=protocol)
    split = make_split(prepared, protocol, cfg.model.max_len)
    trainer = build_trainer(split, cfg, tmp_path / "p")
    assert trainer.optimizer is None and trainer.model.counts[0] == 0
    assert trainer.model.counts.sum() == len(split.train_items)
    res = train_and_evaluate(split, cfg, tmp_path / "p", prepared.meta)
    with np.load(tmp_path / "p" / "ranks.npz") as z:
        assert z["test_ranks"].tolist() == popularity_reference(prepared, protocol)
        assert str(z["selection"]) == f"no-training-counts-evaluated-once ({protocol})"
    assert (res["best_epoch"], res["epochs_run"], res["early_stopped"], res["n_parameters"]) == (0, 0, False, 0)
    assert res["selection"] == f"no-training-counts-evaluated-once ({protocol})"
    assert res["mask_history"] is (protocol == "corrected")
    assert set(res["metrics"]) == ({"test"} if protocol == "faithful" else {"valid", "test"})
    which = "test" if protocol == "faithful" else "valid"
    log = (tmp_path / "p" / "epochs.csv").read_text().splitlines()
    assert len(log) == 2 and log[1].startswith("0,,0.0,") and log[1].endswith(f",{res['selection']}")
    assert log[0].split(",")[3] == f"{which}_hr@5"
    # a rerun resumes the finished checkpoint: the same result
    assert train_and_evaluate(split, cfg, tmp_path / "p", prepared.meta)["metrics"] == res["metrics"]


def test_popularity_ties_rank_pessimistically():
    from mltfr.evaluate import rank
    from mltfr.models import build_backbone

    model = build_backbone("pop", 5)
    model.count(torch.tensor([1, 1, 2, 2, 3, 0]))          # counts 2, 2, 1, 0, 0 (0 = padding)
    evalset = make_split(Prepared(offsets=np.array([0, 2, 4, 6]), items=np.array([3, 1, 3, 2, 3, 4]),
                                  n_items=5, meta={}), "faithful", 4, train_vocab=False).test
    # targets 1 (tied with 2), 2 (tied with 1), 4 (tied with 5, below 1, 2 and 3)
    assert rank(model, evalset, mask_history=False, device="cpu").tolist() == [2, 2, 5]


@pytest.mark.parametrize("variant, extra", [("filter-minilm", {}), ("base", {"consensus_file": "c.safetensors"})])
def test_llm_branch_on_popularity_is_a_config_error(variant, extra):
    with pytest.raises(ConfigError, match=r"backbone 'pop' is a popularity ranking .* run it with --variant base"):
        tiny_cfg(backbone="pop", variant=variant, **extra)


def test_popularity_run_is_a_baseline_row_of_the_main_table(tmp_path):
    from mltfr.analysis.collect import collect_runs
    from mltfr.analysis.tables import main_table

    prepared = skewed_prepared()
    for backbone in ("pop", "sasrec"):
        cfg = tiny_cfg(backbone=backbone, protocol="faithful", epochs=1, seed=1)
        split = make_split(prepared, "faithful", cfg.model.max_len)
        train_and_evaluate(split, cfg, tmp_path / "skewed" / backbone / "base" / "faithful" / "seed1", prepared.meta)
    runs = collect_runs(tmp_path)
    pop = runs.query("backbone == 'pop'").iloc[0]
    assert (pop["block"], pop["best_epoch"], pop["n_params"]) == ("base", 0, 0)
    table = main_table(runs).tidy.query("metric == 'ndcg@10'").set_index(["backbone", "variant"])
    assert table.loc[("pop", "base"), "mean"] == pytest.approx(pop["test_ndcg@10"])
    assert list(table.index) == [("pop", "base"), ("sasrec", "base")]


# ------------------------------------------------------------------ protocol-ladder settings
def test_valid_selection_on_faithful_training_data_trains_on_the_validation_item(tmp_path):
    prepared = toy_prepared()
    cfg = tiny_cfg(protocol="faithful", select_on="valid", epochs=2)
    trainer = build_trainer(split_for_run(prepared, cfg), cfg, tmp_path / "v")
    valid = trainer.split.valid
    assert len(valid.users) == 120 and (valid.targets == prepared.items[prepared.offsets[1:] - 2]).all()
    # every window ends with the user's second-to-last item: the validation target is trained on
    lengths = np.diff(prepared.offsets)
    last_trained = trainer.windows[:, -1].numpy()
    assert (last_trained == valid.targets[lengths[valid.users] >= 3]).all()
    held = tiny_cfg(protocol="faithful", select_on="valid", holdout_valid=True)
    assert (build_trainer(split_for_run(prepared, held), held, tmp_path / "h").windows[:, -1].numpy()
            == prepared.items[prepared.offsets[1:] - 3][lengths >= 4]).all()


def test_valid_selection_without_a_validation_set_is_refused(tmp_path):
    cfg = tiny_cfg(protocol="faithful", select_on="valid")
    with pytest.raises(ConfigError, match="select_on valid needs a validation set.*split_for_run"):
        build_trainer(make_split(toy_prepared(), "faithful", 8), cfg, tmp_path / "n")


def test_trace_test_logs_test_metrics_without_changing_the_selection(tmp_path):
    plain = run(tmp_path, "plain", tiny_cfg(epochs=4))
    traced = run(tmp_path, "traced", tiny_cfg(epochs=4, trace_test=True))
    assert traced["metrics"] == plain["metrics"] and traced["best_epoch"] == plain["best_epoch"]
    with open(tmp_path / "traced" / "epochs.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert all(row["test_ndcg@10"] and row["valid_ndcg@10"] for row in rows)
    best = rows[traced["best_epoch"] - 1]   # the traced test row of the selected epoch = its test result
    assert float(best["test_ndcg@10"]) == pytest.approx(traced["metrics"]["test"]["ndcg@10"], rel=1e-12)
    assert "test_ndcg@10" not in (tmp_path / "plain" / "epochs.csv").read_text()
    assert (traced["select_on"], traced["holdout_valid"], traced["rung"]) == ("valid", True, None)
