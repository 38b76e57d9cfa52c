"""`mltfr aggregate`: run results -> tables, statistics and figures (all, or some with --only).

    mltfr aggregate --runs results/STUDY/runs --data results/STUDY/data --tables results/STUDY/tables \\
                    --stats results/STUDY/stats --figures figures/STUDY [--only tables|stats|figures|runs]

--runs is the runs folder or a manifest (one run folder per line). Output file names are fixed
(mltfr.spec.report_outputs), so workflow rules can declare them.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs", required=True,
                        help="runs folder results/<study>/runs ({dataset}/{backbone}/{variant}/{protocol}/"
                             "seed{S}/) or a manifest file listing run folders, one per line "
                             "(results/<study>/tables/runs.txt)")
    parser.add_argument("--data", default=None,
                        help="prepared datasets, their meta.json stats (default: results/<study>/data)")
    parser.add_argument("--tables", default=None,
                        help="output folder of the tables (default: the folder of --out, else "
                             "results/<study>/tables)")
    parser.add_argument("--stats", default=None, help="output folder of the statistics (default: results/<study>/stats)")
    parser.add_argument("--figures", default=None, help="output folder of the figures (default: figures/<study>)")
    parser.add_argument("--out", default=None,
                        help="write the runs table to this runs.csv (and runs.parquet beside it); "
                             "without --only this writes nothing else")
    parser.add_argument("--benchmarks", default=None,
                        help="Snakemake benchmark files, used by the efficiency table when present "
                             "(default: results/<study>/benchmarks)")
    parser.add_argument("--only", action="append", choices=["runs", "tables", "stats", "figures"],
                        help="run only this step (repeatable); default: tables, stats and figures")
    parser.add_argument("--bootstrap-resamples", type=int, default=2000,
                        help="bootstrap resamples (seeds and users in the comparisons, users in the ladder)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap RNG seed")
    parser.add_argument("--margin", type=float, default=None,
                        help="equivalence margin of the comparisons (TOST), a share of the reference's test "
                             "NDCG@10, in (0, 1); the workflow passes study.equivalence.margin "
                             "(default: mltfr.analysis.stats.StatsConfig.margin, 0.05)")
    parser.add_argument("--config", default=None,
                        help="study config; accepted so every rule can pass it, not needed here")


def study_layout(runs: Path):
    """The layout (mltfr.spec.layout) of the study named by `runs`: results/<study>/runs, or
    the manifest results/<study>/tables/runs.txt."""
    from mltfr.spec.layout import Layout

    root = runs.parent if runs.suffix != ".txt" else runs.parent.parent
    return Layout(root.name)


def run(args: argparse.Namespace) -> int:
    from mltfr.analysis.pipeline import STEPS, aggregate
    from mltfr.analysis.stats import StatsConfig
    from mltfr.errors import ConfigError

    if args.out is not None and Path(args.out).name != "runs.csv":
        raise ConfigError(f"--out {args.out}: the runs table must be named runs.csv; "
                          "pass --out <folder>/runs.csv")
    layout = study_layout(Path(args.runs))
    tables = args.tables or (str(Path(args.out).parent) if args.out else layout.tables)
    steps = tuple(args.only) if args.only else ("runs",) if args.out else STEPS
    if args.margin is not None and not 0 < args.margin < 1:
        raise ConfigError(f"--margin {args.margin}: the equivalence margin is a share of the reference's "
                          "NDCG@10; pass a value between 0 and 1, e.g. --margin 0.05")
    margin = StatsConfig.margin if args.margin is None else args.margin
    cfg = StatsConfig(n_resamples=args.bootstrap_resamples, seed=args.seed, margin=margin)
    written = aggregate(args.runs, args.data or layout.data_root, tables, args.stats or layout.stats,
                        args.figures or layout.figures, benchmarks=args.benchmarks or layout.benchmarks,
                        steps=steps, cfg=cfg)
    print(f"mltfr aggregate: wrote {len(written)} files ({', '.join(steps)})")
    return 0
