"""The fixed names of everything `mltfr aggregate` writes, so the workflow can list its outputs.

Kept free of heavy imports (no pandas, no matplotlib): a Snakefile may import it while parsing.
Every name below is always written, even when its study block has no runs (the file then says so).
"""
from __future__ import annotations

from pathlib import Path

# Tables written as <name>.csv (tidy numbers), <name>.md and <name>.tex (formatted).
TABLES = ("dataset_stats", "main", "single_llm", "ablations", "sensitivity", "efficiency", "protocols",
          "diagnostics", "ladder", "optimism", "protocol_factors", "null_gains")
TABLE_FORMATS = ("csv", "md", "tex")
# The backbone's validation search (mltfr.analysis.tuning_table), its own job: <tables>/tuning.{csv,md,tex}.
TUNING_TABLE = "tuning"
# The per-run table: <tables>/runs.csv and <tables>/runs.parquet.
RUNS_TABLE = "runs"
# Statistics: <stats>/comparisons.csv (every number) and <stats>/pvalues.{csv,md,tex}.
STATS_TABLES = ("comparisons", "pvalues")
# Figures written as <figures>/<name>.png and .pdf; captions in workflow/report/<name>.rst.
FIGURES = ("single_llm_gains", "main_comparison", "ablations", "sensitivity", "router_weights",
           "top_tokens", "training_curves", "protocols", "diagnostics", "ladder", "null_gains")
FIGURE_FORMATS = ("png", "pdf")
# Filter diagnostics of a run with an LLM branch (result.json, written by mltfr.models.diagnostics):
# per LLM `diagnostics.<llm>.<key>` -> runs-table column diagnostic_column(llm, key); the run-level
# keys keep their names as columns.
DIAGNOSTIC_KEYS = ("effective_tokens", "argmax_agreement", "distinct_selected", "projection_grad_norm",
                   "table_drift", "vocab")
RUN_DIAGNOSTICS = ("router_entropy", "diagnostics_steps")
_DIAG_PREFIX = "diag:"


def diagnostic_column(llm: str, key: str) -> str:
    """The runs-table column of one LLM's diagnostic: 'diag:<llm>:<key>' (LLM names have no ':')."""
    return f"{_DIAG_PREFIX}{llm}:{key}"


def parse_diagnostic_column(column: str) -> tuple[str, str] | None:
    """(llm, key) of a diagnostic column, None for any other column."""
    if not column.startswith(_DIAG_PREFIX):
        return None
    llm, _, key = column[len(_DIAG_PREFIX):].rpartition(":")
    return (llm, key) if llm and key in DIAGNOSTIC_KEYS else None


def table_outputs(tables_dir: str | Path) -> list[Path]:
    """Every file the `tables` step writes (runs table included)."""
    d = Path(tables_dir)
    files = [d / f"{RUNS_TABLE}.csv", d / f"{RUNS_TABLE}.parquet"]
    return files + [d / f"{n}.{ext}" for n in TABLES for ext in TABLE_FORMATS]


def tuning_outputs(tables_dir: str | Path) -> list[Path]:
    """The tuning table (`mltfr tune table`), written beside the study tables by its own job."""
    return [Path(tables_dir) / f"{TUNING_TABLE}.{ext}" for ext in TABLE_FORMATS]


def stats_outputs(stats_dir: str | Path) -> list[Path]:
    """Every file the `stats` step writes."""
    d = Path(stats_dir)
    return [d / "comparisons.csv"] + [d / f"pvalues.{ext}" for ext in TABLE_FORMATS]


def figure_outputs(figures_dir: str | Path) -> list[Path]:
    """Every file the `figures` step writes."""
    d = Path(figures_dir)
    return [d / f"{n}.{ext}" for n in FIGURES for ext in FIGURE_FORMATS]
