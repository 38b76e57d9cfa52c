"""Build (or reuse) the cached token table of one registry entry.

The cache is reused when meta.json records the same entry, dtype and source identity
(installed package versions, repo + revision, the `like` table's sha256, a planted table's
prepared data sha256) and the table file still has the recorded sha256; a corrupted or truncated
table is rebuilt, with a warning.
"""
from __future__ import annotations

import datetime as dt
import logging
import tempfile
import time
from pathlib import Path

from mltfr.errors import ConfigError, DataError
from mltfr.io import code_version
from mltfr.llm import cache
from mltfr.llm.llm_entries import LlmEntry

log = logging.getLogger("mltfr.llm")

FORMAT_VERSION = 1   # bump when the extraction changes what a table contains


def extract(entry: LlmEntry, out_folder: str | Path, *, dtype: str = "fp32", force: bool = False,
            data: str | Path | None = None) -> dict:
    """Make `out_folder` hold the entry's table, meta.json and tokenizer/; return the meta.

    A `random` entry with `like: OTHER` reads (or first builds) OTHER's table in the sibling
    folder `out_folder/../OTHER`; a `planted` entry reads its dataset's prepared folder `data`.
    """
    if dtype not in cache.DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: choose one of {', '.join(cache.DTYPES)}")
    out = Path(out_folder)
    like_folder, like_meta = _like_table(entry, out)
    prepared = _planted_data(entry, data)
    identity = _source_identity(entry, like_meta, prepared)
    if not force:
        meta = cached_meta(out, entry, dtype, identity)
        if meta is not None:
            log.info("%s: cached table is up to date (%d x %d, %s); nothing to extract",
                     out, meta["vocab_size"], meta["dim"], meta["dtype"])
            return meta
    return _build(entry, out, dtype, identity, like_folder, like_meta, prepared)


def cached_meta(out: Path, entry: LlmEntry, dtype: str, identity: dict) -> dict | None:
    """The meta of a valid cache for exactly these inputs, else None (saying why)."""
    meta = cache.read_meta(out)
    if meta is None:
        return None
    wanted = (FORMAT_VERSION, entry.identity(), dtype, identity)
    if (meta.get("format"), meta.get("entry"), meta.get("dtype"), meta.get("source_identity")) != wanted:
        log.info("%s: the entry, dtype or source changed since the cached extraction; re-extracting", out)
        return None
    if not cache.table_is_intact(out, meta):
        log.warning("%s: missing, truncated or corrupted (sha256 differs from meta.json); rebuilding it",
                    out / cache.TABLE_FILE)
        return None
    return meta


def _like_table(entry: LlmEntry, out: Path) -> tuple[Path | None, dict | None]:
    """For `random` with `like`: the other LLM's folder and its (ensured) meta."""
    like = entry.params.get("like")
    if entry.source != "random" or like is None:
        return None, None
    folder = out.parent / like
    existing = cache.read_meta(folder)
    like_dtype = existing.get("dtype", "fp32") if existing else "fp32"
    return folder, extract(entry.sibling(like), folder, dtype=like_dtype)


def _planted_data(entry: LlmEntry, data: str | Path | None):
    """The prepared dataset a `planted` entry is built from (None for every other source)."""
    if entry.source != "planted":
        return None
    dataset = entry.params["dataset"]
    if data is None:
        raise ConfigError(f"llms.{entry.name} is the planted table of dataset {dataset!r} (the positive "
                          f"control): pass its prepared folder, --data results/<study>/data/{dataset}")
    from mltfr.data import load_prepared

    prepared = load_prepared(data)
    if prepared.meta.get("dataset") != dataset:
        raise DataError(f"--data {data} holds dataset {prepared.meta.get('dataset')!r}, but llms.{entry.name} "
                        f"is built from {dataset!r}; pass results/<study>/data/{dataset}")
    return prepared


