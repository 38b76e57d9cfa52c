"""Amazon Beauty for the benchmarks: the file is not shipped, so each script takes its path.

The file is the BERT4Rec preprocessing of Amazon Beauty (FeiSun/BERT4Rec), redistributed by
antklen/sasrec-bert4rec-recsys23 as `beauty.txt` (`user item` per line, in time order). The
published SASRec/BERT4Rec numbers the benchmarks compare with are for exactly this file, so it is
checked by its counts before anything trains.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

ENV = "MLTFR_BEAUTY_FILE"
COUNTS = {"users": 40_226, "items": 54_542, "interactions": 353_962}
ENTRY = {"format": "user-item-pairs", "description": "", "columns": None,
         "preprocess": {"min_rating": None, "k_core": {"user": 0, "item": 0}}}


def add_argument(parser: argparse.ArgumentParser) -> None:
    """--data-file, defaulting to $MLTFR_BEAUTY_FILE."""
    parser.add_argument("--data-file", type=Path, default=os.environ.get(ENV),
                        help=f"the Beauty `user item` file (default: ${ENV}); source: "
                             "antklen/sasrec-bert4rec-recsys23, data/beauty.txt")


def entry(path: Path | None) -> dict:
    """The registry entry of the Beauty file at `path` (exits with a message when it is missing)."""
    if path is None or not Path(path).is_file():
        raise SystemExit(f"the Amazon Beauty file is needed ({path or 'not given'}): download beauty.txt "
                         f"from antklen/sasrec-bert4rec-recsys23 and pass --data-file PATH or set ${ENV}")
    return {**ENTRY, "source": [{"path": str(Path(path).resolve())}]}


def prepare(path: Path | None):
    """The prepared Beauty dataset, its counts checked against the published file's."""
    from mltfr.data import prepare_dataset

    prepared = prepare_dataset(entry(path), "beauty")
    counts = {"users": prepared.n_users, "items": prepared.n_items, "interactions": len(prepared.items)}
    if counts != COUNTS:
        raise SystemExit(f"{path} is not the published Beauty file: counts {counts}, expected {COUNTS}")
    return prepared
