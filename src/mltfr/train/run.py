"""One run end to end: seed, build, train (resumable), final test evaluation, result files.

Outputs in the run folder (all atomic): checkpoint.pt and epochs.csv (during training),
ranks.npz (per-user ranks for paired tests) and result.json (metrics, selection rule, config,
seed, protocol, code version, dataset checksums, timings, peak memory, parameter count; with an
LLM branch also interp and the filter diagnostics of mltfr.models.diagnostics).
"""
from __future__ import annotations

import dataclasses
import resource
import time
from pathlib import Path

import numpy as np
import torch

from mltfr.data import make_split
from mltfr.errors import ConfigError, MltfrError
from mltfr.evaluate import FULL_LABEL, SAMPLED_LABEL, metrics_from_ranks
from mltfr.io import atomic_path, atomic_write_json, code_version
from mltfr.models import build_backbone
from mltfr.train.branch import attach_branch
from mltfr.train.checkpoint import load_checkpoint, reporting_write_errors
from mltfr.train.config import RunConfig
from mltfr.train.loop import CHECKPOINT, Trainer, evaluate_ranks
from mltfr.train.seed import seed_everything

RESULT = "result.json"
RANKS = "ranks.npz"


def resolve_device(name: str) -> torch.device:
    """auto = CUDA when available, else CPU; asking for CUDA without one is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device auto or cpu")
    return torch.device(name)


def split_for_run(prepared, cfg: RunConfig):
    """The leave-one-out split `cfg` trains and evaluates on: the validation item held out of
    training by `holds_out_valid`; a validation set whenever it is held out or selected on."""
    return make_split(prepared, cfg.protocol, cfg.model.max_len, holdout_valid=cfg.holds_out_valid,
                      with_valid=cfg.holds_out_valid or cfg.selects_on == "valid")


def build_trainer(split, cfg: RunConfig, run_dir: Path, llm_tables: dict | None = None) -> Trainer:
    """Seed everything, then build the model (its init draws from the seeded RNG) and trainer."""
    device = resolve_device(cfg.device)
    gens = seed_everything(cfg.seed, device)
    model = build_model(cfg, split.n_items, device, llm_tables)
    if not cfg.trains:  # pop: counted from this run's training split instead of trained
        model.count(torch.from_numpy(split.train_items).to(device))
    return Trainer(model, split, cfg, run_dir, gens, device)


def build_model(cfg: RunConfig, n_items: int, device: torch.device, llm_tables: dict | None = None):
    """The backbone of `cfg` with its variant's branch, on `device` (seed the RNG first)."""
    model = build_backbone(cfg.backbone, n_items, cfg.model)
    attach_branch(model, cfg, llm_tables or {})
    return model.to(device)


def train_and_evaluate(split, cfg: RunConfig, run_dir: str | Path, dataset_meta: dict,
                       llm_tables: dict | None = None, resume: bool = True,
                       stop_after_epoch: int | None = None, inputs: dict | None = None,
                       rung: dict | None = None) -> dict | None:
    """Train (resuming a matching checkpoint), evaluate the test set once, write the results.

    `inputs` (the data and LLM folders, as given) is recorded so `mltfr evaluate` can rebuild the run;
    `rung` (mltfr.study.ladder.Rung.record) names a protocol-ladder run's rung (None otherwise).
    Returns the result dict, or None when `stop_after_epoch` (a test hook) stopped training."""
    run_dir = Path(run_dir)
    trainer = build_trainer(split, cfg, run_dir, llm_tables)
    if resume:
        trainer.resume()
    state = trainer.fit(stop_after_epoch)
    if not state.finished:
        return None
    ranks, seconds = final_ranks(trainer)
    result = build_result(trainer, ranks, seconds, dataset_meta)
    result["inputs"] = inputs or {}
    result["rung"] = rung
    if trainer.model.branch is not None:
        result["interp"] = interpretability(trainer, llm_tables or {})
        result.update(diagnostics(trainer, llm_tables or {}))
    with reporting_write_errors(run_dir / RANKS):
        write_ranks(run_dir / RANKS, split, ranks, result["eval_protocol"], result["selection"])
    with reporting_write_errors(run_dir / RESULT):  # written last: it marks the run complete
        atomic_write_json(run_dir / RESULT, result)
    return result


