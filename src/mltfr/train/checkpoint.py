"""`checkpoint.pt`: everything needed to continue a run exactly where it stopped.

Contents: format version, the RunConfig (as a dict), model and optimizer states, every RNG
state, and the trainer's bookkeeping (`TrainState`: epoch, step inside a preempted epoch and
that epoch's order, best score/epoch/state/ranks, patience counter, epoch history, timings).
Only tensors and plain Python types are stored, so it loads with `weights_only=True`.
A finished run's checkpoint keeps no optimizer state, and no last-epoch model when it selected
on validation (Trainer.save says why): a 2-LLM MLTFR run's shrinks from 377 MB to 94 MB (189 MB
when it selected on test).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mltfr.errors import ConfigError, DataError
from mltfr.io import atomic_path

FORMAT = 1  # bump when the layout below changes; older checkpoints are then refused
# config keys that may differ between the run and its resume (diagnostics draw no random numbers)
IGNORED_ON_RESUME = ("device", "diagnostics_every")


@dataclass
class TrainState:
    """The trainer's bookkeeping; every field survives a checkpoint round trip."""

    epoch: int = 0  # completed epochs
    step: int = 0  # steps done in the unfinished epoch (> 0 only after a preemption)
    order: torch.Tensor | None = None  # that epoch's window order (None at an epoch boundary)
    loss_sum: float = 0.0  # that epoch's summed step losses so far
    epoch_seconds: float = 0.0  # that epoch's training seconds so far
    best_score: float = -math.inf  # metric_for_selection at the best epoch (valid: corrected, test: faithful)
    best_scores: dict = field(default_factory=dict)  # the metrics the selection compares, at the best epoch
    best_epoch: int = 0  # the epoch that reached it
    best_state: dict | None = None  # model state_dict (CPU) at the best epoch
    best_ranks: dict = field(default_factory=dict)  # {"valid"|"test": (n,) int64 tensor} at the best epoch
    bad_evals: int = 0  # evaluations since the last improvement (early-stopping patience counter)
    history: list = field(default_factory=list)  # one dict per epoch: the rows of epochs.csv
    finished: bool = False  # training is over (budget spent or early-stopped)
    train_seconds: float = 0.0  # total training time over all (resumed) sessions
    eval_seconds: float = 0.0  # total evaluation time during training


def save_checkpoint(path: Path, cfg_dict: dict, model, optimizer, rng: dict, state: TrainState) -> None:
    """Write the checkpoint atomically: a kill during the write leaves the previous one intact."""
    payload = {"format": FORMAT, "config": cfg_dict,
               "model": model.state_dict() if model is not None else None,  # None: not kept (finished)
               "optimizer": optimizer.state_dict() if optimizer is not None else None,  # None: pop, finished
               "rng": rng, "state": dataclasses.asdict(state)}
    # torch.save reports a full disk as a RuntimeError of its zip writer
    with atomic_path(path, RuntimeError) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint (CPU tensors); a damaged or foreign file raises DataError."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a damaged file
        first_line = (str(exc).strip().splitlines() or [""])[0][:160]
        raise DataError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {first_line}); "
                        f"delete it (or its run folder) to start the run afresh") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise DataError(f"checkpoint {path} is not a format-{FORMAT} mltfr checkpoint; "
                        "delete its run folder to start the run afresh")
    payload["state"] = TrainState(**payload["state"])
    return payload


def check_same_config(path: Path, saved: dict, current: dict) -> None:
    """Refuse to resume a run under a different config: the result would mix two settings."""
    keys = sorted(k for k in set(saved) | set(current)
                  if k not in IGNORED_ON_RESUME and saved.get(k) != current.get(k))
    if keys:
        diff = "; ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in keys)
        raise ConfigError(f"checkpoint {path} was written with a different config ({diff}); "
                          f"delete the run folder {path.parent} to start afresh, or rerun with the old settings")
