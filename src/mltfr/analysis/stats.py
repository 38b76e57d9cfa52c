"""Significance, equivalence and power of every comparison with `base` and with full `mltfr`.

For a variant A against a reference B of the same dataset/backbone/protocol (scipy.stats):

- Seeds: every seed both variants ran with the same backbone settings (BACKBONE_SETTINGS: the
  tunable settings and model.impl, as each result.json recorded them); a seed whose two runs
  trained the backbone differently is left out, and the note names it.
- Per-user vectors: per-user test NDCG@10 from ranks.npz, for every seed kept;
  users are paired by user id (the index of the per-user vectors), never by position, and only
  users every one of those runs has are kept. The tests use the seed-averaged per-user
  differences d_u = mean_s (A_su - B_su): one paired observation per user.
- The verdict test: the paired t-test over users (one-sample t-test of d against 0, two-sided).
  At recommender sample sizes the t-test holds its type-I error where Wilcoxon and the sign test
  inflate it (Ihemelandu & Ekstrand, SIGIR 2023, arXiv 2305.02461).
- Equivalence at a margin declared in advance (study.equivalence.margin, StatsConfig.margin): the
  absolute margin is margin x the reference's test NDCG@10 (mean over the common seeds); two
  one-sided t-tests on d (TOST, Lakens 2017): H0- mean <= -margin and H0+ mean >= +margin;
  p_tost = the larger of the two one-sided p-values.
- Minimum detectable effect at 80% power of the verdict test (`mde`, see `mde`).
- Wilcoxon signed-rank over users, a secondary column (zero_method="wilcox": users whose NDCG is
  equal under A and B, typically both outside the top 10, carry no sign and are dropped). All
  differences zero -> p = 1 with a note. Its effect size, the matched-pairs rank-biserial r =
  (T+ - T-) / (T+ + T-), and Cohen's d_z (mean / sd of d) are reported beside it.
- Paired t-test over seeds on mean test NDCG@10 (the run-level result; `t_stat`, `p_ttest`); NaN
  with a note when fewer than MIN_SEEDS (3) common seeds or when the seed differences are constant.
- 95% CI of the mean difference by a two-level bootstrap (`two_level_ci`): seeds and users
  resampled, so the interval holds the variance between training seeds, not only between users.
- Holm correction within each family = (dataset, backbone, protocol): all comparisons that
  share one set of test users (the positive controls' comparisons form a family of their own),
  separately for each test (t-test over users, TOST, Wilcoxon,
  t-test over seeds). Significance marks (of the verdict test): * p<0.05, ** p<0.01,
  *** p<0.001 (Holm), only with >= MIN_SEEDS common seeds; with fewer the mark is FEW_SEEDS
  ("n<3"), which says why.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from mltfr.analysis.blocks import BASE, FULL, POSITIVE_CONTROLS
from mltfr.analysis.collect import load_user_ndcg, protocol_runs
from mltfr.analysis.demonstration import MIN_SEEDS  # fewer common seeds: no t-test and no significance mark
from mltfr.analysis.tables import CELL, Table, empty_table, with_run_settings
from mltfr.spec.variants import CHOOSING_FILTERS, SELECTION_CONTROL
from mltfr.study.tuning import TUNABLE

FAMILY = ("dataset", "backbone", "protocol")
# A comparison pairs a seed only where both runs trained the backbone alike: a retrain with the
# search's settings would otherwise be compared with a run that predates them.
BACKBONE_SETTINGS = (*TUNABLE, "impl")
FEW_SEEDS = f"n<{MIN_SEEDS}"   # the mark of a comparison with too few seeds: says why there is none
ALPHA = 0.05                   # two-sided level of every test and of the MDE (Holm-adjusted p < ALPHA)
POWER = 0.80                   # the power the minimum detectable effect is stated at
BATCH = 100                    # bootstrap resamples drawn at once: (BATCH, users) index arrays


@dataclass
class StatsConfig:
    n_resamples: int = 2000      # (int) bootstrap resamples
    confidence: float = 0.95     # (float) bootstrap CI level
    seed: int = 0                # (int) bootstrap RNG seed: fixed so outputs are reproducible
    k: int = 10                  # (int) cut-off of the per-user NDCG
    margin: float = 0.05         # (float) equivalence margin, a share of the reference's test NDCG@10


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


def user_ttest(d: np.ndarray) -> tuple[float, float, str]:
    """(t, p, note) of the paired t-test over users: one-sample t-test of the per-user differences
    d against 0, two-sided; all zero -> p = 1, constant otherwise or < 2 users -> NaN, with a note."""
    d = np.asarray(d, float)
    if len(d) < 2:
        return np.nan, np.nan, f"t-test over users needs >= 2 users, has {len(d)}"
    if not np.any(d):
        return 0.0, 1.0, "all per-user differences are zero"
    if np.ptp(d) == 0:
        return np.nan, np.nan, "t-test over users undefined: per-user differences are constant"
    res = stats.ttest_1samp(d, 0.0)
    return float(res.statistic), float(res.pvalue), ""


def tost(d: np.ndarray, margin: float) -> float:
    """p of two one-sided t-tests (TOST, Lakens 2017) that the mean of d lies within
    (-margin, +margin): max(p of H0 mean <= -margin, p of H0 mean >= +margin). Constant d (the
    t statistics are infinite): 0 when its value lies strictly within the margin, else 1."""
    d = np.asarray(d, float)
    if len(d) < 2 or not margin > 0:
        return np.nan
    if np.ptp(d) == 0:
        return 0.0 if abs(d[0]) < margin else 1.0
    above_low = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    below_high = stats.ttest_1samp(d, margin, alternative="less").pvalue
    return float(max(above_low, below_high))


def mde(sd: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of the paired t-test over n users with per-user SD sd: the
    smallest true mean difference it finds at two-sided level alpha with the given power,
    MDE = (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd / sqrt(n) (the normal-approximation power
    formula with t quantiles). Not Holm-adjusted: pass alpha / m for the level Holm's first step
    uses in a family of m (`add_mde_holm`)."""
    if n < 2 or not np.isfinite(sd):
        return np.nan
    df = n - 1
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * sd / np.sqrt(n))


