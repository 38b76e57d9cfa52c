"""Study tables from the runs table: tidy numbers (CSV) plus a formatted view (Markdown, LaTeX).

Conventions (all tables): the primary metric is test NDCG@10; "mean ± std" is over seeds with
the sample standard deviation (ddof=1; a single seed shows the mean alone); gains are paired by
seed: for each seed, variant minus the reference run of the same dataset/backbone/protocol/seed,
then averaged over the seeds both have. Cells compared with each other (a column of the main
table, an ablation and full MLTFR, the values of one sensitivity sweep, the two protocols) use
the seeds they all have, and the table shows that number (n); a single-seed cell is never bold.
Every caption states the epoch budget and the selection rule the runs recorded. The protocol
ladder's runs are left out (mltfr.analysis.ladder tabulates them).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from mltfr.analysis.blocks import ABLATIONS, BASE, FULL, positive_control_note, scaled_filters
from mltfr.analysis.collect import diagnostics_frame, protocol_runs, sensitivity_runs
from mltfr.analysis.demonstration import demonstration_label
from mltfr.spec.protocol import DIFFERENCES
from mltfr.spec.report_outputs import DIAGNOSTIC_KEYS

CELL = ["dataset", "backbone", "protocol"]    # runs that share test users and can be compared
MAIN_METRICS = ("ndcg@10", "hr@10")
NO_RUNS = "no runs for this block"


@dataclass
class Table:
    name: str
    tidy: pd.DataFrame                  # numbers, written as CSV
    display: pd.DataFrame               # formatted strings, written as Markdown and LaTeX
    bold: pd.DataFrame | None = None    # same shape as display: True where the cell is best
    caption: str = ""
    notes: list[str] = field(default_factory=list)


def mean_std(values: pd.Series, digits: int = 4, suffix: str = "", signed: bool = False) -> str:
    """'0.0123 ± 0.0004' (sample std over seeds), or the mean alone for a single value."""
    values = values.dropna()
    if values.empty:
        return ""
    mean = f"{values.mean():{'+' if signed else ''}.{digits}f}"
    if len(values) < 2:
        return f"{mean}{suffix}"
    return f"{mean} ± {values.std(ddof=1):.{digits}f}{suffix}"


def seed_summary(runs: pd.DataFrame, by: list[str], metric: str = "ndcg@10") -> pd.DataFrame:
    """Mean, std, number of seeds and the 'mean ± std' text (column `cell`) of test `metric` per group."""
    col = f"test_{metric}"
    return (runs.groupby(by, sort=True)[col]
            .agg(mean="mean", std=lambda s: s.std(ddof=1), n_seeds="count", cell=mean_std)
            .reset_index())


def paired_gain(runs: pd.DataFrame, variants: pd.DataFrame, reference: str,
                metric: str = "ndcg@10") -> pd.DataFrame:
    """Per-seed gain of each run in `variants` over the `reference` run of the same cell and seed.

    Adds ref (reference value), gain (absolute) and gain_pct (100 * gain / ref; NaN if ref = 0).
    """
    col = f"test_{metric}"
    ref = runs.loc[runs["variant"] == reference, [*CELL, "seed", col]].rename(columns={col: "ref"})
    paired = variants.merge(ref, on=[*CELL, "seed"], how="inner")
    paired["gain"] = paired[col] - paired["ref"]
    paired["gain_pct"] = 100.0 * paired["gain"] / paired["ref"].where(paired["ref"] != 0)
    return paired


def bold_best(tidy: pd.DataFrame, group: list[str], column: list[str], value: str = "mean") -> pd.Series:
    """True for the rows holding the largest `value` within each (group + column) slice; ties all
    win; a single-seed row (n_seeds < 2) is never bold."""
    keys = group + column
    best = tidy.groupby(keys, sort=False)[value].transform("max")
    several = tidy["n_seeds"] >= 2 if "n_seeds" in tidy.columns else True
    return tidy[value].notna() & (tidy[value] == best) & several


def common_seeds(runs: pd.DataFrame, group: list[str], compared: str = "variant") -> pd.DataFrame:
    """`runs` restricted, within each `group`, to the seeds every `compared` cell has."""
    if runs.empty:
        return runs
    per_seed = runs.groupby([*group, "seed"], dropna=False)[compared].transform("nunique")
    per_group = runs.groupby(group, dropna=False)[compared].transform("nunique")
    return runs[per_seed == per_group]


def budget_and_selection(runs: pd.DataFrame) -> str:
    """'Epoch budget: 100 (faithful), 200 (corrected); selection: <rule>; <rule>.' as the runs
    recorded them (several values of one protocol are listed with '/')."""
    if runs.empty:
        return ""
    budgets = []
    for protocol, group in runs.groupby("protocol", sort=True):
        values = group["epoch_budget"].dropna().unique() if "epoch_budget" in group else []
        budgets.append(f"{'/'.join(f'{v:.0f}' for v in sorted(values)) or 'not recorded'} ({protocol})")
    if all(b.startswith("not recorded") for b in budgets):
        budgets = ["not recorded"]
    rules = sorted(runs["selection"].dropna().astype(str).unique()) if "selection" in runs else []
    return f"Epoch budget: {', '.join(budgets)}; selection: {'; '.join(rules) or 'not recorded'}."


def random_tables_note(runs: pd.DataFrame) -> str:
    """A sentence naming the backbone/protocol cells whose LLM runs read random tables (column
    random_tables: the branch redrew its token tables, as the authors' FMLP-Rec); '' when none."""
    if "random_tables" not in runs or not runs["random_tables"].eq(True).any():
        return ""
    cells = runs.loc[runs["random_tables"].eq(True), ["backbone", "protocol"]].drop_duplicates()
    names = ", ".join(f"{b} ({p})" for b, p in sorted(map(tuple, cells.to_numpy())))
    return (f"Random tables: the LLM runs of {names} redraw every token table from N(0, 0.02) after "
            "loading it, as the authors' FMLP-Rec code does (its init_weights runs after the LLM "
            "tables are registered), so they hold no LLM knowledge.")


def with_run_settings(caption: str, runs: pd.DataFrame) -> str:
    """`caption` followed by the epoch budget and selection rule of `runs` (and which cells ran on
    random tables) and the positive-control label when it shows one, after the demonstration label
    when `runs` are a demonstration (mltfr.analysis.demonstration)."""
    positive = positive_control_note(runs["variant"]) if "variant" in runs else None
    notes = [budget_and_selection(runs), random_tables_note(runs), positive]
    text = " ".join([caption, *filter(None, notes)])
    label = demonstration_label(runs)
    return f"{label} {text}" if label else text


def _bold_frame(tidy: pd.DataFrame, index: list[str], columns: list[str]) -> pd.DataFrame:
    """The `best` flags pivoted like the display; index columns are never bold."""
    bold = _pivot(tidy.assign(best=tidy["best"].astype(int)), index, columns, "best")
    flags = bold.drop(columns=index).fillna(0).astype(bool)
    return pd.concat([pd.DataFrame(False, index=bold.index, columns=index), flags], axis=1)


def _pivot(tidy: pd.DataFrame, index: list[str], columns: list[str], values: str) -> pd.DataFrame:
    """Wide view with flat 'a / b' column labels, index restored as columns, sorted."""
    wide = tidy.pivot_table(index=index, columns=columns, values=values, aggfunc="first", sort=True)
    wide.columns = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in wide.columns]
    return wide.reset_index()


