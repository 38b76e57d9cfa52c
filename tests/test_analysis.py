"""mltfr.analysis on a synthetic results tree with known values, and on real Pantry ranks."""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures.results import branch_settings, result_document
from scipy import stats as sps

from mltfr.analysis.collect import KEYS, collect_runs, load_user_ndcg
from mltfr.analysis.pipeline import aggregate
from mltfr.analysis.render import render_latex, render_markdown
from mltfr.analysis.stats import (
    StatsConfig,
    bootstrap_ci,
    holm,
    mde,
    rank_biserial,
    run_comparisons,
    tost,
    two_level_ci,
    user_ttest,
    wilcoxon_test,
)
from mltfr.analysis.tables import diagnostics_table, main_table
from mltfr.cli import main as cli_main
from mltfr.errors import DataError
from mltfr.spec import report_outputs as outputs

DATASETS = {"alpha": 0.0, "beta": 0.05}          # dataset -> NDCG@10 offset
PROTOCOLS = {"faithful": 0.01, "corrected": 0.0}  # protocol -> NDCG@10 offset
LEVEL = {"base": 0.10, "direct-x": 0.09, "filter-x": 0.11, "mltfr": 0.13, "mltfr-nofilter": 0.12,
         "mltfr@K=1": 0.125, "mltfr@K=5": 0.128}
SEEDS = (1, 2, 3)
N_USERS = 300


def ndcg10(dataset, variant, protocol, seed):
    """The test NDCG@10 written into each synthetic result.json: + 0.02 per seed."""
    return LEVEL[variant] + DATASETS[dataset] + PROTOCOLS[protocol] + 0.02 * (seed - 1)


def synthetic_ranks(variant, seed):
    """Per-user ranks: mltfr improves users 0..149 by 3 places over base; others are random."""
    base = np.random.default_rng(100 + seed).integers(1, 25, N_USERS)
    if variant == "base":
        return base
    if variant == "mltfr":
        return np.where(np.arange(N_USERS) < 150, np.maximum(1, base - 3), base)
    return np.random.default_rng(hash(variant) % 1000 + seed).integers(1, 25, N_USERS)


def synthetic_diagnostics(variant, seed):
    """Filter diagnostics as the trainer writes them: LLM x (and y, except single-LLM variants),
    |V| = 1000, values growing with the seed; prototypes (direct, nofilter) have no filter values."""
    filtering = not (variant.startswith("direct") or variant == "mltfr-nofilter")
    filtered = {"effective_tokens": 900.0 + 10 * seed, "argmax_agreement": 0.01 * seed,
                "distinct_selected": 100 * seed, "projection_grad_norm": 1e-4 * seed}
    per_llm = {**(filtered if filtering else dict.fromkeys(filtered)), "table_drift": 0.1 * seed,
               "vocab": 1000}
    llms = ["x"] if variant.endswith("-x") else ["x", "y"]
    return {"diagnostics": {llm: dict(per_llm) for llm in llms}, "router_entropy": 0.5 + 0.01 * seed,
            "diagnostics_steps": 4}


def write_run(root, dataset, variant, protocol, seed):
    """A run with the writer's keys (fixtures.results); NDCG@10, timings and sizes vary per run."""
    folder = root / dataset / "sasrec" / variant / protocol / f"seed{seed}"
    folder.mkdir(parents=True)
    n = ndcg10(dataset, variant, protocol, seed)
    test = {"hr@5": n, "hr@10": 2 * n, "hr@20": 3 * n, "ndcg@5": n / 2, "ndcg@10": n,
            "ndcg@20": 1.5 * n, "mrr": n / 3}
    result = result_document(
        dataset, "sasrec", variant, protocol, seed, test, None if protocol == "faithful" else test,
        best_epoch=seed, selection="x", peak_memory_mb={"host_rss": 100.0 + seed},
        n_parameters=1000 + len(variant),
        timings={"train_s": 10.0 * seed, "eval_during_training_s": 0.5, "test_eval_s": 1.0,
                 "per_epoch_s": [seed, 3.0 * seed], "sequences_per_s": 50.0, "users_per_s": 70.0})
    if variant == "mltfr":
        result["config"]["K"] = 3
    if variant != "base":
        diagnostics = synthetic_diagnostics(variant, seed)
        llms = list(diagnostics["diagnostics"])
        tokens = {"x": [["Ġthe", 5, 7], ["hello", 3, 9]], "y": [["▁world", 4, 2]]} if variant == "mltfr" else {}
        result.update(diagnostics, branch=branch_settings(llms), interp={
            "router_weights": {"x": 0.6, "y": 0.4} if len(llms) == 2 else {"x": 1.0},
            "top_tokens": {llm: tokens.get(llm, []) for llm in llms}, "n_positions": 100,
            "token_format": "[string, count, token id]"})
    (folder / "result.json").write_text(json.dumps(result))
    np.savez(folder / "ranks.npz", test_users=np.arange(N_USERS, dtype=np.int64),
             test_ranks=synthetic_ranks(variant, seed).astype(np.int64))
    pd.DataFrame({"epoch": [1, 2, 3], "train_loss": [1.0, 0.8, 0.7], "seconds": [1, 1, 1],
                  "test_ndcg@10": [0.05, 0.08, n]}).to_csv(folder / "epochs.csv", index=False)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """results/runs, results/data and benchmarks of 2 datasets x 7 variants x 2 protocols x 3 seeds."""
    top = tmp_path_factory.mktemp("study")
    for ds in DATASETS:
        for variant in LEVEL:
            for protocol in PROTOCOLS:
                for seed in SEEDS:
                    write_run(top / "runs", ds, variant, protocol, seed)
        meta = {"stats": {"users": N_USERS, "items": 24, "interactions": 5000, "density": 0.69,
                          "mean_len": 16.7, "median_len": 15.0}}
        (top / "data" / ds).mkdir(parents=True)
        (top / "data" / ds / "meta.json").write_text(json.dumps(meta))
    bench = top / "bench" / "train" / "alpha" / "sasrec" / "mltfr" / "corrected"
    bench.mkdir(parents=True)
    for name, s in (("seed1.round1.tsv", 30.0), ("seed1.round2.tsv", 12.5)):
        (bench / name).write_text(f"s\th:m:s\tmax_rss\tmax_vms\n{s}\t0:00:30\t512.5\t900\n")
    return top


