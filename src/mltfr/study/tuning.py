"""The backbone's validation search: its points, their names, and the choice. Torch-free.

A tuned baseline is one tuned as well as the variants it is compared with: per (dataset, backbone)
of `study.blocks.tuning`, base runs under the corrected protocol at every point of a small grid
(`grid`: RunConfig key -> values, the product taken in order), one seed each, and the point with
the best validation score is chosen. Every corrected run of that dataset and backbone then trains
with the chosen settings (`mltfr train --tuned <choice.json>`, recorded in its result.json), so
base and each variant share them. Ties go to the earlier point: put the authors' values first.

    points(grid)               the grid's points, as {key: value} in product order
    point_name(settings)       a point's folder name: "lr=0.001,model.dropout=0.2"
    choose(results, keys, ...) the choice record (every point's validation score and the winner)
    read_choice(path)          a choice file's settings, or a DataError naming the fix
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

from mltfr.errors import DataError

# The RunConfig keys a search may vary (the schema's enum of study.blocks.tuning.grid); the runs
# table records each run's value of every one, so a reader can check the choice was applied.
TUNABLE = ("lr", "weight_decay", "batch_size", "model.dropout", "model.attn_dropout", "model.d")


def points(grid: dict) -> list[dict]:
    """Every combination of the grid's values, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def format_value(value) -> str:
    """A setting as a folder name and `--set` read it: 0.001 -> '0.001', 1e-05 -> '1e-05'."""
    if isinstance(value, bool):
        return str(value).lower()
    return format(value, "g") if isinstance(value, float) else str(value)


def point_name(settings: dict) -> str:
    return ",".join(f"{key}={format_value(value)}" for key, value in settings.items())


def _score(path: Path, result: dict, metric: str) -> float:
    try:
        return float(result["metrics"]["valid"][metric])
    except (KeyError, TypeError):
        raise DataError(f"{path}: no validation {metric} in metrics.valid (a tuning run must select "
                        f"on validation); rerun it under the corrected protocol") from None


def _lookup(config: dict, key: str):
    for part in key.split("."):
        config = config.get(part) if isinstance(config, dict) else None
    return config


def point_row(path: Path, keys: list[str], metric: str) -> dict:
    """One search run read back: its point (from the settings it recorded, which must name its
    folder), its validation score at the selected epoch, and its cost."""
    result = json.loads(Path(path).read_text())
    settings = {key: _lookup(result.get("config"), key) for key in keys}
    name = Path(path).parent.name
    if point_name(settings) != name:
        raise DataError(f"{path}: the run recorded {point_name(settings)} but lies in folder {name}; "
                        f"delete the folder and rerun its tuning job")
    return {"point": name, "settings": settings, "valid": _score(path, result, metric),
            "best_epoch": result["best_epoch"], "epochs": result["epochs_run"],
            "train_s": result["timings"]["train_s"], "dataset": result["dataset"]["name"],
            "backbone": result["backbone"], "seed": result["seed"]}


def choose(results: list, keys: list[str], metric: str, expected: int | None = None) -> dict:
    """The choice record of one (dataset, backbone) from its search runs' result.json files, in
    the grid's order: every point's validation `metric` and the winner (ties: the earlier point)."""
    if not results:
        raise DataError("no tuning results to choose from; train the tuning runs first")
    rows = [point_row(Path(path), keys, metric) for path in results]
    best = max(range(len(rows)), key=lambda i: (rows[i]["valid"], -i))
    head = {k: rows[0][k] for k in ("dataset", "backbone", "seed")}
    for row in rows:
        if any(row.pop(k) != v for k, v in head.items()):
            raise DataError(f"tuning results of {head} mix datasets, backbones or seeds; list one cell's runs")
    return {**head, "metric": metric, "points": rows, "complete": expected in (None, len(rows)),
            "chosen": rows[best]["point"], "settings": rows[best]["settings"]}


def read_choice(path: str | Path) -> dict:
    """The chosen settings of a choice file (RunConfig key -> value)."""
    path = Path(path)
    try:
        choice = json.loads(path.read_text())
        settings = choice["settings"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not a readable tuning choice ({exc}); rebuild it with "
                        f"`snakemake {path}` (rule tuning_choice)") from None
    if not isinstance(settings, dict) or any(isinstance(v, float) and not math.isfinite(v)
                                             for v in settings.values()):
        raise DataError(f"{path}: its settings {settings!r} are not a mapping of finite values; rebuild it "
                        f"with `snakemake {path}` (rule tuning_choice)")
    return settings
