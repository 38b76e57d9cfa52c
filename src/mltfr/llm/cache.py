"""The cached token table of one LLM: results/llm/NAME/{table.safetensors, meta.json, tokenizer/}.

meta.json is written last and holds the table's sha256, so it is the commit marker: a table
without a matching meta.json (killed job, truncated or edited file) is never used.
"""
from __future__ import annotations

import functools
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from mltfr.errors import DataError
from mltfr.io import atomic_path, atomic_write_json, sha256_file

log = logging.getLogger("mltfr.llm")

TABLE_FILE = "table.safetensors"
META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
TENSOR_NAME = "weight"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def read_meta(folder: str | Path) -> dict | None:
    """meta.json of a cache folder, or None when absent or unreadable."""
    try:
        return json.loads((Path(folder) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def table_is_intact(folder: str | Path, meta: dict) -> bool:
    """Whether table.safetensors exists and its sha256 is the one recorded in meta.json."""
    path = Path(folder) / TABLE_FILE
    return path.is_file() and sha256_file(path) == meta.get("sha256")


def write_table(folder: Path, weight: torch.Tensor, dtype: str) -> str:
    """Atomically write the (V, D) table as tensor "weight"; return its sha256."""
    table = weight.to(DTYPES[dtype]).contiguous()   # (V, D); a no-op for fp32 input
    # safetensors reports a full disk as its own SafetensorError
    with atomic_path(folder / TABLE_FILE, SafetensorError) as tmp:
        save_file({TENSOR_NAME: table}, str(tmp))   # writes from the tensor's memory, no copy
    return sha256_file(folder / TABLE_FILE)


def install_tokenizer(folder: Path, staged: Path) -> None:
    """Replace folder/tokenizer by the staged one (or remove it when nothing was staged)."""
    target = folder / TOKENIZER_DIR
    shutil.rmtree(target, ignore_errors=True)
    if staged.is_dir() and any(staged.iterdir()):
        staged.rename(target)


def write_meta(folder: Path, meta: dict) -> None:
    atomic_write_json(folder / META_FILE, meta)


def load_table(folder: str | Path) -> tuple[torch.Tensor, dict]:
    """The cached table as float32 (V, D) and its meta; the file's sha256 is verified."""
    folder = Path(folder)
    meta = read_meta(folder)
    if meta is None:
        raise DataError(f"{folder / META_FILE}: missing or unreadable; build the table with "
                        f"`mltfr extract-llm --llm {folder.name} --out {folder}`")
    if not table_is_intact(folder, meta):
        raise DataError(f"{folder / TABLE_FILE}: missing, truncated or corrupted (sha256 differs from "
                        f"meta.json); rebuild it with `mltfr extract-llm --llm {folder.name} --out {folder}`")
    try:
        with safe_open(str(folder / TABLE_FILE), framework="pt") as fh:
            weight = fh.get_tensor(TENSOR_NAME).float()   # (V, D)
    except (SafetensorError, OSError) as exc:
        raise DataError(f"{folder / TABLE_FILE}: unreadable ({exc}); rebuild it with mltfr extract-llm") from None
    if list(weight.shape) != [meta["vocab_size"], meta["dim"]]:
        raise DataError(f"{folder / TABLE_FILE}: shape {list(weight.shape)} differs from meta.json "
                        f"({meta['vocab_size']} x {meta['dim']}); rebuild it with mltfr extract-llm")
    return weight, meta


@functools.lru_cache(maxsize=8)
def _tokenizer(folder: str):
    from transformers import AutoTokenizer  # heavy import, only when strings are asked for

    return AutoTokenizer.from_pretrained(folder)


def token_strings(folder: str | Path, ids) -> list[str]:
    """Readable strings of token ids (rows of the table); `<id N>` where no tokenizer covers N."""
    tok_dir = Path(folder) / TOKENIZER_DIR
    ids = [int(i) for i in ids]
    if not tok_dir.is_dir():     # e.g. a random table of a given shape: rows have no text
        return [f"<id {i}>" for i in ids]
    tok = _tokenizer(str(tok_dir.resolve()))
    return [tok.decode([i]) if 0 <= i < len(tok) else f"<id {i}>" for i in ids]


@dataclass
class Extracted:
    """What a source hands to the cache writer."""
    weight: torch.Tensor            # (V, D) float32
    identity: dict                  # where exactly the table came from (package==version, repo@commit)
    quantisation: str | None = None # e.g. "GGUF Q8_0, dequantised to float32"
    tokenizer: str | None = None    # where the tokenizer files came from (None: no tokenizer)


def table_stats(table: torch.Tensor, rows: int = 4096) -> tuple[float, float]:
    """(mean, std) of all entries in float64, chunk by chunk (no float64 copy of the table);
    a DataError if any entry is NaN or infinite."""
    total, count = 0.0, table.numel()
    for chunk in table.split(rows):                        # (<=rows, D)
        if not torch.isfinite(chunk).all():
            raise DataError("the extracted table has NaN or infinite entries; the source file is "
                            "corrupted or uses an unsupported quantisation")
        total += chunk.sum(dtype=torch.float64).item()
    mean, squares = total / count, 0.0
    for chunk in table.split(rows):
        squares += chunk.double().sub_(mean).pow_(2).sum().item()   # one (rows, D) float64 temp
    return mean, (squares / max(count - 1, 1)) ** 0.5
