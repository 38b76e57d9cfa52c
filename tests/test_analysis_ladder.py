"""The protocol ladder's analysis (tables, optimism, figure) and the statistics hygiene of every
table, on a synthetic run tree written as the trainer writes it (result.json, ranks.npz, epochs.csv)."""
from __future__ import annotations

import json
import shutil
import zlib

import numpy as np
import pandas as pd
import pytest
from fixtures.results import branch_settings, result_document
from scipy import stats as sps

from mltfr.analysis.collect import collect_runs, protocol_runs
from mltfr.analysis.ladder import ladder_table, ladder_tidy
from mltfr.analysis.optimism import authors_pick, best_test_epoch, optimism_table, trace_noise
from mltfr.analysis.stats import StatsConfig, pvalue_table, run_comparisons
from mltfr.analysis.tables import build_tables, main_table, protocol_table
from mltfr.errors import DataError
from mltfr.evaluate.metrics import per_user_metrics

ORDER = ("pooling", "selection", "eval_noise")          # a configured order unlike the default one
RUNGS = ("faithful", "rung-pooling", "rung-selection", "rung-eval_noise", "alone-selection")
VARIANTS = ("base", "mltfr", "mltfr-randomselect")
N_USERS = 120
CFG = StatsConfig(n_resamples=300)
FAITHFUL_RULE = "best-epoch-on-test-not-worse-on-3-of-hr@20/precision@20/recall@20/ndcg@20 (faithful)"
VALID_RULE = "early-stopping-on-valid-ndcg@10 (corrected)"


def user_ndcg(ranks, k=10):
    """Per-user NDCG@k (the one metric module's definition)."""
    return per_user_metrics(ranks, (k,))[f"ndcg@{k}"]


