"""Snakemake benchmark files (results/<study>/benchmarks) read per run: job seconds and peak memory."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mltfr.analysis.collect import KEYS
from mltfr.errors import DataError


def benchmark_key(rel: Path) -> tuple | None:
    """(dataset, backbone, variant, protocol, seed) from a benchmark path, or None.

    Accepts any prefix and suffix around .../{dataset}/{backbone}/{variant}/{protocol}/seed{S}...,
    e.g. benchmarks/out/train/pantry/sasrec/mltfr/corrected/seed1.round2.tsv.
    """
    parts = list(rel.parent.parts) + [rel.name.split(".")[0]]
    for i in range(len(parts) - 1, 3, -1):  # the last window wins
        seed = parts[i]
        if seed.startswith("seed") and seed[4:].isdigit():
            return (*parts[i - 4:i], int(seed[4:]))
    return None


def read_benchmarks(root: str | Path) -> pd.DataFrame:
    """Snakemake benchmark files summed per run: total seconds, peak resident memory (MB).

    A run may have several jobs (round 1, Fisher, round 2): their seconds add up and the
    memory is the largest. Repeated rows of one file (benchmark repeats) are averaged.
    """
    records = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        key = benchmark_key(path.relative_to(root))
        if key is None:
            continue
        try:
            bench = pd.read_csv(path, sep="\t")
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a Snakemake benchmark TSV ({exc}); delete it") from None
        if "s" not in bench.columns:
            raise DataError(f"{path}: benchmark file lacks column 's'; delete it and rerun the job")
        rss = pd.to_numeric(bench.get("max_rss", pd.Series(dtype=float)), errors="coerce")
        records.append((*key, float(pd.to_numeric(bench["s"], errors="coerce").mean()),
                        float(rss.max()) if len(rss) else np.nan))
    cols = [*KEYS, "bench_s", "bench_max_rss_mb"]
    frame = pd.DataFrame(records, columns=cols)
    return frame.groupby(list(KEYS), as_index=False).agg(bench_s=("bench_s", "sum"),
                                                         bench_max_rss_mb=("bench_max_rss_mb", "max"))
