"""Aggregate run results into tables, statistics and figures (issue 5).

Reads result files only (result.json, ranks.npz, epochs.csv, benchmark TSVs, meta.json): never
imports torch, so everything can be redrawn on any machine. Modules:

    outputs   fixed output names (light: safe to import from a Snakefile)
    variants  variant name -> study block
    collect   result files -> tidy runs table, per-user NDCG, epochs, interpretability
    tables    study tables (CSV, Markdown, LaTeX)
    stats     t-test over users, TOST, MDE, Wilcoxon, two-level bootstrap, Holm for every comparison
    figures   seaborn figures (PNG, PDF)
    pipeline  the steps of `mltfr aggregate`
    demonstration  the "demonstration, not a result" label of unconverged or thin runs
    findings  the findings report (`mltfr findings`) from the written tables and statistics
"""
from mltfr.analysis.outputs import FIGURES, TABLES, figure_outputs, stats_outputs, table_outputs

__all__ = ["FIGURES", "TABLES", "figure_outputs", "stats_outputs", "table_outputs"]
