"""Random token tables: the control for "does LLM knowledge matter at all?".

A Gaussian table drawn from a seed and rescaled so that its mean and standard deviation over
all entries are exactly those of a named LLM's table (or given ones, for a bare `shape`).
Same entry name and seed, same table, on any machine (torch's CPU generator).

The generator's seed mixes the registry entry's name with its `seed` (`draw_seed`): two random
entries are always two independent draws, even with the same seed. Without it, two controls of
the same shape and seed would be one Gaussian draw rescaled twice, i.e. perfectly correlated.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import torch

from mltfr.llm.cache import TOKENIZER_DIR, Extracted, table_stats


def draw_seed(name: str, seed: int) -> int:
    """The generator seed of entry `name` with `seed`: 63 bits of sha256(name, seed)."""
    digest = hashlib.sha256(f"{name}\0{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def gaussian_table(shape: tuple[int, int], mean: float, std: float, seed: int) -> torch.Tensor:
    """A (V, D) float32 table from `seed` with exactly this mean and std (in place, one copy)."""
    generator = torch.Generator().manual_seed(seed)
    table = torch.randn(tuple(shape), generator=generator, dtype=torch.float32)   # (V, D)
    drawn_mean, drawn_std = table_stats(table)
    return table.sub_(drawn_mean).div_(drawn_std).mul_(std).add_(mean)


def extract_random(name: str, params: dict, like_folder: Path | None, like_meta: dict | None,
                   tokenizer_dir: Path) -> Extracted:
    """The random table of the `source: random` entry `name`; with `like`, shape/mean/std come
    from that LLM's cached meta and its tokenizer is copied (row i keeps token i's string)."""
    seed = draw_seed(name, params["seed"])
    if like_meta is None:
        shape, mean, std = params["shape"], params["mean"], params["std"]
        tokenizer = None
    else:
        shape = (like_meta["vocab_size"], like_meta["dim"])
        mean, std = like_meta["stats"]["mean"], like_meta["stats"]["std"]
        tokenizer = _copy_tokenizer(like_folder, params["like"], tokenizer_dir)
    table = gaussian_table(shape, mean, std, seed)
    identity = {"seed": params["seed"], "draw_seed": seed, "shape": list(shape), "mean": mean, "std": std}
    if like_meta is not None:
        identity.update(like=params["like"], like_sha256=like_meta["sha256"])
    return Extracted(table, identity, None, tokenizer)


def _copy_tokenizer(like_folder: Path, like: str, tokenizer_dir: Path) -> str | None:
    source = like_folder / TOKENIZER_DIR
    if not source.is_dir():
        return None
    shutil.copytree(source, tokenizer_dir, dirs_exist_ok=True)
    return f"copied from {like} (a random table: the rows carry no meaning of the tokens)"
