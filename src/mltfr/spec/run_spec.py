"""`RunSpec`: one run, resolved once by whoever asks for it, consumed by `mltfr train`, echoed.

The workflow's grid (mltfr.study.grid) writes one spec per run into its folder (run.json) and the
training job runs `mltfr train --spec run.json`; a person's `mltfr train --data ... --set ...`
builds the same spec from its flags. result.json echoes the spec (`spec`), so the analysis reads a
run's study name, dataset, protocol folder and settings from there, never from folder paths.

Settings, lowest precedence first: RunConfig defaults, the study config's `train:` section
(`train`), the backbone's tuned choice (`tuned`, a choice.json written by another job, read when
the run starts), the run's identity (backbone, the protocol the run starts from, seed, variant,
device, consensus file) with its rung's settings, then `sets` (`--set key=value`), which must
leave a rung's settings as the rung sets them. Torch-free.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mltfr.errors import ConfigError
from mltfr.spec import rungs
from mltfr.spec.run_config import RunConfig, apply_overrides

SPEC_FILE = "run.json"   # a run's spec, beside its result.json


@dataclass(frozen=True)
class RunSpec:
    """Everything `mltfr train` needs to train one run, and the study's names for it."""

    data: str                      # the prepared dataset folder (mltfr prepare --out)
    out: str                       # the run folder
    backbone: str
    protocol: str                  # faithful | corrected | a ladder rung | with-<factor>[+...]
    seed: int
    variant: str = "base"          # the variant the model trains (sensitivity: mltfr + its setting)
    study_variant: str | None = None   # the study's name when it differs (mltfr@branch.K=3, mltfr@n_llms=2)
    dataset: str | None = None     # the study's name of the dataset
    llm: dict = field(default_factory=dict)       # LLM name -> token-table folder, in the branch's order
    consensus: str | None = None   # round 2: the merged expert of round 1
    tuned: str | None = None       # the backbone's choice.json (mltfr tune choose)
    rung_order: tuple | None = None    # the ladder's order, or the protocol-factor block's factors
    train: dict = field(default_factory=dict)     # the study config's `train:` section
    sets: dict = field(default_factory=dict)      # RunConfig key -> value, applied last
    device: str | None = None

    @property
    def rung(self) -> rungs.Rung | None:
        """The ladder rung or protocol-factor setting `protocol` names, else None."""
        if not rungs.is_rung(self.protocol):
            if self.rung_order:
                raise ConfigError(f"a rung order (--rung-order) applies to protocol-ladder rungs only, not to protocol "
                                  f"{self.protocol}; drop it or give a rung (rung-<factor>)")
            return None
        return rungs.rung(self.protocol, self.rung_order or rungs.default_order(self.protocol))

    def rung_record(self) -> dict | None:
        rung = self.rung
        return rung.record(self.rung_order or rungs.default_order(rung.name)) if rung else None

    def config(self, tuned_settings: dict | None = None) -> RunConfig:
        """The run's RunConfig (the precedence in the module docstring); `tuned_settings`: the
        settings of `tuned`'s choice file."""
        cfg = RunConfig.from_dict(self.train, where="train")
        if tuned_settings:
            cfg = apply_overrides(cfg, tuned_settings)
        rung = self.rung
        identity = {"backbone": self.backbone, "protocol": rung.start if rung else self.protocol,
                    "seed": self.seed, "variant": self.variant}
        identity.update({k: v for k, v in (("device", self.device), ("consensus_file", self.consensus)) if v})
        cfg = apply_overrides(apply_overrides(cfg, {**identity, **(rung.overrides if rung else {})}), self.sets)
        if rung and apply_overrides(cfg, rung.overrides) != cfg:
            raise ConfigError(f"--set changes a setting of rung {rung.name} ({rung.overrides}); drop that "
                              f"--set or run another rung")
        return cfg

    def to_dict(self) -> dict:
        doc = dataclasses.asdict(self)
        doc["rung_order"] = list(self.rung_order) if self.rung_order else None
        return doc

    @classmethod
    def from_dict(cls, doc: dict, where: str = "run spec") -> "RunSpec":
        """A spec from its JSON document; unknown or missing keys raise ConfigError naming `where`."""
        if not isinstance(doc, dict):
            raise ConfigError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - set(known))
        missing = [n for n, f in known.items() if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and n not in doc]
        if unknown or missing:
            raise ConfigError(f"{where}: unknown key(s) {unknown or 'none'}, missing key(s) {missing or 'none'}; "
                              f"a run spec has {', '.join(known)}: fix the file, or let the workflow rewrite it "
                              f"(or run `mltfr train` with flags instead of --spec)")
        values = dict(doc)
        if values.get("rung_order"):
            values["rung_order"] = tuple(values["rung_order"])
        return cls(**values)

    @property
    def name(self) -> str:
        """The study's variant name of this run."""
        return self.study_variant or self.variant
