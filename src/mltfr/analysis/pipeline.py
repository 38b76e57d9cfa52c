"""The `mltfr aggregate` steps: tables, statistics and figures from the result files."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from mltfr.analysis.collect import collect_runs, load_dataset_stats, load_epochs, load_interp, protocol_runs
from mltfr.analysis.render import write_runs, write_table
from mltfr.analysis.tables import build_tables

STEPS = ("tables", "stats", "figures")   # the default: everything ("tables" includes runs.csv)
ALL_STEPS = ("runs",) + STEPS            # "runs": only runs.csv / runs.parquet


def make_tables(runs: pd.DataFrame, data_root: str | Path, out: str | Path, cfg=None) -> list[Path]:
    """runs.csv/.parquet and every study table under `out` (the ladder's, the protocol factors'
    and the null gains' included)."""
    from mltfr.analysis.ladder import ladder_tables
    from mltfr.analysis.null_gains import null_gain_table
    from mltfr.analysis.protocol_factors import protocol_factors_table
    from mltfr.analysis.stats import StatsConfig

    stats, cfg = load_dataset_stats(data_root), cfg or StatsConfig()
    tables = build_tables(runs, stats) + ladder_tables(runs, cfg) + [protocol_factors_table(runs, cfg),
                                                                      null_gain_table(runs)]
    return write_runs(runs, out) + [p for t in tables for p in write_table(t, out)]


def make_stats(runs: pd.DataFrame, out: str | Path, cfg=None) -> list[Path]:
    """comparisons.csv (every number) and the p-value table under `out`."""
    from mltfr.analysis.stats import StatsConfig, pvalue_table, run_comparisons
    from mltfr.io import atomic_write_text

    table = run_comparisons(runs, cfg or StatsConfig())
    path = Path(out) / "comparisons.csv"
    atomic_write_text(path, table.to_csv(index=False))
    return [path] + write_table(pvalue_table(table, protocol_runs(runs)), out)


def make_figures(runs: pd.DataFrame, out: str | Path, cfg=None) -> list[Path]:
    """Every figure under `out` (PNG and PDF); the ladder's from its own runs, the others from
    the protocol runs (the null gains' from their faithful pairs)."""
    from mltfr.analysis.figures import draw_figures  # matplotlib only when figures are asked for
    from mltfr.analysis.ladder import ladder_frame, ladder_tidy
    from mltfr.analysis.null_gains import null_pairs
    from mltfr.analysis.stats import StatsConfig

    study = protocol_runs(runs)
    ladder = ladder_tidy(runs, cfg or StatsConfig())
    return draw_figures(study, load_epochs(study), load_interp(study), out, ladder, ladder_frame(runs),
                        null_pairs(runs))


def aggregate(runs_root: str | Path, data_root: str | Path, tables: str | Path, stats: str | Path,
              figures: str | Path, benchmarks: str | Path | None = None,
              steps: tuple[str, ...] = STEPS, cfg=None) -> list[Path]:
    """Collect the runs once, then run the requested steps; returns every file written."""
    runs = collect_runs(runs_root, benchmarks)
    written = []
    if "runs" in steps and "tables" not in steps:
        written += write_runs(runs, tables)
    if "tables" in steps:
        written += make_tables(runs, data_root, tables, cfg)
    if "stats" in steps:
        written += make_stats(runs, stats, cfg)
    if "figures" in steps:
        written += make_figures(runs, figures, cfg)
    return written
