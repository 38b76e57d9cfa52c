"""The study's variants: every name, what it changes, which LLMs it takes, how many rounds.

This is the one place variant names are defined. The models (`mltfr.models.variant_branch`: name ->
BranchConfig), the CLI (`mltfr train --variant`), the workflow (`workflow/rules/common.smk`: the
run grid, rounds and `--llm` arguments) and the analysis (`mltfr.analysis`: table blocks) all read
it. Adding a variant is one entry here plus, when it needs one, a branch setting that implements
it (`mltfr.models.mltfr.BranchConfig`). Torch-free, so the workflow and the analysis can import it.

Names:
    base                   the ID-only backbone
    direct-<llm>           one LLM, its whole vocabulary through P learned prototype tokens
    filter-<llm>           one LLM, user-guided token filtering
    mltfr                  every LLM of the study's set: filtering, experts, router, Fisher consensus
    mltfr-<name>           the full method with one thing changed (ablations and controls below)
    mltfr@<key>=<value>    sensitivity: mltfr with one RunConfig key set (e.g. branch.K=3)
    mltfr@n_llms=<n>       sensitivity: mltfr on the first n LLMs of its set
    mltfr-planted[-...]    the positive control (leaky by construction, never a finding): the run's
                           dataset's planted table (planted-<dataset>, mltfr.llm.planted) in the branch
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

BASE = "base"
FULL = "mltfr"
SINGLE_MODES = ("direct", "filter")
SENSITIVITY = re.compile(r"^mltfr@(?P<key>[A-Za-z_][A-Za-z0-9_.]*)=(?P<value>[^/@=]+)$")
RANDOM_PREFIX = "random-"   # registry name of an LLM's random control table (mltfr-random)
PLANTED_PREFIX = "planted-"  # registry name of a dataset's planted table (the positive control)
POSITIVE_LABEL = "positive control (leaky by construction)"   # on every output that shows one


@dataclass(frozen=True)
class Variant:
    """One study variant: the branch settings it changes and the LLM tables it reads."""

    name: str
    block: str              # base | direct | filter | mltfr | ablation | control | positive | sensitivity
    summary: str            # one line, for tables and --help
    settings: dict = field(default_factory=dict)   # BranchConfig overrides on top of the full method
    llms: str = "mltfr"     # none | one (the LLM in its name) | mltfr (the set) | random (its random twins) |
    #                         planted (the planted table of the run's dataset: planted-<dataset>)

    @property
    def rounds(self) -> int:
        """2 when a Fisher/mean consensus expert is trained between two rounds, else 1."""
        consensus = self.settings.get("consensus", FULL_METHOD["consensus"])
        return 2 if self.llms in ("mltfr", "random") and consensus != "none" else 1


# The full method's branch settings; every mltfr-* variant changes one of them.
FULL_METHOD = {"filtering": True, "router": "softmax", "trainable_tables": True, "consensus": "fisher"}
# Single-LLM variants: one expert, so no router and no consensus.
SINGLE_LLM = {"router": "mean", "consensus": "none", "trainable_tables": True, "consensus_group": None}
# The sharp filter (a filter that chooses): the learning gradient, a fixed logit scale on the cosine
# scores and a noiseless pick at evaluation under both protocols (docs/method.md, "The sharp filter").
SHARP = {"filter_grad": "learn", "score_scale": 50.0, "eval_noise": False}
# The positive control: the planted table (one row per user) alone through one expert, frozen
# (fine-tuning moves its rows away from what was planted), one pick per window and per-user pooling
# (the user's row is right at every position). docs/method.md, "The positive control".
PLANTED = {**SINGLE_LLM, "filtering": True, "trainable_tables": False, "pooling": "user"}

_ENTRIES = (
    Variant(BASE, "base", "ID-only backbone", llms="none"),
    Variant(FULL, "mltfr", "full method: filtering + experts + router + Fisher consensus"),
    Variant("mltfr-nofilter", "ablation", "P learned prototypes instead of filtering", {"filtering": False}),
    Variant("mltfr-norouter", "ablation", "uniform mean instead of the router", {"router": "mean"}),
    Variant("mltfr-noconsensus", "ablation", "no consensus expert (one round)", {"consensus": "none"}),
    Variant("mltfr-meanconsensus", "ablation", "consensus merged by plain mean", {"consensus": "mean"}),
    Variant("mltfr-frozen", "ablation", "token tables frozen", {"trainable_tables": False}),
    Variant("mltfr-random", "control", "random tables of the same shapes", llms="random"),
    Variant("mltfr-randomselect", "control", "tokens drawn uniformly per user (no user signal)",
            {"selection": "random"}),
    Variant("mltfr-learnfilter", "control", "a filter that learns: gradient into y, no renormalisation",
            {"filter_grad": "learn"}),
    Variant("mltfr-sharpfilter", "control", "a filter that chooses: learning gradient, logit scale 50, "
            "noiseless pick at evaluation", SHARP),
    # per-user pooling under both protocols: pooled over the batch, a position would also attend
    # to the tokens of later positions, which is what the causal vector removes
    Variant("mltfr-causal", "control", "causal user vector: prefix mean up to each position (per-user pooling)",
            {"user_vector": "causal", "pooling": "user"}),
    Variant("mltfr-planted", "positive", f"{POSITIVE_LABEL}: the planted table through the authors' filter",
            PLANTED, llms="planted"),
    Variant("mltfr-planted-sharp", "positive", f"{POSITIVE_LABEL}: the planted table through the sharp filter",
            {**PLANTED, **SHARP}, llms="planted"),
    Variant("mltfr-planted-lookup", "positive", f"{POSITIVE_LABEL}: the planted row of the window's "
            "own user handed to the branch (no filter)", {**PLANTED, "selection": "lookup"}, llms="planted"),
)
VARIANTS = {v.name: v for v in _ENTRIES}
SINGLE = {mode: Variant(mode, mode, summary, {"filtering": mode == "filter", **SINGLE_LLM}, llms="one")
          for mode, summary in (("direct", "one LLM, whole vocabulary as P prototypes"),
                                ("filter", "one LLM, user-guided filtering"))}
ABLATIONS = tuple(v.name for v in _ENTRIES if v.block == "ablation")
CONTROLS = tuple(v.name for v in _ENTRIES if v.block == "control")
# The controls MLTFR must beat for its gain to come from the LLM tables: random tables of the same
# shapes (no LLM knowledge) and tokens drawn uniformly per user (no user signal). The other
# controls are named fixes of the authors' branch (a filter that learns or chooses, a causal vector).
NULL_CONTROLS = ("mltfr-random", "mltfr-randomselect")
# The filters that choose are also compared with the control that selects without the user: does
# user-guided selection help once the filter selects? (The authors' filter picks a near-random token.)
CHOOSING_FILTERS = ("mltfr-sharpfilter",)
SELECTION_CONTROL = "mltfr-randomselect"
# Leaky by construction: never a finding, and never run unless a study names them.
POSITIVE_CONTROLS = tuple(v.name for v in _ENTRIES if v.block == "positive")


@dataclass(frozen=True)
class Parsed:
    """A variant name read: its registry entry and, by kind, its LLM or sensitivity setting."""

    variant: Variant
    llm: str | None = None       # direct-/filter-<llm>
    key: str | None = None       # mltfr@<key>=<value>
    value: str | None = None

    @property
    def number(self) -> float:
        """The sensitivity value as a number (NaN when it is not one)."""
        try:
            return float(self.value)
        except (TypeError, ValueError):
            return float("nan")


def parse(name: str) -> Parsed | None:
    """The registry entry of `name`, or None when no variant is called that."""
    if name in VARIANTS:
        return Parsed(VARIANTS[name])
    mode, _, llm = name.partition("-")
    if mode in SINGLE and llm:
        return Parsed(SINGLE[mode], llm=llm)
    match = SENSITIVITY.match(name)
    if match:
        entry = Variant(name, "sensitivity", "mltfr with one setting changed")
        return Parsed(entry, key=match["key"], value=match["value"])
    return None


def names(llms: list[str]) -> list[str]:
    """Every fixed variant name for these single-LLM names (sensitivity names are open-ended)."""
    return [BASE, *(f"{mode}-{llm}" for mode in SINGLE for llm in llms), *(n for n in VARIANTS if n != BASE)]


def random_twins(llms: list[str]) -> list[str]:
    """The registry names of the random control tables of `llms`, in order, without repeats."""
    return list(dict.fromkeys(n if n.startswith(RANDOM_PREFIX) else RANDOM_PREFIX + n for n in llms))