@pytest.fixture(scope="module")
def runs(tree):
    return collect_runs(tree / "runs", benchmarks=tree / "bench")


def test_runs_table_equals_the_result_files(runs, tree):
    assert len(runs) == 2 * 7 * 2 * 3
    keys = list(runs[list(KEYS)].itertuples(index=False))
    assert keys == sorted(keys)
    for row in runs.sample(10, random_state=0).to_dict("records"):
        result = json.loads((Path(row["run_dir"]) / "result.json").read_text())
        assert {k: row[k] for k in KEYS} == {**{k: result[k] for k in KEYS}, "dataset": result["dataset"]["name"]}
        assert {m: row[f"test_{m}"] for m in result["metrics"]["test"]} == result["metrics"]["test"]
        assert row["n_params"] == result["n_parameters"]
        assert (row["epochs_run"], row["epoch_budget"], row["early_stopped"]) == (
            result["epochs_run"], result["epoch_budget"], result["early_stopped"])
        assert row["peak_mem_mb"] == row["peak_host_rss_mb"] == result["peak_memory_mb"]["host_rss"]
        assert row["epoch_s"] == 2.0 * row["seed"]            # the mean of per_epoch_s [seed, 3 seed]
        assert (row["eval_s"], row["seqs_per_s"], row["dataset_sha256"]) == (1.0, 50.0, "0" * 64)
        valid = result["metrics"].get("valid")         # faithful runs have no valid set
        assert np.isnan(row["valid_ndcg@10"]) if valid is None else row["valid_ndcg@10"] == valid["ndcg@10"]


def test_runs_csv_round_trips_exactly(runs, tree, tmp_path):
    aggregate(tree / "runs", tree / "data", tmp_path / "t", tmp_path / "s", tmp_path / "f",
              benchmarks=tree / "bench", steps=("tables",))
    back = pd.read_csv(tmp_path / "t" / "runs.csv")
    pd.testing.assert_series_equal(back["test_ndcg@10"], runs["test_ndcg@10"])
    assert (tmp_path / "t" / "runs.parquet").exists()
    assert {p.name for p in (tmp_path / "t").iterdir()} == {p.name for p in outputs.table_outputs(tmp_path / "t")}


def test_variant_blocks_and_benchmarks(runs):
    blocks = runs.drop_duplicates("variant").set_index("variant")["block"].to_dict()
    assert blocks == {"base": "base", "direct-x": "direct", "filter-x": "filter", "mltfr": "mltfr",
                      "mltfr-nofilter": "ablation", "mltfr@K=1": "sensitivity", "mltfr@K=5": "sensitivity"}
    one = runs[(runs["dataset"] == "alpha") & (runs["variant"] == "mltfr") & (runs["protocol"] == "corrected")
               & (runs["seed"] == 1)]
    assert one["bench_s"].item() == 42.5 and one["bench_max_rss_mb"].item() == 512.5
    assert runs["bench_s"].notna().sum() == 1
    from mltfr.analysis.blocks import parse_variant
    assert parse_variant("mltfr@n_llms=2") == parse_variant("mltfr@n_llms=2.0")
    assert (parse_variant("mltfr@lambda_s=0.2").param, parse_variant("mltfr@tau=1").value) == ("lambda_s", 1.0)
    assert parse_variant("something").block == "other"


def test_main_table_cell_and_bold(runs):
    table = main_table(runs)
    cell = table.tidy.query("protocol == 'corrected' and variant == 'mltfr' and dataset == 'alpha' "
                            "and metric == 'ndcg@10'")
    # seeds give 0.13, 0.15, 0.17: mean 0.15, sample std 0.02
    assert cell["mean"].item() == pytest.approx(0.15) and cell["std"].item() == pytest.approx(0.02)
    assert cell["n_seeds"].item() == 3
    row = table.display.query("protocol == 'corrected' and variant == 'mltfr'")
    assert row["alpha / ndcg@10"].item() == "0.1500 ± 0.0200"
    corrected = table.display["protocol"] == "corrected"
    assert table.display.loc[table.bold["alpha / ndcg@10"] & corrected, "variant"].tolist() == ["mltfr"]
    assert "**0.1500 ± 0.0200**" in render_markdown(table) and "**corrected**" not in render_markdown(table)
    assert r"\textbf{0.1500 $\pm$ 0.0200}" in render_latex(table)


