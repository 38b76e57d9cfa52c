"""Significance of every comparison with `base` and with full `mltfr` (scipy.stats).

For a variant A against a reference B of the same dataset/backbone/protocol:

- Per-user vectors: per-user test NDCG@10 from ranks.npz, averaged over the seeds both variants
  have (pooling seeds this way keeps one paired observation per user); users aligned by index.
- Wilcoxon signed-rank over users (zero_method="wilcox": users whose NDCG is equal under A and B,
  typically both outside the top 10, carry no sign and are dropped, the standard treatment).
  All differences zero -> p = 1 with a note.
- Effect size: matched-pairs rank-biserial correlation r = (T+ - T-) / (T+ + T-) over the
  non-zero differences, in [-1, 1], the effect size that belongs to the Wilcoxon test. Cohen's
  d_z (mean / sd of the per-user differences) is reported beside it for readers used to it.
- Paired t-test over seeds on mean test NDCG@10 (the run-level result); NaN with a note when
  fewer than MIN_SEEDS (3) common seeds or when the seed differences are constant.
- Users are paired by user id (the index of the per-user vectors), never by position.
- Bootstrap 95% CI of the mean per-user difference A - B (paired: users' differences are
  resampled; percentile method, seeded: the same inputs give the same interval).
- Holm correction within each family = (dataset, backbone, protocol): all comparisons that
  share one set of test users. Significance marks: * p<0.05, ** p<0.01, *** p<0.001 (Holm, Wilcoxon),
  only with >= MIN_SEEDS common seeds; with fewer the mark is FEW_SEEDS ("n<3"), which says why.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
import numpy as np
import pandas as pd
from scipy import stats

from mltfr.analysis.collect import load_user_ndcg, protocol_runs
from mltfr.analysis.demonstration import MIN_SEEDS   # fewer common seeds: no t-test and no significance mark
from mltfr.analysis.tables import CELL, Table, empty_table, with_run_settings
from mltfr.analysis.variants import BASE, FULL

FAMILY = ("dataset", "backbone", "protocol")
FEW_SEEDS = f"n<{MIN_SEEDS}"   # the mark of a comparison with too few seeds: says why there is none


@dataclass
class StatsConfig:
    n_resamples: int = 2000      # (int) bootstrap resamples of users
    confidence: float = 0.95     # (float) bootstrap CI level
    seed: int = 0                # (int) bootstrap RNG seed: fixed so outputs are reproducible
    k: int = 10                  # (int) cut-off of the per-user NDCG


def holm(pvalues) -> np.ndarray:
    """Holm step-down adjusted p-values; NaNs stay NaN and do not count in the family size."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    order = ok[np.argsort(p[ok], kind="stable")]
    m = len(order)
    scaled = (m - np.arange(m)) * p[order]            # (m - i) * p_(i), i = 0..m-1
    out[order] = np.minimum(1.0, np.maximum.accumulate(scaled))
    return out


def significance_mark(p: float) -> str:
    """'***' p < 0.001, '**' < 0.01, '*' < 0.05, '' otherwise (NaN too)."""
    if not np.isfinite(p):
        return ""
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else ""


def wilcoxon_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    """(statistic, p, note) of the two-sided Wilcoxon signed-rank test of a - b."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) == 0:
        return np.nan, np.nan, "no common users"
    if not np.any(d):
        return 0.0, 1.0, "all per-user differences are zero"
    res = stats.wilcoxon(a, b, zero_method="wilcox")
    return float(res.statistic), float(res.pvalue), ""


def rank_biserial(d: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of differences d (zeros dropped); NaN if none."""
    d = np.asarray(d, float)
    d = d[d != 0]
    if len(d) == 0:
        return np.nan
    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def cohen_dz(d: np.ndarray) -> float:
    """Cohen's d for paired data: mean / sample sd of the differences; NaN if sd = 0."""
    d = np.asarray(d, float)
    sd = d.std(ddof=1) if len(d) > 1 else 0.0
    return float(d.mean() / sd) if sd > 0 else np.nan


def seed_ttest(a: np.ndarray, b: np.ndarray) -> tuple[float, float, str]:
    """(t, p, note) of the paired t-test over seeds; NaN with a note when it is undefined."""
    d = np.asarray(a, float) - np.asarray(b, float)
    if len(d) < MIN_SEEDS:
        return np.nan, np.nan, f"t-test needs >= {MIN_SEEDS} common seeds, has {len(d)}"
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-12):  # constant up to float rounding: sd = 0
        return np.nan, np.nan, "t-test undefined: seed differences are constant"
    res = stats.ttest_rel(a, b)
    return float(res.statistic), float(res.pvalue), ""


