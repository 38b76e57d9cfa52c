"""Optimism of best-on-test selection, computed once from the test traces.

For every run that selects on validation and traces test at every evaluation (trace_test: the
ladder's and the protocol-factor runs): test NDCG@10 at three epochs of the same trace (the
authors' rule's pick on test, the best test NDCG@10 epoch and the validation pick) and the
evaluation noise of the trace.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from mltfr.analysis.collect import KEYS, load_epochs, run_setting
from mltfr.analysis.tables import Table, empty_table, mean_std, with_run_settings
from mltfr.errors import DataError
from mltfr.evaluate.metrics import wins_majority

NOISE_EVALS = 10                    # the last evaluations the noise of a test trace is measured on
NO_TRACE = ("no run selects on validation while tracing test (the runs of study blocks protocol_ladder and "
            "protocol_factors do)")


def majority_scores(row: pd.Series, k: int = 20) -> dict[str, float]:
    """HR, Precision, Recall and NDCG @k of one traced test evaluation (one target per user:
    Precision@k = HR@k / k and Recall@k = HR@k, as mltfr.evaluate.majority_metrics computes them
    from ranks; the trace holds only the means). Compared by mltfr.evaluate.wins_majority."""
    hr = float(row[f"test_hr@{k}"])
    return {f"hr@{k}": hr, f"precision@{k}": hr / k, f"recall@{k}": hr, f"ndcg@{k}": float(row[f"test_ndcg@{k}"])}


def authors_pick(trace: pd.DataFrame) -> int:
    """The epoch the authors' rule keeps when it reads the test trace in epoch order."""
    best_epoch, best = None, None
    for _, row in trace.sort_values("epoch").iterrows():
        scores = majority_scores(row)
        if best is None or wins_majority(scores, best):
            best_epoch, best = int(row["epoch"]), scores
    return best_epoch


def trace_noise(trace: pd.DataFrame, last: int = NOISE_EVALS) -> float:
    """Evaluation noise of a test trace: the std of the changes of test NDCG@10 between successive
    evaluations over the last `last` of them, / sqrt(2) (the noise of one evaluation where the curve
    is flat); NaN with fewer than 3 evaluations."""
    values = trace.sort_values("epoch")["test_ndcg@10"].to_numpy(float)[-last:]
    return float(np.diff(values).std(ddof=1) / np.sqrt(2)) if len(values) >= 3 else np.nan


TRACE_COLUMNS = ("test_hr@20", "test_ndcg@20", "test_ndcg@10")
PICKS = ("authors", "best", "valid")   # the three epochs of a trace whose test NDCG@10 is reported


def best_test_epoch(trace: pd.DataFrame) -> int:
    """The epoch of the highest test NDCG@10 of the trace (the earliest of ties)."""
    ordered = trace.sort_values("epoch", kind="stable")
    return int(ordered["epoch"].iloc[int(np.argmax(ordered["test_ndcg@10"].to_numpy(float)))])


def run_optimism(run: pd.Series, epochs: pd.DataFrame) -> dict:
    """Three picks of one validation-selected run's test trace: the epoch the authors' rule keeps
    on test, the best test NDCG@10 epoch and the epoch validation picked (`best_epoch`); the test
    NDCG@10 at each, the two test picks minus the validation pick, and the trace's noise."""
    missing = [c for c in TRACE_COLUMNS if c not in epochs.columns]
    trace = epochs.dropna(subset=list(TRACE_COLUMNS)) if not missing else epochs.iloc[:0]
    if trace.empty:
        raise DataError(f"{run['run_dir']}/epochs.csv: no test trace (columns {', '.join(TRACE_COLUMNS)} "
                        "missing or empty, or no file) although the run recorded trace_test; rerun it")
    at = trace.set_index("epoch")["test_ndcg@10"]
    epochs_of = {"authors": authors_pick(trace), "best": best_test_epoch(trace), "valid": int(run["best_epoch"])}
    if epochs_of["valid"] not in at.index:
        raise DataError(f"{run['run_dir']}/epochs.csv: no test value at the selected epoch {epochs_of['valid']}; "
                        "rerun the run with trace_test")
    out = {f"{pick}_epoch": epoch for pick, epoch in epochs_of.items()}
    out.update({f"{pick}_ndcg@10": at[epoch] for pick, epoch in epochs_of.items()})
    out.update(authors_optimism=at[epochs_of["authors"]] - at[epochs_of["valid"]],
               best_optimism=at[epochs_of["best"]] - at[epochs_of["valid"]], noise=trace_noise(trace),
               n_evals=len(trace))
    return out


def traced_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """The runs that select on validation and traced test at every evaluation (trace_test: the
    ladder's and the protocol-factor runs), with their `setting` (rung, with-<factor> or protocol)."""
    if "trace_test" not in runs.columns:
        return runs.iloc[:0].assign(setting=pd.Series(dtype=str))
    traced = runs[(runs["select_on"] == "valid") & (runs["trace_test"] == True)]  # noqa: E712 (NaN: not traced)
    return traced.assign(setting=run_setting(traced))