def test_tables_have_the_expected_values(tree, tmp_path):
    aggregate(tree / "runs", tree / "data", tmp_path, tmp_path, tmp_path, steps=("tables",))
    single = pd.read_csv(tmp_path / "single_llm.csv")
    # filter-x vs base: 0.11 + 0.02 s vs 0.10 + 0.02 s -> gain 0.01 every seed
    f = single.query("mode == 'filter' and dataset == 'alpha' and protocol == 'corrected'")
    assert f["gain"].item() == pytest.approx(0.01)
    expected_pct = statistics.mean(100 * 0.01 / (0.10 + 0.02 * k) for k in range(3))
    assert f["gain_pct"].item() == pytest.approx(expected_pct)
    # 0.125 / 0.128 + beta 0.05 + faithful 0.01 + mean seed offset 0.02; the default K = 3 is mltfr's 0.13
    sens = pd.read_csv(tmp_path / "sensitivity.csv").query("dataset == 'beta' and protocol == 'faithful'")
    assert sens.set_index("value")["mean"].to_dict() == pytest.approx({1.0: 0.205, 3.0: 0.21, 5.0: 0.208})
    assert (sens["n_seeds"] == 3).all()
    prot = pd.read_csv(tmp_path / "protocols.csv").query("metric == 'ndcg@10'")
    assert prot["diff"].to_numpy() == pytest.approx(np.full(len(prot), -0.01))
    abl = pd.read_csv(tmp_path / "ablations.csv").query("variant == 'mltfr-nofilter'")
    assert (abl["delta_pct"] < 0).all()
    stats_md = (tmp_path / "dataset_stats.md").read_text()
    assert "| alpha" in stats_md and "5,000" in stats_md


def test_diagnostics_table_means_equal_the_runs(runs, tree):
    tidy = diagnostics_table(runs).tidy
    # per dataset and protocol: x for direct-x and filter-x, x and y for the four mltfr variants
    assert len(tidy) == 2 * 2 * (1 + 1 + 4 * 2) and (tidy["n_seeds"] == 3).all()
    for row in tidy.to_dict("records"):
        folder = tree / "runs" / row["dataset"] / "sasrec" / row["variant"] / row["protocol"]
        per_seed = [json.loads(p.read_text())["diagnostics"][row["llm"]]
                    for p in folder.glob("seed*/result.json")]
        for key in outputs.DIAGNOSTIC_KEYS:
            values = [d[key] for d in per_seed]
            expected = np.nan if values[0] is None else statistics.mean(values)
            assert row[key] == pytest.approx(expected, nan_ok=True)
    mltfr = tidy[(tidy["variant"] == "mltfr") & (tidy["llm"] == "y")].iloc[0]
    assert (mltfr["effective_tokens"], mltfr["effective_share"]) == pytest.approx((920.0, 0.92))
    assert mltfr["router_entropy"] == pytest.approx(0.52) and mltfr["table_drift"] == pytest.approx(0.2)
    lines = render_markdown(diagnostics_table(runs)).splitlines()
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines
            if line.startswith("| alpha") and "| mltfr " in line and "| y " in line and "| corrected" in line]
    assert rows == [["alpha", "sasrec", "corrected", "mltfr", "y", "3", "1,000", "920", "92.0%", "0.020",
                     "200", "0.0002", "0.2", "0.520"]]


def test_positive_controls_are_labelled_where_they_are_shown(runs):
    """A caption covering a positive control names it as leaky by construction; a figure's label too."""
    from mltfr.analysis.blocks import display_name

    planted = runs.replace({"variant": {"filter-x": "mltfr-planted-sharp"}})
    caption = diagnostics_table(planted).caption
    assert ("mltfr-planted-sharp: positive control (leaky by construction): the planted table holds every "
            "user's held-out items" in caption)
    assert "mltfr-planted-sharp: scores = 50 x cosine." in caption    # the law its diagnostics measure
    assert "leaky" not in diagnostics_table(runs).caption and "x cosine" not in diagnostics_table(runs).caption
    assert display_name("mltfr-planted") == "mltfr-planted [positive control (leaky by construction)]"
    assert display_name("mltfr-learnfilter") == "mltfr-learnfilter"