def _pivot_with_n(tidy: pd.DataFrame, index: list[str], columns: list[str], values: str = "cell") -> pd.DataFrame:
    """_pivot of `values` plus, after each value of columns[0] (the dataset), a '<dataset> / n'
    column with the number of seeds (`n_seeds`) behind the cells."""
    wide = _pivot(tidy, index, columns, values)
    key = columns[0]
    counts = tidy.drop_duplicates([*index, key])
    counts = counts.assign(**{key: counts[key].astype(str) + " / n", "n": counts["n_seeds"].map("{:.0f}".format)})
    wide = wide.merge(_pivot(counts, index, [key], "n"), on=index, how="left")
    order = sorted(wide.columns[len(index):], key=lambda c: (c.split(" / ")[0], c.endswith(" / n")))
    return wide[[*index, *order]]


def main_table(runs: pd.DataFrame) -> Table:
    """Variants x datasets (base, single-LLM, MLTFR), mean ± std over the seeds all variants of a
    column have (n); best per protocol in bold."""
    runs = common_seeds(runs[runs["block"].isin(["base", "direct", "filter", "mltfr"])],
                        ["protocol", "backbone", "dataset"])
    frames = [seed_summary(runs, ["protocol", "backbone", "variant", "dataset"], m).assign(metric=m)
              for m in MAIN_METRICS]
    tidy = pd.concat(frames, ignore_index=True)
    if tidy.empty:
        return empty_table("main", tidy.drop(columns="cell"), "Main results")
    tidy["best"] = bold_best(tidy, ["protocol"], ["dataset", "metric"])
    index = ["protocol", "backbone", "variant"]
    display = _pivot_with_n(tidy, index, ["dataset", "metric"])
    bold = _bold_frame(tidy, index, ["dataset", "metric"])
    tidy = tidy.drop(columns=["cell", "best"])
    caption = with_run_settings(
        "Test NDCG@10 and HR@10, mean ± std over the seeds every variant of the backbone and "
        "protocol has (n; one seed: no ±); bold = best per column within each protocol (never a "
        "single seed).", runs)
    return Table("main", tidy, display, bold, caption)


