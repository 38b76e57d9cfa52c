"""Registries in study configs: reading the YAML file and checking entries against a schema.

Shared by the dataset (`datasets:`) and LLM (`llms:`) registries; the schemas live in
src/mltfr/schemas/ beside the study config's schema (study.schema.yaml), which references them.
"""
from __future__ import annotations

import functools
from pathlib import Path

import jsonschema
import yaml

from mltfr.errors import ConfigError

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"


def load_config(path: str | Path) -> dict:
    """Read a YAML study config; a missing, unreadable or non-mapping file is a ConfigError."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as fh:
            config = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; pass an existing --config") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc}); fix the file") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: expected a mapping with `datasets:` and `llms:` sections")
    return config


@functools.cache
def load_schema(name: str) -> dict:
    """The JSON schema `src/mltfr/schemas/<name>.schema.yaml`."""
    with open(SCHEMA_DIR / f"{name}.schema.yaml", encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def check_entry(entry, schema_name: str, key: str, where: str) -> None:
    """Validate one entry; the best-matching error becomes a ConfigError naming its key path."""
    validator = jsonschema.Draft202012Validator(load_schema(schema_name))
    err = jsonschema.exceptions.best_match(validator.iter_errors(entry))
    if err is not None:
        path = ".".join([key, *map(str, err.absolute_path)])
        raise ConfigError(f"{where}: {path}: {err.message}; fix it (see {schema_name}.schema.yaml)")