def bootstrap_ci(a: np.ndarray, b: np.ndarray, cfg: StatsConfig = StatsConfig()) -> tuple[float, float]:
    """Paired percentile bootstrap CI of mean(a - b), seeded by cfg.seed.

    Resampling users' differences a_u - b_u is the paired bootstrap (scipy's paired=True gives
    the same interval for the same seed) at a third of the cost on 40k-user datasets.
    """
    if len(a) < 2:
        return np.nan, np.nan
    diff = np.asarray(a, float) - np.asarray(b, float)
    res = stats.bootstrap((diff,), np.mean, vectorized=True, n_resamples=cfg.n_resamples, batch=200,
                          confidence_level=cfg.confidence, method="percentile",
                          rng=np.random.default_rng(cfg.seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def comparisons(runs: pd.DataFrame) -> pd.DataFrame:
    """(dataset, backbone, protocol, variant, reference) of every comparison the study makes.

    Every variant against `base`; every variant other than base and mltfr against full `mltfr`.
    """
    pairs = []
    for cell, group in runs.groupby(CELL, sort=True):
        variants = sorted(set(group["variant"]))
        for ref, skip in ((BASE, {BASE}), (FULL, {BASE, FULL})):
            if ref in variants:
                pairs += [(*cell, v, ref) for v in variants if v not in skip]
    return pd.DataFrame(pairs, columns=[*CELL, "variant", "reference"])


def seed_means(runs: pd.DataFrame, variant: str, metric: str = "ndcg@10") -> pd.Series:
    """Test metric of one variant's runs, indexed by seed (runs of one cell)."""
    return runs.loc[runs["variant"] == variant].set_index("seed")[f"test_{metric}"]


def pooled_users(runs: pd.DataFrame, variant: str, seeds: list[int],
                 load: Callable[[str], pd.Series]) -> pd.Series:
    """Per-user NDCG of `variant` averaged over `seeds` (users present in every seed, paired by
    user id), sorted by user id so the bootstrap does not depend on the order runs wrote users."""
    rows = runs[(runs["variant"] == variant) & runs["seed"].isin(seeds)]
    per_seed = pd.concat([load(d) for d in rows["run_dir"]], axis=1, join="inner")
    return per_seed.mean(axis=1).sort_index()


def compare_pair(cell_runs: pd.DataFrame, variant: str, reference: str,
                 load: Callable[[str], pd.Series], cfg: StatsConfig) -> dict:
    """Every statistic of one comparison (variant vs reference) within one cell."""
    a_seed, b_seed = seed_means(cell_runs, variant), seed_means(cell_runs, reference)
    seeds = sorted(set(a_seed.index) & set(b_seed.index))
    row = {"n_seeds": len(seeds), "seed_mean_variant": a_seed[seeds].mean(),
           "seed_mean_reference": b_seed[seeds].mean()}
    if not seeds:
        return {**row, "n_users": 0, "note": "no common seeds"}
    a, b = pooled_users(cell_runs, variant, seeds, load).align(
        pooled_users(cell_runs, reference, seeds, load), join="inner")
    d = a.to_numpy() - b.to_numpy()
    w, p_w, note_w = wilcoxon_test(a.to_numpy(), b.to_numpy())
    t, p_t, note_t = seed_ttest(a_seed[seeds].to_numpy(), b_seed[seeds].to_numpy())
    lo, hi = bootstrap_ci(a.to_numpy(), b.to_numpy(), cfg)
    return {**row, "n_users": len(d), "mean_diff": d.mean() if len(d) else np.nan,
            "ci_low": lo, "ci_high": hi, "wilcoxon_stat": w, "p_wilcoxon": p_w,
            "rank_biserial": rank_biserial(d), "cohen_dz": cohen_dz(d) if len(d) else np.nan,
            "t_stat": t, "p_ttest": p_t, "note": "; ".join(n for n in (note_w, note_t) if n)}


def run_comparisons(runs: pd.DataFrame, cfg: StatsConfig = StatsConfig()) -> pd.DataFrame:
    """The comparisons table: one row per comparison, Holm-adjusted p-values and marks added.

    Per-user vectors are loaded one cell at a time so memory stays one cell's worth. The protocol
    ladder's runs are left out (the ladder table tests them).
    """
    runs = protocol_runs(runs)
    pairs = comparisons(runs)
    rows = []
    for cell, cell_pairs in pairs.groupby(CELL, sort=True):
        cell_runs = runs[(runs[CELL] == list(cell)).all(axis=1)]
        cache: dict[str, pd.Series] = {}

        def load(run_dir: str) -> pd.Series:
            if run_dir not in cache:
                cache[run_dir] = load_user_ndcg(run_dir, cfg.k)
            return cache[run_dir]

        for pair in cell_pairs.itertuples(index=False):
            stats_row = compare_pair(cell_runs, pair.variant, pair.reference, load, cfg)
            rows.append({**pair._asdict(), **stats_row})
    return add_holm(pd.DataFrame(rows, columns=[*pairs.columns, *_STAT_COLUMNS]))


_STAT_COLUMNS = ["n_seeds", "seed_mean_variant", "seed_mean_reference", "n_users", "mean_diff",
                 "ci_low", "ci_high", "wilcoxon_stat", "p_wilcoxon", "rank_biserial", "cohen_dz",
                 "t_stat", "p_ttest", "note"]


def add_holm(table: pd.DataFrame, family: tuple[str, ...] = FAMILY) -> pd.DataFrame:
    """Holm-adjusted p_wilcoxon_holm / p_ttest_holm within each family, and the marks."""
    table = table.copy()
    for col in ("p_wilcoxon", "p_ttest"):
        table[f"{col}_holm"] = np.nan
        for _, idx in table.groupby(list(family), sort=False).groups.items():
            table.loc[idx, f"{col}_holm"] = holm(table.loc[idx, col].to_numpy(float))
    table["mark"] = [seed_aware_mark(p, n) for p, n in zip(table["p_wilcoxon_holm"], table["n_seeds"])]
    return table


def seed_aware_mark(p: float, n_seeds: float) -> str:
    """significance_mark(p) with >= MIN_SEEDS common seeds; FEW_SEEDS when a p-value exists but
    too few seeds back it (one seed's users say nothing about another training run)."""
    if not np.isfinite(p):
        return ""
    return significance_mark(p) if n_seeds >= MIN_SEEDS else FEW_SEEDS


def format_p(p: float, mark: str = "") -> str:
    """'0.012*', or '0.012 (n<3)' where too few seeds allow no mark."""
    mark = f" ({mark})" if mark == FEW_SEEDS else mark
    return "" if not np.isfinite(p) else f"{p:.2e}{mark}" if p < 1e-3 else f"{p:.3f}{mark}"


def pvalue_table(table: pd.DataFrame, runs: pd.DataFrame | None = None) -> Table:
    """One table of every comparison: difference, CI, effect size, Holm p-values with marks;
    the caption states the epoch budget and selection rule of `runs` when given."""
    keys = ["protocol", "backbone", "dataset", "reference", "variant"]
    t = table.sort_values(keys, kind="stable").reset_index(drop=True)
    tidy_cols = keys + ["n_users", "n_seeds", "mean_diff", "ci_low", "ci_high", "rank_biserial",
                        "p_wilcoxon", "p_wilcoxon_holm", "p_ttest", "p_ttest_holm", "mark"]
    if t.empty:
        return empty_table("pvalues", t[tidy_cols], "Significance",
                           "no comparisons (the runs hold no `base` or `mltfr` with another variant)")
    display = t[keys].copy()
    display["n seeds"] = [f"{n:.0f}" for n in t["n_seeds"]]
    display["Δ NDCG@10"] = [f"{v:+.4f}" if np.isfinite(v) else "" for v in t["mean_diff"]]
    display["95% CI"] = [f"[{lo:+.4f}, {hi:+.4f}]" if np.isfinite(lo) else ""
                         for lo, hi in zip(t["ci_low"], t["ci_high"])]
    display["r_rb"] = [f"{v:+.3f}" if np.isfinite(v) else "" for v in t["rank_biserial"]]
    display["p Wilcoxon (Holm)"] = [format_p(p, m) for p, m in zip(t["p_wilcoxon_holm"], t["mark"])]
    display["p t-test (Holm)"] = [format_p(p) for p in t["p_ttest_holm"]]
    display["note"] = t["note"].fillna("")
    tidy = t[tidy_cols]
    caption = ("Variant minus reference in per-user test NDCG@10 (seeds averaged per user), "
               "bootstrap 95% CI, rank-biserial r, Wilcoxon signed-rank over users and paired "
               "t-test over seeds (>= 3 common seeds), Holm-corrected per dataset/backbone/protocol; "
               f"* p<0.05, ** p<0.01, *** p<0.001, only with >= {MIN_SEEDS} common seeds ({FEW_SEEDS}: "
               "too few seeds for a mark); n_seeds = seeds common to both runs.")
    if runs is not None:
        caption = with_run_settings(caption, runs)
    return Table("pvalues", tidy, display, None, caption)
