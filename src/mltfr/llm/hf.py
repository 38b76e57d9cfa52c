"""Token tables from Hugging Face checkpoints, downloading only what the table needs.

config.json -> the input-embedding parameter name (model built on the meta device, no weights)
-> the checkpoint key (allowing a missing or extra prefix such as `model.` or `bert.`)
-> the one shard holding it (via model.safetensors.index.json) -> that tensor alone.
Remote code is never run. The hub endpoint and cache are read from HF_ENDPOINT, HF_HOME /
HF_HUB_CACHE and HF_HUB_OFFLINE at call time, so a mirror, a fake hub or a pre-filled cache
can stand in for huggingface.co.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path

import torch
from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import safe_open

from mltfr.errors import ConfigError, DataError
from mltfr.llm.cache import Extracted
from mltfr.llm.llm_entries import LlmEntry

log = logging.getLogger("mltfr.llm")

# Checkpoint layouts, in order of preference: (index file or None, weights file)
LAYOUTS = [
    ("model.safetensors.index.json", None),
    (None, "model.safetensors"),
    ("pytorch_model.bin.index.json", None),
    (None, "pytorch_model.bin"),
]
TOKENIZER_FILES = ["tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "vocab.txt",
                   "vocab.json", "merges.txt", "tokenizer.model", "spiece.model", "added_tokens.json"]
# Fallback suffixes when transformers cannot build the architecture from its config.
COMMON_EMBEDDING_NAMES = ["embed_tokens.weight", "word_embeddings.weight", "wte.weight",
                          "shared.weight", "embed_in.weight", "tok_embeddings.weight"]
ROWS_PER_CHUNK = 16384  # rows read and converted at a time (bounds the resident source bytes)


def hub_settings() -> dict:
    """Endpoint, cache folder and offline flag, read from the environment now (not at import)."""
    cache = os.environ.get("HF_HUB_CACHE") or (
        os.path.join(os.environ["HF_HOME"], "hub") if os.environ.get("HF_HOME") else constants.HF_HUB_CACHE)
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    return {"endpoint": os.environ.get("HF_ENDPOINT") or None, "cache_dir": cache, "local_files_only": offline}


@contextlib.contextmanager
def offline_mode(offline: bool):
    """huggingface_hub's offline flag set to `offline` for the duration: the library reads
    HF_HUB_OFFLINE once, at its import, so without this a process that imported it while the
    variable was set stays offline after the variable is gone (and the reverse)."""
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def download(entry: LlmEntry, filename: str, optional: bool = False) -> Path | None:
    """One file of the entry's repo at its revision; None if `optional` and the repo lacks it."""
    p, settings = entry.params, hub_settings()
    try:
        with offline_mode(settings["local_files_only"]):
            return Path(hf_hub_download(p["repo"], filename, revision=p["revision"], **settings))
    except EntryNotFoundError as exc:
        # Local...: not cached and the hub was not asked (offline) or not reachable (an error)
        absent = not isinstance(exc, LocalEntryNotFoundError) or hub_settings()["local_files_only"]
        if optional and absent:
            return None
        raise _hub_error(entry, filename, exc) from None
    except HfHubHTTPError as exc:
        raise _hub_error(entry, filename, exc) from None


def _hub_error(entry: LlmEntry, filename: str, exc: Exception) -> Exception:
    """A one-line ConfigError/DataError for a failed hub request, with the fix."""
    repo, rev, key = entry.params["repo"], entry.params["revision"], f"{entry.where}: llms.{entry.name}"
    if isinstance(exc, GatedRepoError):
        return ConfigError(f"{key}: Hugging Face repo {repo!r} is gated; accept its licence on "
                           f"https://huggingface.co/{repo} and log in (`hf auth login` or HF_TOKEN)")
    if isinstance(exc, RepositoryNotFoundError):
        return ConfigError(f"{key}: Hugging Face repo {repo!r} not found (or private/gated and you are "
                           f"not logged in); fix `repo:` or log in (`hf auth login` or HF_TOKEN)")
    if isinstance(exc, RevisionNotFoundError):
        return ConfigError(f"{key}: revision {rev!r} not found in {repo!r}; set `revision:` to an "
                           f"existing commit hash")
    if isinstance(exc, LocalEntryNotFoundError):
        return DataError(f"{key}: cannot get {filename} of {repo}@{rev}: hub unreachable or offline and "
                         f"the file is not in the cache {hub_settings()['cache_dir']}; connect, set "
                         f"HF_ENDPOINT to a mirror, or pre-fill HF_HOME")
    if isinstance(exc, EntryNotFoundError):
        return DataError(f"{key}: {repo}@{rev} has no {filename}; check the repo's files or set `revision:`")
    return DataError(f"{key}: download of {filename} from {repo}@{rev} failed ({exc}); retry or check the hub")


