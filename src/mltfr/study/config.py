"""The study config: the ONE loader of the workflow and the CLI. Torch-free.

A study config (config/config.yaml, config/paper.yaml, config/test.yaml) names registry files
(`registries: [config/registry.yaml]`, paths relative to the working directory) whose `datasets:`
and `llms:` entries its own sections add to or replace, entry by entry. Every LLM that is not
itself `source: random` gets a random twin `random-<name>` unless an entry of that name is written
(`derive_random_twins`), so `random_controls: auto` needs no hand-written control entries; and every
dataset gets its planted table `planted-<dataset>`, the positive control (`derive_planted_tables`).

    load_registries(path)          the CLI: the merged `datasets`/`llms` (twins derived) and `train`
    load_study(config, source)     the workflow: the same merge, then the schema
                                   (src/mltfr/schemas/study.schema.yaml, defaults filled in outside
                                   the registries), `train:` checked by building a RunConfig, and the
                                   cross-key checks (mltfr.study.checks); returns the run grid
"""
from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Mapping

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match
from referencing import Registry, Resource

from mltfr.config_files import SCHEMA_DIR, load_config
from mltfr.errors import ConfigError, key_error
from mltfr.spec.run_config import RunConfig
from mltfr.spec.variants import PLANTED_PREFIX, POSITIVE_LABEL, RANDOM_PREFIX
from mltfr.study.checks import check_study
from mltfr.study.grid import Study

SCHEMA = SCHEMA_DIR / "study.schema.yaml"
REGISTRY_SECTIONS = ("datasets", "llms")
# The registry entries' schemas, owned by mltfr.data and mltfr.llm ($ref'd by SCHEMA).
ENTRY_SCHEMAS = {"datasets": SCHEMA_DIR / "dataset.schema.yaml", "llms": SCHEMA_DIR / "llm.schema.yaml"}
# What the CLI reads from the file (prepare, extract-llm): the workflow refuses to change them
# with --config. The training jobs read their `train:` section from their run spec instead.
CLI_SECTIONS = ("registries", "datasets", "llms")


def load_registries(path: str | Path) -> dict:
    """The study config file as the CLI reads it: registries merged, random twins derived.

    Entries are not validated here: the CLI validates the one it reads (mltfr.data, mltfr.llm).
    """
    config, _ = merge_registries(load_config(path), str(path))
    derive_random_twins(config["llms"])
    derive_planted_tables(config)
    return config


def load_study(raw: dict, source: str | Path) -> Study:
    """The validated study of the config `raw` read from `source`, or a ConfigError naming the key."""
    config, origins = merge_registries(raw, str(source))
    validate_schema(config, str(source), origins)
    config["rebuild_only"] = str(config["rebuild_only"]).lower() == "true"   # --config gives a string
    derive_random_twins(config["llms"])
    derive_planted_tables(config)
    check_train(config["train"], str(source))
    study = Study(config)
    check_study(study)
    return study


# ---------------------------------------------------------------- registries
def merge_registries(raw: dict, source: str) -> tuple[dict, dict]:
    """A copy of `raw` whose `datasets`/`llms` are the registry files' entries, in order, then
    its own; and (section, name) -> the file each entry comes from (for error messages)."""
    files = raw.get("registries") or []
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        raise key_error("registries", f"is {files!r} in {source}, not a list of file paths",
                        "write `registries: [config/registry.yaml]`")
    config, origins = copy.deepcopy(raw), {}
    layers = [(path, read_registry(path, source)) for path in files] + [(source, raw)]
    for section in REGISTRY_SECTIONS:
        merged = {}
        for where, doc in layers:
            entries = doc.get(section) or {}
            if not isinstance(entries, dict):
                raise key_error(section, f"in {where} is not a mapping of names to entries",
                                f"write `{section}:` as name: {{...}} entries")
            merged.update(copy.deepcopy(entries))
            origins.update({(section, name): where for name in entries})
        config[section] = merged
    return config, origins


def read_registry(path: str, source: str) -> dict:
    """A registry file: only `datasets:` and `llms:` sections."""
    if not Path(path).is_file():
        raise key_error("registries", f"names {path}, which is not a file (paths are relative to the "
                        f"working directory {Path.cwd()}; named in {source})",
                        "run from the repository root or fix the path")
    doc = load_config(path)
    extra = sorted(set(doc) - set(REGISTRY_SECTIONS))
    if extra:
        raise key_error("registries", f"{path} has the sections {extra}; a registry file holds only "
                        "`datasets:` and `llms:`", f"move {extra} into the study config {source}")
    return doc