def test_token_labels_are_glyphs_or_code_points(tmp_path):
    """A Bengali token is drawn with a font that has it, or written U+09AE, never as \\u09ae;
    drawing the top-tokens figure then warns of no missing glyph."""
    import warnings

    from mltfr.analysis.figures import printable_token, save_figure, token_fonts, top_tokens_figure

    covered = token_fonts()[1]
    label = printable_token("মা")
    if covered & {0x09AE, 0x09BE}:                           # a Bengali font is installed
        assert label.startswith("ম" if 0x09AE in covered else "U+09AE")
    else:
        assert label == "U+09AE U+09BE"
    assert "\\u" not in label
    assert (printable_token("Ġthe"), printable_token("▁world"), printable_token("ab中")) == (
        "_the", "_world", "ab" + ("中" if 0x4E2D in covered else " U+4E2D"))
    keys = {"dataset": "alpha", "backbone": "sasrec", "variant": "mltfr", "protocol": "corrected", "seed": 1}
    interp = [(keys, {"top_tokens": {"x": [["মা", 5], ["Ġthe", 3]]}})]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # "Glyph ... missing from font(s)" fails
        save_figure(top_tokens_figure(interp), tmp_path, "top_tokens")


def test_holm_hand_computed():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, np.nan, 0.01]) == pytest.approx([0.5, np.nan, 0.02], nan_ok=True)
    assert holm([0.6, 0.9]) == pytest.approx([1.0, 1.0])


def hand_ndcg10(ranks):
    """NDCG@10 of one held-out item per user, by the textbook formula: 1/log2(rank + 1) within the top 10."""
    return np.array([1 / np.log2(r + 1) if r <= 10 else 0.0 for r in ranks])


def pooled(tree, dataset, variant, protocol):
    """Per-user NDCG@10 averaged over seeds, computed here by hand from the ranks."""
    per_seed = [hand_ndcg10(synthetic_ranks(variant, s)) for s in SEEDS]
    return np.mean(per_seed, axis=0)


def test_tests_ci_margin_and_effect_match_scipy(runs, tree):
    table = run_comparisons(runs, StatsConfig(n_resamples=1000, margin=0.1))
    row = table.query("dataset == 'alpha' and protocol == 'corrected' and variant == 'mltfr' "
                      "and reference == 'base'").iloc[0]
    a, b = pooled(tree, "alpha", "mltfr", "corrected"), pooled(tree, "alpha", "base", "corrected")
    assert row["p_ttest_users"] == pytest.approx(sps.ttest_rel(a, b).pvalue, rel=1e-9)
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-12)
    assert row["mean_diff"] == pytest.approx((a - b).mean()) and row["sd_diff"] == pytest.approx((a - b).std(ddof=1))
    # the margin: 10% of base's test NDCG@10 over the common seeds (result.json: 0.10, 0.12, 0.14)
    assert row["margin_relative"] == 0.1 and row["margin"] == pytest.approx(0.1 * 0.12)
    assert row["p_tost"] == pytest.approx(tost(a - b, 0.012), rel=1e-12)
    assert row["mde"] == pytest.approx(mde((a - b).std(ddof=1), N_USERS))
    family = table.query("dataset == 'alpha' and protocol == 'corrected'")
    assert row["mde_holm"] == pytest.approx(mde((a - b).std(ddof=1), N_USERS, 0.05 / len(family)))
    assert row["ci_low"] < (a - b).mean() < row["ci_high"] and row["ci_low"] > 0
    assert row["rank_biserial"] == 1.0           # mltfr never worse than base on any user
    assert row["p_ttest_users_holm"] >= row["p_ttest_users"] and row["mark"] == "***"
    assert row["p_wilcoxon_holm"] >= row["p_wilcoxon"]
    # paired t-test over seeds: differences all 0.03 -> undefined, NaN with a note
    assert np.isnan(row["p_ttest"]) and "constant" in row["note"]
    assert row["n_seeds"] == 3 and row["n_users"] == N_USERS
    for test in ("p_ttest_users", "p_tost", "p_wilcoxon", "p_ttest"):
        assert family[f"{test}_holm"].to_numpy() == pytest.approx(holm(family[test].to_numpy()), nan_ok=True)
    assert set(table["reference"]) == {"base", "mltfr"}
    assert len(table) == 2 * 2 * (6 + 5)   # 6 variants vs base, 5 vs mltfr, per dataset x protocol


def test_a_seed_whose_runs_trained_the_backbone_differently_is_left_out_of_a_comparison(runs):
    """A retrain with the search's settings is not paired with a run that predates them."""
    mixed = runs.copy()
    cell = (mixed["dataset"] == "alpha") & (mixed["protocol"] == "corrected")
    retrained = cell & (mixed["variant"] == "base")
    mixed.loc[retrained & (mixed["seed"] == 2), "weight_decay"] = 1e-4
    mixed.loc[retrained, "lr"] = 1e-3
    mixed.loc[cell & (mixed["variant"] == "mltfr") & (mixed["seed"] == 2), "lr"] = 1e-3   # alike at seed 2 only
    table = run_comparisons(mixed, StatsConfig(n_resamples=200)).set_index(["dataset", "protocol", "variant", "reference"])
    row = table.loc[("alpha", "corrected", "mltfr", "base")]
    assert row["n_seeds"] == 0 and row["n_users"] == 0
    assert row["note"] == "seed(s) 1, 2, 3 left out: the backbone settings differ (lr, weight_decay); retrain one side"
    # runs that trained alike keep every seed: the other protocol, and comparisons without base
    assert table.loc[("alpha", "faithful", "mltfr", "base"), "n_seeds"] == 3
    kept = table.loc[("alpha", "corrected", "mltfr-nofilter", "mltfr")]
    assert kept["n_seeds"] == 2 and kept["note"].startswith("seed(s) 2 left out: the backbone settings differ (lr)")
    assert kept["seed_mean_variant"] == pytest.approx(np.mean([ndcg10("alpha", "mltfr-nofilter", "corrected", s) for s in (1, 3)]))


