"""One run end to end: seed, build, train (resumable), final test evaluation, result files.

Outputs in the run folder (all atomic): checkpoint.pt and epochs.csv (during training),
ranks.npz (per-user ranks for paired tests) and result.json (built and validated by
mltfr.train.result; its schema: src/mltfr/schemas/result.schema.yaml).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mltfr.data import make_split
from mltfr.errors import ConfigError, MltfrError
from mltfr.io import atomic_path
from mltfr.models import build_backbone
from mltfr.spec.run_config import RunConfig
from mltfr.train.attach_branch import attach_branch
from mltfr.train.checkpoint import load_checkpoint
from mltfr.train.loop import CHECKPOINT, Trainer, evaluate_ranks
from mltfr.train.result import build_result, evaluation_document, write_result
from mltfr.train.seed import seed_everything

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
    training by `holds_out_valid`; a validation set whenever it is held out or selected on; only
    the training split's items numbered by `uses_train_vocab`."""
    return make_split(prepared, cfg.protocol, cfg.model.max_len, holdout_valid=cfg.holds_out_valid,
                      with_valid=cfg.holds_out_valid or cfg.selects_on == "valid",
                      train_vocab=cfg.uses_train_vocab)


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
    model = build_backbone(cfg.backbone, n_items, cfg.resolved_model)   # model.impl resolved
    attach_branch(model, cfg, llm_tables or {})
    return model.to(device)


def train_and_evaluate(split, cfg: RunConfig, run_dir: str | Path, dataset_meta: dict,
                       llm_tables: dict | None = None, resume: bool = True,
                       stop_after_epoch: int | None = None, inputs: dict | None = None,
                       rung: dict | None = None, spec: dict | None = None) -> dict | None:
    """Train (resuming a matching checkpoint), evaluate the test set once, write the results.

    `inputs` (the data and LLM folders, as given) is recorded so `mltfr evaluate` can rebuild the run;
    `rung` (mltfr.spec.rungs.Rung.record) names a protocol-ladder run's rung (None otherwise);
    `spec` (mltfr.spec.run_spec.RunSpec.to_dict), the run as asked for, is echoed.
    Returns the result dict, or None when `stop_after_epoch` (a test hook) stopped training."""
    run_dir = Path(run_dir)
    trainer = build_trainer(split, cfg, run_dir, llm_tables)
    if resume:
        trainer.resume()
    state = trainer.fit(stop_after_epoch)
    if not state.finished:
        return None
    ranks, seconds = final_ranks(trainer)
    result = build_result(trainer, ranks, seconds, dataset_meta, inputs or {}, llm_tables or {}, rung)
    if spec is not None:
        result["spec"] = spec
    write_ranks(run_dir / RANKS, split, ranks, result["eval_protocol"], result["selection"])
    write_result(run_dir, result)   # last: it marks the run complete
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


def write_ranks(path: Path, split, ranks: dict[str, np.ndarray], eval_protocol: str, selection: str) -> None:
    """ranks.npz: test_users/test_ranks (and valid_users/valid_ranks) for paired tests, with
    the labels eval_protocol and selection as 0-d string arrays."""
    arrays = {"test_users": split.test.users, "test_ranks": ranks["test"],
              "eval_protocol": np.array(eval_protocol), "selection": np.array(selection)}
    if "valid" in ranks:
        arrays.update(valid_users=split.valid.users, valid_ranks=ranks["valid"])
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


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
    return evaluation_document(cfg, ranks, state, path)


def train_files(data: str | Path, out: str | Path, cfg: RunConfig, llm_tables: dict[str, Path] | None = None,
                tuned: dict | None = None, rung: dict | None = None, resume: bool = True,
                spec: dict | None = None) -> dict:
    """One run from files: the prepared dataset folder `data` and the token-table folders
    `llm_tables` (name -> folder), trained and evaluated into `out`; its result.json document.
    `tuned` ({"file", "settings"}), `rung` (Rung.record) and `spec` (the run's RunSpec) are recorded
    in result.json."""
    from mltfr.data import load_prepared
    from mltfr.llm.cache import read_meta
    from mltfr.llm.planted import check_planted_tables

    llm_tables = dict(llm_tables or {})
    prepared = load_prepared(data)
    check_planted_tables({name: read_meta(folder) for name, folder in llm_tables.items()}, prepared.meta)
    inputs = {"data": str(data), "llm": {k: str(v) for k, v in llm_tables.items()}}
    if tuned:
        inputs["tuned"] = tuned
    return train_and_evaluate(split_for_run(prepared, cfg), cfg, out, prepared.meta, llm_tables=llm_tables,
                              resume=resume, inputs=inputs, rung=rung, spec=spec)
