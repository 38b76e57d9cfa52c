"""The reference check: this study's corrected `base` runs beside published full-ranking numbers.

A reader should see that the backbone is a credible one before reading any comparison built on it.
The published numbers are declared in the study config (`study.references`: value, source, and how
the source's setting differs from ours); the workflow passes them to `mltfr findings --references`
as JSON. Ours are the mean over the seeds of runs.csv (test split, full ranking, history masked).
"""
from __future__ import annotations

import json

import pandas as pd

from mltfr.analysis.demonstration import MIN_SEEDS
from mltfr.errors import ConfigError

METRICS = ("ndcg@10", "hr@10")
REQUIRED = ("dataset", "backbone", "source", "setting")


def parse_references(text: str | None) -> list[dict]:
    """The `--references` JSON list (study.references, schema-checked by the workflow), re-checked
    here for the keys the section reads, so a hand-written argument fails with a clear message."""
    if not text:
        return []
    try:
        entries = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--references is not valid JSON ({exc.msg}); pass study.references as a JSON list") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConfigError("--references must be a JSON list of objects (study.references)")
    for i, entry in enumerate(entries):
        missing = [k for k in REQUIRED if not entry.get(k)]
        if missing or not any(m in entry for m in METRICS):
            raise ConfigError(f"--references entry {i} lacks {missing or 'a metric'}; each names dataset, "
                              f"backbone, source, setting and at least one of {', '.join(METRICS)}")
    return entries


def ours(runs: pd.DataFrame, dataset: str, backbone: str) -> tuple[dict, int]:
    """Mean test metrics of the corrected base runs of one (dataset, backbone), and their seeds."""
    if runs.empty:
        return {}, 0
    cell = runs[(runs["dataset"] == dataset) & (runs["backbone"] == backbone)
                & (runs["variant"] == "base") & (runs["protocol"] == "corrected")]
    return {m: cell[f"test_{m}"].mean() for m in METRICS}, cell["seed"].nunique()


def cell(value) -> str:
    return "-" if value is None or pd.isna(value) else f"{value:.4f}"


def reference_row(runs: pd.DataFrame, ref: dict) -> tuple[str, str | None]:
    """One table row, and the sentence on its NDCG@10 ratio (None when ours has not run)."""
    mine, seeds = ours(runs, ref["dataset"], ref["backbone"])
    name = ref.get("name", ref["backbone"])
    row = (f"| {ref['dataset']} | {ref['backbone']} | {cell(mine.get('ndcg@10'))} | {cell(mine.get('hr@10'))} | "
           f"{seeds} | {name} | {cell(ref.get('ndcg@10'))} | {cell(ref.get('hr@10'))} | {ref['source']} | "
           f"{ref['setting']} |")
    metric = "ndcg@10" if "ndcg@10" in ref else "hr@10"
    if not seeds or pd.isna(mine.get(metric)):
        return row, None
    label = "" if seeds >= MIN_SEEDS else f" (demonstration: {seeds} seed{'s' * (seeds > 1)}, fewer than {MIN_SEEDS})"
    return row, (f"- {ref['dataset']} {ref['backbone']}: ours reaches {mine[metric] / ref[metric]:.0%} of "
                 f"{name}'s published {metric.upper()}{label}.")


def reference_check(runs: pd.DataFrame, references: list[dict]) -> str:
    """The findings section (empty when the study declares no reference)."""
    if not references:
        return ""
    rows = [reference_row(runs, ref) for ref in references]
    sentences = [s for _, s in rows if s] or ["- None of these cells has a corrected base run yet."]
    return ("## Reference check\n\nIs the backbone a credible one? This study's corrected `base` runs "
            "(mean over seeds; test split, full ranking, history items masked) beside published full-ranking "
            "numbers on the same data (`study.references`):\n\n"
            "| dataset | backbone | ours NDCG@10 | ours HR@10 | seeds | published | NDCG@10 | HR@10 | source | "
            "their setting, against ours |\n|---|---|---|---|---|---|---|---|---|---|\n"
            + "\n".join(row for row, _ in rows) + "\n\n" + "\n".join(sentences) + "\n")
