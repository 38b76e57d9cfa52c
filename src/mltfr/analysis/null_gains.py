"""How often the authors' reporting finds a gain in nothing (table and figure null_gains).

The authors report one run per cell, with the epoch picked on the test set by their rule and a
noisy evaluation: exactly what a faithful run's result.json records. Two such runs that should
not differ are compared as the authors would compare a method with its baseline, by the relative
gain in test NDCG@10 and HR@10, 100 * (a - b) / b:

- base vs base: two seeds of the same cell. Every ordered pair of distinct seeds (i, j), i.e.
  each unordered pair in both orientations: neither run is "the method", so both assignments
  count once. The distribution then holds every gain with its reverse, and a share is the chance
  that two seeds, randomly cast as method and baseline, show at least that gain; no coin decides
  an orientation, so the numbers are reproducible. The n (n - 1) pairs of n seeds share runs: the
  shares are averages over the pairs of the seeds at hand, not n (n - 1) independent trials.
- mltfr vs mltfr-randomselect (tokens drawn uniformly per user, which the filter diagnostics show
  the authors' K = 1 filter is close to): every pair of one mltfr seed and one control seed,
  oriented as the claim is (mltfr over the control).

Only runs that trained the backbone alike are paired (the settings and model.impl their
result.json recorded, as mltfr.analysis.stats pairs seeds): a seed retrained with the authors'
backbone is never compared with one that predates it.

Per dataset, backbone and comparison: the number of pairs, the mean, median and largest gain,
and the share of pairs with a gain of at least 1%, 2% and 5% (THRESHOLDS).
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from mltfr.analysis.blocks import BASE, FULL
from mltfr.analysis.collect import protocol_runs
from mltfr.analysis.stats import same_settings, settings_by_seed
from mltfr.analysis.tables import Table, empty_table, with_run_settings
from mltfr.spec.rungs import FAITHFUL

NULL_PAIRS = ((BASE, BASE), (FULL, "mltfr-randomselect"))   # (method, baseline) that should not differ
METRICS = ("ndcg@10", "hr@10")
THRESHOLDS = (1, 2, 5)                                     # percent: the shares of gains at least this
CELL = ["dataset", "backbone"]
GROUP = [*CELL, "comparison", "metric"]
PAIR_COLUMNS = [*GROUP, "seed_method", "seed_baseline", "method", "baseline", "gain_pct"]
SUMMARY = ["n_seeds_method", "n_seeds_baseline", "n_pairs", "mean_pct", "median_pct", "max_pct",
           *(f"share_ge_{t}pct" for t in THRESHOLDS)]
NO_PAIRS = "fewer than two faithful runs of base, or no faithful mltfr beside mltfr-randomselect"


def seed_pairs(method_seeds, baseline_seeds, same: bool) -> list[tuple[int, int]]:
    """Ordered pairs of distinct seeds of one cell (same), else every method x baseline seed."""
    if same:
        return list(itertools.permutations(sorted(method_seeds), 2))
    return list(itertools.product(sorted(method_seeds), sorted(baseline_seeds)))


def alike(settings: dict, method: str, baseline: str, pair: tuple[int, int]) -> bool:
    """Whether the two runs of a pair trained the backbone alike (BACKBONE_SETTINGS as recorded;
    both missing counts as the same): a retrained seed is never paired with one that predates it."""
    return bool(same_settings(settings[method].loc[pair[0]], settings[baseline].loc[pair[1]]).all())


def cell_pairs(cell: pd.DataFrame, method: str, baseline: str) -> list[dict]:
    """Every pair of one comparison in one dataset/backbone whose runs trained the backbone alike,
    per metric, with its relative gain."""
    values = {v: cell[cell["variant"] == v].set_index("seed") for v in (method, baseline)}
    settings = {v: settings_by_seed(cell, v) for v in (method, baseline)}
    pairs = [pair for pair in seed_pairs(values[method].index, values[baseline].index, same=method == baseline)
             if alike(settings, method, baseline, pair)]
    rows = []
    for metric, (i, j) in itertools.product(METRICS, pairs):
        a, b = values[method].at[i, f"test_{metric}"], values[baseline].at[j, f"test_{metric}"]
        rows.append({"comparison": f"{method} vs {baseline}", "metric": metric, "seed_method": i,
                     "seed_baseline": j, "method": a, "baseline": b,
                     "gain_pct": 100.0 * (a - b) / b if b else np.nan})
    return rows


def null_pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per pair of faithful runs that should not differ (NULL_PAIRS), per metric."""
    faithful = protocol_runs(runs)
    faithful = faithful[faithful["protocol"] == FAITHFUL]
    rows = []
    for (dataset, backbone), cell in faithful.groupby(CELL, sort=True):
        for method, baseline in NULL_PAIRS:
            rows += [{"dataset": dataset, "backbone": backbone, **row} for row in cell_pairs(cell, method, baseline)]
    return pd.DataFrame(rows).reindex(columns=PAIR_COLUMNS)


