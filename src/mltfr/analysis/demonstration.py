"""Whether a set of runs is a demonstration rather than a result, as a one-line label.

A trained run has *converged* when early stopping ended it (`early_stopped`) or it had the full
default budget of its selection rule (mltfr.spec.protocol: FAITHFUL_EPOCHS when the epoch is picked
on test, CORRECTED_EPOCHS with early stopping on validation); a counted backbone (pop, epochs_run
0) trains nothing and runs one seed by design. A set of runs is a *demonstration* when a trained
run has not converged or a cell (dataset, backbone, variant, protocol, rung) of trained runs has
fewer than MIN_SEEDS seeds. Table captions, figures and the findings report carry the label
(`demonstration_label`), so their numbers are never read as findings.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from mltfr.spec.protocol import CORRECTED_EPOCHS, FAITHFUL_EPOCHS

MIN_SEEDS = 3      # fewer seeds in a compared cell: no significance, and the runs are a demonstration
DEMONSTRATION = "DEMONSTRATION, NOT A RESULT"
SEED_CELL = ("dataset", "backbone", "variant", "protocol", "rung")   # runs that differ only by seed
DEFAULT_BUDGET = {"test": FAITHFUL_EPOCHS, "valid": CORRECTED_EPOCHS}  # select_on -> default epochs


def _column(runs: pd.DataFrame, name: str) -> pd.Series:
    """runs[name], or NaN for every run when the runs table has no such column."""
    return runs[name] if name in runs.columns else pd.Series(np.nan, index=runs.index, dtype=object)


def trained(runs: pd.DataFrame) -> pd.Series:
    """False for a counted backbone's runs (epochs_run 0: nothing to converge), True otherwise."""
    return ~(pd.to_numeric(_column(runs, "epochs_run"), errors="coerce") == 0)


def default_budget(runs: pd.DataFrame) -> pd.Series:
    """Each run's default epoch budget for the selection rule it recorded (`select_on`; the
    protocol's rule where none is recorded: test under faithful, valid otherwise)."""
    by_protocol = _column(runs, "protocol").map(lambda p: "test" if p == "faithful" else "valid")
    recorded = _column(runs, "select_on").astype(object)    # all-NaN from a CSV: float, not str
    return recorded.where(recorded.notna(), by_protocol).map(DEFAULT_BUDGET).astype(float)


def converged(runs: pd.DataFrame) -> pd.Series:
    """True for a run that needs no training, early-stopped, or had its rule's full default budget."""
    early = _column(runs, "early_stopped").eq(True)   # object column of True/False/NaN from a CSV
    full = pd.to_numeric(_column(runs, "epoch_budget"), errors="coerce") >= default_budget(runs)
    return ~trained(runs) | early | full


def seed_counts(runs: pd.DataFrame) -> pd.Series:
    """The number of seeds of every cell of trained runs (SEED_CELL columns the table has)."""
    keys = [c for c in SEED_CELL if c in runs.columns]
    return runs[trained(runs)].groupby(keys, dropna=False)["seed"].nunique()


def _budget_text(stopped: pd.DataFrame) -> str:
    """'stopped at a fixed 2-epoch budget' from the budgets the stopped runs recorded."""
    budgets = sorted(pd.to_numeric(stopped["epoch_budget"], errors="coerce").dropna().unique()) \
        if "epoch_budget" in stopped.columns else []
    if not budgets:
        return "recorded no epoch budget or early stop, so they are not known to have converged"
    return f"stopped at a fixed {'/'.join(f'{b:.0f}' for b in budgets)}-epoch budget before converging"


def demonstration_label(runs: pd.DataFrame) -> str | None:
    """'DEMONSTRATION, NOT A RESULT: 40 of 76 trained runs stopped at a fixed 2-epoch budget
    before converging; 12 of 20 cells have fewer than 3 seeds (fewest: 1).', or None when every
    trained run converged and every cell has MIN_SEEDS seeds."""
    if runs.empty:
        return None
    parts = []
    is_trained = trained(runs)
    stopped = runs[is_trained & ~converged(runs)]
    if len(stopped):
        parts.append(f"{len(stopped)} of {int(is_trained.sum())} trained runs {_budget_text(stopped)}")
    seeds = seed_counts(runs)
    few = seeds[seeds < MIN_SEEDS]
    if len(few):
        parts.append(f"{len(few)} of {len(seeds)} cells have fewer than {MIN_SEEDS} seeds (fewest: {few.min()})")
    return f"{DEMONSTRATION}: {'; '.join(parts)}." if parts else None
