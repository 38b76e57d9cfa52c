"""One study variant end to end, in the workflow's layout: the one home of two-round training.

A one-round variant is one run in RUN. A consensus variant (mltfr.spec.round_plan.needs_round2) is
round 1 (RUN/round1), the merge of its experts (mltfr.train.merge, into
RUN/round1/consensus.safetensors) and round 2 (RUN, reading the merged expert): the same library
calls the workflow's rules train_round1 / fisher / train make through `mltfr train` and
`mltfr fisher`. A step whose output exists is skipped, so an interrupted call resumes where it
stopped (each round also resumes its checkpoint).
"""
from __future__ import annotations

import json
from pathlib import Path

from mltfr.spec.round_plan import CONSENSUS_FILE, ROUND1, needs_round2
from mltfr.spec.run_config import RunConfig, apply_overrides
from mltfr.train.result import RESULT


def train_variant(run_dir: str | Path, cfg: RunConfig, data: str | Path,
                  llm_tables: dict[str, Path] | None = None) -> dict:
    """Train `cfg.variant` into `run_dir` from the prepared dataset `data` and the token tables
    `llm_tables` (name -> folder); its result.json document (round 2's for a consensus variant)."""
    run_dir = Path(run_dir)
    if not needs_round2(cfg.variant):
        return train_round(run_dir, cfg, data, llm_tables)
    round1 = run_dir / ROUND1
    train_round(round1, cfg, data, llm_tables)
    merged = round1 / CONSENSUS_FILE
    if not merged.exists():
        from mltfr.train.merge import merge_round1_run

        merge_round1_run(round1, merged)
    return train_round(run_dir, apply_overrides(cfg, {"consensus_file": str(merged)}), data, llm_tables)


def train_round(out: Path, cfg: RunConfig, data: str | Path, llm_tables: dict[str, Path] | None) -> dict:
    """One round into `out` unless `out` already holds its result; the result document."""
    result = out / RESULT
    if not result.exists():
        from mltfr.train.run import train_files

        train_files(data, out, cfg, llm_tables)
    return json.loads(result.read_text(encoding="utf-8"))