def summarise(group: pd.DataFrame) -> pd.Series:
    """The size, centre, largest value and threshold shares of one comparison's gains."""
    gains = group["gain_pct"].dropna()
    shares = {f"share_ge_{t}pct": float((gains >= t).mean()) for t in THRESHOLDS}
    return pd.Series({"n_seeds_method": group["seed_method"].nunique(),
                      "n_seeds_baseline": group["seed_baseline"].nunique(), "n_pairs": len(gains),
                      "mean_pct": gains.mean(), "median_pct": gains.median(), "max_pct": gains.max(), **shares})


def null_gain_tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, backbone, comparison and metric: the summary of its pairs (SUMMARY)."""
    pairs = null_pairs(runs)
    if pairs.empty:
        return pd.DataFrame(columns=[*GROUP, *SUMMARY])
    tidy = pairs.groupby(GROUP, sort=False).apply(summarise, include_groups=False).reset_index()
    return tidy.reindex(columns=[*GROUP, *SUMMARY])


def null_gain_table(runs: pd.DataFrame) -> Table:
    """The null_gains table (see the module docstring)."""
    tidy = null_gain_tidy(runs)
    title = "How often the authors' reporting finds a gain in nothing"
    if tidy.empty:
        return empty_table("null_gains", tidy, title, NO_PAIRS)
    display = tidy[GROUP].astype(str)
    display["seeds"] = [f"{a:.0f} x {b:.0f}" for a, b in tidy[["n_seeds_method", "n_seeds_baseline"]].to_numpy()]
    display["pairs"] = [f"{n:.0f}" for n in tidy["n_pairs"]]
    for col, label in (("mean_pct", "mean gain"), ("median_pct", "median gain"), ("max_pct", "largest gain")):
        display[label] = [f"{v:+.1f} %" for v in tidy[col]]
    for t in THRESHOLDS:
        display[f"gain >= {t} %"] = [f"{v:.0%}" for v in tidy[f"share_ge_{t}pct"]]
    caption = with_run_settings(
        f"{title}: pairs of faithful runs (one seed each, the epoch picked on test by the authors' rule, "
        "evaluation noise where the variant has it: the authors' reporting) that should not differ, "
        "compared as a method with its baseline: relative gain 100 (a - b) / b of test NDCG@10 and "
        "HR@10. base vs base: every ordered pair of distinct seeds (each unordered pair in both "
        "orientations: neither run is the method, so a share is the chance that two seeds cast at "
        "random as method and baseline show at least that gain; no random orientation is drawn). "
        "mltfr vs mltfr-randomselect (the control whose tokens are drawn uniformly per user): every "
        "mltfr seed x control seed, oriented as the claim. Only runs that trained the backbone alike "
        "are paired (settings and model.impl as recorded). Pairs share runs, so they are not "
        f"independent trials. seeds = method x baseline seeds.", faithful_runs(runs))
    return Table("null_gains", tidy, display, None, caption)


def faithful_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The ordinary faithful runs of the variants the null pairs compare."""
    study = protocol_runs(runs)
    names = {name for pair in NULL_PAIRS for name in pair}
    return study[(study["protocol"] == FAITHFUL) & study["variant"].isin(names)]
