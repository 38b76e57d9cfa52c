"""The protocol ladder: from the faithful protocol to the corrected one, one factor at a time.

Each factor is one RunConfig setting (`FACTORS`: name -> (override key, corrected value)); a run
starts from `--protocol faithful` and sets the factors of its rung to their corrected values:

    faithful         r0: no override (the ordinary faithful run)
    rung-<factor>    faithful + every factor up to and including <factor> in the configured
                     order (cumulative); each differs from the rung before it in one setting
    alone-<factor>   faithful + that factor only (plus the factors it needs, see REQUIRES)

The protocol-factor runs go the other way, from the corrected protocol (`--protocol corrected`):

    with-<factor>    corrected + that factor set back to its faithful value (FAITHFUL_VALUES)
    with-<f1>+<f2>   corrected + several factors set back together

so each of MLTFR's own factors (evaluation noise, batch pooling) is measured alone on top of the
clean protocol. A variant without an LLM branch (base) is untouched by the branch-only factors
(BRANCH_FACTORS): its corrected runs stand in for those settings.

With the default order the rung before user_vector (rung-holdout_valid) has exactly the corrected
protocol's settings; user_vector (the causal user vector) is a flaw both protocols share. Every
setting whose default differs between the protocols is a factor (tests/test_ladder.py checks it).
The workflow (a rung is the `protocol` wildcard's value), `mltfr train --protocol <rung>` and the
analysis (`rung` in result.json) all read this module. Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from mltfr.errors import ConfigError
from mltfr.spec import protocol
from mltfr.spec.protocol import CORRECTED, FAITHFUL

# factor -> (RunConfig override key, the value its rung sets: the corrected one, or the repair of a
# flaw both protocols share), in the protocol table's order (mltfr.spec.protocol)
FACTORS = {f.name: (f.key, f.ladder_value) for f in protocol.FACTORS}
DEFAULT_ORDER = tuple(FACTORS)
# A factor that cannot be set without another: the causal vector needs per-user pooling
# (mltfr.models.mltfr.BranchConfig refuses causal + batch pooling).
REQUIRES = {"user_vector": ("pooling",)}
PREFIXES = ("rung-", "alone-")
WITH = "with-"          # a protocol-factor setting: with-<factor>[+<factor>...]
JOIN = "+"
# factor -> its value under the faithful protocol (the authors' code); the user vector has none:
# both protocols use the whole-window mean (its ladder value is a repair neither makes)
FAITHFUL_VALUES = {f.name: f.faithful for f in protocol.FACTORS if f.repair is None}
# Factors that act only inside the LLM branch: a variant without one trains and ranks the same
BRANCH_FACTORS = tuple(f.name for f in protocol.FACTORS if f.branch_only)


@dataclass(frozen=True)
class Rung:
    """One ladder run: its name, position, the factors it sets and the rung it is compared with."""

    name: str
    index: int                  # 0 = faithful; cumulative rungs 1..n in order, then alone rungs
    factors: tuple              # the factors it switches (to corrected; with-<factor>: to faithful)
    overrides: dict = field(hash=False)   # RunConfig key -> value, for `--set`
    previous: str | None        # the rung this one differs from in exactly one setting
    start: str = FAITHFUL       # the protocol the run starts from (corrected for with-<factor>)

    def record(self, order) -> dict:
        """The `rung` entry of a ladder run's result.json (`start` only when it is not faithful)."""
        record = {"name": self.name, "index": self.index, "factors": list(self.factors),
                  "previous": self.previous, "order": list(order)}
        return record if self.start == FAITHFUL else {**record, "start": self.start}


def distinct_known(names, known, what: str, fix: str) -> tuple:
    """`names` as a tuple of distinct names of `known`, at least one, or a ConfigError naming `what`."""
    names = tuple(names)
    unknown = [n for n in names if n not in known]
    if unknown or not names or len(set(names)) != len(names):
        raise ConfigError(f"{what} {list(names)} must name distinct factors from "
                          f"{', '.join(known)} (unknown: {unknown or 'none'}); {fix}")
    return names


def check_order(order) -> tuple:
    """The order as a tuple of known, distinct factors, each after the factors it needs."""
    order = distinct_known(order, FACTORS, "ladder order", "fix the order")
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
    """The rung called `name` under `order` (alone rungs are found whatever the order; a
    with-<factor> setting is looked up among the settings of the factors `order`)."""
    found = factor_settings(order, together=True) if name.startswith(WITH) else rungs(order, alone=True)
    by_name = {r.name: r for r in found}
    if name not in by_name:
        known = ", ".join(by_name)
        raise ConfigError(f"{name!r} is not a protocol-ladder rung of the order {list(order)}; "
                          f"use one of {known}")
    return by_name[name]


def overrides(rung_name: str, order=DEFAULT_ORDER) -> dict:
    """RunConfig key -> value of the rung called `rung_name` (faithful: {})."""
    return dict(rung(rung_name, order).overrides)


def is_rung(name: str) -> bool:
    """Whether `name` is spelled like a ladder rung other than faithful (rung-/alone-<factor>) or
    like a protocol-factor setting (with-<factor>[+<factor>...])."""
    return (name.startswith(PREFIXES) and name.partition("-")[2] in FACTORS) or is_factor_setting(name)


# ---------------------------------------------------------------- corrected + faithful factors
def is_factor_setting(name: str) -> bool:
    """Whether `name` is spelled like with-<factor>[+<factor>...] with factors of FAITHFUL_VALUES."""
    factors = name.removeprefix(WITH).split(JOIN)
    return name.startswith(WITH) and all(f in FAITHFUL_VALUES for f in factors)


def check_factors(factors) -> tuple:
    """The factors as a tuple of distinct factors that have a faithful value."""
    return distinct_known(factors, FAITHFUL_VALUES, "protocol factors", "fix the list")


def factor_setting(factors, index: int) -> Rung:
    """corrected with `factors` set back to their faithful values: with-<f1>[+<f2>...]."""
    overrides = {FACTORS[f][0]: FAITHFUL_VALUES[f] for f in factors}
    return Rung(WITH + JOIN.join(factors), index, tuple(factors), overrides, CORRECTED, start=CORRECTED)


def factor_settings(factors, together: bool = False) -> list[Rung]:
    """Each factor alone on top of corrected, then (with `together` and >= 2 factors) all of them."""
    factors = check_factors(factors)
    out = [factor_setting((f,), i) for i, f in enumerate(factors, start=1)]
    return out + ([factor_setting(factors, len(out) + 1)] if together and len(factors) > 1 else [])


def default_order(name: str) -> tuple:
    """The factor order a rung is looked up in when none is given: a with- setting's own factors,
    else DEFAULT_ORDER."""
    return tuple(name.removeprefix(WITH).split(JOIN)) if is_factor_setting(name) else DEFAULT_ORDER


def starts_from(name: str) -> str:
    """The protocol a run of this protocol value starts from: corrected for corrected and every
    with-<factor> setting, faithful for faithful and the ladder's rungs."""
    return CORRECTED if name == CORRECTED or is_factor_setting(name) else FAITHFUL


def acts_on(factors, has_branch: bool) -> bool:
    """Whether setting `factors` changes a run: always with an LLM branch, else only when one of
    them is not a branch-only factor (base under corrected + evaluation noise is base corrected)."""
    return has_branch or any(f not in BRANCH_FACTORS for f in factors)
