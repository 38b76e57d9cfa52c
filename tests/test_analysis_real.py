"""mltfr.analysis on real per-user ranks: Amazon Pantry, popularity vs random ranking (numpy only)."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from fixtures.results import result_document
from scipy import stats as sps

from mltfr.analysis.collect import collect_runs, load_user_ndcg
from mltfr.analysis.stats import StatsConfig, run_comparisons
from mltfr.analysis.tables import main_table

SEEDS = (1, 2, 3)   # significance marks need >= 3 seeds common to both runs


def read_sequences(path):
    """uid -> item list from the authors' `uid<TAB>:<TAB>item item ...` files."""
    lines = path.read_text().splitlines()
    return [line.split("\t")[2:] for line in lines if line.strip()]


def popularity_ranks(train, test):
    """Rank (1 = best, ties pessimistic) of each user's test item by training popularity."""
    counts = Counter(item for seq in train for item in seq)
    items = sorted(set(counts) | {t[0] for t in test})
    score = np.array([counts.get(i, 0) for i in items])
    sorted_scores = np.sort(score)
    target = np.array([counts.get(t[0], 0) for t in test])
    # pessimistic: every item scoring >= the target ranks ahead of or with it
    return len(items) - np.searchsorted(sorted_scores, target, side="left"), len(items)


def user_ndcg(ranks, k=10):
    """Per-user NDCG@k of one held-out item, by hand: 1/log2(rank + 1) within the top k."""
    r = np.asarray(ranks, dtype=float)
    return np.where(r <= k, 1 / np.log2(r + 1), 0.0)


def metrics(ranks):
    r = ranks.astype(float)
    out = {f"hr@{k}": float((r <= k).mean()) for k in (5, 10, 20)}
    out.update({f"ndcg@{k}": float(user_ndcg(r, k).mean()) for k in (5, 10, 20)})
    out["mrr"] = float((1 / r).mean())
    return out


def write(root, variant, seed, ranks):
    folder = root / "pantry" / "pop" / variant / "faithful" / f"seed{seed}"
    folder.mkdir(parents=True)
    result = result_document("pantry", "pop", variant, "faithful", seed, metrics(ranks))
    (folder / "result.json").write_text(json.dumps(result))
    np.savez(folder / "ranks.npz", test_users=np.arange(len(ranks)), test_ranks=ranks)


