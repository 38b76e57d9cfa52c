"""mltfr.data: dataset registry, download, parsing, preprocessing, prepared files and splits.

    prepare_dataset(entry, name, cache_dir) -> Prepared      # registry entry -> sequences
    save_prepared(folder, p) / load_prepared(folder)         # prepared.npz + meta.json
    make_split(p, protocol, max_len[, holdout_valid, with_valid]) -> Split   # faithful | corrected
Knows nothing of models (no torch import).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from mltfr.config_files import load_config
from mltfr.data.dataset_entries import DEFAULT_CACHE_DIR, get_entry, resolve_sources, validate_entry
from mltfr.data.parsers import parse_file
from mltfr.data.prepared import Prepared, format_stats, load_prepared, save_prepared, stats_row
from mltfr.data.preprocess import build_prepared
from mltfr.data.split import EvalSet, Split, make_split

__all__ = ["Prepared", "EvalSet", "Split", "prepare_dataset", "save_prepared", "load_prepared",
           "make_split", "stats_row", "format_stats", "get_entry", "load_config", "validate_entry",
           "parse_file"]


def prepare_dataset(entry: dict, name: str, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> Prepared:
    """Locate (download) the entry's raw files, parse them in order and preprocess them."""
    raw_files = resolve_sources(entry, cache_dir)
    frames = [parse_file(r.path, entry["format"], entry["columns"], r.member) for r in raw_files]
    raw_meta = [{"origin": r.origin, "path": str(r.path), "member": r.member, "sha256": r.sha256,
                 "interactions": len(f)} for r, f in zip(raw_files, frames)]
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return build_prepared(frame, entry, name, raw_meta)
