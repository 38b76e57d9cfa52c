"""The interface every backbone implements and its config.

`SequentialRecommender` (the contract: forward, loss, user and item representations, the LLM
branch's injection point); its hyper-parameters, `BackboneConfig`, live in the torch-free
`backbone_config` (re-exported here). The parts backbones share
live beside it: layers (embedding, Transformer block, dropout, packing of real positions),
sampling (negatives) and losses (BCE, fused full cross-entropy).

Sequences are left-padded with item id 0; the most recent item is last.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from mltfr.errors import ConfigError
from mltfr.spec.backbone_config import BackboneConfig  # noqa: F401  (re-exported)

PAD = 0  # item id of padding


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

    @contextlib.contextmanager
    def users_of(self, users: Tensor | None):
        """Hand the LLM branch the user ids (B,) of the windows of the forward passes inside (the
        trainer's batches, the evaluator's blocks). Only the positive control's lookup reads them
        (the row of the window's own user); every other branch, and a model without one, ignores them."""
        if self.branch is None:
            yield
            return
        self.branch.users = users
        try:
            yield
        finally:
            self.branch.users = None

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
