"""One study variant end to end through the `mltfr` commands, in the workflow's layout.

A one-round variant is one `mltfr train --out RUN`. A consensus variant (`needs_round2`) is
round 1 (`mltfr train --out RUN/round1`), the merge (`mltfr fisher --run RUN/round1 --out
RUN/round1/consensus.safetensors`) and round 2 (`mltfr train --out RUN --consensus ...`), as the
workflow's rules train_round1 / fisher / train run them. A step whose output exists is skipped,
so an interrupted call resumes where it stopped (each `mltfr train` also resumes its checkpoint).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mltfr.errors import MltfrError
from mltfr.train.result import RESULT

ROUND1 = "round1"                       # round 1's run folder inside the variant's
CONSENSUS_FILE = "consensus.safetensors"  # the merged expert, inside round 1's folder


def train_variant(run_dir: str | Path, variant: str, train_args: Sequence[str]) -> dict:
    """Train `variant` into `run_dir` and return its result.json document (round 2's for a
    consensus variant). `train_args`: the `mltfr train` arguments other than --out, --variant
    and --consensus (data, backbone, protocol, seed, --llm, --set, ...)."""
    from mltfr.models.variants import needs_round2

    run_dir = Path(run_dir)
    args = ["--variant", variant, *map(str, train_args)]
    if not needs_round2(variant):
        return _train(run_dir, args)
    round1 = run_dir / ROUND1
    _train(round1, args)
    merged = round1 / CONSENSUS_FILE
    if not merged.exists():
        _command("fisher", "--run", round1, "--out", merged)
    return _train(run_dir, [*args, "--consensus", merged])


def _train(out: Path, args: list) -> dict:
    """`mltfr train --out OUT ARGS` unless OUT already holds a result; the result document."""
    result = out / RESULT
    if not result.exists():
        _command("train", "--out", out, *args)
    return json.loads(result.read_text(encoding="utf-8"))


def _command(*args) -> None:
    """One `mltfr` command in this process; a non-zero exit (its message is printed) raises."""
    from mltfr.cli import main

    argv = [str(a) for a in args]
    if main(argv) != 0:
        raise MltfrError(f"`mltfr {' '.join(argv)}` failed (its message is above)")
