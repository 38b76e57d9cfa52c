"""LLM registry: read `llms.NAME` from a study config and validate it against the schema.

An entry (schema: src/mltfr/schemas/llm.schema.yaml) is one of
    {source: hf, repo: ORG/NAME, revision: COMMIT, [tensor: KEY]}
    {source: package, package: minilm | paraphrase-minilm | smollm2 | gemma3}
    {source: random, seed: S, like: OTHER_NAME}   or   {source: random, seed: S, shape: [V, D]}
    {source: planted, dataset: NAME, [dim: 256]}   (the positive control, mltfr.llm.planted)
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from mltfr.config_files import check_entry
from mltfr.errors import ConfigError
from mltfr.study.config import load_registries


@dataclass
class LlmEntry:
    """A validated registry entry plus the registry it came from (a random `like` needs it)."""
    name: str
    params: dict                       # the entry with defaults filled in
    registry: dict = field(default_factory=dict, repr=False)   # all raw `llms:` entries
    where: str = "config"              # the config file, for error messages

    @property
    def source(self) -> str:
        return self.params["source"]

    def identity(self) -> dict:
        """What decides the table's content: the entry minus free-text fields."""
        return {k: v for k, v in self.params.items() if k != "description"}

    def sibling(self, name: str) -> "LlmEntry":
        """Another entry of the same registry (for `like:`)."""
        return entry_from_registry(self.registry, name, self.where)


def load_llm_entry(config_path: str | Path, name: str) -> LlmEntry:
    """The validated entry `llms.NAME` of a study config file (its registries merged and the
    random twins derived: mltfr.study.config, the workflow's loader too)."""
    return entry_from_registry(load_registries(config_path)["llms"], name, str(config_path))


def entry_from_registry(registry: dict, name: str, where: str = "config") -> LlmEntry:
    """Validate `registry[name]`; an unknown name lists the known ones."""
    if name not in registry:
        known = ", ".join(sorted(registry)) or "(none)"
        raise ConfigError(f"{where}: unknown LLM {name!r} under `llms:`; known: {known}")
    params = validate_entry(registry[name], f"llms.{name}", where)
    if params["source"] == "random" and params.get("like") not in (None, *registry):
        raise ConfigError(f"{where}: llms.{name}.like: {params['like']!r} is not an entry under "
                          f"`llms:`; known: {', '.join(sorted(registry))}")
    if params.get("like") == name:
        raise ConfigError(f"{where}: llms.{name}.like names the entry itself; name another LLM")
    return LlmEntry(name, params, registry, where)


def validate_entry(entry, key: str = "entry", where: str = "config") -> dict:
    """Validate against the schema; the best-matching error becomes a ConfigError with its key."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: {key}: expected a mapping with a `source:` key, got {entry!r}")
    check_entry(entry, "llm", key, where)
    if entry["source"] == "random":
        _check_random(entry, key, where)
    return _with_defaults(entry)


def _check_random(entry: dict, key: str, where: str) -> None:
    if ("like" in entry) == ("shape" in entry):
        raise ConfigError(f"{where}: {key}: a random entry needs exactly one of `like: OTHER_LLM` "
                          f"(copy its shape, mean and std) or `shape: [V, D]`")
    if "like" in entry and {"mean", "std"} & set(entry):
        raise ConfigError(f"{where}: {key}: `mean`/`std` apply only with `shape:`; with `like:` they "
                          f"are taken from {entry['like']!r}'s table; remove them")


def _with_defaults(entry: dict) -> dict:
    entry = copy.deepcopy(entry)
    entry.setdefault("description", "")
    if entry["source"] == "hf":
        entry.setdefault("revision", "main")
    if entry["source"] == "random" and "shape" in entry:
        entry.setdefault("mean", 0.0)
        entry.setdefault("std", 0.02)
    if entry["source"] == "planted":
        entry.setdefault("dim", 256)
    return entry
