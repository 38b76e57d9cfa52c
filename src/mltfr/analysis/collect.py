"""Read run folders into one tidy table: one row per run, every metric, timing and identifier.

A run folder is results/runs/{dataset}/{backbone}/{variant}/{protocol}/seed{seed}/ with
result.json, ranks.npz and epochs.csv (docs/architecture.md); a protocol-ladder run lies in
{rung}/ instead of {protocol}/ and records `rung` (columns rung, rung_index, ...), as does a
protocol-factor run (with-<factor>: the corrected protocol with that factor faithful). Only result
files are read here: no torch, so tables and figures can be redrawn anywhere.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from mltfr.analysis.blocks import parse_variant
from mltfr.errors import DataError
from mltfr.evaluate.metrics import metric_names, per_user_metrics
from mltfr.spec.branch_config import branch_key
from mltfr.spec.report_outputs import DIAGNOSTIC_KEYS, RUN_DIAGNOSTICS, diagnostic_column, parse_diagnostic_column
from mltfr.spec.rungs import FAITHFUL, WITH
from mltfr.study.tuning import TUNABLE

KEYS = ("dataset", "backbone", "variant", "protocol", "seed")
METRICS = tuple(metric_names())  # the keys of result.json's metrics.test / metrics.valid
RESULT_GLOB = "*/*/*/*/seed*/result.json"


def read_json(path: Path) -> dict:
    """A JSON object from `path`, or a DataError naming the file and the fix."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; rerun the job that writes it") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc}); delete it and rerun its job") from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(obj).__name__}; rerun its job")
    return obj