def test_bootstrap_is_reproducible_and_zero_diffs_are_handled():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 1.0, 500), rng.normal(0.0, 1.0, 500)
    ci1, ci2 = bootstrap_ci(a, b), bootstrap_ci(a, b)
    assert ci1 == ci2 and ci1[0] < (a - b).mean() < ci1[1]
    # the same interval as scipy's paired bootstrap of the two samples with the same seed
    ref = sps.bootstrap((a, b), lambda x, y, axis: np.mean(x - y, axis=axis), paired=True,
                        n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    assert ci1 == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    # 1.0 is the true mean difference of the populations the samples were drawn from
    assert ci1[0] < 1.0 < ci1[1]
    assert wilcoxon_test(a, a) == (0.0, 1.0, "all per-user differences are zero")
    assert np.isnan(rank_biserial(np.zeros(4)))
    assert rank_biserial(np.array([1.0, -2.0, 3.0])) == pytest.approx((1 + 3 - 2) / 6)


def test_tost_and_mde_against_hand_computed_values():
    d = np.array([0.010, -0.004, 0.006, 0.002, 0.008, -0.002])
    n, mean = 6, 0.02 / 6
    sd = np.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))         # 0.0056095
    se = sd / np.sqrt(n)                                            # 0.0022901
    # TOST at +-0.01: H0 mean >= +0.01 is the harder one, t = (mean - 0.01) / se = -2.911 on 5 df
    assert (mean - 0.01) / se == pytest.approx(-2.9111, abs=1e-4)
    assert tost(d, 0.01) == pytest.approx(sps.t.cdf((mean - 0.01) / se, n - 1), rel=1e-12)
    assert tost(d, 0.01) == pytest.approx(0.01668, abs=1e-5)
    assert tost(-d, 0.01) == pytest.approx(0.01668, abs=1e-5)      # mirrored: H0 mean <= -0.01 is the harder
    assert tost(d, 0.005) == pytest.approx(0.2497, abs=1e-4)        # t = (mean - 0.005) / se = -0.728
    assert tost(d, 0.003) > 0.5                                     # the mean lies outside the margin
    assert tost(np.zeros(4), 0.01) == 0.0 and tost(np.full(4, 0.02), 0.01) == 1.0   # infinite t
    # the verdict test is the one-sample t-test of d: t = mean / se = 1.4556 on 5 df
    t, p, note = user_ttest(d)
    assert t == pytest.approx(mean / se) and p == pytest.approx(2 * sps.t.sf(mean / se, n - 1)) and not note
    assert user_ttest(np.zeros(5)) == (0.0, 1.0, "all per-user differences are zero")
    # MDE = (t_{0.975, 5} + t_{0.80, 5}) * se, the textbook table's 2.5706 and 0.9195
    assert mde(sd, n) == pytest.approx((2.5706 + 0.9195) * se, rel=1e-4)
    # issue 20's Pantry numbers (per-user sd 0.026, 7,123 users): 0.0009, and 0.0011 at Holm's 0.05 / 9
    assert mde(0.026, 7123) == pytest.approx(0.000863, abs=1e-6)
    assert mde(0.026, 7123, 0.05 / 9) == pytest.approx(0.001114, abs=1e-6)
    # independent check: the two-sided t-test's power at the MDE is 80% (noncentral t)
    df, shift, crit = 7122, mde(0.026, 7123) / (0.026 / np.sqrt(7123)), sps.t.ppf(0.975, 7122)
    assert sps.nct.sf(crit, df, shift) + sps.nct.cdf(-crit, df, shift) == pytest.approx(0.80, abs=1e-4)


def test_two_level_bootstrap_holds_the_variance_between_seeds():
    """Seed offsets of +-0.03 dominate user noise of sd 0.01: the two-level CI is as wide as the
    seed variance says; the users-only CI of the seed-averaged vector misses it. With no seed
    variance the two agree."""
    rng = np.random.default_rng(7)
    offsets = np.array([-0.03, -0.015, 0.0, 0.015, 0.03])              # one per seed
    diffs = offsets[:, None] + rng.normal(0.0, 0.01, (5, 400))         # (seeds, users)
    low, high = two_level_ci(diffs)
    users_low, users_high = bootstrap_ci(diffs.mean(axis=0), np.zeros(400))
    assert (high - low) > 20 * (users_high - users_low)
    # the bootstrap's own variance: seeds' spread / S (with replacement: population variance) + users'
    half = 1.96 * np.sqrt(offsets.var() / 5 + diffs.mean(axis=0).var() / 400)
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert two_level_ci(diffs) == (low, high)                           # seeded: reproducible
    assert two_level_ci(diffs, StatsConfig(seed=1)) != (low, high)
    same = np.tile(rng.normal(0.001, 0.01, 400), (5, 1))                # every seed alike
    low, high = two_level_ci(same)
    users_low, users_high = bootstrap_ci(same[0], np.zeros(400))
    assert (high - low) == pytest.approx(users_high - users_low, rel=0.1)


