"""Study tables from the runs table: tidy numbers (CSV) plus a formatted view (Markdown, LaTeX).

Conventions (all tables): the primary metric is test NDCG@10; "mean ± std" is over seeds with
the sample standard deviation (ddof=1; a single seed shows the mean alone); gains are paired by
seed: for each seed, variant minus the reference run of the same dataset/backbone/protocol/seed,
then averaged over the seeds both have.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from mltfr.analysis.collect import diagnostics_frame, sensitivity_runs
from mltfr.analysis.outputs import DIAGNOSTIC_KEYS
from mltfr.analysis.variants import ABLATIONS, BASE, FULL
from mltfr.io import atomic_path, atomic_write_text

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
    """True for the rows holding the largest `value` within each (group + column) slice; ties all win."""
    keys = group + column
    best = tidy.groupby(keys, sort=False)[value].transform("max")
    return tidy[value].notna() & (tidy[value] == best)


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


def main_table(runs: pd.DataFrame) -> Table:
    """Variants x datasets (base, single-LLM, MLTFR), mean ± std over seeds; best per protocol in bold."""
    runs = runs[runs["block"].isin(["base", "direct", "filter", "mltfr"])]
    frames = [seed_summary(runs, ["protocol", "backbone", "variant", "dataset"], m).assign(metric=m)
              for m in MAIN_METRICS]
    tidy = pd.concat(frames, ignore_index=True)
    if tidy.empty:
        return empty_table("main", tidy.drop(columns="cell"), "Main results")
    tidy["best"] = bold_best(tidy, ["protocol"], ["dataset", "metric"])
    index = ["protocol", "backbone", "variant"]
    display = _pivot(tidy, index, ["dataset", "metric"], "cell")
    bold = _bold_frame(tidy, index, ["dataset", "metric"])
    tidy = tidy.drop(columns=["cell", "best"])
    caption = ("Test NDCG@10 and HR@10, mean ± std over seeds; bold = best per column within "
               "each protocol.")
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
    display = _pivot(cells, group[:-1], ["dataset"], "cell")
    caption = ("Relative gain in test NDCG@10 of one LLM over the ID-only base, paired by seed "
               "(mean ± std of per-seed gains, %).")
    return Table("single_llm", tidy, display, None, caption)


def ablation_table(runs: pd.DataFrame) -> Table:
    """Full MLTFR and each ablation: NDCG@10 mean ± std and the per-seed change vs MLTFR (%)."""
    block = runs[runs["variant"].isin([FULL, *ABLATIONS])]
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
    display = _pivot(tidy, group[:-1], ["dataset"], "cell")
    caption = ("Test NDCG@10 (mean ± std over seeds) of MLTFR and its ablations; in brackets the "
               "change relative to full MLTFR, paired by seed.")
    return Table("ablations", tidy.drop(columns="cell"), display, None, caption)


def sensitivity_table(runs: pd.DataFrame) -> Table:
    """NDCG@10 per sensitivity parameter value (the default's from `mltfr`); best value in bold."""
    block = sensitivity_runs(runs)
    group = ["protocol", "backbone", "param", "value", "dataset"]
    tidy = seed_summary(block, group)
    if tidy.empty:
        return empty_table("sensitivity", tidy.drop(columns="cell"), "Sensitivity")
    tidy["best"] = bold_best(tidy, ["protocol", "backbone", "param"], ["dataset"])
    display = _pivot(tidy, group[:-1], ["dataset"], "cell")
    bold = _bold_frame(tidy, group[:-1], ["dataset"])
    caption = "Test NDCG@10 (mean ± std over seeds) per parameter value; bold = best value."
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
    caption = ("Parameters, seconds per epoch, training seconds and peak memory (MB), mean over "
               "protocols and seeds; bench_* from Snakemake benchmark files (all jobs of a run).")
    return Table("efficiency", tidy, display.astype(str), None, caption)


def protocol_table(runs: pd.DataFrame) -> Table:
    """The same variant under the faithful and the corrected protocol, side by side, with the difference."""
    frames = [seed_summary(runs, ["dataset", "backbone", "variant", "protocol"], m).assign(metric=m)
              for m in MAIN_METRICS]
    summary = pd.concat(frames, ignore_index=True).drop(columns="cell")
    tidy = summary.pivot_table(index=["dataset", "backbone", "variant", "metric"], columns="protocol",
                               values="mean", sort=True).reset_index()
    tidy.columns.name = None
    if not {"faithful", "corrected"} <= set(tidy.columns):
        return empty_table("protocols", pd.DataFrame(columns=[
            "dataset", "backbone", "variant", "metric", "faithful", "corrected", "diff", "diff_pct"]),
            "Faithful vs corrected protocol")
    tidy = tidy.dropna(subset=["faithful", "corrected"])
    tidy = tidy[["dataset", "backbone", "variant", "metric", "faithful", "corrected"]]
    tidy["diff"] = tidy["corrected"] - tidy["faithful"]
    tidy["diff_pct"] = 100.0 * tidy["diff"] / tidy["faithful"].where(tidy["faithful"] != 0)
    display = tidy.copy()
    for c in ("faithful", "corrected", "diff"):
        display[c] = [f"{v:.4f}" for v in tidy[c]]
    display["diff_pct"] = [f"{v:+.1f} %" if pd.notna(v) else "" for v in tidy["diff_pct"]]
    caption = ("Mean test metric over seeds under the faithful protocol (best epoch chosen on test) "
               "and the corrected one (chosen on validation); diff = corrected - faithful.")
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
               "(share = of |V|); argmax agreement = share of training picks in the noiseless top-K; "
               "distinct tokens picked; projection gradient norm; table drift = rms change / std; "
               "router entropy (nats). Blank: no filtering (prototypes).")
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
    """Every study table, in the order of outputs.TABLES."""
    return [dataset_table(stats), main_table(runs), single_llm_table(runs), ablation_table(runs),
            sensitivity_table(runs), efficiency_table(runs), protocol_table(runs), diagnostics_table(runs)]


