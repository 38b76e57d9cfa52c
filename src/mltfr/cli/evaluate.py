"""`mltfr evaluate --run RUN_DIR [--data DIR] [--sampled N] [--device D] [--out FILE]`

Re-evaluates the best state of a run's checkpoint (full ranking, or the labelled sampled-N
protocol with --sampled N) on its valid/test sets, prints the metrics and writes them as JSON
(default RUN_DIR/eval-full-ranking.json or RUN_DIR/eval-sampled-N.json).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mltfr.errors import MltfrError
from mltfr.spec.run_config import DEVICES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="run folder written by `mltfr train --out`")
    parser.add_argument("--data", type=Path,
                        help="prepared dataset folder (default: the one recorded in RUN_DIR/result.json)")
    parser.add_argument("--sampled", type=_non_negative, default=None, metavar="N",
                        help="rank against N sampled negatives (labelled sampled-N); 0 = full ranking "
                             "(default: the run's setting)")
    parser.add_argument("--device", choices=DEVICES, help="auto = CUDA when available (default: the run's)")
    parser.add_argument("--out", type=Path, help="JSON file for the metrics (default: in RUN_DIR)")


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def run(args: argparse.Namespace) -> int:
    from mltfr.data import load_prepared
    from mltfr.io import atomic_write_json
    from mltfr.spec.run_config import RunConfig, apply_overrides
    from mltfr.train.checkpoint import load_checkpoint
    from mltfr.train.result import recorded_inputs
    from mltfr.train.run import evaluate_checkpoint, split_for_run

    ckpt = args.run / "checkpoint.pt"
    if not ckpt.exists():
        raise MltfrError(f"{ckpt} does not exist; train the run first (mltfr train --out {args.run})")
    cfg = RunConfig.from_dict(load_checkpoint(ckpt)["config"], where=f"{ckpt}: config")
    changes = {k: v for k, v in (("device", args.device), ("sampled_negatives", args.sampled)) if v is not None}
    cfg = apply_overrides(cfg, changes)
    inputs = recorded_inputs(args.run)
    data = args.data or inputs.get("data")
    if not data:
        raise MltfrError(f"{args.run}: no data folder recorded (no result.json yet); pass --data DIR")
    prepared = load_prepared(data)
    split = split_for_run(prepared, cfg)
    llm = {k: Path(v) for k, v in inputs.get("llm", {}).items()}
    result = evaluate_checkpoint(args.run, split, cfg, llm)
    out = args.out or args.run / f"eval-{result['eval_protocol']}.json"
    atomic_write_json(out, result)
    print(json.dumps(result["metrics"], indent=2))
    return 0
