"""Backbones of the study and the registry that builds them by name.

| name        | model                         | loss                                              |
|-------------|-------------------------------|---------------------------------------------------|
| `sasrec`    | SASRec (Kang & McAuley 2018)  | BCE, 1 negative per position (as in the paper)    |
| `sasrec-ce` | the same network              | full softmax CE over all items (strong baseline)  |
| `bert4rec`  | BERT4Rec (Sun et al. 2019)    | CE over all items at cloze-masked positions       |
| `gru4rec`   | GRU4Rec (Hidasi et al. 2016)  | full softmax CE over all items at every position  |
| `fmlprec`   | FMLP-Rec (Zhou et al. 2022)   | BCE, 1 negative per position (as in the paper)    |
| `pop`       | popularity ranking (control)  | none: counts of the training split, not trained   |

`build_backbone(name, n_items, cfg)` returns an ID-only `SequentialRecommender`; the LLM
branch (mltfr.models.mltfr) is attached afterwards through its `branch` attribute.
Backbones in `UNTRAINED_BACKBONES` have no trainable parameters and take no LLM branch: the
trainer counts them from the training split and evaluates them once (mltfr.train.loop).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

from mltfr.errors import ConfigError
from mltfr.spec.backbone_config import BackboneConfig
from mltfr.spec.backbones import UNTRAINED_BACKBONES

if TYPE_CHECKING:
    from mltfr.models.base import SequentialRecommender


def __getattr__(name: str):
    """`SequentialRecommender` on first use: importing this package (for its names and
    BackboneConfig, e.g. while the workflow validates `train:`) does not import torch."""
    if name == "SequentialRecommender":
        from mltfr.models.base import SequentialRecommender
        return SequentialRecommender
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _sasrec(n_items: int, cfg: BackboneConfig, loss_type: str) -> SequentialRecommender:
    from mltfr.models.sasrec import SASRec
    return SASRec(n_items, cfg, loss_type=loss_type)


def _bert4rec(n_items: int, cfg: BackboneConfig) -> SequentialRecommender:
    from mltfr.models.bert4rec import BERT4Rec
    return BERT4Rec(n_items, cfg)


def _gru4rec(n_items: int, cfg: BackboneConfig) -> SequentialRecommender:
    from mltfr.models.gru4rec import GRU4Rec
    return GRU4Rec(n_items, cfg)


def _fmlprec(n_items: int, cfg: BackboneConfig) -> SequentialRecommender:
    from mltfr.models.fmlprec import FMLPRec
    return FMLPRec(n_items, cfg)


def _popularity(n_items: int, cfg: BackboneConfig) -> SequentialRecommender:
    from mltfr.models.popularity import Popularity
    return Popularity(n_items, cfg)


BACKBONES: dict[str, Callable[[int, BackboneConfig], SequentialRecommender]] = {
    "sasrec": lambda n, cfg: _sasrec(n, cfg, "bce"),
    "sasrec-ce": lambda n, cfg: _sasrec(n, cfg, "ce"),
    "bert4rec": _bert4rec,
    "gru4rec": _gru4rec,
    "fmlprec": _fmlprec,
    "pop": _popularity,
}


def build_backbone(name: str, n_items: int,
                   cfg: BackboneConfig | Mapping[str, Any] | None = None) -> SequentialRecommender:
    """Build backbone `name` for items 1..n_items; cfg may be a BackboneConfig or a dict."""
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")
    if cfg is None:
        cfg = BackboneConfig()
    elif not isinstance(cfg, BackboneConfig):
        cfg = BackboneConfig.from_dict(cfg)
    return BACKBONES[name](n_items, cfg)


__all__ = ["BACKBONES", "UNTRAINED_BACKBONES", "BackboneConfig", "SequentialRecommender", "build_backbone"]
