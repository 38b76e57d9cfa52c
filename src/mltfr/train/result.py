"""The result documents of a run: built, validated against their schema and written here only.

result.json (`mltfr train`, the analysis reads it) and the re-evaluation file of `mltfr evaluate`
(RUN_DIR/eval-<protocol>.json) are both described by src/mltfr/schemas/result.schema.yaml (the
second as its `$defs/evaluation`). A document that does not validate is a bug in the writer and is
never written; a new key needs its entry (with a description) in the schema first.
"""
from __future__ import annotations

import dataclasses
import json
import resource
import time
from pathlib import Path

import jsonschema
import numpy as np
import torch

from mltfr.config_files import load_schema
from mltfr.errors import MltfrError
from mltfr.evaluate import FULL_LABEL, SAMPLED_LABEL, metrics_from_ranks
from mltfr.io import atomic_write_json, code_version
from mltfr.spec.run_config import RunConfig

RESULT = "result.json"
SCHEMA = "result"   # src/mltfr/schemas/result.schema.yaml


def build_result(trainer, ranks: dict[str, np.ndarray], test_seconds: float, dataset_meta: dict,
                 inputs: dict, llm_tables: dict, rung: dict | None = None) -> dict:
    """The result.json document: metrics per set, how they were selected, provenance and, with an
    LLM branch, interpretability and the filter diagnostics. Validated before it is returned."""
    s, cfg = trainer.state, trainer.cfg
    doc = {
        **evaluation_fields(cfg, ranks),
        "n_users": {which: int(len(r)) for which, r in ranks.items()},
        "best_epoch": s.best_epoch,
        "best_selection_score": {f"{cfg.selects_on}_{key}": value for key, value in s.best_scores.items()},
        "epochs_run": s.epoch,
        "epoch_budget": cfg.max_epochs,   # train.epochs, or the protocol's default when unset
        "n_items": trainer.split.n_items,
        "round1_budget": cfg.round1_length, "fisher_shuffle": cfg.shuffles_fisher,   # resolved by protocol
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
        "inputs": inputs,
        "rung": rung,   # a protocol-ladder run's rung (mltfr.spec.rungs), else null
    }
    if trainer.model.branch is not None:
        doc["interp"] = interpretability(trainer, llm_tables)
        doc.update(branch_diagnostics(trainer, llm_tables))
    return validated(doc)


def evaluation_document(cfg: RunConfig, ranks: dict[str, np.ndarray], state, checkpoint: Path) -> dict:
    """What `mltfr evaluate` writes: a checkpoint's best state re-evaluated (schema $defs/evaluation)."""
    doc = {**evaluation_fields(cfg, ranks), "best_epoch": state.best_epoch, "epochs_run": state.epoch,
           "finished": state.finished, "checkpoint": str(checkpoint), "code_version": code_version()}
    return validated(doc, "evaluation")


def evaluation_fields(cfg: RunConfig, ranks: dict[str, np.ndarray]) -> dict:
    """The keys both documents share: metrics per set and the protocol that produced them."""
    label = SAMPLED_LABEL.format(n=cfg.sampled_negatives) if cfg.sampled_negatives else FULL_LABEL
    return {"metrics": {which: metrics_from_ranks(r) for which, r in ranks.items()},
            "eval_protocol": label,
            "mask_history": cfg.masks_history if not cfg.sampled_negatives else None,
            "select_on": cfg.selects_on, "holdout_valid": cfg.holds_out_valid,   # resolved by protocol
            "train_vocab": cfg.uses_train_vocab, "selection": cfg.selection}


def validated(doc: dict, definition: str | None = None) -> dict:
    """`doc` when it matches the schema (or its `$defs/<definition>`); else MltfrError naming the key."""
    schema = load_schema(SCHEMA)
    if definition is not None:
        schema = {"$ref": f"#/$defs/{definition}", "$defs": schema["$defs"]}
    err = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if err is not None:
        key = ".".join(map(str, err.absolute_path)) or "(top level)"
        raise MltfrError(f"the {definition or 'result'} document does not match {SCHEMA}.schema.yaml at "
                         f"{key}: {err.message[:300]}; fix the writer (mltfr.train.result) or the schema")
    return doc


def write_result(run_dir: Path, doc: dict) -> None:
    """RUN_DIR/result.json, atomically; written last, it marks the run complete."""
    atomic_write_json(run_dir / RESULT, doc)


def interpretability(trainer, llm_tables: dict) -> dict:
    """Router mean weight per LLM and the most selected tokens (as strings) on the test set.

    One extra test pass with the best state, so the counts come from that state alone."""
    from mltfr.llm import token_strings
    from mltfr.train.loop import evaluate_ranks

    with trainer.model.branch.recording() as branch:
        evaluate_ranks(trainer.model, trainer.split.test, trainer.cfg, trainer.device)
    stats = branch.interp_stats()
    tokens = {}
    for name, pairs in stats["top_tokens"].items():
        strings = token_strings(llm_tables[name], [i for i, _ in pairs]) if name in llm_tables else []
        tokens[name] = [[s, c, i] for s, (i, c) in zip(strings or [str(i) for i, _ in pairs], pairs)]
    return {"router_weights": stats["router_weight"], "top_tokens": tokens,
            "n_positions": stats["n_positions"], "token_format": "[string, count, token id]"}


def branch_diagnostics(trainer, llm_tables: dict) -> dict:
    """The filter diagnostics of the last training epoch (mltfr.models.diagnostics), with each
    table's drift: the reported (best) state's table against the table it started from (the
    cached LLM table, or the random one a reinitialised branch drew)."""
    from mltfr.llm import load_table
    from mltfr.models.diagnostics import table_drift

    branch = trainer.model.branch
    start = (branch.initial_table if branch.table_seed is not None
             else lambda m: load_table(llm_tables[branch.names[m]])[0])
    drift = {name: table_drift(branch.table(m), start(m))
             for m, name in enumerate(branch.names) if name in llm_tables}
    return trainer.diagnostics.summary(drift)


def branch_settings(model) -> dict | None:
    """Every setting the LLM branch ran with (variant and defaults resolved; config.branch holds
    only the overrides), so a run's K, tau or lambda_s can be read without the code; None = base."""
    branch = getattr(model, "branch", None)
    return dataclasses.asdict(branch.cfg) if branch is not None else None


def dataset_provenance(meta: dict) -> dict:
    """Name and checksums of the prepared dataset (and of the raw files it came from)."""
    return {"name": meta.get("dataset"), "prepared_sha256": meta.get("prepared_sha256"),
            "raw_sha256": [r.get("sha256") for r in meta.get("raw_files", [])]}


def timings(trainer, ranks: dict[str, np.ndarray], test_seconds: float) -> dict:
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


def recorded_inputs(run_dir: Path) -> dict:
    """The data/LLM folders a run recorded in its result.json ({} when there is none)."""
    path = Path(run_dir) / RESULT
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("inputs", {})
    except ValueError as exc:
        raise MltfrError(f"{path} is not valid JSON ({exc}); rerun `mltfr train` or pass --data") from None