def ranks_of(variant, rung, seed, protocol="faithful"):
    """Per-user ranks (user i = index i): mltfr is 2 places better than base on the first half of
    the users, less so at later rungs; every cell has its own noise."""
    rng = np.random.default_rng(zlib.crc32(f"{variant}/{rung}/{seed}/{protocol}".encode()))
    ranks = rng.integers(1, 30, N_USERS)
    if variant != "base":
        step = 2 if rung in ("faithful", "rung-pooling") else 1
        ranks = np.where(np.arange(N_USERS) < N_USERS // 2, np.maximum(1, ranks - step), ranks)
    return ranks


def rung_record(rung):
    """The `rung` object a ladder run records (None for the faithful rung 0 and corrected runs)."""
    if rung in ("faithful", "corrected"):
        return None
    kind, factor = rung.split("-", 1)
    index = ORDER.index(factor) + 1
    factors = list(ORDER[:index]) if kind == "rung" else [factor]
    previous = ("faithful" if kind == "alone" or index == 1 else f"rung-{ORDER[index - 2]}")
    return {"name": rung, "index": index if kind == "rung" else len(ORDER) + index, "factors": factors,
            "previous": previous, "order": list(ORDER)}


def write_run(root, variant, rung, seed, protocol="faithful", users=None):
    """One run folder; test NDCG@10 is the mean of the per-user values of its ranks."""
    folder = root / "alpha" / "sasrec" / variant / (rung if protocol == "faithful" else protocol) / f"seed{seed}"
    folder.mkdir(parents=True)
    ranks = ranks_of(variant, rung, seed, protocol)
    users = np.arange(N_USERS) if users is None else users
    ndcg = float(user_ndcg(ranks).mean())
    test = {"hr@5": 0.1, "hr@10": 0.2, "hr@20": 0.3, "ndcg@5": 0.05, "ndcg@10": ndcg, "ndcg@20": 0.1,
            "mrr": 0.05}
    selects_on_valid = protocol == "corrected" or "selection" in (rung_record(rung) or {}).get("factors", [])
    branch = None if variant == "base" else {**branch_settings(["a", "b"]), "eval_noise": protocol == "faithful",
                                                "pooling": "batch" if protocol == "faithful" else "user",
                                                "user_vector": "window"}
    result = result_document("alpha", "sasrec", variant, protocol, seed, test,
                             selection=VALID_RULE if selects_on_valid else FAITHFUL_RULE, best_epoch=3,
                             epoch_budget=100 if protocol == "faithful" else 200, rung=rung_record(rung),
                             select_on="valid" if selects_on_valid else "test",
                             holdout_valid=protocol == "corrected", mask_history=protocol == "corrected",
                             branch=branch)
    result["config"]["trace_test"] = rung_record(rung) is not None      # the workflow traces every rung
    (folder / "result.json").write_text(json.dumps(result))
    np.savez(folder / "ranks.npz", test_users=users, test_ranks=ranks)
    write_trace(folder, variant, seed)
    return folder


TRACE = pd.DataFrame({"epoch": [1, 2, 3, 4, 5],
                      "test_hr@20": [0.20, 0.25, 0.24, 0.25, 0.23],
                      "test_ndcg@20": [0.10, 0.11, 0.12, 0.09, 0.13],
                      "test_ndcg@10": [0.050, 0.070, 0.060, 0.065, 0.075],
                      "valid_ndcg@10": [0.04, 0.05, 0.06, 0.05, 0.05]})


SCALE = {"base": 1.0, "mltfr": 2.0, "mltfr-randomselect": 3.0}   # test-trace swings per variant


def write_trace(folder, variant, seed):
    """epochs.csv with a test trace: TRACE with the swings of test NDCG@10 around 0.06 scaled per
    variant, shifted by 0.01 per seed."""
    ndcg = 0.06 + SCALE[variant] * (TRACE["test_ndcg@10"] - 0.06) + 0.01 * (seed - 1)
    trace = TRACE.assign(**{"test_ndcg@10": ndcg})
    trace.to_csv(folder / "epochs.csv", index=False)


def build_tree(root, seeds):
    for variant in VARIANTS:
        for seed in seeds:
            for rung in RUNGS:
                write_run(root, variant, rung, seed)
            write_run(root, variant, "corrected", seed, protocol="corrected")
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return build_tree(tmp_path_factory.mktemp("ladder") / "runs", (1, 2, 3))


@pytest.fixture(scope="module")
def runs(tree):
    return collect_runs(tree)


@pytest.fixture(scope="module")
def tidy(runs):
    return ladder_tidy(runs, CFG)


def pooled(variant, rung, seeds=(1, 2, 3), drop=()):
    """Per-user NDCG@10 averaged over seeds, by hand, as a Series indexed by user id."""
    values = np.mean([user_ndcg(ranks_of(variant, rung, s)) for s in seeds], axis=0)
    return pd.Series(values, index=np.arange(N_USERS)).drop(list(drop))


def test_ladder_runs_carry_their_rung_and_stay_out_of_the_study_tables(runs):
    assert len(runs) == 3 * 3 * (len(RUNGS) + 1)
    row = runs[(runs["variant"] == "mltfr") & (runs["rung"] == "rung-selection") & (runs["seed"] == 2)].iloc[0]
    assert (row["protocol"], row["rung_index"], row["rung_previous"], row["rung_order"]) == (
        "faithful", 2, "rung-pooling", "pooling,selection,eval_noise")
    assert (row["select_on"], row["epoch_budget"], row["pooling"]) == ("valid", 100, "batch")
    assert runs.loc[runs["protocol"] == "corrected", "rung"].isna().all()
    study = protocol_runs(runs)
    assert sorted(study["rung"].fillna("-").unique()) == ["-", "faithful"]
    main = main_table(study).tidy.query("variant == 'mltfr' and protocol == 'faithful' and metric == 'ndcg@10'")
    expected = np.mean([user_ndcg(ranks_of("mltfr", "faithful", s)).mean() for s in (1, 2, 3)])
    assert main["mean"].item() == pytest.approx(expected) and main["n_seeds"].item() == 3
    assert main_table(study).tidy.equals(build_tables(runs, pd.DataFrame())[1].tidy)   # ladder runs left out
    comparisons = run_comparisons(runs, CFG)
    assert set(comparisons["protocol"]) == {"faithful", "corrected"} and (comparisons["n_seeds"] == 3).all()


def test_benchmarks_join_ladder_runs_by_their_rung_folder(tree, tmp_path):
    bench = tmp_path / "train" / "alpha" / "sasrec" / "mltfr"
    for rung, seconds in (("faithful", 10.0), ("rung-selection", 20.0)):
        (bench / rung).mkdir(parents=True)
        (bench / rung / "seed1.tsv").write_text(f"s\tmax_rss\n{seconds}\t100\n")
    runs = collect_runs(tree, benchmarks=tmp_path)
    timed = runs.dropna(subset=["bench_s"]).set_index("rung")["bench_s"]
    assert timed.to_dict() == {"faithful": 10.0, "rung-selection": 20.0}


def test_ladder_rows_follow_the_recorded_order(tidy):
    for variant in VARIANTS:
        assert tidy.loc[tidy["variant"] == variant, "rung"].tolist() == list(RUNGS)
    previous = tidy[tidy["variant"] == "base"].set_index("rung")["previous"].fillna("-")
    assert previous.to_dict() == {"faithful": "-", "rung-pooling": "faithful", "rung-selection": "rung-pooling",
                                  "rung-eval_noise": "rung-selection", "alone-selection": "faithful"}


def test_ladder_step_tests_match_scipy(tidy, runs):
    row = tidy[(tidy["variant"] == "base") & (tidy["rung"] == "rung-selection")].iloc[0]
    a, b = pooled("base", "rung-selection"), pooled("base", "rung-pooling")
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(a, b).pvalue, rel=1e-12)
    seed_mean = lambda rung: [user_ndcg(ranks_of("base", rung, s)).mean() for s in (1, 2, 3)]
    assert row["ndcg@10"] == pytest.approx(np.mean(seed_mean("rung-selection")))
    assert row["delta"] == pytest.approx(np.mean(seed_mean("rung-selection")) - np.mean(seed_mean("rung-pooling")))
    assert row["p_ttest"] == pytest.approx(sps.ttest_rel(seed_mean("rung-selection"), seed_mean("rung-pooling")).pvalue)
    family = tidy["p_wilcoxon_holm"].dropna()
    assert (family >= tidy.loc[family.index, "p_wilcoxon"]).all() and len(family) == 3 * (len(RUNGS) - 1)


