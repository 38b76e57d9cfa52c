"""`BackboneConfig`: the hyper-parameters of an ID-only backbone, checked on construction.

Torch-free (like mltfr.spec.run_config, which embeds it), so the study config's `train:` section can
be validated while the workflow builds its DAG.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

from mltfr.errors import ConfigError

IMPLS = ("authors", "ours")  # BackboneConfig.impl: the authors' network and training quirks, or ours


@dataclass
class BackboneConfig:
    """Hyper-parameters of an ID-only backbone (method.md defaults: d=64, L=50, dropout 0.2).

    n_blocks and n_heads left at None take the backbone's own default (its `shape_defaults`,
    the authors' settings), filled in by `SequentialRecommender.__init__`.
    """

    d: int = 64  # (int) hidden size = item embedding size
    max_len: int = 50  # (int) L, the longest input sequence; training windows hold L+1 items
    n_blocks: int | None = None  # (int) Transformer / filter blocks, or GRU layers for gru4rec; None =
    #                              backbone default (SASRec 2, BERT4Rec 2, FMLP-Rec 1, GRU4Rec 2)
    n_heads: int | None = None  # (int) attention heads; None = backbone default (SASRec 8, BERT4Rec 1)
    dropout: float = 0.2  # (float) dropout on embeddings and block outputs
    attn_dropout: float = 0.2  # (float) dropout on attention weights (SASRec/BERT4Rec)
    mask_prob: float = 0.5  # (float) BERT4Rec cloze masking probability per position (authors: 0.5)
    impl: str | None = None  # (str) "authors": each backbone's network, initialisation, positions,
    #                          training windows, negatives, masks and prediction as the authors' code
    #                          computes them (docs/method.md, "Each backbone as the authors ran it");
    #                          "ours": the study's own; None = by protocol (RunConfig: faithful
    #                          authors, corrected ours); a backbone built with None runs ours

    def __post_init__(self) -> None:
        for name in ("d", "max_len", "n_blocks"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"backbone config: {name}={getattr(self, name)} must be >= 1")
        if self.n_heads is not None and (self.n_heads < 1 or self.d % self.n_heads):
            raise ConfigError(f"backbone config: n_heads={self.n_heads} must be >= 1 and divide d={self.d}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"backbone config: {name}={getattr(self, name)} must be in [0, 1)")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"backbone config: mask_prob={self.mask_prob} must be in (0, 1)")
        if self.impl not in (None, *IMPLS):
            raise ConfigError(f"backbone config: impl={self.impl!r} is not valid; use one of "
                              f"{', '.join(IMPLS)}, or null for the protocol's")

    @property
    def authors(self) -> bool:
        """Whether the backbone runs the authors' implementation (impl authors; None = ours)."""
        return self.impl == "authors"

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "backbone") -> "BackboneConfig":
        """Build from a mapping (e.g. YAML); unknown keys and wrong types raise ConfigError."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in fields:
                raise ConfigError(f"{where}: unknown key '{key}'; valid keys: {', '.join(fields)}")
            _check_type(where, key, value, fields[key].type)
        return cls(**values)

    def with_defaults(self, defaults: Mapping[str, int]) -> "BackboneConfig":
        """A copy with every setting left at None taken from `defaults` (a backbone's own)."""
        fill = {key: value for key, value in defaults.items() if getattr(self, key) is None}
        heads = fill.get("n_heads")
        if heads is not None and self.d % heads:
            raise ConfigError(f"backbone config: the backbone's default n_heads={heads} does not divide "
                              f"d={self.d}; set model.n_heads to a divisor of d, or change d")
        return dataclasses.replace(self, **fill)


def _check_type(where: str, key: str, value: Any, annotation: str) -> None:
    """Reject values of the wrong type (bool is not an int here; an int is a valid float)."""
    if value is None and "None" in annotation:
        return
    if annotation.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: key '{key}' must be a string, got {value!r}")
        return
    want_int = annotation.startswith("int")
    ok = (isinstance(value, int) and not isinstance(value, bool)) if want_int else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok:
        kind = "an integer" if want_int else "a number"
        raise ConfigError(f"{where}: key '{key}' must be {kind}, got {value!r}")
