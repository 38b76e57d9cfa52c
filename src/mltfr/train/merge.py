"""The step between the two rounds of a consensus variant: round 1's experts merged into one.

Loads round 1's state (by the run's selection, see `round1_state`), runs one pass over the
training batches (in user order, or in an order shuffled by the run's seed under `fisher_shuffle`;
every random draw from the run's seed) with dropout off to get the diagonal empirical Fisher of
every expert parameter, merges the experts of the same-dimension group (Fisher-weighted, or plain
mean for `mltfr-meanconsensus`) and writes the merged expert round 2 reads. The metadata records
which state was used (`round1_state`, `round1_epoch`) and the batch order (`batch_order`).
"""
from __future__ import annotations

import time
from pathlib import Path

from mltfr.errors import MltfrError
from mltfr.train.result import recorded_inputs


def merge_round1_run(round1: str | Path, out: str | Path, device: str | None = None) -> dict:
    """Merge the experts of the finished round-1 run in `round1` into `out` (.safetensors); the
    merge's metadata. `device`: the run's when None."""
    import torch

    from mltfr.data import load_prepared
    from mltfr.models.fisher_merge import merge_round1, save_consensus
    from mltfr.spec.run_config import RunConfig, apply_overrides
    from mltfr.train import batching
    from mltfr.train.checkpoint import load_checkpoint
    from mltfr.train.run import build_model, resolve_device, split_for_run

    round1 = Path(round1)
    ckpt, inputs = round1 / "checkpoint.pt", recorded_inputs(round1)
    if not ckpt.exists() or not inputs:
        raise MltfrError(f"{round1} holds no finished round-1 run (checkpoint.pt and result.json); "
                         "run `mltfr train` for round 1 first")
    payload = load_checkpoint(ckpt)
    cfg = RunConfig.from_dict(payload["config"], where=f"{ckpt}: config")
    if device:
        cfg = apply_overrides(cfg, {"device": device})
    on = resolve_device(cfg.device)
    split = split_for_run(load_prepared(inputs["data"]), cfg)
    model = build_model(cfg, split.n_items, on, {k: Path(v) for k, v in inputs["llm"].items()})
    state_dict, meta_state = round1_state(payload, cfg.selects_on)
    model.load_state_dict(state_dict)
    windows = torch.from_numpy(batching.run_windows(split, cfg)).to(on)
    start = time.perf_counter()
    batches = batching.fisher_batches(windows, cfg.batch_size, cfg.seed if cfg.shuffles_fisher else None)
    state, meta = merge_round1(model, batches, seed=cfg.seed)
    meta.update(round1=str(round1), seconds=round(time.perf_counter() - start, 3), seed=cfg.seed,
                batch_order="shuffled" if cfg.shuffles_fisher else "users", **meta_state)
    save_consensus(out, state, meta)
    return meta


def round1_state(payload: dict, selects_on: str) -> tuple[dict, dict]:
    """(model state, its metadata) of the round-1 checkpoint the Fisher pass runs on.

    select_on test (faithful): the state after the last epoch (the checkpoint's `model`), as the
    authors compute the Fisher right after training with no selection; select_on valid
    (corrected): the best-on-validation state.
    """
    state = payload["state"]
    if selects_on == "test":
        return payload["model"], {"round1_state": "last-epoch", "round1_epoch": state.epoch}
    return state.best_state, {"round1_state": "best-on-valid", "round1_epoch": state.best_epoch}
