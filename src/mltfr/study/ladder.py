"""The protocol ladder: from the faithful protocol to the corrected one, one factor at a time.

Each factor is one RunConfig setting (`FACTORS`: name -> (override key, corrected value)); a run
starts from `--protocol faithful` and sets the factors of its rung to their corrected values:

    faithful         r0: no override (the ordinary faithful run)
    rung-<factor>    faithful + every factor up to and including <factor> in the configured
                     order (cumulative); each differs from the rung before it in one setting
    alone-<factor>   faithful + that factor only (plus the factors it needs, see REQUIRES)

With the default order the rung before user_vector (rung-holdout_valid) has exactly the corrected
protocol's settings; user_vector (the causal user vector) is a flaw both protocols share. Every
setting whose default differs between the protocols is a factor (tests/test_ladder.py checks it).
The workflow (a rung is the `protocol` wildcard's value), `mltfr train --protocol <rung>` and the
analysis (`rung` in result.json) all read this module. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mltfr.errors import ConfigError

FAITHFUL = "faithful"
# factor -> (RunConfig override key, its value under the corrected protocol)
FACTORS = {
    "selection": ("select_on", "valid"),          # best epoch on test -> early stopping on valid
    "eval_noise": ("branch.eval_noise", False),   # Gumbel noise at evaluation on -> off
    "pooling": ("branch.pooling", "user"),        # tokens pooled over the batch -> per user
    "mask_history": ("mask_history", True),       # history items ranked -> masked
    "vocabulary": ("train_vocab", False),         # only the training split's items -> every item
    "impl": ("model.impl", "ours"),               # the authors' backbone implementation -> ours
    "first_round": ("round1_budget", "full"),     # round 1 the authors' length -> the run's budget
    "fisher_order": ("fisher_shuffle", False),    # Fisher batches shuffled -> in user order
    "holdout_valid": ("holdout_valid", True),     # validation item kept in training -> held out
    "user_vector": ("branch.user_vector", "causal"),  # whole-window mean -> prefix mean (both flawed)
}
DEFAULT_ORDER = tuple(FACTORS)
# A factor that cannot be set without another: the causal vector needs per-user pooling
# (mltfr.models.mltfr.BranchConfig refuses causal + batch pooling).
REQUIRES = {"user_vector": ("pooling",)}
PREFIXES = ("rung-", "alone-")


@dataclass(frozen=True)
class Rung:
    """One ladder run: its name, position, the factors it sets and the rung it is compared with."""

    name: str
    index: int                  # 0 = faithful; cumulative rungs 1..n in order, then alone rungs
    factors: tuple              # the factors set to their corrected values, in order
    overrides: dict = field(hash=False)   # RunConfig key -> value, for `--set`
    previous: str | None        # the rung this one differs from in exactly one setting

    def record(self, order) -> dict:
        """The `rung` entry of a ladder run's result.json."""
        return {"name": self.name, "index": self.index, "factors": list(self.factors),
                "previous": self.previous, "order": list(order)}


def check_order(order) -> tuple:
    """The order as a tuple of known, distinct factors, each after the factors it needs."""
    order = tuple(order)
    unknown = [f for f in order if f not in FACTORS]
    if unknown or not order or len(set(order)) != len(order):
        raise ConfigError(f"ladder order {list(order)} must name distinct factors from "
                          f"{', '.join(FACTORS)} (unknown: {unknown or 'none'}); fix the order")
    for factor in order:
        late = [n for n in REQUIRES.get(factor, ()) if n not in order[:order.index(factor)]]
        if late:
            raise ConfigError(f"ladder order {list(order)} sets {factor} without {late[0]} before it, "
                              f"which it needs (the causal user vector needs per-user pooling); "
                              f"put {late[0]} earlier in the order")
    return order


def factor_overrides(factors) -> dict:
    """RunConfig key -> corrected value of each factor."""
    return {FACTORS[f][0]: FACTORS[f][1] for f in factors}


def rungs(order=DEFAULT_ORDER, alone: bool = False) -> list[Rung]:
    """faithful, the cumulative rungs in `order`, then (with `alone`) each factor alone."""
    order = check_order(order)
    out = [Rung(FAITHFUL, 0, (), {}, None)]
    for i, factor in enumerate(order, start=1):
        out.append(Rung(f"rung-{factor}", i, order[:i], factor_overrides(order[:i]), out[-1].name))
    for factor in order if alone else ():
        needed = REQUIRES.get(factor, ())
        factors = (*needed, factor)
        # alone-user_vector stands on alone-pooling: it differs from that one in one setting
        previous = f"alone-{needed[-1]}" if needed else FAITHFUL
        out.append(Rung(f"alone-{factor}", len(out), factors, factor_overrides(factors), previous))
    return out


def rung(name: str, order=DEFAULT_ORDER) -> Rung:
    """The rung called `name` under `order` (alone rungs are found whatever the order)."""
    by_name = {r.name: r for r in rungs(order, alone=True)}
    if name not in by_name:
        known = ", ".join(by_name)
        raise ConfigError(f"{name!r} is not a protocol-ladder rung of the order {list(order)}; "
                          f"use one of {known}")
    return by_name[name]


def overrides(rung_name: str, order=DEFAULT_ORDER) -> dict:
    """RunConfig key -> value of the rung called `rung_name` (faithful: {})."""
    return dict(rung(rung_name, order).overrides)


def is_rung(name: str) -> bool:
    """Whether `name` is spelled like a ladder rung other than faithful (rung-/alone-<factor>)."""
    return name.startswith(PREFIXES) and name.partition("-")[2] in FACTORS