def derive_random_twins(llms: dict) -> None:
    """Add `random-<x>` (Gaussian of x's shape, mean, std and dim) for every LLM x that is not
    random itself and has no entry of that name. Its seed is derived from the twin's name."""
    for name, entry in list(llms.items()):
        twin = RANDOM_PREFIX + name
        if not isinstance(entry, dict) or entry.get("source") in ("random", "planted") or twin in llms:
            continue
        # seed 0 for every twin: the builder mixes the entry's name into it (draw_seed)
        llms[twin] = {"source": "random", "like": name, "seed": 0,
                      "description": f"random twin of {name}: its shape, mean and std (derived)"}
        if "dim" in entry:
            llms[twin]["dim"] = entry["dim"]


def derive_planted_tables(config: dict) -> None:
    """Add `planted-<d>` (the positive control, leaky by construction: mltfr.llm.planted) for every
    dataset d that has no entry of that name; it is built only when a study runs a planted variant."""
    for dataset in config["datasets"]:
        name = PLANTED_PREFIX + dataset
        config["llms"].setdefault(name, {
            "source": "planted", "dataset": dataset,
            "description": f"{POSITIVE_LABEL}: one row per user of {dataset}, the code of the user's "
                           "full sequence, held-out items included (derived; never a finding)"})


# ---------------------------------------------------------------- schema and train:
def schema_nodes(node):
    """Every dict inside a schema (to recognise the entry schemas' subschemas by identity)."""
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    for child in node if isinstance(node, list) else []:
        yield from schema_nodes(child)


@functools.cache
def config_validator():
    """A Draft 2020-12 validator of the study config that fills in the schema's defaults.

    The entry schemas are loaded once and registered under the URIs the `$ref`s resolve to.
    Defaults are filled in outside the registries only: the CLI reads the entries from the files
    and applies their defaults itself.
    """
    schema = load_config(SCHEMA) | {"$id": SCHEMA.resolve().as_uri()}
    entries = {path.resolve().as_uri(): load_config(path) for path in ENTRY_SCHEMAS.values()}
    resources = Registry().with_resources((uri, Resource.from_contents(doc)) for uri, doc in entries.items())
    in_entries = {id(node) for doc in entries.values() for node in schema_nodes(doc)}
    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict) and id(subschema) not in in_entries:
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    extended = validators.extend(Draft202012Validator, {"properties": fill_defaults})
    return extended(schema, registry=resources)


def validate_schema(config: dict, source: str, origins: dict) -> None:
    """Validate `config` in place (defaults filled in), or fail naming the dotted key and file."""
    error = best_match(config_validator().iter_errors(config))
    if error is None:
        return
    path = [str(part) for part in error.absolute_path]
    in_entry = len(path) > 1 and path[0] in ENTRY_SCHEMAS
    schema = ENTRY_SCHEMAS[path[0]] if in_entry else SCHEMA
    where = origins.get(tuple(path[:2]), source) if in_entry else source
    raise ConfigError(f"Error validating config file {where}: config key `{'.'.join(path) or '(top level)'}`: "
                      f"{error.message}. Fix: see the key's description in src/mltfr/schemas/{schema.name}.")


def check_train(section: dict, source: str) -> None:
    """`train:` is RunConfig's overrides: build one (torch-free), so a bad key fails here."""
    try:
        RunConfig.from_dict(section, where="train")
    except ConfigError as exc:
        raise ConfigError(f"Error validating config file {source}: {exc}. Fix: use the keys and "
                          "value types of mltfr.spec.run_config.RunConfig (its field comments)") from None


def check_cli_sections(config: dict, path: str | Path) -> None:
    """The sections the CLI reads from the file must equal the file's (no --config override)."""
    on_disk = load_config(path)
    for section in CLI_SECTIONS:
        if (on_disk.get(section) or {}) != (config.get(section) or {}):
            raise key_error(section, f"differs from {path}, the file the mltfr CLI reads",
                            f"edit `{section}` in {path} rather than overriding it with --config")


def load_train_section(path: str | Path) -> dict[str, Any]:
    """The `train:` section of a study config file ({} when the file has none)."""
    path = Path(path)
    doc = load_config(path)
    section = doc.get("train") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"config {path}: the 'train:' section must be a mapping of RunConfig keys")
    return dict(section)