def single_llm_table(runs: pd.DataFrame) -> Table:
    """Gain of each single-LLM variant over `base`, in % per seed, per LLM x dataset x backbone."""
    single = runs[runs["block"].isin(["direct", "filter"])].rename(columns={"block": "mode"})
    paired = paired_gain(runs, single, BASE)
    group = ["protocol", "backbone", "mode", "llm", "dataset"]
    tidy = paired.groupby(group, sort=True).agg(
        n_seeds=("gain", "count"), base_mean=("ref", "mean"), mean=("test_ndcg@10", "mean"),
        gain=("gain", "mean"), gain_std=("gain", lambda s: s.std(ddof=1)),
        gain_pct=("gain_pct", "mean"), gain_pct_std=("gain_pct", lambda s: s.std(ddof=1))).reset_index()
    if tidy.empty:
        return empty_table("single_llm", tidy, "Single-LLM injection")
    cells = paired.groupby(group, sort=True)["gain_pct"].apply(
        lambda s: mean_std(s, digits=1, suffix=" %", signed=True)).rename("cell").reset_index()
    display = _pivot_with_n(cells.merge(tidy[[*group, "n_seeds"]], on=group), group[:-1], ["dataset"])
    caption = with_run_settings(
        "Relative gain in test NDCG@10 of one LLM over the ID-only base, paired by seed "
        "(mean ± std of per-seed gains over the n seeds both have, %).", paired)
    return Table("single_llm", tidy, display, None, caption)


def ablation_table(runs: pd.DataFrame) -> Table:
    """Full MLTFR and each ablation: NDCG@10 mean ± std and the per-seed change vs MLTFR (%)."""
    block = common_seeds(runs[runs["variant"].isin([FULL, *ABLATIONS])], ["protocol", "backbone", "dataset"])
    paired = paired_gain(runs, block, FULL)
    group = ["protocol", "backbone", "variant", "dataset"]
    tidy = seed_summary(block, group).merge(
        paired.groupby(group).agg(delta_pct=("gain_pct", "mean"),
                                  delta_pct_std=("gain_pct", lambda s: s.std(ddof=1))).reset_index(),
        on=group, how="left")
    if tidy.empty:
        return empty_table("ablations", tidy.drop(columns="cell"), "Ablations")
    tidy["cell"] = [f"{c} ({d:+.1f} %)" if pd.notna(d) else c
                    for c, d in zip(tidy["cell"], tidy["delta_pct"])]
    display = _pivot_with_n(tidy, group[:-1], ["dataset"])
    caption = with_run_settings(
        "Test NDCG@10 (mean ± std over the n seeds MLTFR and all its ablations have) of MLTFR and "
        "its ablations; in brackets the change relative to full MLTFR, paired by seed.", block)
    return Table("ablations", tidy.drop(columns="cell"), display, None, caption)


def sensitivity_table(runs: pd.DataFrame) -> Table:
    """NDCG@10 per sensitivity parameter value (the default's from `mltfr`); best value in bold."""
    block = sensitivity_runs(runs)
    block = common_seeds(block, ["protocol", "backbone", "param", "dataset"], compared="value")
    group = ["protocol", "backbone", "param", "value", "dataset"]
    tidy = seed_summary(block, group)
    if tidy.empty:
        return empty_table("sensitivity", tidy.drop(columns="cell"), "Sensitivity")
    tidy["best"] = bold_best(tidy, ["protocol", "backbone", "param"], ["dataset"])
    display = _pivot_with_n(tidy, group[:-1], ["dataset"])
    bold = _bold_frame(tidy, group[:-1], ["dataset"])
    caption = with_run_settings("Test NDCG@10 (mean ± std over the n seeds every value of the sweep "
                                "has) per parameter value; bold = best value (never a single seed).", block)
    return Table("sensitivity", tidy.drop(columns=["cell", "best"]), display, bold, caption)