def _source_identity(entry: LlmEntry, like_meta: dict | None, prepared=None) -> dict:
    """What, besides the entry, decides the table (checked without extracting anything)."""
    if entry.source == "package":
        from mltfr.llm.packaged import installed_versions

        versions = installed_versions(entry.params["package"], entry.where)
        return {"packages": [f"{d}=={v}" for d, v in sorted(versions.items())]}
    if entry.source == "random":   # the draw mixes in the entry's name (random_table.draw_seed)
        from mltfr.llm.random_table import draw_seed

        like = {"like_sha256": like_meta["sha256"]} if like_meta is not None else {}
        return {**like, "draw_seed": draw_seed(entry.name, entry.params["seed"])}
    if entry.source == "planted":
        return {"prepared_sha256": prepared.meta["prepared_sha256"]}
    return {}   # hf: the pinned repo + revision in the entry


def _read_source(entry: LlmEntry, tokenizer_dir: Path, like_folder: Path | None,
                 like_meta: dict | None, prepared) -> cache.Extracted:
    if entry.source == "hf":
        from mltfr.llm.hf import extract_hf

        return extract_hf(entry, tokenizer_dir)
    if entry.source == "package":
        from mltfr.llm.packaged import extract_package

        return extract_package(entry, tokenizer_dir)
    if entry.source == "planted":
        from mltfr.llm.planted import extract_planted

        return extract_planted(entry.params, prepared)
    from mltfr.llm.random_table import extract_random

    return extract_random(entry.name, entry.params, like_folder, like_meta, tokenizer_dir)


def _build(entry: LlmEntry, out: Path, dtype: str, identity: dict,
           like_folder: Path | None, like_meta: dict | None, prepared) -> dict:
    """Extract, then write table, tokenizer and (last, as the commit marker) meta.json."""
    out.mkdir(parents=True, exist_ok=True)
    (out / cache.META_FILE).unlink(missing_ok=True)   # an interrupted rebuild leaves no valid cache
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out, prefix=".extract-") as tmp:
        staged = Path(tmp) / cache.TOKENIZER_DIR
        got = _read_source(entry, staged, like_folder, like_meta, prepared)
        if got.weight.ndim != 2:
            raise DataError(f"llms.{entry.name}: the table has shape {tuple(got.weight.shape)}, "
                            f"not (vocab, dim); set `tensor:` to the input-embedding key")
        expected = entry.params.get("dim")
        if expected is not None and got.weight.shape[1] != expected:
            raise DataError(f"llms.{entry.name}: the table is {tuple(got.weight.shape)} but the entry "
                            f"says dim: {expected}; correct `dim` (or remove it)")
        mean, std = cache.table_stats(got.weight)
        sha256 = cache.write_table(out, got.weight, dtype)
        cache.install_tokenizer(out, staged)
    meta = _meta(entry, got, dtype, identity, sha256, (mean, std), time.perf_counter() - started)
    cache.write_meta(out, meta)
    log.info("%s: extracted %s (%d x %d, %s) in %.1f s", out, entry.name, meta["vocab_size"],
             meta["dim"], dtype, meta["extraction_seconds"])
    return meta


def _meta(entry: LlmEntry, got: cache.Extracted, dtype: str, identity: dict, sha256: str,
          stats: tuple[float, float], seconds: float) -> dict:
    vocab, dim = got.weight.shape
    return {
        "name": entry.name, "source": entry.source, "description": entry.params["description"],
        "entry": entry.identity(), "source_identity": identity, "origin": got.identity,
        "format": FORMAT_VERSION, "vocab_size": int(vocab), "dim": int(dim), "dtype": dtype,
        "quantisation": got.quantisation, "table_file": cache.TABLE_FILE, "sha256": sha256,
        "tokenizer": got.tokenizer, "stats": {"mean": stats[0], "std": stats[1]},
        "extracted_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "extraction_seconds": round(seconds, 3), "code_version": code_version(),
    }
