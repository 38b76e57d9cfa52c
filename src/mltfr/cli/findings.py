"""`mltfr findings`: the study's findings report from the tables and statistics of `mltfr aggregate`.

    mltfr findings --tables results/STUDY/tables --stats results/STUDY/stats --figures figures/STUDY \\
                   --out results/STUDY/findings.md --study STUDY [--planned-runs N] [--references JSON]

Reads only the written CSV/Markdown tables (never the runs); links the figures relative to the
report's folder (mltfr.analysis.findings_report).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tables", required=True, help="tables folder of `mltfr aggregate` (runs.csv, main.csv, ...)")
    parser.add_argument("--stats", required=True, help="statistics folder of `mltfr aggregate` (comparisons.csv)")
    parser.add_argument("--figures", required=True, help="figures folder of `mltfr aggregate` (linked, not read)")
    parser.add_argument("--out", required=True, help="the report to write, e.g. results/<study>/findings.md")
    parser.add_argument("--study", required=True, help="the study's name, for the report's title")
    parser.add_argument("--planned-runs", type=int, default=None,
                        help="runs the study plans (the workflow passes it): fewer in runs.csv makes the "
                             "report say it is partial")
    parser.add_argument("--references", default=None, metavar="JSON",
                        help="published full-ranking numbers for the reference check: study.references as a "
                             "JSON list (the workflow passes it)")


def run(args: argparse.Namespace) -> int:
    from mltfr.analysis.findings_report import write_findings
    from mltfr.analysis.references import parse_references

    path = write_findings(args.tables, args.stats, args.figures, args.out, args.study, args.planned_runs,
                          parse_references(args.references))
    print(f"mltfr findings: wrote {path}")
    return 0
