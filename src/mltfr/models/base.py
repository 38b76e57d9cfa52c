"""The interface every backbone implements and its config.

`SequentialRecommender` (the contract: forward, loss, user and item representations, the LLM
branch's injection point) and `BackboneConfig` (its hyper-parameters). The parts backbones share
live beside it: layers (embedding, Transformer block, dropout, packing of real positions),
sampling (negatives) and losses (BCE, fused full cross-entropy).

Sequences are left-padded with item id 0; the most recent item is last.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mltfr.errors import ConfigError

PAD = 0  # item id of padding


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
    want_int = annotation.startswith("int")
    ok = (isinstance(value, int) and not isinstance(value, bool)) if want_int else (
        isinstance(value, (int, float)) and not isinstance(value, bool))
    if not ok:
        kind = "an integer" if want_int else "a number"
        raise ConfigError(f"{where}: key '{key}' must be {kind}, got {value!r}")


class SequentialRecommender(nn.Module):
    """Base class: subclasses set `self.embed` (a SequenceEmbedding) and define forward, loss.

    Scores = user_representation(inputs) @ item_representation().T; row/column 0 is padding.
    """

    ignores_left_padding = False  # subclasses whose outputs at real positions ignore left padding
    shape_defaults: dict[str, int] = {}  # the backbone's n_blocks / n_heads when the config leaves them None

    @property
    def batch_dependent(self) -> bool:
        """True when a user's output depends on the other users of its batch (a faithful branch
        pools the filtered tokens over the batch)."""
        return getattr(getattr(self.branch, "cfg", None), "pooling", "user") == "batch"

    @property
    def left_padding_invariant(self) -> bool:
        """True when the evaluator may sort users by length and trim each block's padding."""
        return self.ignores_left_padding and not self.batch_dependent

    def __init__(self, n_items: int, cfg: BackboneConfig):
        super().__init__()
        if n_items < 1:
            raise ConfigError(f"a backbone needs at least one item, got n_items={n_items}")
        self.n_items, self.d, self.max_len = n_items, cfg.d, cfg.max_len
        self.cfg = cfg.with_defaults(self.shape_defaults)  # subclasses read the resolved self.cfg
        self.branch: nn.Module | None = None  # set by mltfr.models.mltfr; None = ID-only

    def inject(self, h: Tensor, h0: Tensor, seqs: Tensor) -> Tensor:
        """Add the LLM branch after the first block: h (B, L, d) + branch(h0, seqs) (B, L, d)."""
        return h if self.branch is None else h + self.branch(h0, seqs)

    def forward(self, seqs: Tensor) -> Tensor:  # (B, L) -> (B, L, d)
        raise NotImplementedError

    def loss(self, seqs: Tensor, gen: torch.Generator) -> Tensor:
        """Training loss on left-padded windows seqs (B, L+1); gen lives on seqs.device."""
        raise NotImplementedError

    def user_representation(self, inputs: Tensor) -> Tensor:
        """(B, L) -> (B, d): the hidden state at the last (most recent) position."""
        return self.forward(inputs)[:, -1, :]

    def item_representation(self) -> Tensor:
        """(n_items+1, d); row 0 is the padding item."""
        return self.embed.item_emb.weight[: self.n_items + 1]