def embedding_param_name(config_dir: Path) -> str | None:
    """The input-embedding parameter name of the architecture in config_dir/config.json.

    The model is built on the meta device (no memory, no weights); None when transformers
    does not know the architecture (the caller then falls back to common names).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(config_dir), trust_remote_code=False)
    except (ValueError, KeyError, OSError) as exc:
        log.info("%s: transformers cannot read this config (%s)", config_dir, exc)
        return None
    for auto in (AutoModel, AutoModelForCausalLM):
        try:
            with torch.device("meta"):
                model = auto.from_config(config, trust_remote_code=False)
        except (ValueError, KeyError, TypeError, NotImplementedError, AttributeError) as exc:
            log.info("%s: %s.from_config failed (%s)", config_dir, auto.__name__, exc)
            continue
        weight = model.get_input_embeddings().weight
        return next(name for name, param in model.named_parameters() if param is weight)
    return None


def match_checkpoint_key(name: str | None, keys: list[str], where: str) -> str:
    """The checkpoint key for parameter `name`, allowing a missing or extra prefix."""
    if name in keys:
        return name
    suffixes = [name] if name else COMMON_EMBEDDING_NAMES

    def matches(key: str, suffix: str) -> bool:
        return key.endswith("." + suffix) or suffix.endswith("." + key)

    for suffix in suffixes:
        found = sorted((k for k in keys if matches(k, suffix)), key=len)
        if found:
            return found[0]   # the shortest: `model.embed_tokens.weight` before `x.model.embed_...`
    shown = ", ".join(k for k in keys if "emb" in k or "wte" in k or "shared" in k) or ", ".join(keys[:8])
    raise DataError(f"{where}: the checkpoint has no input-embedding tensor "
                    f"({name or 'common names'} not among its keys: {shown}); "
                    f"set `tensor:` in the entry to the right key")


def read_tensor_rows(weights: Path, key: str) -> torch.Tensor:
    """Tensor `key` of one weights file as float32 (V, D), without reading anything else.

    safetensors: rows are converted chunk by chunk into one preallocated float32 table,
    reopening the file per chunk so that only one chunk of the memory-mapped source is resident
    at a time: the peak stays near the table itself, whatever the checkpoint's dtype.
    """
    if weights.suffix == ".bin":
        return _read_bin_tensor(weights, key)
    with safe_open(str(weights), framework="pt") as fh:
        shape = fh.get_slice(key).get_shape()
    if len(shape) != 2:
        raise DataError(f"{weights}: tensor {key} has shape {shape}, not (vocab, dim); set `tensor:`")
    table = torch.empty(shape, dtype=torch.float32)   # (V, D)
    for start in range(0, shape[0], ROWS_PER_CHUNK):
        with safe_open(str(weights), framework="pt") as fh:   # closing unmaps the chunk's pages
            table[start:start + ROWS_PER_CHUNK] = fh.get_slice(key)[start:start + ROWS_PER_CHUNK].float()
    return table


def _load_bin(weights: Path) -> dict:
    """A pytorch_model.bin state dict, memory-mapped when possible, never unpickling code."""
    try:
        return torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:   # legacy (non-zip) format cannot be memory-mapped
        return torch.load(weights, map_location="cpu", weights_only=True)


def _read_bin_tensor(weights: Path, key: str) -> torch.Tensor:
    state = _load_bin(weights)
    return state[key].to(torch.float32, copy=True)   # (V, D), detached from the mapping


def checkpoint_keys(weights: Path) -> list[str]:
    """All tensor names of one weights file (safetensors: reads only the header)."""
    if weights.suffix == ".bin":
        return list(_load_bin(weights))
    with safe_open(str(weights), framework="pt") as fh:
        return list(fh.keys())


def locate_weights(entry: LlmEntry) -> tuple[dict[str, str] | None, Path | None]:
    """(weight_map of the index, None) for a sharded checkpoint, else (None, the single file)."""
    for index_name, single_name in LAYOUTS:
        if index_name:
            index = download(entry, index_name, optional=True)
            if index is not None:
                return json.loads(index.read_text(encoding="utf-8"))["weight_map"], None
        else:
            single = download(entry, single_name, optional=True)
            if single is not None:
                return None, single
    raise DataError(f"{entry.where}: llms.{entry.name}: {entry.params['repo']}@{entry.params['revision']} "
                    f"has no model.safetensors(.index.json) or pytorch_model.bin(.index.json); "
                    f"pick a repo/revision with weights")


def extract_hf(entry: LlmEntry, tokenizer_dir: Path) -> Extracted:
    """The input-embedding table of a hub checkpoint; downloads config, index, one shard."""
    where = f"{entry.where}: llms.{entry.name} ({entry.params['repo']})"
    config = download(entry, "config.json")
    snapshot = config.parent            # .../snapshots/<commit>/: the hub cache layout
    weight_map, single = locate_weights(entry)
    keys = list(weight_map) if weight_map is not None else checkpoint_keys(single)
    name = entry.params.get("tensor")
    if name is not None and name not in keys:
        raise DataError(f"{where}: `tensor: {name}` is not a key of the checkpoint; "
                        f"fix it or remove it to derive the name from config.json")
    key = name or match_checkpoint_key(embedding_param_name(snapshot), keys, where)
    weights = download(entry, weight_map[key]) if weight_map is not None else single
    table = read_tensor_rows(weights, key)
    tokenizer = save_hub_tokenizer(entry, snapshot, tokenizer_dir)
    identity = {"repo": entry.params["repo"], "revision": entry.params["revision"],
                "commit": snapshot.name, "file": weights.name, "tensor": key}
    return Extracted(table, identity, None, tokenizer)


def save_hub_tokenizer(entry: LlmEntry, snapshot: Path, tokenizer_dir: Path) -> str | None:
    """Download the repo's tokenizer files and save them loadable by AutoTokenizer; None if none."""
    from transformers import AutoTokenizer

    got = [f for f in TOKENIZER_FILES if download(entry, f, optional=True) is not None]
    if not got:
        log.warning("llms.%s: %s has no tokenizer files; token ids will be shown as numbers",
                    entry.name, entry.params["repo"])
        return None
    try:
        tok = AutoTokenizer.from_pretrained(str(snapshot), trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as exc:
        log.warning("llms.%s: tokenizer of %s not loadable (%s); token ids will be shown as numbers",
                    entry.name, entry.params["repo"], exc)
        return None
    tok.save_pretrained(str(tokenizer_dir))
    return f"{entry.params['repo']}@{snapshot.name} ({', '.join(got)})"