def final_ranks(trainer: Trainer) -> tuple[dict[str, np.ndarray], float]:
    """Per-user ranks of the best state: ({"test": ..., ["valid": ...]}, test evaluation seconds).

    select_on valid: the test set is evaluated here, once, with the best-on-valid state.
    select_on test: the test ranks of the best-on-test epoch were kept during training."""
    s, cfg = trainer.state, trainer.cfg
    trainer.model.load_state_dict(s.best_state)
    ranks = {k: v.numpy() for k, v in s.best_ranks.items()}
    if cfg.selects_on == "test":
        n_evals = sum("test_mrr" in row for row in s.history)
        return ranks, s.eval_seconds / max(n_evals, 1)
    ranks["test"], seconds = evaluate_ranks(trainer.model, trainer.split.test, cfg, trainer.device)
    return ranks, seconds


def interpretability(trainer: Trainer, llm_tables: dict) -> dict:
    """Router mean weight per LLM and the most selected tokens (as strings) on the test set.

    One extra test pass with the best state, so the counts come from that state alone."""
    from mltfr.llm import token_strings

    branch = trainer.model.branch
    branch.reset_interp()
    evaluate_ranks(trainer.model, trainer.split.test, trainer.cfg, trainer.device)
    stats = branch.interp_stats()
    tokens = {}
    for name, pairs in stats["top_tokens"].items():
        strings = token_strings(llm_tables[name], [i for i, _ in pairs]) if name in llm_tables else []
        tokens[name] = [[s, c, i] for s, (i, c) in zip(strings or [str(i) for i, _ in pairs], pairs)]
    return {"router_weights": stats["router_weight"], "top_tokens": tokens,
            "n_positions": stats["n_positions"], "token_format": "[string, count, token id]"}


def diagnostics(trainer: Trainer, llm_tables: dict) -> dict:
    """The filter diagnostics of the last training epoch (mltfr.models.diagnostics), with each
    table's drift: the reported (best) state's table against the cached table it started from."""
    from mltfr.llm import load_table
    from mltfr.models.diagnostics import table_drift

    branch = trainer.model.branch
    drift = {name: table_drift(branch.table(m), load_table(llm_tables[name])[0])
             for m, name in enumerate(branch.names) if name in llm_tables}
    return trainer.diagnostics.summary(drift)


