"""`mltfr tune`: the backbone's validation search (mltfr.study.tuning).

    mltfr tune choose --results P1/result.json P2/result.json ... --keys lr,model.dropout \\
                      --metric ndcg@10 --expected 8 --out results/STUDY/tuning/D/B/choice.json
    mltfr tune table --choices C1 C2 ... --tables results/STUDY/tables

`choose` reads one (dataset, backbone)'s search runs and writes the choice file that `mltfr train
--tuned` applies; `table` writes tables/tuning.{csv,md,tex} from the choice files.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    choose = sub.add_parser("choose", help="choose one (dataset, backbone)'s settings from its search runs")
    choose.add_argument("--results", nargs="+", required=True, type=Path, help="the points' result.json, in grid order")
    choose.add_argument("--keys", required=True, help="the grid's RunConfig keys, comma-separated")
    choose.add_argument("--metric", default="ndcg@10", help="validation metric to maximise (default ndcg@10)")
    choose.add_argument("--expected", type=int, help="points in the grid: fewer results mark the choice provisional")
    choose.add_argument("--out", required=True, type=Path, help="the choice file to write")
    table = sub.add_parser("table", help="the tuning table from the choice files")
    table.add_argument("--choices", nargs="*", default=[], type=Path, help="choice files (none: an empty table)")
    table.add_argument("--tables", required=True, type=Path, help="tables folder")


def run(args: argparse.Namespace) -> int:
    if args.step == "choose":
        from mltfr.io import atomic_write_json
        from mltfr.study.tuning import choose

        choice = choose(args.results, args.keys.split(","), args.metric, args.expected)
        atomic_write_json(args.out, choice)
        print(f"mltfr tune: {choice['dataset']}/{choice['backbone']}: chose {choice['chosen']} "
              f"(valid {args.metric} {max(p['valid'] for p in choice['points']):.4f}) -> {args.out}")
        return 0
    from mltfr.analysis.render import write_table
    from mltfr.analysis.tuning_table import read_choices, tuning_table

    paths = write_table(tuning_table(read_choices(args.choices)), args.tables)
    print(f"mltfr tune: wrote {', '.join(map(str, paths))}")
    return 0
