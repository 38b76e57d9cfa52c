"""The two protocols as one table: every setting whose default differs between them is a row.

    faithful    the authors' computation, quirks included (docs/method.md)
    corrected   the clean protocol

A row (`Factor`) names the setting (its RunConfig override key), its value under each protocol
and, in words, what each value does. A setting left at None in a run's config takes its
protocol's value from here (`by_protocol`); the protocol ladder switches the rows one at a time
(mltfr.spec.rungs); the analysis prints them (the protocol table's caption). The user vector is a
flaw both protocols share: its corrected value equals its faithful one, and only the ladder's
last rung repairs it (`repair`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FAITHFUL = "faithful"
CORRECTED = "corrected"
PROTOCOLS = (FAITHFUL, CORRECTED)
FAITHFUL_EPOCHS = 100   # the authors' confs: num.max.epoch=100, no early stopping
CORRECTED_EPOCHS = 200  # an upper bound; early stopping on validation ends runs long before
SELECTION_SETS = ("test", "valid")   # select_on: the authors' best-on-test, or early stopping on valid
ROUND1_BUDGETS = ("authors", "full")  # round1_budget: the authors' round-1 length, or the run's budget


@dataclass(frozen=True)
class Factor:
    """One setting that separates the protocols."""

    name: str            # the ladder's factor name (rung-<name>, with-<name>)
    key: str             # its RunConfig override key (`--set key=value`)
    faithful: Any        # its value under the faithful protocol (the authors' code)
    corrected: Any       # its value under the corrected protocol
    label: str           # in prose
    faithful_text: str   # what the faithful value does
    corrected_text: str  # what the corrected value does
    branch_only: bool = False   # acts only inside the LLM branch (a run without one is unchanged)
    repair: Any = None   # the ladder's value when neither protocol repairs the flaw (user_vector)

    @property
    def ladder_value(self) -> Any:
        """The value a ladder rung sets (the corrected one, or the repair both protocols lack)."""
        return self.corrected if self.repair is None else self.repair

    def value(self, protocol: str) -> Any:
        return self.faithful if protocol == FAITHFUL else self.corrected


FACTORS = (
    Factor("selection", "select_on", "test", "valid", "selection",
           "the reported epoch is chosen on the test set by the authors' majority rule",
           "early stopping on validation, test touched once"),
    Factor("eval_noise", "branch.eval_noise", True, False, "evaluation noise",
           "Gumbel noise also at evaluation", "deterministic top-K", branch_only=True),
    Factor("pooling", "branch.pooling", "batch", "user", "token pooling",
           "the filtered tokens of the whole batch are pooled", "each user attends to its own", branch_only=True),
    Factor("mask_history", "mask_history", False, True, "history masking",
           "history items are not masked at ranking", "they are masked"),
    Factor("vocabulary", "train_vocab", True, False, "item vocabulary",
           "only the training split's items are numbered", "every item of the dataset"),
    Factor("impl", "model.impl", "authors", "ours", "backbone implementation",
           "the authors' network, init, windows and negatives", "this study's"),
    Factor("first_round", "round1_budget", "authors", "full", "round-1 length",
           "round 1 trains the authors' length", "round 1 trains the run's budget", branch_only=True),
    Factor("fisher_order", "fisher_shuffle", True, False, "Fisher batch order",
           "the Fisher pass visits shuffled batches", "it visits them in user order", branch_only=True),
    Factor("holdout_valid", "holdout_valid", False, True, "validation item",
           "kept in training", "held out of training"),
    Factor("user_vector", "branch.user_vector", "window", "window", "user vector",
           "the mean over the whole window", "the same (a flaw both share)", branch_only=True, repair="causal"),
)
BY_NAME = {f.name: f for f in FACTORS}
BY_KEY = {f.key: f for f in FACTORS}
# The protocols' own differences (the user vector is the same in both)
DIFFERENCES = tuple(f for f in FACTORS if f.faithful != f.corrected)


def by_protocol(key: str, protocol: str) -> Any:
    """The value of setting `key` (a RunConfig override key of FACTORS) under `protocol`."""
    return BY_KEY[key].value(protocol)


def branch_defaults(protocol: str) -> dict:
    """The branch settings (BranchConfig fields) the protocol decides."""
    return {f.key.removeprefix("branch."): f.value(protocol) for f in FACTORS if f.key.startswith("branch.")}
