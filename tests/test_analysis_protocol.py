"""Question 2's tables: MLTFR's own protocol factors on top of the corrected protocol
(protocol_factors) on a synthetic run tree written as the trainer writes it, and how often the
authors' reporting finds a gain in nothing (null_gains) on a constructed runs frame, each against
values computed by hand."""
from __future__ import annotations

import itertools
import zlib

import numpy as np
import pandas as pd
import pytest
from fixtures.results import branch_settings, metrics_of, result_document, write_run_folder

from mltfr.analysis.collect import collect_runs, protocol_runs
from mltfr.analysis.null_gains import null_gain_table, null_pairs
from mltfr.analysis.protocol_factors import protocol_factors_table
from mltfr.analysis.stats import StatsConfig
from mltfr.evaluate.metrics import per_user_metrics
from mltfr.spec import rungs as ladder

N_USERS = 60
CFG = StatsConfig(n_resamples=300)
# (variant, setting) -> seeds: base never runs with-eval_noise (no LLM branch: its corrected runs
# stand in), it runs with-selection (a factor that acts on it); mltfr ran faithful on 2 seeds only
SEEDS = {("base", "corrected"): (1, 2, 3), ("mltfr", "corrected"): (1, 2, 3),
         ("mltfr", "with-eval_noise"): (1, 2, 3), ("base", "with-selection"): (1, 2, 3),
         ("mltfr", "with-selection"): (1, 2, 3), ("base", "faithful"): (1, 2, 3), ("mltfr", "faithful"): (1, 2)}
# mltfr ranks each of the first half of the users this many places better than its draw
STEP = {"corrected": 1, "with-eval_noise": 3, "with-selection": 1, "faithful": 2}
FACTORS = ("eval_noise", "selection")