def efficiency_table(runs: pd.DataFrame) -> Table:
    """Parameters, time per epoch, training time and peak memory, averaged over protocols and seeds.

    bench_* columns come from Snakemake benchmark files (all jobs of a run) when they exist.
    """
    cols = [c for c in ("n_params", "n_trainable", "epoch_s", "train_s", "peak_mem_mb", "peak_host_rss_mb",
                        "bench_s", "bench_max_rss_mb") if c in runs.columns]
    group = ["dataset", "backbone", "variant"]
    tidy = runs.groupby(group, sort=True)[cols].mean().dropna(axis=1, how="all").reset_index()
    cols = [c for c in cols if c in tidy.columns]  # e.g. no benchmark files: no bench_* columns
    tidy.insert(3, "n_runs", runs.groupby(group, sort=True).size().to_numpy())
    if tidy.empty:
        return empty_table("efficiency", tidy, "Efficiency")
    display = tidy.copy()
    for c in cols:
        fmt = "{:,.0f}" if c.startswith("n_") or c.endswith("_mb") else "{:.2f}"
        display[c] = [fmt.format(v) if pd.notna(v) else "" for v in tidy[c]]
    caption = with_run_settings(
        "Parameters, seconds per epoch, training seconds and peak memory (MB), mean over "
        "protocols and seeds; bench_* from Snakemake benchmark files (all jobs of a run).", runs)
    return Table("efficiency", tidy, display.astype(str), None, caption)


# What differs between the two protocols: (name, runs-table column, faithful, corrected).
# (label, runs.csv column, faithful, corrected) of each setting that separates the protocols
PROTOCOL_FACTORS = tuple((f.label, f.key.rpartition(".")[2], f.faithful_text, f.corrected_text)
                         for f in DIFFERENCES)


def protocol_difference_text() -> str:
    """The factors that separate the faithful from the corrected protocol, as one sentence."""
    factors = "; ".join(f"({i}) {name}: {faithful} vs {corrected}"
                        for i, (name, _, faithful, corrected) in enumerate(PROTOCOL_FACTORS, 1))
    return (f"The protocols differ in {len(PROTOCOL_FACTORS)} factors, not in the selection rule alone: "
            f"{factors}; the user vector (whole window) is the same in both. diff is their joint effect; "
            "the ladder table (ladder.md) changes them one at a time.")


def recorded_settings(runs: pd.DataFrame) -> str:
    """' Recorded: faithful select_on=test, eval_noise=True; corrected ...' from the runs ('' if none)."""
    parts = []
    for protocol, group in runs.groupby("protocol", sort=True):
        settings = [f"{col}={'/'.join(sorted(map(str, group[col].dropna().unique())))}"
                    for _, col, *_ in PROTOCOL_FACTORS if col in group and group[col].notna().any()]
        if settings:
            parts.append(f"{protocol} {', '.join(settings)}")
    return f" Recorded: {'; '.join(parts)}." if parts else ""


def protocol_table(runs: pd.DataFrame) -> Table:
    """The same variant under the faithful and the corrected protocol, side by side, with the
    difference, on the seeds both protocols ran; the caption names the five factors that differ."""
    runs = common_seeds(runs, ["dataset", "backbone", "variant"], compared="protocol")
    frames = [seed_summary(runs, ["dataset", "backbone", "variant", "protocol"], m).assign(metric=m)
              for m in MAIN_METRICS]
    summary = pd.concat(frames, ignore_index=True).drop(columns="cell")
    tidy = summary.pivot_table(index=["dataset", "backbone", "variant", "metric"], columns="protocol",
                               values="mean", sort=True).reset_index()
    tidy.columns.name = None
    columns = ["dataset", "backbone", "variant", "metric", "n_seeds", "faithful", "corrected", "diff", "diff_pct"]
    if not {"faithful", "corrected"} <= set(tidy.columns):
        return empty_table("protocols", pd.DataFrame(columns=columns),
                           f"Faithful vs corrected protocol. {protocol_difference_text()}")
    n_seeds = summary.groupby(["dataset", "backbone", "variant", "metric"])["n_seeds"].min().rename("n_seeds")
    tidy = tidy.dropna(subset=["faithful", "corrected"]).merge(n_seeds.reset_index())
    tidy["diff"] = tidy["corrected"] - tidy["faithful"]
    tidy["diff_pct"] = 100.0 * tidy["diff"] / tidy["faithful"].where(tidy["faithful"] != 0)
    tidy = tidy[columns]
    display = tidy.copy()
    for c in ("faithful", "corrected", "diff"):
        display[c] = [f"{v:.4f}" for v in tidy[c]]
    display["diff_pct"] = [f"{v:+.1f} %" if pd.notna(v) else "" for v in tidy["diff_pct"]]
    caption = with_run_settings(
        "Mean test metric over the n seeds both protocols ran, under the authors' faithful protocol "
        f"and the corrected one; diff = corrected - faithful. {protocol_difference_text()}"
        f"{recorded_settings(runs)}", runs)
    return Table("protocols", tidy.reset_index(drop=True), display.astype(str), None, caption)