# --- rendering ---------------------------------------------------------------------------------

_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}


def tex_escape(text: str) -> str:
    """LaTeX-safe text; ± becomes $\\pm$."""
    escaped = "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))
    return escaped.replace("±", r"$\pm$")


def _styled(table: Table, style) -> pd.DataFrame:
    """Display strings with `style(text, bold)` applied to every cell."""
    display = table.display.astype(object).fillna("").astype(str)  # pandas 3 keeps NaN through astype(str)
    bold = table.bold if table.bold is not None else pd.DataFrame(False, display.index, display.columns)
    out = display.copy()
    for col in display.columns:
        flags = bold[col] if col in bold.columns else pd.Series(False, index=display.index)
        out[col] = [style(t, bool(b) and t != "") for t, b in zip(display[col], flags)]
    return out


def render_markdown(table: Table) -> str:
    """A Markdown table (GitHub pipes) preceded by its caption."""
    if table.display.empty:
        return f"**{table.name}**: {table.caption}\n"
    body = _styled(table, lambda t, b: f"**{t}**" if b else t).to_markdown(index=False, disable_numparse=True)
    notes = "".join(f"\n> {n}\n" for n in table.notes)
    return f"**{table.name}**: {table.caption}\n\n{body}\n{notes}"


def render_latex(table: Table) -> str:
    """A LaTeX tabular (booktabs) inside a table environment with the caption."""
    if table.display.empty:
        return f"% {table.name}: {tex_escape(table.caption)}\n"
    body = _styled(table, lambda t, b: rf"\textbf{{{tex_escape(t)}}}" if b else tex_escape(t))
    body.columns = [tex_escape(c) for c in body.columns]
    tabular = body.to_latex(index=False, escape=False, column_format="l" * body.shape[1])
    return ("\\begin{table}[t]\n\\centering\n\\small\n" + tabular +
            f"\\caption{{{tex_escape(table.caption)}}}\n\\label{{tab:{table.name}}}\n\\end{{table}}\n")


def write_table(table: Table, folder: str | Path) -> list[Path]:
    """<folder>/<name>.csv (tidy numbers), .md and .tex (formatted), each written atomically."""
    folder = Path(folder)
    paths = [folder / f"{table.name}.{ext}" for ext in ("csv", "md", "tex")]
    atomic_write_text(paths[0], table.tidy.to_csv(index=False))
    atomic_write_text(paths[1], render_markdown(table))
    atomic_write_text(paths[2], render_latex(table))
    return paths


def write_runs(runs: pd.DataFrame, folder: str | Path) -> list[Path]:
    """The per-run table as <folder>/runs.csv and runs.parquet."""
    folder = Path(folder)
    csv, parquet = folder / "runs.csv", folder / "runs.parquet"
    atomic_write_text(csv, runs.to_csv(index=False))
    with atomic_path(parquet) as tmp:
        runs.to_parquet(tmp, index=False)
    return [csv, parquet]
