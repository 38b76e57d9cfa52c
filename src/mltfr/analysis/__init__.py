"""Aggregate run results into tables, statistics, figures and the findings report.

Reads result files only (result.json, ranks.npz, epochs.csv, benchmark TSVs, meta.json): never
imports torch, so everything can be redrawn on any machine. The output names are
mltfr.spec.report_outputs. Modules:

    blocks        variant name -> study block, labels of the positive controls
    collect       result files -> tidy runs table, per-user NDCG, epochs, interpretability
    tables        study tables (CSV, Markdown, LaTeX)
    tuning_table  the backbone's validation search
    stats         t-test over users, TOST, MDE, Wilcoxon, two-level bootstrap, Holm for every comparison
    ladder, protocol_factors, null_gains   the protocol questions' tables
    figures       seaborn figures (PNG, PDF)
    pipeline      the steps of `mltfr aggregate`
    demonstration the "demonstration, not a result" label of unconverged or thin runs
    verdicts      the verdict rule (better / worse / equivalent / inconclusive)
    positive      the positive control in words
    references    the reference check (base beside published numbers)
    findings_report  the findings report (`mltfr findings`) from the written tables and statistics
"""