def ranks_of(variant: str, setting: str, seed: int) -> np.ndarray:
    """A draw per variant and seed, the same under every setting; mltfr moves STEP places on the
    first half of the users."""
    rng = np.random.default_rng(zlib.crc32(f"{variant}/{seed}".encode()))
    ranks = rng.integers(1, 20, N_USERS)
    if variant == "mltfr":
        ranks = np.where(np.arange(N_USERS) < N_USERS // 2, np.maximum(1, ranks - STEP[setting]), ranks)
    return ranks


def write_run(root, variant: str, setting: str, seed: int) -> None:
    protocol = "faithful" if setting == "faithful" else "corrected"
    rung = None
    if setting.startswith(ladder.WITH):
        rung = ladder.rung(setting, FACTORS).record(FACTORS)
    select_on = "test" if setting in ("faithful", "with-selection") else "valid"
    ranks = ranks_of(variant, setting, seed)
    result = result_document("alpha", "sasrec", variant, protocol, seed, metrics_of(ranks), rung=rung,
                             select_on=select_on, epoch_budget=100 if select_on == "test" else 200,
                             epochs_run=100 if select_on == "test" else 9, early_stopped=select_on == "valid")
    if variant != "base":
        result["branch"] = {**branch_settings(["x"]), "eval_noise": setting in ("faithful", "with-eval_noise")}
    write_run_folder(root, result, ranks)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("factors") / "runs"
    for (variant, setting), seeds in SEEDS.items():
        for seed in seeds:
            write_run(root, variant, setting, seed)
    return collect_runs(root)


def pooled(variant: str, setting: str, seeds) -> np.ndarray:
    """Per-user NDCG@10 averaged over seeds, by hand (users 0..N-1 in every run)."""
    return np.mean([per_user_metrics(ranks_of(variant, setting, s), (10,))["ndcg@10"] for s in seeds], axis=0)


def test_factor_runs_stay_out_of_the_study_tables(runs):
    assert set(runs.loc[runs["rung"].astype(str).str.startswith("with-"), "protocol"]) == {"corrected"}
    assert sorted(protocol_runs(runs)["rung"].fillna("-").unique()) == ["-", "faithful"]


def test_each_setting_changes_the_gain_against_corrected_by_the_hand_computed_value(runs):
    tidy = protocol_factors_table(runs, CFG).tidy.set_index(["variant", "setting"])
    assert list(tidy.index) == [("mltfr", "with-eval_noise"), ("mltfr", "with-selection"), ("mltfr", "faithful")]
    before = pooled("mltfr", "corrected", (1, 2, 3)) - pooled("base", "corrected", (1, 2, 3))
    # evaluation noise acts only in the LLM branch: base's corrected runs stand in for its setting
    noise = tidy.loc[("mltfr", "with-eval_noise")]
    now = pooled("mltfr", "with-eval_noise", (1, 2, 3)) - pooled("base", "corrected", (1, 2, 3))
    assert noise["reference_setting"] == "corrected" and noise["factors"] == "eval_noise"
    assert noise["gain"] == pytest.approx(now.mean()) and noise["gain_corrected"] == pytest.approx(before.mean())
    assert noise["delta_gain"] == pytest.approx((now - before).mean())
    assert noise["delta_gain"] == pytest.approx((pooled("mltfr", "with-eval_noise", (1, 2, 3))
                                                 - pooled("mltfr", "corrected", (1, 2, 3))).mean())
    assert noise["delta_gain_ci_low"] < noise["delta_gain"] < noise["delta_gain_ci_high"]
    assert noise["delta_gain_ci_low"] > 0          # 3 places better on half the users instead of 1
    # the selection rule acts on base too: base's own with-selection runs are the reference
    selection = tidy.loc[("mltfr", "with-selection")]
    now = pooled("mltfr", "with-selection", (1, 2, 3)) - pooled("base", "with-selection", (1, 2, 3))
    assert selection["reference_setting"] == "with-selection"
    assert selection["delta_gain"] == pytest.approx((now - before).mean())


def test_the_faithful_protocol_is_compared_on_matched_seeds_only(runs):
    row = protocol_factors_table(runs, CFG).tidy.set_index(["variant", "setting"]).loc[("mltfr", "faithful")]
    seeds = (1, 2)                                        # mltfr ran faithful on seeds 1 and 2 only
    now = pooled("mltfr", "faithful", seeds) - pooled("base", "faithful", seeds)
    before = pooled("mltfr", "corrected", seeds) - pooled("base", "corrected", seeds)
    assert row["n_seeds"] == 2 and row["n_users"] == N_USERS
    assert row["delta_gain"] == pytest.approx((now - before).mean())
    assert np.isnan(row["p_ttest"]) and row["mark"] == "n<3"        # two seeds: no t-test, no mark
    assert row["factors"] == "+".join(ladder.FAITHFUL_VALUES)


def test_the_factor_table_reads_without_factor_runs(runs):
    plain = protocol_runs(runs)
    table = protocol_factors_table(plain, CFG)
    assert list(table.tidy["setting"]) == ["faithful"]
    empty = protocol_factors_table(plain[plain["protocol"] == "corrected"], CFG)
    assert empty.tidy.empty and "no variant ran under corrected and under a faithful factor" in empty.caption


def test_a_gain_pairs_only_runs_that_trained_the_backbone_alike(runs):
    """Base retrained under faithful with the authors' backbone (model.impl) no longer pairs with
    the older faithful mltfr runs: the faithful row has no gain, and its note says why."""
    retrained = runs.copy()
    retrained.loc[(retrained["variant"] == "base") & (retrained["protocol"] == "faithful"), "impl"] = "authors"
    tidy = protocol_factors_table(retrained, CFG).tidy.set_index(["variant", "setting"])
    faithful = tidy.loc[("mltfr", "faithful")]
    assert faithful["n_seeds"] == 0 and np.isnan(faithful["delta_gain"])
    assert faithful["note"] == "seed(s) 1, 2 left out: the backbone settings differ (impl); retrain one side"
    assert tidy.loc[("mltfr", "with-eval_noise"), "n_seeds"] == 3         # the corrected runs stay alike


# ------------------------------------------------------------------ null gains
NDCG = {("base", 1): 0.100, ("base", 2): 0.1015, ("base", 3): 0.103, ("base", 4): 0.110,
        ("mltfr", 1): 0.106, ("mltfr", 2): 0.099, ("mltfr-randomselect", 1): 0.100, ("mltfr-randomselect", 2): 0.102}


def null_frame() -> pd.DataFrame:
    """Faithful runs with chosen NDCG@10 (HR@10 = 2 x NDCG@10), a corrected and a ladder run that
    must be left out, and a one-seed backbone that has no pair."""
    rows = [{"dataset": "alpha", "backbone": "sasrec", "variant": v, "protocol": "faithful", "seed": s,
             "rung": "faithful", "test_ndcg@10": value, "test_hr@10": 2 * value} for (v, s), value in NDCG.items()]
    rows += [{**rows[0], "protocol": "corrected", "rung": None, "test_ndcg@10": 0.5},
             {**rows[0], "rung": "rung-selection", "test_ndcg@10": 0.5},
             {**rows[0], "backbone": "pop", "test_ndcg@10": 0.5}]
    frame = pd.DataFrame(rows)
    return frame.assign(selection="best-epoch-on-test (faithful)", epoch_budget=100.0, epochs_run=100.0,
                        early_stopped=False, select_on="test")


def test_null_pairs_are_ordered_seed_pairs_of_base_and_every_mltfr_control_pair():
    pairs = null_pairs(null_frame())
    base = pairs[(pairs["comparison"] == "base vs base") & (pairs["metric"] == "ndcg@10")]
    assert sorted(zip(base["seed_method"], base["seed_baseline"])) == list(itertools.permutations(range(1, 5), 2))
    control = pairs[(pairs["comparison"] == "mltfr vs mltfr-randomselect") & (pairs["metric"] == "ndcg@10")]
    assert sorted(zip(control["seed_method"], control["seed_baseline"])) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    assert set(pairs["backbone"]) == {"sasrec"} and (pairs["method"] < 0.5).all()   # pop: one seed, no pair
    gain = base.set_index(["seed_method", "seed_baseline"])["gain_pct"]
    assert gain[(2, 1)] == pytest.approx(1.5) and gain[(1, 2)] == pytest.approx(-100 * 0.0015 / 0.1015)


def test_null_gain_shares_equal_the_hand_counted_ones():
    tidy = null_gain_table(null_frame()).tidy.set_index(["comparison", "metric"])
    base = tidy.loc[("base vs base", "ndcg@10")]
    # the 6 positive gains of the 12 ordered pairs: 1.5, 3.0, 10.0, 1.478, 8.374, 6.796 (%)
    assert base["n_pairs"] == 12 and (base["n_seeds_method"], base["n_seeds_baseline"]) == (4, 4)
    assert (base["share_ge_1pct"], base["share_ge_2pct"], base["share_ge_5pct"]) == (6 / 12, 4 / 12, 3 / 12)
    assert base["max_pct"] == pytest.approx(10.0)
    values = [v / 100 for v in (100.0, 101.5, 103.0, 110.0)]
    gains = [100 * (a - b) / b for a, b in itertools.permutations(values, 2)]
    assert base["mean_pct"] == pytest.approx(np.mean(gains)) and base["median_pct"] == pytest.approx(np.median(gains))
    # HR@10 = 2 x NDCG@10: the same relative gains
    assert tidy.loc[("base vs base", "hr@10"), "share_ge_2pct"] == pytest.approx(4 / 12)
    control = tidy.loc[("mltfr vs mltfr-randomselect", "ndcg@10")]
    # 0.106 over 0.100 and 0.102: +6.0%, +3.9%; 0.099: -1.0%, -2.9%
    assert control["n_pairs"] == 4
    assert (control["share_ge_1pct"], control["share_ge_2pct"], control["share_ge_5pct"]) == (0.5, 0.5, 0.25)


def test_null_pairs_leave_out_a_run_that_trained_the_backbone_otherwise():
    """A seed retrained with the authors' backbone (model.impl recorded) pairs only with its like."""
    frame = null_frame().assign(impl=None)
    frame.loc[(frame["variant"] == "base") & frame["seed"].isin([3, 4]), "impl"] = "authors"
    pairs = null_pairs(frame)
    base = pairs[(pairs["comparison"] == "base vs base") & (pairs["metric"] == "ndcg@10")]
    assert sorted(zip(base["seed_method"], base["seed_baseline"])) == [(1, 2), (2, 1), (3, 4), (4, 3)]
    assert (pairs["comparison"] == "mltfr vs mltfr-randomselect").sum() == 8   # 4 pairs x 2 metrics, alike


def test_null_gain_table_without_pairs_says_so():
    table = null_gain_table(null_frame().query("variant == 'base' and seed == 1"))
    assert table.tidy.empty and "fewer than two faithful runs of base" in table.caption
