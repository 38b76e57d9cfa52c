"""The backbones by name, and the settings the authors give each (mltfr.models builds them).

Backbones in UNTRAINED_BACKBONES have no trainable parameters and take no LLM branch (pop: the
popularity ranking of the training split, variant base only).
"""
from __future__ import annotations

from mltfr.errors import ConfigError

BACKBONE_NAMES = ("sasrec", "sasrec-ce", "bert4rec", "gru4rec", "fmlprec", "pop")
UNTRAINED_BACKBONES = frozenset({"pop"})  # counted, not trained: base variant only

# The authors' branch settings per backbone; GRU4Rec is not in their code and takes SASRec's. Their
# BERT4Rec/FMLP-Rec GatingNetwork returns a softmax that their MoE softmaxes again.
BRANCH_DEFAULTS = {
    "sasrec": {"lambda_s": 0.01, "K": 1, "router_softmax_twice": False},
    "sasrec-ce": {"lambda_s": 0.01, "K": 1, "router_softmax_twice": False},
    "bert4rec": {"lambda_s": 0.2, "K": 1, "router_softmax_twice": True},
    "fmlprec": {"lambda_s": 0.05, "K": 10, "router_softmax_twice": True},
    "gru4rec": {"lambda_s": 0.01, "K": 1, "router_softmax_twice": False},
}
# What the authors' BERT4Rec and FMLP-Rec modules do to the branch that their SASRec does not;
# applied with the backbone's impl "authors" only (the corrected protocol keeps neither).
AUTHORS_IMPL_DEFAULTS = {
    "bert4rec": {"shared_train_mode": True, "zero_padding": False},
    "fmlprec": {"shared_train_mode": True, "reinitialise": True},
}
# Round 1's length in the authors' code: the file each round 2 loads was saved by round 1 under
# its epoch count (method.md, "Round 1"); backbones not in their code take SASRec's.
AUTHORS_ROUND1_EPOCHS = {"sasrec": 20, "fmlprec": 20, "bert4rec": 100}


def branch_defaults(backbone: str, impl: str = "ours") -> dict:
    """The branch settings (lambda_s, K, router_softmax_twice) the authors use with `backbone`,
    plus, under impl "authors", their module's quirks (AUTHORS_IMPL_DEFAULTS)."""
    if backbone not in BRANCH_DEFAULTS:
        raise ConfigError(f"backbone {backbone!r} is unknown; use one of {', '.join(BRANCH_DEFAULTS)}")
    quirks = AUTHORS_IMPL_DEFAULTS.get(backbone, {}) if impl == "authors" else {}
    return {**BRANCH_DEFAULTS[backbone], **quirks}


def authors_round1_epochs(backbone: str) -> int:
    return AUTHORS_ROUND1_EPOCHS.get(backbone, AUTHORS_ROUND1_EPOCHS["sasrec"])
