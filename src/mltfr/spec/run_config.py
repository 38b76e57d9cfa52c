"""`RunConfig`: every setting of one training run, with checked overrides (nanoGPT style).

Precedence, lowest first: the defaults below, the `train:` section of a study config, the CLI's
explicit flags (--backbone, --protocol, --seed, --variant, --device), then `--set key=value`.
Nested keys use a dot: `model.d=32` sets BackboneConfig.d, `branch.k=10` a key of the branch dict.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from mltfr.errors import ConfigError
from mltfr.spec.backbone_config import BackboneConfig
from mltfr.spec.backbones import UNTRAINED_BACKBONES, authors_round1_epochs
from mltfr.spec.metric_names import MAJORITY_KEYS, metric_names
from mltfr.spec.protocol import (
    CORRECTED_EPOCHS,
    FAITHFUL_EPOCHS,
    PROTOCOLS,
    ROUND1_BUDGETS,
    SELECTION_SETS,
    by_protocol,
)
from mltfr.spec.round_plan import needs_round2

DEVICES = ("auto", "cpu", "cuda")       # auto = CUDA when available
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 5e-4: a float YAML 1.1 misses


@dataclass
class RunConfig:
    """One run = backbone x variant x protocol x seed, plus the optimisation settings."""

    backbone: str = "sasrec"  # (str) a name of mltfr.models.BACKBONES
    model: BackboneConfig = field(default_factory=BackboneConfig)  # backbone hyper-parameters (d, L, ...)
    variant: str = "base"  # (str) "base" = ID-only; LLM-branch variants are attached by attach_branch
    protocol: str = "corrected"  # (str) faithful | corrected (method.md, "Training and evaluation")
    seed: int = 0  # (int) fixes python, numpy, torch and the sampling generator
    lr: float = 1e-3  # (float) Adam learning rate (method.md)
    weight_decay: float = 0.0  # (float) Adam L2 penalty; the authors use none
    batch_size: int = 128  # (int) training windows per step (method.md)
    epochs: int | None = None  # (int) faithful: the fixed budget; corrected: the maximum before early
    #                            stopping; None = by protocol: faithful 100 (authors' confs), corrected 200
    patience: int = 10  # (int) select_on valid: stop after this many evaluations without a better valid score
    eval_every: int = 1  # (int) evaluate every this many epochs (and always after the last one)
    mask_history: bool | None = None  # (bool) exclude history items from the ranking; None = by
    #                                   protocol: faithful False (authors' code), corrected True
    select_on: str | None = None  # (str) "test": best epoch on test by the authors' majority rule over
    #                               the whole budget; "valid": early stopping on valid metric_for_selection
    #                               with patience; None = by protocol: faithful test, corrected valid
    holdout_valid: bool | None = None  # (bool) hold the validation (second-to-last) item out of
    #                                    training; None = by protocol: faithful False, corrected True
    train_vocab: bool | None = None  # (bool) number only the items of the training split, as the
    #                                  authors' loader (Pantry: 4,794 of 4,884; a target outside it is
    #                                  never hit, an item outside it never ranked); None = by protocol:
    #                                  faithful True, corrected False (every item of the dataset)
    round1_budget: str | None = None  # (str) round 1 of a consensus variant trains "authors": their
    #                                   round-1 length (AUTHORS_ROUND1_EPOCHS, at most the run's budget)
    #                                   or "full": the run's budget; None = by protocol: faithful
    #                                   authors, corrected full
    fisher_shuffle: bool | None = None  # (bool) the Fisher pass visits the training batches in a
    #                                     shuffled order drawn from the run's seed (the authors' sampler
    #                                     shuffles) rather than in user order; None = by protocol:
    #                                     faithful True, corrected False
    trace_test: bool = False  # (bool) also evaluate test at every evaluation (test_* in epochs.csv),
    #                           never used for selection: measures the optimism of best-on-test
    eval_batch_size: int = 1024  # (int) users per evaluation block
    eval_item_block: int = 2048  # (int) items per score tile (a 1024 x 2048 tile stays in CPU cache)
    sampled_negatives: int = 0  # (int) 0 = full ranking (the study); N = the labelled sampled-N protocol
    metric_for_selection: str = "ndcg@10"  # (str) select_on valid: the metric early stopping uses
    #                                        (select_on test: the authors' majority rule, see `selection`)
    device: str = "auto"  # (str) auto | cpu | cuda
    bf16: bool = False  # (bool) bf16 autocast for training; only takes effect on CUDA
    log_every: int = 100  # (int) steps between loss read-backs (each is a device sync)
    diagnostics_every: int = 10  # (int) sample the filter diagnostics every Nth step (models.diagnostics)
    branch: dict = field(default_factory=dict)  # LLM-branch settings (K, tau, lambda_s, ...;
    #                                             mltfr.models.mltfr.BranchConfig), checked there
    consensus_file: str | None = None  # (path) round 2: merged expert from `mltfr fisher`; None = round 1

    def __post_init__(self) -> None:
        if isinstance(self.model, Mapping):
            self.model = BackboneConfig.from_dict(self.model, where="train.model")
        _require(self.protocol in PROTOCOLS, "protocol", self.protocol, f"one of {', '.join(PROTOCOLS)}")
        _require(self.device in DEVICES, "device", self.device, f"one of {', '.join(DEVICES)}")
        _require(self.select_on in (None, *SELECTION_SETS), "select_on", self.select_on,
                 f"one of {', '.join(SELECTION_SETS)}, or null for the protocol's (faithful test, "
                 "corrected valid)")
        _require(self.round1_budget in (None, *ROUND1_BUDGETS), "round1_budget", self.round1_budget,
                 f"one of {', '.join(ROUND1_BUDGETS)}, or null for the protocol's (faithful authors, "
                 "corrected full)")
        _require(self.metric_for_selection in metric_names(), "metric_for_selection",
                 self.metric_for_selection, f"one of {', '.join(metric_names())}")
        for key in ("batch_size", "epochs", "patience", "eval_every", "eval_batch_size",
                    "eval_item_block", "log_every", "diagnostics_every"):
            value = getattr(self, key)
            _require(value is None and key == "epochs" or value >= 1, key, value, "an integer >= 1")
        _require(self.lr > 0, "lr", self.lr, "a positive number")
        _require(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _require(self.sampled_negatives >= 0, "sampled_negatives", self.sampled_negatives, "0 or more")
        self._check_untrained_is_base()

    def _check_untrained_is_base(self) -> None:
        """A counted backbone (pop) has no hidden states an LLM branch could be added to."""
        if self.trains or (self.variant == "base" and not self.consensus_file):
            return
        given = f"variant {self.variant!r}" if self.variant != "base" else "a consensus file"
        raise ConfigError(f"backbone {self.backbone!r} is a popularity ranking without hidden states, "
                          f"so it takes no LLM branch ({given} was asked for); run it with --variant base "
                          f"only, or choose a trained backbone for LLM variants")

    @property
    def trains(self) -> bool:
        """False for a backbone without trainable parameters (pop): counted, evaluated once."""
        return self.backbone not in UNTRAINED_BACKBONES

    def resolved(self, key: str):
        """The value of setting `key` (a row of mltfr.spec.protocol, e.g. "model.impl"): as set, or
        the protocol's when left at None."""
        node = self
        for part in key.split("."):
            node = getattr(node, part)
        return by_protocol(key, self.protocol) if node is None else node

    @property
    def masks_history(self) -> bool:
        """Whether the evaluation excludes history items (the protocol's default when unset)."""
        return self.resolved("mask_history")

    @property
    def selects_on(self) -> str:
        """The set the reported epoch is chosen on: "test" or "valid" (the protocol's when unset)."""
        return self.resolved("select_on")

    @property
    def holds_out_valid(self) -> bool:
        """Whether training leaves out the validation item (the protocol's default when unset)."""
        return self.resolved("holdout_valid")

    @property
    def backbone_impl(self) -> str:
        """The backbone implementation (`model.impl`, the protocol's when unset): authors | ours."""
        return self.resolved("model.impl")

    @property
    def resolved_model(self) -> BackboneConfig:
        """The backbone settings the model is built with: `model`, its impl resolved by protocol."""
        return dataclasses.replace(self.model, impl=self.backbone_impl)

    @property
    def uses_train_vocab(self) -> bool:
        """Whether only the training split's items are numbered (the protocol's default when unset)."""
        return self.resolved("train_vocab")

    @property
    def shuffles_fisher(self) -> bool:
        """Whether the Fisher pass visits the batches shuffled (the protocol's default when unset)."""
        return self.resolved("fisher_shuffle")

    @property
    def round1_length(self) -> str:
        """Round 1's budget rule (`round1_budget`, the protocol's when unset): authors | full."""
        return self.resolved("round1_budget")

    @property
    def is_round1(self) -> bool:
        """True for round 1 of a consensus variant: it needs a second round and has no merged expert."""
        return self.consensus_file is None and needs_round2(self.variant)

    @property
    def window_items(self) -> int:
        """Items in a training window: L + 1 (L predictions), or the authors' sampler's L (the
        most recent L training items, L - 1 predictions) under the authors' implementation."""
        return self.model.max_len if self.backbone_impl == "authors" else self.model.max_len + 1

    @property
    def max_epochs(self) -> int:
        """The epoch budget: `epochs`, or the selection rule's default when unset: the authors'
        fixed 100 when selecting on test, at most 200 with early stopping on validation (so the
        ladder's selection factor switches the rule and its budget together). Round 1 of a
        consensus variant under round1_budget authors: their round-1 length, at most that."""
        if self.epochs is not None:
            budget = self.epochs
        else:
            budget = FAITHFUL_EPOCHS if self.selects_on == "test" else CORRECTED_EPOCHS
        if self.is_round1 and self.round1_length == "authors":
            return min(budget, authors_round1_epochs(self.backbone))
        return budget

    @property
    def selection(self) -> str:
        """How the reported epoch is chosen (follows `selects_on`; the protocol the run started
        from in parentheses), written into every output (no commas: a CSV cell).

        select_on test, the authors' rule: an epoch replaces the best one when it is at least as
        good on 3 or more of {HR, Precision, Recall, NDCG}@20 on the test set (wins_majority).
        """
        if not self.trains:
            return f"no-training-counts-evaluated-once ({self.protocol})"
        if self.selects_on == "test":
            return f"best-epoch-on-test-not-worse-on-3-of-{'/'.join(MAJORITY_KEYS)} ({self.protocol})"
        return f"early-stopping-on-valid-{self.metric_for_selection} ({self.protocol})"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "train") -> "RunConfig":
        """Build from a mapping; unknown keys and wrong types raise ConfigError naming `where`."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where}: expected a mapping of settings, got {type(values).__name__}")
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            if key not in hints:
                raise ConfigError(f"{where}: unknown key '{key}'; valid keys: {', '.join(hints)}")
            if key == "model":
                if not isinstance(value, (Mapping, BackboneConfig)):
                    raise ConfigError(f"{where}.model: expected a mapping of backbone settings, got {value!r}")
                continue
            _check_type(f"{where}.{key}", value, hints[key])
        values = dict(values)
        if isinstance(values.get("model"), Mapping):
            values["model"] = BackboneConfig.from_dict(values["model"], where=f"{where}.model")
        return cls(**values)


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"train.{key}={value!r} is invalid: expected {expected}")


def _check_type(where: str, value: Any, hint: Any) -> None:
    """Reject a value whose type does not match the annotation (bool is not an int here)."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    allowed = typing.get_args(hint) if union else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return
        if kind is bool and isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind in (str, dict) and isinstance(value, kind):
            return
    names = " or ".join("null" if k is type(None) else k.__name__ for k in allowed)
    raise ConfigError(f"{where}: expected {names}, got {value!r} ({type(value).__name__})")


def apply_overrides(cfg: RunConfig, overrides: list[str] | Mapping[str, Any]) -> RunConfig:
    """A new RunConfig with `key=value` strings (values parsed as YAML) or a mapping applied."""
    values = cfg.to_dict()
    items = overrides.items() if isinstance(overrides, Mapping) else map(parse_override, overrides)
    for key, value in items:
        *parents, leaf = key.split(".")
        node = values
        for part in parents:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override '{key}': '{part}' is not a section; sections are model, branch")
            node = node[part]
        node[leaf] = value
    return RunConfig.from_dict(values, where="override")


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}' must look like key=value (e.g. lr=0.0005 or model.d=32)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': the value is not valid YAML ({exc.problem})") from None
    return key.strip(), _yaml11_float(value)


def _yaml11_float(value: Any) -> Any:
    """YAML 1.1 reads `5e-4` (no dot) as a string; such a value is meant as a number."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value