def hand_delta_gain(variant, rung, previous, drop=()):
    gain = lambda r: pooled(variant, r, drop=drop) - pooled("base", r, drop=drop)
    return (gain(rung) - gain(previous)).mean()


def test_gain_and_its_change_per_rung(tidy):
    row = tidy[(tidy["variant"] == "mltfr") & (tidy["rung"] == "rung-selection")].iloc[0]
    assert row["gain"] == pytest.approx((pooled("mltfr", "rung-selection") - pooled("base", "rung-selection")).mean())
    assert row["delta_gain"] == pytest.approx(hand_delta_gain("mltfr", "rung-selection", "rung-pooling"))
    assert row["delta_gain_ci_low"] < row["delta_gain"] < row["delta_gain_ci_high"]
    assert row["gain_ci_low"] < row["gain"] < row["gain_ci_high"]
    assert (row["gain_reference"], row["gain_n_seeds"], row["delta_gain_n_users"]) == ("base", 3, N_USERS)
    # the synthetic gain halves after rung-pooling: the gain falls, and its CI excludes zero
    assert row["delta_gain"] < 0 and row["delta_gain_ci_high"] < 0
    assert tidy[tidy["variant"] == "mltfr-randomselect"]["gain"].notna().all()
    assert tidy[tidy["variant"] == "base"]["gain"].isna().all()