def write_ranks(path: Path, split, ranks: dict[str, np.ndarray], eval_protocol: str, selection: str) -> None:
    """ranks.npz: test_users/test_ranks (and valid_users/valid_ranks) for paired tests, with
    the labels eval_protocol and selection as 0-d string arrays."""
    arrays = {"test_users": split.test.users, "test_ranks": ranks["test"],
              "eval_protocol": np.array(eval_protocol), "selection": np.array(selection)}
    if "valid" in ranks:
        arrays.update(valid_users=split.valid.users, valid_ranks=ranks["valid"])
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def build_result(trainer: Trainer, ranks: dict[str, np.ndarray], test_seconds: float,
                 dataset_meta: dict) -> dict:
    """The result.json document: metrics per set, how they were selected, and provenance."""
    s, cfg = trainer.state, trainer.cfg
    label = SAMPLED_LABEL.format(n=cfg.sampled_negatives) if cfg.sampled_negatives else FULL_LABEL
    return {
        "metrics": {which: metrics_from_ranks(r) for which, r in ranks.items()},
        "n_users": {which: int(len(r)) for which, r in ranks.items()},
        "eval_protocol": label,
        "mask_history": cfg.masks_history if not cfg.sampled_negatives else None,
        "select_on": cfg.selects_on, "holdout_valid": cfg.holds_out_valid,   # resolved by protocol
        "selection": cfg.selection,
        "best_epoch": s.best_epoch,
        "best_selection_score": {f"{cfg.selects_on}_{key}": value for key, value in s.best_scores.items()},
        "epochs_run": s.epoch,
        "epoch_budget": cfg.max_epochs,   # train.epochs, or the protocol's default when unset
        "early_stopped": cfg.trains and cfg.selects_on == "valid" and s.epoch < cfg.max_epochs,
        "backbone": cfg.backbone, "variant": cfg.variant, "protocol": cfg.protocol, "seed": cfg.seed,
        "config": cfg.to_dict(),
        "model": dataclasses.asdict(trainer.model.cfg),   # backbone settings, defaults resolved
        "branch": branch_settings(trainer.model),
        "code_version": code_version(),
        "dataset": dataset_provenance(dataset_meta),
        "timings": timings(trainer, ranks, test_seconds),
        "peak_memory_mb": peak_memory_mb(trainer.device),
        "n_parameters": sum(p.numel() for p in trainer.model.parameters()),
        "device": str(trainer.device), "torch_version": torch.__version__,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def branch_settings(model) -> dict | None:
    """Every setting the LLM branch ran with (variant and defaults resolved; config.branch holds
    only the overrides), so a run's K, tau or lambda_s can be read without the code; None = base."""
    branch = getattr(model, "branch", None)
    return dataclasses.asdict(branch.cfg) if branch is not None else None


def dataset_provenance(meta: dict) -> dict:
    """Name and checksums of the prepared dataset (and of the raw files it came from)."""
    return {"name": meta.get("dataset"), "prepared_sha256": meta.get("prepared_sha256"),
            "raw_sha256": [r.get("sha256") for r in meta.get("raw_files", [])]}


def timings(trainer: Trainer, ranks: dict[str, np.ndarray], test_seconds: float) -> dict:
    s = trainer.state
    per_epoch = [row["seconds"] for row in s.history]
    return {
        "train_s": round(s.train_seconds, 3),
        "eval_during_training_s": round(s.eval_seconds, 3),
        "test_eval_s": round(test_seconds, 3),
        "per_epoch_s": per_epoch,
        "sequences_per_s": round(len(trainer.windows) * s.epoch / max(s.train_seconds, 1e-9), 1),
        "users_per_s": round(len(ranks["test"]) / max(test_seconds, 1e-9), 1),
    }


def peak_memory_mb(device: torch.device) -> dict:
    """Peak resident memory of the process (and peak CUDA allocation on a GPU), in MiB."""
    out = {"host_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.type == "cuda":
        out["cuda_allocated"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return out


def evaluate_checkpoint(run_dir: str | Path, split, cfg: RunConfig, llm_tables: dict | None = None) -> dict:
    """Re-evaluate the best state stored in RUN_DIR/checkpoint.pt on the split's eval sets.

    `cfg` is the checkpoint's config, possibly with another device or sampled_negatives."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise MltfrError(f"{path} does not exist; train the run first (mltfr train --out {run_dir})")
    state = load_checkpoint(path)["state"]
    if state.best_state is None:
        raise MltfrError(f"{path} holds no evaluated state yet (stopped before its first evaluation); "
                         "resume training first")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed, device)
    model = build_model(cfg, split.n_items, device, llm_tables)
    model.load_state_dict(state.best_state)
    sets = {"valid": split.valid, "test": split.test}
    ranks = {k: evaluate_ranks(model, v, cfg, device)[0] for k, v in sets.items() if v is not None}
    label = SAMPLED_LABEL.format(n=cfg.sampled_negatives) if cfg.sampled_negatives else FULL_LABEL
    return {"metrics": {k: metrics_from_ranks(r) for k, r in ranks.items()}, "eval_protocol": label,
            "mask_history": cfg.masks_history if not cfg.sampled_negatives else None,
            "best_epoch": state.best_epoch, "epochs_run": state.epoch, "finished": state.finished,
            "selection": cfg.selection, "checkpoint": str(path), "code_version": code_version()}