def two_level_ci(diffs: np.ndarray, cfg: StatsConfig = StatsConfig()) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean per-user difference, resampling seeds and users.

    diffs: (seeds, users) per-user differences A - B at each common seed, users paired by id.
    Each resample draws the S seeds with replacement, then the U users with replacement, and
    takes the mean of diffs over the drawn seeds x the drawn users (the drawn seeds' per-user
    difference vectors averaged, then that vector's mean over the drawn users). The users are
    drawn once per resample and used in every drawn seed: seeds and users are crossed (every
    seed tests the same users), so a user's persistent difference counts as one observation, not
    as one per seed (Owen 2007, the pigeonhole bootstrap). Conservative: noise specific to one
    seed and user enters through both levels (up to ~sqrt(3) x the users-only width when the
    differences have no seed or user structure). Seeded by cfg.seed; vectorised over BATCH
    resamples at a time.
    """
    diffs = np.asarray(diffs, float)
    if diffs.ndim != 2 or diffs.shape[1] < 2:
        return np.nan, np.nan
    rng = np.random.default_rng(cfg.seed)
    n_seeds, n_users = diffs.shape
    means = np.empty(cfg.n_resamples)
    for start in range(0, cfg.n_resamples, BATCH):
        size = min(BATCH, cfg.n_resamples - start)
        seeds = rng.integers(0, n_seeds, size=(size, n_seeds))       # (size, S) drawn seeds
        users = rng.integers(0, n_users, size=(size, n_users))       # (size, U) drawn users
        per_user = diffs[seeds].mean(axis=1)                         # (size, U) over the drawn seeds
        means[start:start + size] = np.take_along_axis(per_user, users, axis=1).mean(axis=1)
    tail = (1 - cfg.confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


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

    Every variant against `base`; every variant other than base and mltfr against full `mltfr`;
    a filter that chooses also against the control that selects uniformly (SELECTION_CONTROL).
    """
    pairs = []
    for cell, group in runs.groupby(CELL, sort=True):
        variants = sorted(set(group["variant"]))
        for ref, skip in ((BASE, {BASE}), (FULL, {BASE, FULL})):
            if ref in variants:
                pairs += [(*cell, v, ref) for v in variants if v not in skip]
        if SELECTION_CONTROL in variants:
            pairs += [(*cell, v, SELECTION_CONTROL) for v in CHOOSING_FILTERS if v in variants]
    return pd.DataFrame(pairs, columns=[*CELL, "variant", "reference"])


def seed_means(runs: pd.DataFrame, variant: str, metric: str = "ndcg@10") -> pd.Series:
    """Test metric of one variant's runs, indexed by seed (runs of one cell)."""
    return runs.loc[runs["variant"] == variant].set_index("seed")[f"test_{metric}"]


def settings_by_seed(runs: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The backbone settings each run of `variant` recorded (runs of one cell), indexed by seed."""
    columns = [c for c in BACKBONE_SETTINGS if c in runs.columns]
    return runs.loc[runs["variant"] == variant].set_index("seed")[columns]


def same_settings(a, b):
    """Elementwise: the recorded settings agree (both missing counts as the same)."""
    return (a == b) | (a.isna() & b.isna())


def alike_seeds(runs: pd.DataFrame, variant: str, reference: str, seeds: list[int]) -> tuple[list[int], str]:
    """The seeds of `seeds` at which `variant` and `reference` recorded the same backbone settings
    (both missing counts as the same), and a note naming the others and the settings that differ."""
    a, b = settings_by_seed(runs, variant).loc[seeds], settings_by_seed(runs, reference).loc[seeds]
    differ = ~same_settings(a, b)                                       # (seeds, settings)
    unlike = [s for s in seeds if differ.loc[s].any()]
    if not unlike:
        return seeds, ""
    keys = ", ".join(differ.columns[differ.loc[unlike].any()])
    return ([s for s in seeds if s not in unlike],
            f"seed(s) {', '.join(map(str, unlike))} left out: the backbone settings differ ({keys}); retrain one side")


def per_seed_users(runs: pd.DataFrame, variant: str, seeds: list[int],
                   load: Callable[[str], pd.Series]) -> pd.DataFrame:
    """Per-user NDCG of `variant`, one column per seed of `seeds` (users present in every seed,
    paired by user id), in the order the runs table lists the runs."""
    rows = runs[(runs["variant"] == variant) & runs["seed"].isin(seeds)]
    return pd.concat([load(d) for d in rows["run_dir"]], axis=1, join="inner", keys=rows["seed"].tolist())


def pooled_users(runs: pd.DataFrame, variant: str, seeds: list[int],
                 load: Callable[[str], pd.Series]) -> pd.Series:
    """Per-user NDCG of `variant` averaged over `seeds` (users present in every seed, paired by
    user id), sorted by user id so the bootstrap does not depend on the order runs wrote users."""
    return per_seed_users(runs, variant, seeds, load).mean(axis=1).sort_index()


def seed_user_diffs(runs: pd.DataFrame, variant: str, reference: str, seeds: list[int],
                    load: Callable[[str], pd.Series]) -> np.ndarray:
    """(seeds, users) per-user NDCG of `variant` minus `reference` at each of `seeds`, paired by
    seed and by user id (users every run of both has, sorted by id): the two-level bootstrap's input."""
    a, b = per_seed_users(runs, variant, seeds, load).align(
        per_seed_users(runs, reference, seeds, load), join="inner")   # users x seeds, both axes aligned
    return (a - b).sort_index()[seeds].to_numpy().T


def user_tests(a: np.ndarray, b: np.ndarray, margin: float) -> tuple[dict, list[str]]:
    """The statistics over users of the seed-averaged per-user vectors a and b (paired by user):
    the verdict t-test, TOST at `margin` (absolute), the MDE, Wilcoxon and the effect sizes;
    and their notes."""
    d = a - b
    sd = d.std(ddof=1) if len(d) > 1 else np.nan
    t_u, p_u, note_u = user_ttest(d)
    w, p_w, note_w = wilcoxon_test(a, b)
    values = {"n_users": len(d), "mean_diff": d.mean() if len(d) else np.nan, "sd_diff": sd,
              "t_stat_users": t_u, "p_ttest_users": p_u, "p_tost": tost(d, margin), "mde": mde(sd, len(d)),
              "wilcoxon_stat": w, "p_wilcoxon": p_w, "rank_biserial": rank_biserial(d),
              "cohen_dz": cohen_dz(d) if len(d) else np.nan}
    return values, [note_u, note_w]


def compare_pair(cell_runs: pd.DataFrame, variant: str, reference: str,
                 load: Callable[[str], pd.Series], cfg: StatsConfig) -> dict:
    """Every statistic of one comparison (variant vs reference) within one cell."""
    a_seed, b_seed = seed_means(cell_runs, variant), seed_means(cell_runs, reference)
    seeds, unlike = alike_seeds(cell_runs, variant, reference, sorted(set(a_seed.index) & set(b_seed.index)))
    row = {"n_seeds": len(seeds), "seed_mean_variant": a_seed[seeds].mean(),
           "seed_mean_reference": b_seed[seeds].mean(), "margin_relative": cfg.margin}
    if not seeds:   # no test: its p-values are missing, and the note says why
        return {**row, "n_users": 0, "p_wilcoxon": np.nan, "p_ttest": np.nan, "note": unlike or "no common seeds"}
    row["margin"] = cfg.margin * row["seed_mean_reference"]
    a, b = pooled_users(cell_runs, variant, seeds, load).align(
        pooled_users(cell_runs, reference, seeds, load), join="inner")
    users, notes = user_tests(a.to_numpy(), b.to_numpy(), row["margin"])
    t, p_t, note_t = seed_ttest(a_seed[seeds].to_numpy(), b_seed[seeds].to_numpy())
    lo, hi = two_level_ci(seed_user_diffs(cell_runs, variant, reference, seeds, load), cfg)
    note = "; ".join(dict.fromkeys(n for n in (unlike, *notes, note_t) if n))   # each note once
    return {**row, **users, "ci_low": lo, "ci_high": hi, "t_stat": t, "p_ttest": p_t, "note": note}


def run_comparisons(runs: pd.DataFrame, cfg: StatsConfig = StatsConfig()) -> pd.DataFrame:
    """The comparisons table: one row per comparison, Holm-adjusted p-values, the Holm-level
    MDE and the marks added.

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
    table = add_mde_holm(pd.DataFrame(rows, columns=[*pairs.columns, *_STAT_COLUMNS]))
    return add_holm(table, columns=HOLM_TESTS, mark_on=VERDICT_TEST)


_STAT_COLUMNS = ["n_seeds", "seed_mean_variant", "seed_mean_reference", "n_users", "mean_diff", "sd_diff",
                 "ci_low", "ci_high", "margin_relative", "margin", "t_stat_users", "p_ttest_users", "p_tost",
                 "mde", "wilcoxon_stat", "p_wilcoxon", "rank_biserial", "cohen_dz", "t_stat", "p_ttest", "note"]
VERDICT_TEST = "p_ttest_users"   # the test whose Holm p gives a comparison its direction and mark
# Holm-adjusted within each family, each test on its own: the verdict test, TOST, Wilcoxon
# (secondary) and the t-test over seeds.
HOLM_TESTS = (VERDICT_TEST, "p_tost", "p_wilcoxon", "p_ttest")


def family_keys(table: pd.DataFrame, family: tuple[str, ...]) -> list:
    """The group keys of a Holm family: `family`'s columns and, for comparisons of variants, whether
    the variant is a positive control (leaky by construction: its tests form their own family, so
    they neither spend nor lend the study's alpha)."""
    keys = [table[col] for col in family]
    if "variant" in table:
        keys.append(table["variant"].isin(POSITIVE_CONTROLS).rename("positive_control"))
    return keys


def add_mde_holm(table: pd.DataFrame, family: tuple[str, ...] = FAMILY) -> pd.DataFrame:
    """mde_holm: the MDE at ALPHA / m, m = the comparisons of the family with a verdict-test p:
    the level of Holm's first (strictest) step, so an effect this large is found with 80% power
    whatever the other p-values are (an upper bound of the MDE under Holm)."""
    table = table.copy()
    m = table.groupby(family_keys(table, family))[VERDICT_TEST].transform(lambda p: p.notna().sum()) \
        if len(table) else pd.Series(dtype=float)
    table["mde_holm"] = [mde(sd, n, ALPHA / k) if k else np.nan
                         for sd, n, k in zip(table["sd_diff"], table["n_users"], m)]
    return table


def add_holm(table: pd.DataFrame, family: tuple[str, ...] = FAMILY,
             columns: tuple[str, ...] = ("p_wilcoxon", "p_ttest"), mark_on: str = "p_wilcoxon") -> pd.DataFrame:
    """Holm-adjusted <column>_holm of each p-value column within each family, and the marks of
    `mark_on`'s Holm p."""
    table = table.copy()
    for col in columns:
        table[f"{col}_holm"] = np.nan
        for _, idx in table.groupby(family_keys(table, family), sort=False).groups.items():
            table.loc[idx, f"{col}_holm"] = holm(table.loc[idx, col].to_numpy(float))
    table["mark"] = [seed_aware_mark(p, n) for p, n in zip(table[f"{mark_on}_holm"], table["n_seeds"])]
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
    """One table of every comparison: difference, two-level CI, margin, the verdict t-test, TOST,
    MDE, Wilcoxon and the t-test over seeds (Holm p-values, the verdict test's with marks); the
    caption states the epoch budget and selection rule of `runs` when given."""
    keys = ["protocol", "backbone", "dataset", "reference", "variant"]
    t = table.sort_values(keys, kind="stable").reset_index(drop=True)
    tidy_cols = keys + ["n_users", "n_seeds", "mean_diff", "ci_low", "ci_high", "margin", "mde", "mde_holm",
                        "rank_biserial", "p_ttest_users", "p_ttest_users_holm", "p_tost", "p_tost_holm",
                        "p_wilcoxon", "p_wilcoxon_holm", "p_ttest", "p_ttest_holm", "mark"]
    if t.empty:
        return empty_table("pvalues", t[tidy_cols], "Significance",
                           "no comparisons (the runs hold no `base` or `mltfr` with another variant)")
    number = lambda values: [f"{v:.4f}" if np.isfinite(v) else "" for v in values]
    display = t[keys].copy()
    display["n seeds"] = [f"{n:.0f}" for n in t["n_seeds"]]
    display["Δ NDCG@10"] = [f"{v:+.4f}" if np.isfinite(v) else "" for v in t["mean_diff"]]
    display["95% CI"] = [f"[{lo:+.4f}, {hi:+.4f}]" if np.isfinite(lo) else ""
                         for lo, hi in zip(t["ci_low"], t["ci_high"])]
    display["margin ±"] = number(t["margin"])
    display["MDE (Holm)"] = [f"{a} ({b})" if a else "" for a, b in zip(number(t["mde"]), number(t["mde_holm"]))]
    display["p t-test users (Holm)"] = [format_p(p, m) for p, m in zip(t["p_ttest_users_holm"], t["mark"])]
    display["p TOST (Holm)"] = [format_p(p) for p in t["p_tost_holm"]]
    display["p Wilcoxon (Holm)"] = [format_p(p) for p in t["p_wilcoxon_holm"]]
    display["p t-test seeds (Holm)"] = [format_p(p) for p in t["p_ttest_holm"]]
    display["note"] = t["note"].fillna("")
    caption = ("Variant minus reference in per-user test NDCG@10 (seeds averaged per user); 95% CI of a "
               "two-level bootstrap (seeds, then users, resampled); equivalence margin ± the study's share "
               "of the reference's test NDCG@10; MDE: the smallest difference the t-test over users finds "
               "with 80% power at two-sided 0.05 (at 0.05 / family size: Holm's strictest step); p-values: "
               "paired t-test over users (the verdict test), two one-sided t-tests at the margin (TOST), "
               "Wilcoxon signed-rank over users and paired t-test over seeds (>= 3 common seeds), each "
               "Holm-corrected per dataset/backbone/protocol; marks (t-test over users): * p<0.05, "
               f"** p<0.01, *** p<0.001, only with >= {MIN_SEEDS} common seeds ({FEW_SEEDS}: too few seeds "
               "for a mark); n_seeds = seeds common to both runs.")
    if runs is not None:
        caption = with_run_settings(caption, runs)
    return Table("pvalues", t[tidy_cols], display, None, caption)