def test_gain_change_pairs_users_by_id(tree, tidy, tmp_path):
    """Shuffling the order of users in one run gives the same numbers; a user dropped from one
    run is dropped from the pairing."""
    copy = shutil.copytree(tree, tmp_path / "runs")
    path = copy / "alpha" / "sasrec" / "mltfr" / "rung-selection" / "seed2" / "ranks.npz"
    with np.load(path) as npz:
        users, ranks = npz["test_users"], npz["test_ranks"]
    perm = np.random.default_rng(0).permutation(N_USERS)
    np.savez(path, test_users=users[perm], test_ranks=ranks[perm])
    shuffled = ladder_tidy(collect_runs(copy), CFG)
    pd.testing.assert_frame_equal(shuffled, tidy)
    np.savez(path, test_users=users[perm][1:], test_ranks=ranks[perm][1:])        # drops user perm[0]
    dropped = ladder_tidy(collect_runs(copy), CFG)
    row = dropped[(dropped["variant"] == "mltfr") & (dropped["rung"] == "rung-selection")].iloc[0]
    assert row["delta_gain_n_users"] == N_USERS - 1 and row["gain_n_users"] == N_USERS - 1
    assert row["delta_gain"] == pytest.approx(
        hand_delta_gain("mltfr", "rung-selection", "rung-pooling", drop=[perm[0]]))


def test_optimism_gives_three_picks_of_the_same_trace(runs):
    # the authors' rule on TRACE: epoch 2 (hr 0.25 >= 0.20), 3 loses (0.24 < 0.25), 4 ties hr: kept,
    # 5 loses; the best test NDCG@10 is at epoch 5; validation picked epoch 3 (best_epoch)
    assert authors_pick(TRACE) == 4 and best_test_epoch(TRACE) == 5
    table = optimism_table(runs)
    # the runs that select on validation and traced test: the rungs with selection switched
    assert sorted(set(table.tidy["setting"])) == ["alone-selection", "rung-eval_noise", "rung-selection"]
    row = table.tidy.set_index(["variant", "setting"]).loc[("mltfr", "rung-selection")]
    # mltfr's trace swings 2x around 0.06, shifted by 0.01 per seed (mean shift 0.01)
    assert row["valid_ndcg@10"] == pytest.approx(0.06 + 0.01)
    assert row["authors_ndcg@10"] == pytest.approx(0.06 + 2 * 0.005 + 0.01)
    assert row["best_ndcg@10"] == pytest.approx(0.06 + 2 * 0.015 + 0.01)
    assert row["authors_optimism"] == pytest.approx(0.01) and row["best_optimism"] == pytest.approx(0.03)
    assert row["n_seeds"] == 3 and row["epochs"] == "4/5/3, 4/5/3, 4/5/3"
    noise = np.diff(TRACE["test_ndcg@10"]).std(ddof=1) / np.sqrt(2)
    assert trace_noise(TRACE) == pytest.approx(noise) and row["noise"] == pytest.approx(2 * noise)
    # optimism and noise both scale with the variant's swings: rank correlation +1
    assert "Optimism grows with noise: Spearman rho = +1.00 across 9 cells" in table.caption
    assert "lower bound" not in table.caption and "lower bound" not in "".join(table.display.columns)


def test_a_traced_run_without_its_trace_is_a_data_error(tree, tmp_path):
    copy = shutil.copytree(tree, tmp_path / "runs")
    (copy / "alpha" / "sasrec" / "base" / "rung-selection" / "seed1" / "epochs.csv").unlink()
    with pytest.raises(DataError, match=r"rung-selection/seed1/epochs.csv: no test trace .* recorded trace_test"):
        optimism_table(collect_runs(copy))


def test_captions_state_budget_and_selection(runs):
    tables = build_tables(runs, pd.DataFrame()) + [ladder_table(runs, CFG), optimism_table(runs),
                                                   pvalue_table(run_comparisons(runs, CFG), protocol_runs(runs))]
    for table in tables[1:]:
        if table.display.empty:
            continue
        assert "Epoch budget:" in table.caption, table.name
        assert FAITHFUL_RULE in table.caption or VALID_RULE in table.caption, table.name
    main = tables[1].caption
    assert "Epoch budget: 200 (corrected), 100 (faithful)" in main and FAITHFUL_RULE in main and VALID_RULE in main


