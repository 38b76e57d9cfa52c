"""`mltfr fisher --run ROUND1_DIR --out consensus.safetensors`

The step between the two rounds of a consensus variant (mltfr.train.merge): round 1's experts
merged, Fisher-weighted (or by plain mean for `mltfr-meanconsensus`), into the expert
`mltfr train --consensus` reads; the metadata is printed as JSON.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, type=Path, help="round-1 run folder (mltfr train --out)")
    parser.add_argument("--out", required=True, type=Path, help="merged expert file (.safetensors)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: the run's")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads for torch")


def run(args: argparse.Namespace) -> int:
    from mltfr.cli.train import set_threads
    from mltfr.train.merge import merge_round1_run

    set_threads(args.threads)
    meta = merge_round1_run(args.run, args.out, args.device)
    print(f"{args.out}: merged expert of {meta['llms']} ({meta['method']}) in {meta['seconds']} s")
    print(json.dumps(meta, sort_keys=True))
    return 0
