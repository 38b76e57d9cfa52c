"""One seed fixes every random number of a run; RNG states travel in the checkpoint.

Two generators besides the global ones: `shuffle` (CPU) orders the training windows each
epoch, `sample` (on the training device) draws negatives and masks inside `model.loss`.
Dropout uses the global torch RNG (CPU or CUDA), which `rng_state` saves as well.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Generators:
    shuffle: torch.Generator  # CPU: the per-epoch permutation of training windows
    sample: torch.Generator   # on the training device: the model's negative sampling


def seed_everything(seed: int, device: torch.device) -> Generators:
    """Seed python, numpy and torch (CPU and CUDA) and return the run's two generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    shuffle = torch.Generator(device="cpu").manual_seed(seed)
    sample = torch.Generator(device=device).manual_seed(seed + 1)  # distinct stream from shuffle
    return Generators(shuffle, sample)


def rng_state(gens: Generators) -> dict:
    """Every RNG state of the process, as tensors and plain types (loadable with weights_only)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "shuffle": gens.shuffle.get_state(),
        "sample": gens.sample.get_state(),
    }


def set_rng_state(state: dict, gens: Generators) -> None:
    """Restore what `rng_state` saved, so a resumed run draws the same numbers."""
    random.setstate(_as_tuple(state["python"]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gens.shuffle.set_state(state["shuffle"])
    gens.sample.set_state(state["sample"])


def _as_tuple(x):
    """random.setstate needs tuples; a checkpoint round trip may hand back lists."""
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x