def optimism_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per traced validation-selected run: its identifiers, setting and run_optimism."""
    traced = traced_runs(runs)
    rows = [{**run[list(KEYS)].to_dict(), "setting": run["setting"],
             **run_optimism(run, load_epochs(traced.loc[[index]]))} for index, run in traced.iterrows()]
    return pd.DataFrame(rows)


OPTIMISM_GROUP = ["dataset", "backbone", "variant", "setting"]
OPTIMISM_VALUES = ["authors_ndcg@10", "best_ndcg@10", "valid_ndcg@10", "authors_optimism", "best_optimism", "noise"]
OPTIMISM_LABELS = {"authors_ndcg@10": "authors' test pick", "best_ndcg@10": "best test epoch",
                   "valid_ndcg@10": "validation pick", "authors_optimism": "authors' pick - valid",
                   "best_optimism": "best - valid", "noise": "noise"}


def noise_correlation(tidy: pd.DataFrame) -> str:
    """Whether the authors' pick's optimism grows with evaluation noise across cells (variant and
    setting): a Spearman rank correlation of the per-cell means with >= 3 cells."""
    both = tidy[["authors_optimism", "noise"]].dropna()
    if len(both) < 3:
        return f"Too few cells ({len(both)} < 3) to say whether optimism grows with noise."
    if both.nunique().min() < 2:
        return "The rank correlation of optimism and noise is undefined (one of them is constant)."
    rho = sps.spearmanr(both["authors_optimism"], both["noise"]).statistic
    verdict = "grows" if rho > 0 else "does not grow"
    return f"Optimism {verdict} with noise: Spearman rho = {rho:+.2f} across {len(both)} cells."


def epochs_text(group: pd.DataFrame) -> str:
    """'2/9/3, 2/3/7' : the authors' / best / validation epochs of each seed, in seed order."""
    ordered = group.sort_values("seed")
    return ", ".join("/".join(str(int(r[f"{p}_epoch"])) for p in PICKS) for _, r in ordered.iterrows())


def optimism_table(runs: pd.DataFrame) -> Table:
    """Per dataset, backbone, variant and setting: mean over seeds of test NDCG@10 at the three
    picks of each run's test trace, the test picks minus the validation pick, and the noise."""
    per_run = optimism_runs(runs)
    if per_run.empty:
        return empty_table("optimism", pd.DataFrame(columns=[*OPTIMISM_GROUP, "n_seeds", *OPTIMISM_VALUES,
                                                             "authors_optimism_std", "best_optimism_std",
                                                             "epochs"]),
                           "Optimism of picking the epoch on test", NO_TRACE)
    grouped = per_run.groupby(OPTIMISM_GROUP, sort=True)
    tidy = grouped[OPTIMISM_VALUES].mean().reset_index()
    tidy.insert(len(OPTIMISM_GROUP), "n_seeds", grouped.size().to_numpy())
    for col in ("authors_optimism", "best_optimism"):
        tidy[f"{col}_std"] = grouped[col].std(ddof=1).to_numpy()
    tidy["epochs"] = grouped[list(per_run.columns)].apply(epochs_text).to_numpy()
    display = tidy[OPTIMISM_GROUP].astype(str)
    display["n"] = tidy["n_seeds"].astype(str)
    for col in OPTIMISM_VALUES:
        display[OPTIMISM_LABELS[col]] = grouped[col].apply(
            lambda s: mean_std(s, signed=col.endswith("optimism"))).to_numpy()
    display["epochs (authors/best/valid)"] = tidy["epochs"]
    caption = with_run_settings(
        "Optimism of picking the epoch on test, from the runs that select on validation and trace test "
        "at every evaluation (trace_test: the ladder's and the protocol-factor runs); setting = the run's "
        "rung, protocol-factor setting or protocol. Three epochs of each run's test trace: the one the "
        "authors' rule keeps on test (an epoch replaces the best one when not worse on 3 of "
        "HR/Precision/Recall/NDCG@20; with one target per user: when its HR@20 is at least the best so "
        "far, ties to the later epoch), the best test NDCG@10 epoch, and the one validation picked. "
        "Test NDCG@10 at each, mean ± std over the n seeds; the test picks minus the validation pick on "
        "the same trace; the authors' rule reads HR@20, not NDCG@10, so its pick can score below the "
        "validation pick, and the best test epoch is the most any test pick can gain on these traces. "
        "These runs stop early on validation (patience), so both test picks search only the epochs they "
        "ran. Epochs per seed in seed order. noise = std of the change of test NDCG@10 between "
        f"successive evaluations over the last {NOISE_EVALS}, / sqrt(2). {noise_correlation(tidy)}",
        traced_runs(runs))
    return Table("optimism", tidy, display, None, caption)


