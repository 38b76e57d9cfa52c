"""`mltfr findings`: the study's findings report from the tables and statistics of `mltfr aggregate`.

    mltfr findings --tables results/tables --stats results/stats --figures figures \\
                   --out results/findings.md --study NAME

Reads only the written CSV/Markdown tables (never the runs); links the figures relative to the
report's folder (mltfr.analysis.findings).
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tables", required=True, help="tables folder of `mltfr aggregate` (runs.csv, main.csv, ...)")
    parser.add_argument("--stats", required=True, help="statistics folder of `mltfr aggregate` (comparisons.csv)")
    parser.add_argument("--figures", required=True, help="figures folder of `mltfr aggregate` (linked, not read)")
    parser.add_argument("--out", required=True, help="the report to write, e.g. results/<study>/findings.md")
    parser.add_argument("--study", required=True, help="the study's name, for the report's title")


def run(args: argparse.Namespace) -> int:
    from mltfr.analysis.findings import write_findings

    path = write_findings(args.tables, args.stats, args.figures, args.out, args.study)
    print(f"mltfr findings: wrote {path}")
    return 0
