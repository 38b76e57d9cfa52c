"""`mltfr <command>`: one small entry per workflow stage.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args)`;
they are imported lazily so that `mltfr --help` and the data commands never import torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from mltfr.errors import MltfrError

# command -> (module, one-line help)
COMMANDS = {
    "prepare": ("mltfr.cli.prepare", "prepare a dataset from the registry into results/data/<name>"),
    "extract-llm": ("mltfr.cli.llm", "extract an LLM's token table into results/llm/<name>"),
    "train": ("mltfr.cli.train", "train one run (backbone x variant x protocol x seed) and evaluate it"),
    "tune": ("mltfr.cli.tune", "the backbone's validation search: choose its settings, write its table"),
    "evaluate": ("mltfr.cli.evaluate", "re-evaluate a trained run's checkpoint"),
    "fisher": ("mltfr.cli.fisher", "round-1 Fisher information and merged consensus expert"),
    "aggregate": ("mltfr.cli.analysis", "collect run results into tables, statistics and figures"),
    "findings": ("mltfr.cli.findings", "write the findings report from the aggregated tables and statistics"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mltfr", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:  # command not implemented yet
                continue
            raise
        p = sub.add_parser(name, help=help_, description=help_)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except MltfrError as exc:
        print(f"mltfr {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mltfr {args.command}: interrupted", file=sys.stderr)
        return 130