def test_figures_exist_and_are_not_blank(tree, tmp_path):
    import matplotlib.image as mpimg

    aggregate(tree / "runs", tree / "data", tmp_path / "t", tmp_path / "s", tmp_path / "f",
              steps=("figures",), cfg=StatsConfig(n_resamples=200))
    for path in outputs.figure_outputs(tmp_path / "f"):
        assert path.stat().st_size > 1000, path
        if path.suffix == ".png":
            rgba = (mpimg.imread(path) * 255).astype(np.uint32)          # (H, W, 4)
            colours = rgba[..., 0] | rgba[..., 1] << 8 | rgba[..., 2] << 16  # one int per pixel
            assert len(np.unique(colours)) > 10, path
        else:
            assert path.read_bytes().startswith(b"%PDF")


def test_base_only_backbones_are_reference_lines_in_the_main_comparison():
    """pop and sasrec-ce (base only) are lines at their mean in the SASRec panel, not own panels."""
    from mltfr.analysis.figures import main_comparison_figure

    rows = [("sasrec", variant, protocol, seed, 0.010 + 0.001 * seed + (0.002 if variant == "mltfr" else 0))
            for variant in ("base", "mltfr") for protocol in ("corrected", "faithful") for seed in (1, 2, 3)]
    rows += [("pop", "base", "corrected", 1, 0.0128), ("pop", "base", "faithful", 1, 0.0137),
             ("sasrec-ce", "base", "corrected", 1, 0.0110), ("sasrec-ce", "base", "corrected", 2, 0.0120)]
    runs = pd.DataFrame(rows, columns=["backbone", "variant", "protocol", "seed", "test_ndcg@10"])
    runs["dataset"], runs["block"] = "pantry", np.where(runs["variant"] == "base", "base", "mltfr")
    fig = main_comparison_figure(runs)
    (ax,) = fig.axes
    assert ax.get_title() == "sasrec · pantry"
    flat = {round(line.get_ydata()[0], 6) for line in ax.get_lines()
            if len(set(line.get_ydata())) == 1 and len(line.get_ydata()) == 2}
    assert {0.0128, 0.0137, 0.0115} <= flat             # pop per protocol, sasrec-ce's mean
    assert sorted(t.get_text() for t in ax.texts) == ["pop", "pop", "sasrec-ce"]
    low, high = ax.get_ylim()
    assert low < 0.0115 and high > 0.0137


def test_stats_cli_and_determinism(tree, tmp_path):
    args = ["aggregate", "--runs", str(tree / "runs"), "--data", str(tree / "data"), "--tables",
            str(tmp_path / "t"), "--stats", str(tmp_path / "s"), "--figures", str(tmp_path / "f"),
            "--only", "stats", "--bootstrap-resamples", "300"]
    assert cli_main(args) == 0
    first = (tmp_path / "s" / "comparisons.csv").read_bytes()
    assert cli_main(args) == 0
    assert (tmp_path / "s" / "comparisons.csv").read_bytes() == first
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == sorted(
        p.name for p in outputs.stats_outputs(tmp_path / "s"))
    assert "***" in (tmp_path / "s" / "pvalues.md").read_text()
    table = pd.read_csv(tmp_path / "s" / "comparisons.csv")
    assert (table["margin_relative"] == 0.05).all()                      # StatsConfig's default
    assert cli_main([*args, "--margin", "0.1"]) == 0
    wider = pd.read_csv(tmp_path / "s" / "comparisons.csv")
    assert (wider["margin_relative"] == 0.1).all() and wider["margin"].to_numpy() == pytest.approx(2 * table["margin"])
    assert cli_main([*args, "--margin", "5"]) == 2


def test_a_margin_outside_0_1_is_a_one_line_error(tree, tmp_path, capsys):
    args = ["aggregate", "--runs", str(tree / "runs"), "--stats", str(tmp_path / "s"), "--only", "stats",
            "--margin", "5"]
    assert cli_main(args) == 2
    assert "--margin 5.0: the equivalence margin is a share of the reference's NDCG@10; pass a value " \
           "between 0 and 1" in capsys.readouterr().err


def test_empty_blocks_still_write_every_output(tmp_path):
    root = tmp_path / "runs"
    for seed in (1, 2):
        write_run(root, "alpha", "base", "corrected", seed)
    written = aggregate(root, tmp_path / "nodata", tmp_path / "t", tmp_path / "s", tmp_path / "f")
    expected = (outputs.table_outputs(tmp_path / "t") + outputs.stats_outputs(tmp_path / "s")
                + outputs.figure_outputs(tmp_path / "f"))
    assert sorted(map(str, written)) == sorted(map(str, expected))
    assert "no runs for this block" in (tmp_path / "t" / "sensitivity.md").read_text()


