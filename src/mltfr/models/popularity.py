"""Popularity ranking: every user gets the items ordered by their count in the training split.

The control every sequential recommender must beat. It has no trainable parameters: the
trainer counts once (`count`) and evaluates once; the project's evaluator ranks the counts
under the run's protocol (faithful: history not masked; corrected: masked; ties pessimistic).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mltfr.errors import MltfrError
from mltfr.models.base import PAD, BackboneConfig, SequentialRecommender


class Popularity(SequentialRecommender):
    """Score of item i = its number of occurrences in the training split, for every user.

    Scores = ones (B, 1) @ counts (n_items+1, 1).T, so the evaluator's matrix product returns the
    counts exactly (float32 holds integers up to 2**24) and equal counts tie exactly.
    """

    ignores_left_padding = True  # the representation ignores the inputs altogether

    def __init__(self, n_items: int, cfg: BackboneConfig):
        super().__init__(n_items, cfg)
        # a buffer, not a parameter: saved with the model's state, never trained
        self.register_buffer("counts", torch.zeros(n_items + 1))  # (n_items+1,), row 0 = padding

    def count(self, train_items: Tensor) -> None:
        """Set the counts from the training split's items (N,) (ids 1..n_items; 0 is skipped)."""
        if train_items.numel() and int(train_items.max()) > self.n_items:
            raise MltfrError(f"training items reach id {int(train_items.max())} but the model has "
                             f"{self.n_items} items; re-prepare the data")
        counts = torch.bincount(train_items.flatten().long(), minlength=self.n_items + 1)
        counts[PAD] = 0
        self.counts.copy_(counts.to(self.counts.dtype))

    def forward(self, seqs: Tensor) -> Tensor:  # (B, L) -> (B, L, 1)
        return self.counts.new_ones(*seqs.shape, 1)

    def loss(self, seqs: Tensor, gen: torch.Generator) -> Tensor:
        raise MltfrError("the popularity ranking has nothing to train; it is counted (Popularity.count)")

    def user_representation(self, inputs: Tensor) -> Tensor:  # (B, L) -> (B, 1)
        return self.counts.new_ones(inputs.shape[0], 1)

    def item_representation(self) -> Tensor:  # (n_items+1, 1)
        return self.counts[:, None]
