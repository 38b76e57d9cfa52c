"""The `tuning` table: every point of the backbone's validation search and the choice made.

Read from the choice files of `mltfr tune choose` (mltfr.study.tuning), one per tuned (dataset,
backbone); written like every study table (CSV numbers, Markdown and LaTeX views).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from mltfr.analysis.tables import Table, empty_table
from mltfr.errors import DataError
from mltfr.spec.report_outputs import TUNING_TABLE as NAME

CAPTION = ("The backbone's validation search (mltfr.study.tuning): base under the corrected protocol, "
           "one seed, early-stopped on validation, at every point of the grid; the score is the "
           "validation {metric} at the selected epoch, and the chosen point (best score, ties to the "
           "earlier point) is the one every corrected run of its dataset and backbone trains with")


def read_choices(paths) -> list[dict]:
    choices = []
    for path in paths:
        try:
            choices.append(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: not a readable tuning choice ({exc}); rebuild it (rule tuning_choice)") from None
    return choices


def tuning_frame(choices: list[dict]) -> pd.DataFrame:
    """One row per point: dataset, backbone, seed, the point's settings, its score, cost, chosen."""
    rows = [{"dataset": c["dataset"], "backbone": c["backbone"], "seed": c["seed"], "metric": c["metric"],
             **p["settings"], "valid": p["valid"], "best_epoch": p["best_epoch"], "epochs": p["epochs"],
             "train_s": p["train_s"], "chosen": p["point"] == c["chosen"], "complete": c["complete"]}
            for c in choices for p in c["points"]]
    return pd.DataFrame(rows)


def tuning_table(choices: list[dict]) -> Table:
    tidy = tuning_frame(choices)
    if tidy.empty:
        return empty_table(NAME, tidy, "The backbone's validation search", "no tuning block in this study")
    display = tidy.drop(columns=["metric", "complete"]).astype(object)
    display["valid"] = [f"{v:.4f}" for v in tidy["valid"]]
    display["train_s"] = [f"{v:,.0f}" for v in tidy["train_s"]]
    display["chosen"] = ["yes" if c else "" for c in tidy["chosen"]]
    bold = pd.DataFrame(False, display.index, display.columns)
    bold["valid"] = tidy["chosen"]
    notes = [f"{d}/{b}: the search is incomplete; its choice is provisional"
             for (d, b), part in tidy.groupby(["dataset", "backbone"]) if not part["complete"].all()]
    caption = CAPTION.format(metric=", ".join(sorted(tidy["metric"].unique())))
    return Table(NAME, tidy, display.astype(str), bold, caption + ".", notes)