def test_corrupt_result_json_names_the_file(tmp_path, capsys):
    write_run(tmp_path, "alpha", "base", "corrected", 1)
    bad = tmp_path / "alpha" / "sasrec" / "base" / "corrected" / "seed1" / "result.json"
    bad.write_text("{ not json")
    with pytest.raises(DataError, match="seed1/result.json"):
        collect_runs(tmp_path)
    assert cli_main(["aggregate", "--runs", str(tmp_path), "--only", "tables",
                     "--tables", str(tmp_path / "t")]) == 2
    assert "result.json: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_misplaced_or_incomplete_result_is_an_error(tmp_path):
    write_run(tmp_path, "alpha", "base", "corrected", 1)
    path = tmp_path / "alpha" / "sasrec" / "base" / "corrected" / "seed1" / "result.json"
    result = json.loads(path.read_text())
    path.write_text(json.dumps({**result, "seed": 7}))
    with pytest.raises(DataError, match="JSON says alpha/sasrec/base/corrected/seed7"):
        collect_runs(tmp_path)
    del result["metrics"]["test"]["mrr"]
    path.write_text(json.dumps(result))
    with pytest.raises(DataError, match="metrics.test lacks mrr"):
        collect_runs(tmp_path)
    result["metrics"]["test"]["mrr"] = 0.1
    del result["timings"]
    path.write_text(json.dumps(result))
    with pytest.raises(DataError, match="key timings missing"):
        collect_runs(tmp_path)
    np.savez(path.parent / "ranks.npz", test_users=np.array([0, 0]), test_ranks=np.array([1, 2]))
    with pytest.raises(DataError, match="ranks.npz: users and test_ranks"):
        load_user_ndcg(path.parent)
    np.savez(path.parent / "ranks.npz", users=np.array([0, 1]), test_ranks=np.array([1, 2]))
    with pytest.raises(DataError, match="lacks arrays test_users/test_ranks"):
        load_user_ndcg(path.parent)                   # `users` is no name the trainer writes


def test_analysis_does_not_import_torch():
    code = ("import sys, mltfr.analysis, mltfr.analysis.pipeline, mltfr.analysis.stats, "
            "mltfr.analysis.figures, mltfr.analysis.ladder, mltfr.cli.analysis, mltfr.evaluate, "
            "mltfr.analysis.findings_report, mltfr.analysis.demonstration, mltfr.cli.findings; "
            "from mltfr.evaluate import per_user_metrics, metrics_from_ranks; "
            "assert 'torch' not in sys.modules, 'torch'")
    subprocess.run([sys.executable, "-c", code], check=True)


def write_trainer_run(root, seed, ranks):
    """A run in the exact layout mltfr.train.run writes (a GPU run: a CUDA peak too)."""
    folder = root / "pantry" / "sasrec" / "base" / "corrected" / f"seed{seed}"
    folder.mkdir(parents=True)
    test = {"hr@5": 0.1, "hr@10": 0.2, "hr@20": 0.3, "ndcg@5": 0.05, "ndcg@10": 0.1 + seed / 100,
            "ndcg@20": 0.12, "mrr": 0.04}
    result = result_document(
        "pantry", "sasrec", "base", "corrected", seed, test, test, best_epoch=4,
        dataset={"name": "pantry", "prepared_sha256": "be" * 32, "raw_sha256": []},
        timings={"train_s": 12.0, "eval_during_training_s": 2.0, "test_eval_s": 0.5,
                 "per_epoch_s": [2.0, 3.0, 4.0], "sequences_per_s": 99.0, "users_per_s": 80.0},
        peak_memory_mb={"host_rss": 700.0, "cuda_allocated": 300.0}, n_parameters=12345)
    (folder / "result.json").write_text(json.dumps(result))
    np.savez(folder / "ranks.npz", test_users=np.arange(len(ranks)), test_ranks=ranks,
             valid_users=np.arange(len(ranks)), valid_ranks=ranks)
    pd.DataFrame({"epoch": [1, 2], "train_loss": [0.9, 0.5], "seconds": [2.0, 3.0],
                  "valid_ndcg@10": [0.05, 0.07]}).to_csv(folder / "epochs.csv", index=False)
    return folder


def test_trainer_layout_and_manifest(tmp_path):
    folders = [write_trainer_run(tmp_path / "runs", s, np.array([1, 3, 12, 2])) for s in (1, 2)]
    manifest = tmp_path / "runs.txt"
    manifest.write_text("".join(f"{f}\n" for f in folders))
    runs = collect_runs(manifest)
    row = runs.iloc[0]
    assert (row["dataset"], row["seed"], row["n_params"], row["peak_mem_mb"]) == ("pantry", 1, 12345, 300.0)
    assert (row["epoch_s"], row["eval_s"], row["seqs_per_s"], row["dataset_sha256"]) == (3.0, 0.5, 99.0, "be" * 32)
    assert row["peak_host_rss_mb"] == 700.0 and row["test_ndcg@10"] == 0.11
    ndcg = load_user_ndcg(folders[0])
    assert ndcg.to_numpy() == pytest.approx([1.0, 0.5, 0.0, 1 / np.log2(3)])
    from mltfr.analysis.collect import load_epochs
    assert load_epochs(runs)["loss"].tolist() == [0.9, 0.5, 0.9, 0.5]
    assert cli_main(["aggregate", "--runs", str(manifest), "--out", str(tmp_path / "t" / "runs.csv")]) == 0
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["runs.csv", "runs.parquet"]