def test_protocols_table_names_the_five_factors(runs):
    table = protocol_table(protocol_runs(runs))
    for words in ("selection", "evaluation noise", "token pooling", "history masking", "validation item",
                  "ladder table"):
        assert words in table.caption
    assert "faithful select_on=test" in table.caption and "corrected select_on=valid" in table.caption
    assert (table.tidy["n_seeds"] == 3).all()


def test_one_seed_shows_no_marks_and_no_plus_minus(tmp_path):
    runs = collect_runs(build_tree(tmp_path / "runs", (1,)))
    ladder = ladder_table(runs, CFG)
    cells = "".join(ladder.display.to_numpy().ravel())
    assert "±" not in cells and "*" not in cells
    steps = ladder.tidy[ladder.tidy["p_wilcoxon"].notna()]
    assert len(steps) and (steps["mark"] == "n<3").all() and steps["p_ttest"].isna().all()
    assert all("(n<3)" in cell for cell in ladder.display.loc[steps.index, "p Wilcoxon (Holm)"])
    main = main_table(protocol_runs(runs))
    assert not main.bold.to_numpy().any() and "±" not in "".join(main.display.to_numpy().ravel())
    assert (main.display["alpha / n"] == "1").all()
    pvalues = pvalue_table(run_comparisons(runs, CFG))
    assert set(pvalues.tidy["mark"]) == {"n<3"} and "*" not in "".join(pvalues.display["p t-test users (Holm)"])
    assert all("(n<3)" in cell for cell in pvalues.display["p t-test users (Holm)"])


def test_ladder_figure_is_drawn(tidy, tmp_path):
    import matplotlib.image as mpimg

    from mltfr.analysis.figures import ladder_figure, save_figure

    png, pdf = save_figure(ladder_figure(tidy), tmp_path, "ladder")
    assert pdf.read_bytes().startswith(b"%PDF")
    rgba = (mpimg.imread(png) * 255).astype(np.uint32)
    assert len(np.unique(rgba[..., 0] | rgba[..., 1] << 8 | rgba[..., 2] << 16)) > 10


def test_a_ladder_of_base_alone_says_its_gain_panel_is_empty(tidy):
    from mltfr.analysis.figures import ladder_figure

    base_only = tidy[tidy["variant"] == "base"].assign(gain=np.nan)
    gain_panel = ladder_figure(base_only).axes[1]
    assert [t.get_text() for t in gain_panel.texts] == ["no MLTFR rung:\ngain not measured"]
    assert not [t.get_text() for t in ladder_figure(tidy).axes[1].texts]


def test_a_rung_trained_with_another_backbone_gets_no_step_test(tmp_path):
    """A rung retrained with the authors' backbone (model.impl) is not paired with the next rung's
    older runs: the step keeps its NDCG@10 but has no test, and the note says which seeds left and why."""
    root = build_tree(tmp_path / "runs", (1, 2, 3))
    for seed in (1, 2, 3):
        path = root / "alpha" / "sasrec" / "base" / "faithful" / f"seed{seed}" / "result.json"
        result = json.loads(path.read_text())
        result["model"]["impl"] = "authors"
        path.write_text(json.dumps(result))
    ladder = ladder_table(collect_runs(root), CFG)
    step = ladder.tidy.set_index(["variant", "rung"]).loc[("base", "rung-pooling")]
    assert np.isnan(step["p_wilcoxon"]) and np.isnan(step["p_ttest"]) and step["n_users"] == 0
    assert step["note"] == "seed(s) 1, 2, 3 left out: the backbone settings differ (impl); retrain one side"
    assert step["ndcg@10"] == pytest.approx(pooled("base", "rung-pooling").mean())
    kept = ladder.tidy.set_index(["variant", "rung"]).loc[("mltfr", "rung-pooling")]
    assert kept["p_wilcoxon"] > 0 and kept["n_users"] == N_USERS