DIAG_GROUP = ["dataset", "backbone", "protocol", "variant", "llm"]
DIAG_FORMATS = {"vocab": "{:,.0f}", "effective_tokens": "{:,.0f}", "effective_share": "{:.1%}",
                "argmax_agreement": "{:.3f}", "distinct_selected": "{:,.0f}",
                "projection_grad_norm": "{:.3g}", "table_drift": "{:.3g}", "router_entropy": "{:.3f}"}


def diagnostics_table(runs: pd.DataFrame) -> Table:
    """Filter diagnostics (last training epoch) per dataset, backbone, protocol, variant and LLM:
    the mean over seeds of each, the number of seeds, and effective tokens as a share of |V|."""
    values = [*DIAGNOSTIC_KEYS, "router_entropy"]
    long = diagnostics_frame(runs)
    if long.empty:
        return empty_table("diagnostics", pd.DataFrame(columns=[*DIAG_GROUP, "n_seeds", *values,
                                                                "effective_share"]), "Filter diagnostics")
    grouped = long.groupby(DIAG_GROUP, sort=True)
    tidy = grouped[values].mean().reset_index()
    tidy.insert(len(DIAG_GROUP), "n_seeds", grouped.size().to_numpy())
    tidy["effective_share"] = tidy["effective_tokens"] / tidy["vocab"]
    tidy = tidy[[*DIAG_GROUP, "n_seeds", *DIAG_FORMATS]]
    display = tidy[DIAG_GROUP + ["n_seeds"]].astype(str)
    for col, fmt in DIAG_FORMATS.items():
        display[col] = [fmt.format(v) if pd.notna(v) else "" for v in tidy[col]]
    caption = ("Filter diagnostics of the last training epoch, mean over seeds: effective tokens = "
               "exp(entropy) of softmax(cosine scores), the distribution the Gumbel pick draws from "
               "(share = of |V|); argmax agreement = share of training picks in the noiseless top-K "
               "(ties broken at random); "
               "distinct tokens picked; projection gradient norm; table drift = rms change / std; "
               "router entropy (nats). Blank: no filtering (prototypes).")
    scaled = scaled_filters(long["variant"])
    if scaled:   # the sharp filter draws from softmax(c cos): its diagnostics measure that law
        caption += " " + "; ".join(f"{v}: scores = {c:g} x cosine" for v, c in scaled.items()) + "."
    caption = with_run_settings(caption, runs[runs["variant"].isin(long["variant"])])
    return Table("diagnostics", tidy, display, None, caption)


def dataset_table(stats: pd.DataFrame) -> Table:
    """Dataset statistics from results/data/*/meta.json."""
    if stats.empty:
        return empty_table("dataset_stats", stats, "Dataset statistics",
                           "no prepared dataset (meta.json) found")
    display = stats.copy()
    for c in ("users", "items", "interactions"):
        display[c] = [f"{v:,.0f}" if pd.notna(v) else "" for v in stats[c]]
    for c in ("density", "mean_len", "median_len"):
        display[c] = [f"{v:.4g}" if pd.notna(v) else "" for v in stats[c]]
    caption = "Datasets after preprocessing: users, items, interactions, density, sequence length."
    return Table("dataset_stats", stats, display.astype(str), None, caption)


def empty_table(name: str, tidy: pd.DataFrame, caption: str, note: str = NO_RUNS) -> Table:
    """A table of a block without runs: header-only CSV, a note in Markdown and LaTeX."""
    return Table(name, tidy, pd.DataFrame(), None, f"{caption}: {note}.")


def build_tables(runs: pd.DataFrame, stats: pd.DataFrame) -> list[Table]:
    """Every study table but the ladder's, in the order of outputs.TABLES (ladder runs left out)."""
    runs = protocol_runs(runs)
    return [dataset_table(stats), main_table(runs), single_llm_table(runs), ablation_table(runs),
            sensitivity_table(runs), efficiency_table(runs), protocol_table(runs), diagnostics_table(runs)]