def test_captions_name_the_cells_whose_llm_runs_read_random_tables(runs, tmp_path):
    """A run whose branch redrew its token tables (the authors' FMLP-Rec, faithful) is named in the
    caption of every table over it; without one, no column and no sentence (the committed study)."""
    assert "random_tables" not in runs and "Random tables" not in main_table(runs).caption
    test = {"hr@5": 0.1, "hr@10": 0.2, "hr@20": 0.3, "ndcg@5": 0.05, "ndcg@10": 0.1, "ndcg@20": 0.12, "mrr": 0.04}
    for backbone, reinitialised in (("fmlprec", True), ("sasrec", False)):
        folder = tmp_path / "runs" / "d" / backbone / "filter-x" / "faithful" / "seed1"
        folder.mkdir(parents=True)
        doc = result_document("d", backbone, "filter-x", "faithful", 1, test)
        doc.update(synthetic_diagnostics("filter-x", 1), interp={
            "router_weights": {"x": 1.0}, "top_tokens": {"x": []}, "n_positions": 1, "token_format": "x"},
            branch={**branch_settings(["x"]), "reinitialise": reinitialised})
        (folder / "result.json").write_text(json.dumps(doc))
    runs = collect_runs(tmp_path / "runs")
    assert runs.set_index("backbone")["random_tables"].to_dict() == {"fmlprec": True, "sasrec": False}
    assert ("Random tables: the LLM runs of fmlprec (faithful) redraw every token table from N(0, 0.02)"
            in main_table(runs).caption)


def test_missing_cells_render_blank_not_nan():
    """A variant run on one dataset only leaves the other dataset's cells empty in Markdown/LaTeX."""
    from mltfr.analysis.tables import Table
    display = pd.DataFrame({"variant": ["base", "filter-x"], "pantry": ["0.0120", "0.0119"],
                            "ml-1m": ["0.0196", np.nan]})
    table = Table("main", display, display)
    md, tex = render_markdown(table), render_latex(table)
    assert "nan" not in md.lower() and "nan" not in tex.lower()
    assert "| filter-x  | 0.0119   |         |" in md


def test_sensitivity_curve_gets_the_default_point_only_where_swept():
    from mltfr.analysis.collect import sensitivity_runs
    row = {"backbone": "sasrec", "protocol": "corrected", "seed": 1, "test_ndcg@10": 0.1}
    runs = pd.DataFrame([
        {**row, "dataset": "a", "variant": "mltfr@tau=1.0", "block": "sensitivity", "param": "tau", "value": 1.0},
        {**row, "dataset": "a", "variant": "mltfr@tau=0.5", "block": "sensitivity", "param": "tau", "value": 0.5},
        {**row, "dataset": "a", "variant": "mltfr", "block": "mltfr", "test_ndcg@10": 0.2},
        {**row, "dataset": "b", "variant": "mltfr", "block": "mltfr"},          # b has no sweep
        {**row, "dataset": "a", "variant": "base", "block": "base"}])
    runs["setting:tau"] = [1.0, 0.5, 0.5, 0.5, np.nan]
    points = sensitivity_runs(runs)
    # a's default tau = 0.5 was also run explicitly: the sweep's own run is kept, no extra point
    assert sorted(points["value"]) == [0.5, 1.0] and set(points["dataset"]) == {"a"}
    assert points.set_index("value").loc[0.5, "test_ndcg@10"] == 0.1
    runs.loc[2, "setting:tau"] = 0.25                                        # default not in the sweep
    points = sensitivity_runs(runs)
    assert points.set_index("value").loc[0.25, ["variant", "block", "param"]].tolist() == ["mltfr", "sensitivity", "tau"]


def test_aggregate_writes_beside_the_study_by_default(tmp_path, monkeypatch):
    # `--runs results/<study>/runs` alone: tables and statistics go to results/<study>/, figures to
    # figures/<study>/ (mltfr.spec.layout), as the workflow writes them
    monkeypatch.chdir(tmp_path)
    write_run(tmp_path / "results/s/runs", "alpha", "base", "corrected", 1)
    assert cli_main(["aggregate", "--runs", "results/s/runs", "--only", "tables", "--only", "stats"]) == 0
    assert (tmp_path / "results/s/tables/main.csv").is_file() and (tmp_path / "results/s/stats/comparisons.csv").is_file()
    assert not (tmp_path / "figures").exists()


def test_single_llm_gains_figure_is_the_same_bytes_twice_and_keeps_numpy_state(runs):
    """Its points are jittered by NumPy's global RNG inside seaborn: seeded for the drawing, so a
    rebuild writes identical bytes, and the caller's global state is given back."""
    import io

    from mltfr.analysis.figures import single_llm_gains_figure

    def png() -> bytes:
        buffer = io.BytesIO()
        single_llm_gains_figure(runs).savefig(buffer, format="png")
        return buffer.getvalue()

    np.random.seed(123)
    expected_next = np.random.random()
    np.random.seed(123)
    first = png()
    assert np.random.random() == expected_next
    assert png() == first
