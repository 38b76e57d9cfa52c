"""`mltfr prepare --config C --dataset NAME --out results/data/NAME`

Reads `datasets.NAME` from the study config (its registries merged: mltfr.study.config), fetches/locates and parses the raw files,
preprocesses them and writes prepared.npz, meta.json and stats.json (each atomically),
then prints the statistics row.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mltfr.io import atomic_write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config YAML with a `datasets:` registry")
    parser.add_argument("--dataset", required=True, help="registry name under `datasets:`")
    parser.add_argument("--out", required=True, help="output folder, e.g. results/data/NAME")
    parser.add_argument("--cache-dir", default="resources/downloads",
                        help="where URL sources are downloaded (default: resources/downloads)")


def run(args: argparse.Namespace) -> int:
    from mltfr.data import format_stats, get_entry, prepare_dataset, save_prepared
    from mltfr.data.prepared import STATS
    from mltfr.study.config import load_registries

    config = load_registries(args.config)
    entry = get_entry(config, args.dataset, where=str(args.config))
    prepared = prepare_dataset(entry, args.dataset, args.cache_dir)
    out = Path(args.out)
    save_prepared(out, prepared)
    atomic_write_json(out / STATS, prepared.meta["stats"])
    print(format_stats(prepared.meta["stats"]))
    return 0