def find_result_files(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """result.json files of the runs: under a runs root, listed in a manifest, or given directly.

    `source` is the runs root (results/runs), a manifest file (one run folder per line, as the
    workflow writes it), or an iterable of result.json files / run folders.
    """
    if isinstance(source, (str, Path)):
        source = Path(source)
        if source.is_dir():
            files = sorted(source.glob(RESULT_GLOB))
            if not files:
                raise DataError(f"{source}: no runs found (expected {source}/{RESULT_GLOB}); "
                                "train some runs first or point --runs at the runs folder")
            return files
        if not source.is_file():
            raise DataError(f"{source}: neither a runs folder nor a manifest file; point --runs at one")
        source = [line.strip() for line in source.read_text().splitlines() if line.strip()]
        if not source:
            raise DataError("--runs manifest lists no run folders; rerun the workflow's run_manifest rule")
    paths = [Path(p) for p in source]
    return sorted(p if p.name == "result.json" else p / "result.json" for p in paths)


def _test_metrics(path: Path, result: dict) -> dict:
    """The test metrics of one result, checked complete."""
    test = (result.get("metrics") or {}).get("test")
    if not isinstance(test, dict):
        raise DataError(f"{path}: key metrics.test missing; rerun the run's training job")
    missing = [m for m in METRICS if m not in test]
    if missing:
        raise DataError(f"{path}: metrics.test lacks {', '.join(missing)}; rerun its training job")
    return {f"test_{m}": float(test[m]) for m in METRICS}


def _identity(path: Path, result: dict) -> dict:
    """(dataset, backbone, variant, protocol, seed) of a result, checked against its folder. The
    variant is the study's name the run's spec echoes (a sensitivity run trains mltfr with one
    setting changed); a run from before the echo is named from its folder.

    `dataset` is the name in the trainer's provenance object {"name": ..., "prepared_sha256": ...}.
    """
    ident = {k: result.get(k) for k in KEYS}
    ident["dataset"] = _lookup(result, "dataset.name")
    missing = [k for k, v in ident.items() if v is None]
    if missing:
        raise DataError(f"{path}: missing key(s) {', '.join(missing)}; rerun its training job")
    ident["seed"] = int(ident["seed"])
    spec = result.get("spec") or {}
    if spec.get("study_variant"):   # the study's name of the run (mltfr@<key>=<value>), echoed
        ident["variant"] = spec["study_variant"]
    parts = path.parent.parts[-5:]
    if len(parts) == 5 and parts[-1].startswith("seed"):
        if not spec and _is_sensitivity_run(path, parts[2], result):   # runs from before the spec echo
            ident["variant"] = parts[2]
        folder = _rung_name(result) or ident["protocol"]   # a ladder run's folder is its rung
        expected = tuple(str(ident[k]) for k in KEYS[:3]) + (folder, f"seed{ident['seed']}")
        if parts != expected:
            raise DataError(f"{path}: JSON says {'/'.join(expected)} but the file lies in "
                            f"{'/'.join(parts)}; move it or rerun the run")
    return ident


def _setting(result: dict, key: str):
    """The value a run recorded for a RunConfig key (`branch.tau`), or None; n_llms = #LLMs.

    `config` holds the overrides; a branch key not overridden is read from the effective branch
    settings the trainer records (`branch`), i.e. the default the run used.
    """
    if key == "n_llms":
        return len((result.get("inputs") or {}).get("llm") or {}) or None
    node = _lookup(result.get("config"), key)
    section, _, name = key.partition(".")
    name = branch_key(name)                                  # the trainer accepts `branch.k` for K
    return _lookup(result.get("branch"), name) if node is None and section == "branch" else node


def _lookup(node, dotted: str):
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _number(value) -> float:
    """A recorded setting as a float; NaN where it is not a number (a list, a string, absent)."""
    return float(value) if isinstance(value, (int, float)) else np.nan


def _is_sensitivity_run(path: Path, folder_variant: str, result: dict) -> bool:
    """Whether a run of `mltfr` lies in the folder of one of its sensitivity variants.

    The trainer records the method (`variant: mltfr`) and the changed setting (`config`); the
    workflow names the folder after the setting (`mltfr@branch.tau=1.0`, `mltfr@n_llms=2`).
    The recorded setting must equal the folder's.
    """
    info = parse_variant(folder_variant)
    if info.block != "sensitivity" or not folder_variant.startswith(f"{result.get('variant')}@"):
        return False
    value = folder_variant.partition("=")[2]
    recorded = _setting(result, info.param)
    same = str(recorded) == value if np.isnan(info.value) else (
        isinstance(recorded, (int, float)) and float(recorded) == info.value)
    if not same:
        raise DataError(f"{path}: the folder says {info.param}={value} but the run recorded "
                        f"{recorded!r}; rerun the run")
    return True


def _resources(path: Path, result: dict) -> dict:
    """Timings, memory, sizes and provenance under the names result.json uses (its schema:
    src/mltfr/schemas/result.schema.yaml), as runs-table columns: eval_s = timings.test_eval_s,
    epoch_s = mean of timings.per_epoch_s, seqs_per_s = timings.sequences_per_s, peak_mem_mb =
    the CUDA peak on a GPU, else the host's; dataset_sha256 = dataset.prepared_sha256;
    n_params = n_parameters.
    """
    t, memory = _recorded(path, result, "timings"), _recorded(path, result, "peak_memory_mb")
    row = {"train_s": t["train_s"], "eval_s": t["test_eval_s"], "epoch_s": float(np.mean(t["per_epoch_s"])),
           "seqs_per_s": t["sequences_per_s"], "users_per_s": t["users_per_s"]}
    row = {k: float(v) for k, v in row.items()}
    row.update(
        **{key: _recorded(path, result, key) for key in ("best_epoch", "selection", "code_version")},
        dataset_sha256=_recorded(path, result, "dataset")["prepared_sha256"],
        peak_mem_mb=memory.get("cuda_allocated", memory["host_rss"]), peak_host_rss_mb=memory["host_rss"],
        n_params=_recorded(path, result, "n_parameters"))
    return row


def _recorded(path: Path, result: dict, key: str):
    """result[key], or a DataError naming the file and the fix when the writer's key is missing."""
    if key not in result:
        raise DataError(f"{path}: key {key} missing (not written by mltfr train); rerun its training job")
    return result[key]


def run_row(path: Path, result: dict) -> dict:
    """One tidy row (flat scalars) from one result.json."""
    row = _identity(path, result)
    info = parse_variant(str(row["variant"]))
    row.update(block=info.block, llm=info.llm, param=info.param, value=info.value)
    row.update(_test_metrics(path, result))
    valid = (result.get("metrics") or {}).get("valid") or {}
    row.update({f"valid_{m}": float(valid.get(m, np.nan)) for m in METRICS})
    row.update(_resources(path, result))
    row.update(_diagnostics(result))
    row.update(_ladder_fields(result))
    row.update({key: _setting(result, key) for key in TUNABLE})   # the settings a search may choose
    row["llms"] = "+".join((result.get("inputs") or {}).get("llm") or {}) or None   # the tables it read
    row["impl"] = (result.get("model") or {}).get("impl")   # authors | ours; None: run before it was recorded
    row["run_dir"] = path.parent.as_posix()
    return row


FAITHFUL_RUNG = FAITHFUL   # rung 0 of the protocol ladder: the ordinary faithful run


def _rung_name(result: dict) -> str | None:
    """The ladder rung a run recorded (`rung.name`), None for an ordinary protocol run."""
    rung = result.get("rung")
    return rung.get("name") if isinstance(rung, dict) else None


def _ladder_fields(result: dict) -> dict:
    """The run's ladder rung (rung, rung_index, rung_previous, rung_order: the configured factor
    order joined by ','), the protocol settings the ladder varies and how long the run trained
    (epoch_budget, epochs_run, early_stopped: mltfr.analysis.demonstration reads them) and whether
    it traced test at every evaluation (trace_test: the optimism's runs), as recorded.

    An ordinary faithful run is rung 0 "faithful"; an ordinary corrected run has no rung (NaN).
    """
    rung = result.get("rung") if isinstance(result.get("rung"), dict) else {}
    faithful = result.get("protocol") == "faithful"
    branch = result.get("branch") or {}
    return {
        "rung": rung.get("name", FAITHFUL_RUNG if faithful else None),
        "rung_index": _number(rung.get("index", 0 if faithful else None)),
        "rung_previous": rung.get("previous"),
        "rung_order": ",".join(rung["order"]) if rung.get("order") else None,
        "epoch_budget": _number(result.get("epoch_budget")),
        "epochs_run": _number(result.get("epochs_run")), "early_stopped": result.get("early_stopped"),
        "select_on": result.get("select_on"), "holdout_valid": result.get("holdout_valid"),
        "mask_history": result.get("mask_history"), "eval_noise": branch.get("eval_noise"),
        "pooling": branch.get("pooling"), "user_vector": branch.get("user_vector"),
        "trace_test": bool((result.get("config") or {}).get("trace_test", False)),
    }


def is_setting_run(runs: pd.DataFrame) -> pd.Series:
    """True for the runs with a protocol setting of their own (a ladder rung > 0, a with-<factor>
    setting); the faithful rung 0 is an ordinary run."""
    if "rung" not in runs.columns:
        return pd.Series(False, index=runs.index)
    return runs["rung"].notna() & (runs["rung"] != FAITHFUL_RUNG)


def is_factor_run(runs: pd.DataFrame) -> pd.Series:
    """True for the protocol-factor runs (with-<factor>: corrected with that factor faithful)."""
    setting = is_setting_run(runs)
    return setting & runs["rung"].astype(str).str.startswith(WITH) if setting.any() else setting


def is_ladder_run(runs: pd.DataFrame) -> pd.Series:
    """True for the protocol ladder's own runs (rung > 0); the faithful rung 0 is an ordinary run."""
    return is_setting_run(runs) & ~is_factor_run(runs)


def run_setting(runs: pd.DataFrame) -> pd.Series:
    """Each run's protocol folder: its rung or with-<factor> setting, else its protocol."""
    return runs["protocol"].where(~is_setting_run(runs), runs.get("rung"))


def protocol_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The ordinary faithful and corrected runs: what every table but the ladder's and the
    protocol factors' compares."""
    return runs[~is_setting_run(runs)]


def _diagnostics(result: dict) -> dict:
    """The filter diagnostics as flat columns (outputs.diagnostic_column per LLM and key, and the
    run-level router_entropy, diagnostics_steps); NaN where a run has none (base, null values)."""
    row = {key: _number(result.get(key)) for key in RUN_DIAGNOSTICS}
    for llm, values in (result.get("diagnostics") or {}).items():
        row.update({diagnostic_column(llm, key): _number((values or {}).get(key)) for key in DIAGNOSTIC_KEYS})
    return row


def diagnostics_frame(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, LLM) that reported diagnostics: the run's KEYS, llm, DIAGNOSTIC_KEYS and
    the run-level router_entropy and diagnostics_steps."""
    llms = sorted({parsed[0] for parsed in map(parse_diagnostic_column, runs.columns) if parsed})
    rows = []
    for _, run in runs.iterrows():
        for llm in llms:
            if pd.isna(run.get(diagnostic_column(llm, "vocab"), np.nan)):
                continue  # the LLM is not in this run
            rows.append({**{k: run[k] for k in KEYS}, "llm": llm,
                         **{key: run[diagnostic_column(llm, key)] for key in DIAGNOSTIC_KEYS},
                         **{key: run.get(key, np.nan) for key in RUN_DIAGNOSTICS}})
    return pd.DataFrame(rows, columns=[*KEYS, "llm", *DIAGNOSTIC_KEYS, *RUN_DIAGNOSTICS])


def collect_runs(source: str | Path | Iterable[str | Path],
                 benchmarks: str | Path | None = None) -> pd.DataFrame:
    """One row per run, sorted by (dataset, backbone, variant, protocol, seed, rung_index).

    `source`: see find_result_files. `run_dir` keeps the path as given (relative to the working
    directory in the workflow, so the table does not depend on the machine).
    Benchmark columns (bench_s, bench_max_rss_mb) are added when `benchmarks` exists; the column
    random_tables when a run's branch redrew its token tables (tables.random_tables_note).
    """
    files = find_result_files(source)
    results = [read_json(f) for f in files]
    runs = pd.DataFrame([run_row(f, r) for f, r in zip(files, results)])
    for param in runs.loc[runs["block"] == "sensitivity", "param"].dropna().unique():
        runs[f"setting:{param}"] = [_number(_setting(r, param)) for r in results]  # the default's point
    random_tables = [bool((r.get("branch") or {}).get("reinitialise")) for r in results]
    if any(random_tables):   # the authors' FMLP-Rec redraws its LLM tables (BranchConfig.reinitialise)
        runs["random_tables"] = random_tables
    dup = runs.duplicated([*KEYS, "rung"], keep=False)
    if dup.any():
        raise DataError(f"two result files describe the same run: "
                        f"{', '.join(map(str, np.asarray(files)[dup.to_numpy()]))}; remove one")
    for col in ("n_params", "best_epoch", "peak_mem_mb", "peak_host_rss_mb"):
        runs[col] = pd.to_numeric(runs[col], errors="coerce")
    runs = runs.sort_values([*KEYS, "rung_index"], kind="stable").reset_index(drop=True)
    if benchmarks is not None and Path(benchmarks).is_dir():
        from mltfr.analysis.job_benchmarks import read_benchmarks

        runs = _merge_benchmarks(runs, read_benchmarks(benchmarks))
    return runs


def _merge_benchmarks(runs: pd.DataFrame, bench: pd.DataFrame) -> pd.DataFrame:
    """Benchmark columns joined by run folder: a ladder run's benchmarks lie under its rung."""
    merged = runs.assign(protocol=run_setting(runs)).merge(bench, on=list(KEYS), how="left")
    return merged.assign(protocol=runs["protocol"].to_numpy())


def sensitivity_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The sensitivity block's runs plus, per parameter, the full `mltfr` runs at the value they
    used (the default), so each curve passes through the study's main setting.

    Only cells (dataset, backbone, protocol) that the sweep covers get the point; a sweep that
    also ran the default value explicitly keeps its own runs.
    """
    sweep = runs[runs["block"] == "sensitivity"]
    parts = [sweep]
    for param in sweep["param"].dropna().unique():
        value = runs[f"setting:{param}"]
        full = runs[(runs["block"] == "mltfr") & value.notna()].assign(param=param, value=value)
        cells = sweep.loc[sweep["param"] == param, ["dataset", "backbone", "protocol"]].drop_duplicates()
        parts.append(full.merge(cells, on=list(cells.columns)).assign(block="sensitivity"))
    return pd.concat(parts, ignore_index=True).drop_duplicates(
        ["dataset", "backbone", "protocol", "param", "value", "seed"], keep="first")


def load_dataset_stats(data_root: str | Path) -> pd.DataFrame:
    """The `stats` object of every results/data/{dataset}/meta.json, one row per dataset."""
    rows = []
    for meta_path in sorted(Path(data_root).glob("*/meta.json")):
        stats = read_json(meta_path).get("stats")
        if not isinstance(stats, dict):
            raise DataError(f"{meta_path}: key 'stats' missing; rerun `mltfr prepare` for it")
        rows.append({"dataset": meta_path.parent.name, **stats})
    cols = ["dataset", "users", "items", "interactions", "density", "mean_len", "median_len"]
    frame = pd.DataFrame(rows)
    extra = [c for c in frame.columns if c not in cols]
    return frame.reindex(columns=cols + extra)


def load_user_ndcg(run_dir: str | Path, k: int = 10) -> pd.Series:
    """Per-user NDCG@k of one run, indexed by the 0-based user index (ranks.npz).

    Arrays: test_users and test_ranks, 1 = best (mltfr.train.run.write_ranks).
    """
    path = Path(run_dir) / "ranks.npz"
    try:
        with np.load(path) as npz:
            users = npz["test_users"]
            ranks = npz["test_ranks"]
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; rerun the run's training job") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{path}: unreadable or lacks arrays test_users/test_ranks ({exc}); "
                        "rerun the run's training job") from None
    if users.shape != ranks.shape or len(np.unique(users)) != len(users) or (ranks < 1).any():
        raise DataError(f"{path}: users and test_ranks must be equal-length, users unique, "
                        "ranks >= 1; rerun the run's training job")
    return pd.Series(per_user_metrics(ranks, (k,))[f"ndcg@{k}"], index=pd.Index(users, name="user"))


def load_epochs(runs: pd.DataFrame) -> pd.DataFrame:
    """Every run's epochs.csv stacked, with the run's identifiers; runs without one are skipped.

    The trainer's `train_loss` column is also available as `loss` (the figures' name for it).
    """
    frames = []
    for run in runs.itertuples(index=False):
        path = Path(run.run_dir) / "epochs.csv"
        if not path.exists():
            continue
        try:
            epochs = pd.read_csv(path)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not a CSV ({exc}); delete it and rerun the run") from None
        if "epoch" not in epochs.columns:
            raise DataError(f"{path}: lacks column 'epoch'; rerun the run's training job")
        if "train_loss" in epochs.columns:
            epochs["loss"] = epochs["train_loss"]
        frames.append(epochs.assign(**{k: getattr(run, k) for k in KEYS}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*KEYS, "epoch"])


def load_interp(runs: pd.DataFrame) -> list[tuple[dict, dict]]:
    """(run identifiers, interp dict) for runs whose result.json has one (runs with an LLM branch)."""
    found = []
    for run in runs.itertuples(index=False):
        interp = read_json(Path(run.run_dir) / "result.json").get("interp")
        if interp:
            found.append(({k: getattr(run, k) for k in KEYS}, interp))
    return found