@pytest.fixture(scope="module")
def pantry_runs(real_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("pantry")
    train = read_sequences(real_data / "amazon-pantry" / "train.txt")
    test = read_sequences(real_data / "amazon-pantry" / "test.txt")
    pop, n_items = popularity_ranks(train, test)
    for seed in SEEDS:
        random = np.random.default_rng(seed).integers(1, n_items + 1, len(pop))
        write(root, "base", seed, random)        # "base" = random ranking
        write(root, "mltfr", seed, pop)          # "mltfr" = popularity ranking
    return root, pop, n_items


def test_real_pantry_stats(pantry_runs):
    root, pop, n_items = pantry_runs
    assert len(pop) == 7123 and n_items >= 4884      # the README's users / items
    runs = collect_runs(root)
    row = run_comparisons(runs, StatsConfig(n_resamples=500)).iloc[0]
    rand = np.mean([user_ndcg(np.random.default_rng(s).integers(1, n_items + 1, len(pop))) for s in SEEDS], axis=0)
    d = user_ndcg(pop) - rand
    assert row["p_ttest_users"] == pytest.approx(sps.ttest_rel(user_ndcg(pop), rand).pvalue, rel=1e-9)
    assert row["p_wilcoxon"] == pytest.approx(sps.wilcoxon(user_ndcg(pop), rand).pvalue, rel=1e-9)
    assert row["p_ttest_users"] < 1e-10 and row["p_wilcoxon"] < 1e-10 and row["mark"] == "***"
    assert row["ci_low"] < d.mean() < row["ci_high"]
    # the margin: 5% of the random ranking's test NDCG@10 (mean over the seeds); popularity's gain
    # is far outside it, so TOST cannot show equivalence
    assert row["margin"] == pytest.approx(0.05 * np.mean([user_ndcg(np.random.default_rng(s).integers(
        1, n_items + 1, len(pop))).mean() for s in SEEDS]), rel=1e-12)
    assert d.mean() > 10 * row["margin"] and row["p_tost"] > 0.99
    se = d.std(ddof=1) / np.sqrt(len(d))
    assert row["mde"] == pytest.approx((sps.norm.ppf(0.975) + sps.norm.ppf(0.8)) * se, rel=1e-3)  # z ~ t at 7,122 df
    assert row["n_users"] == 7123
    assert user_ndcg(pop).mean() == pytest.approx(0.0136592, abs=1e-7)   # measured, pins the ranking
    # popularity's NDCG@10 on Pantry, the same in every "seed" -> std 0
    cell = main_table(runs).tidy.query("variant == 'mltfr' and metric == 'ndcg@10'")
    assert cell["mean"].item() == pytest.approx(user_ndcg(pop).mean()) and cell["std"].item() == 0


def write_rung(root, variant, rung, ranks, users):
    """A ladder run (rung-selection) or its faithful rung 0 of the pop backbone on Pantry."""
    folder = root / "pantry" / "pop" / variant / rung / "seed1"
    folder.mkdir(parents=True)
    record = None if rung == "faithful" else {"name": rung, "index": 1, "factors": ["selection"],
                                              "previous": "faithful", "order": ["selection"]}
    result = result_document("pantry", "pop", variant, "faithful", 1, metrics(ranks), rung=record)
    (folder / "result.json").write_text(json.dumps(result))
    np.savez(folder / "ranks.npz", test_users=users, test_ranks=ranks)


def test_real_pantry_ladder_pairs_users_by_id(pantry_runs, tmp_path):
    """The gain change on Pantry's 7,123 users: one run lists its users reversed and lacks one;
    the ladder pairs by user id and drops that user from every cell."""
    from mltfr.analysis.ladder import ladder_tidy

    _, pop, n_items = pantry_runs
    users = np.arange(len(pop))
    cells = {("base", "faithful"): np.random.default_rng(1).integers(1, n_items + 1, len(pop)),
             ("mltfr", "faithful"): pop,
             ("base", "rung-selection"): np.random.default_rng(2).integers(1, n_items + 1, len(pop)),
             ("mltfr", "rung-selection"): np.maximum(1, pop - 1)}
    for (variant, rung), ranks in cells.items():
        order = users[::-1][1:] if (variant, rung) == ("mltfr", "rung-selection") else users  # drops the last user
        write_rung(tmp_path, variant, rung, ranks[order], order)
    tidy = ladder_tidy(collect_runs(tmp_path), StatsConfig(n_resamples=300))
    row = tidy[(tidy["variant"] == "mltfr") & (tidy["rung"] == "rung-selection")].iloc[0]
    kept = users[:-1]
    gain = {rung: user_ndcg(cells[("mltfr", rung)][kept]) - user_ndcg(cells[("base", rung)][kept])
            for rung in ("faithful", "rung-selection")}
    assert row["delta_gain_n_users"] == len(pop) - 1
    assert row["delta_gain"] == pytest.approx((gain["rung-selection"] - gain["faithful"]).mean(), rel=1e-12)
    assert row["delta_gain_ci_low"] < row["delta_gain"] < row["delta_gain_ci_high"]


def test_analysis_per_user_ndcg_on_real_ranks(pantry_runs):
    """The analysis's per-user NDCG on real ranks equals the hand formula, users in file order."""
    root, pop, _ = pantry_runs
    for k in (5, 10, 20):
        ndcg = load_user_ndcg(root / "pantry" / "pop" / "mltfr" / "faithful" / "seed1", k)
        assert ndcg.index.tolist() == list(range(len(pop)))
        assert ndcg.to_numpy() == pytest.approx(user_ndcg(pop, k), rel=1e-15)
