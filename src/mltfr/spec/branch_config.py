"""`BranchConfig`: every setting of the MLTFR LLM branch (each study variant is one of these),
and the valid values of its choice settings."""
from __future__ import annotations

from dataclasses import dataclass, field

from mltfr.errors import ConfigError
from mltfr.spec.protocol import PROTOCOLS, branch_defaults

POOLINGS = ("user", "batch")
ROUTERS = ("softmax", "mean")
CONSENSUS = ("none", "fisher", "mean")
FILTER_GRADS = ("authors", "learn")
SELECTIONS = ("guided", "random", "lookup")
USER_VECTORS = ("window", "causal")
ALIASES = {"k": "K"}   # `branch.k=10` is read as K (a lower-case key is easier to type)


def branch_key(name: str) -> str:
    """A branch setting's field name (aliases resolved)."""
    return ALIASES.get(name, name)


@dataclass
class BranchConfig:
    """Every setting of the LLM branch; each study variant is one of these."""

    d: int = 64                  # (int) backbone hidden size; the branch outputs (B, L, d)
    K: int = 1                   # (int) tokens kept per user and LLM (authors: 1 SASRec/BERT4Rec, 10 FMLP-Rec)
    tau: float = 0.5             # (float) Gumbel-softmax temperature
    pooling: str = "user"        # "user" (corrected: each user attends to its own K) | "batch" (faithful: all B*K pooled)
    eval_noise: bool = False     # (bool) Gumbel noise also at evaluation (faithful True, corrected False)
    filter_grad: str = "authors"  # "authors" (renormalised straight-through weights) | "learn" (gradient 1/K into y)
    score_scale: float = 1.0     # (float) fixed logit scale c on the cosine scores: the training pick is drawn
    #                              from softmax(c s); 1 = the authors' (near uniform), 50 = the sharp filter
    selection: str = "guided"    # "guided" (user-guided top-K) | "random" (control: K tokens uniform per user) |
    #                              "lookup" (the row of the window's own user: user-keyed tables only, the
    #                              positive control's pick handed to the branch; K is 1, docs/method.md)
    user_vector: str = "window"  # "window" (mean over the whole window, authors) | "causal" (prefix mean per position)
    filtering: bool = True       # (bool) user-guided filtering; False = P learned prototype tokens (direct injection)
    n_prototypes: int = 50       # (int) P, prototype tokens per LLM when filtering is off (Time-LLM style)
    router: str = "softmax"      # "softmax" (dense per-position router) | "mean" (uniform 1/M, ablation)
    router_softmax_twice: bool = False  # (bool) softmax over softmax (authors' BERT4Rec/FMLP-Rec: their
    #                                     GatingNetwork returns a softmax and their MoE applies another)
    consensus: str = "none"      # merge for the round-2 consensus expert: "none" | "fisher" | "mean"
    lambda_s: float = 0.01       # (float) weight of the consensus expert (0.01 SASRec, 0.2 BERT4Rec, 0.05 FMLP-Rec);
    #                              round 1 adds a frozen random copy of the first group expert with it too
    consensus_group: list[int] | None = None  # indices of the LLMs merged (same D); None = largest same-D set
    trainable_tables: bool = True  # (bool) fine-tune the token tables (published) or keep them frozen
    table_weight_decay: float = 0.0  # (float) Adam L2 decay of the trainable token tables alone; the run's
    #                                  weight_decay (the backbone's, e.g. the tuned one) does not reach them:
    #                                  coupled with Adam it drives every row the filter does not pick to 0
    reinitialise: bool = False   # (bool) after construction redraw every branch weight N(0, 0.02) (biases 0)
    #                              and every token table N(0, 0.02): the tables are random, as in the
    #                              authors' FMLP-Rec, whose init_weights runs after the tables are registered
    zero_padding: bool = True   # (bool) zero the branch output at padding positions (the study's choice);
    #                              False: the authors' BERT4Rec, whose second block attends to the padding
    #                              slots, which hold the branch output
    shared_train_mode: bool = False  # (bool) the frozen consensus expert follows the model's train mode
    #                                  (attention dropout on in training), as in the authors' BERT4Rec and
    #                                  FMLP-Rec, which never call .eval() on it; False: always eval (SASRec)
    n_heads: int = 4             # (int) attention heads per expert, head size d / n_heads
    attn_dropout: float = 0.1    # (float) dropout on the expert's attention weights
    out_dropout: float = 0.1     # (float) dropout on the expert's output
    names: list[str] = field(default_factory=list)  # LLM names, for messages and interpretability

    def __post_init__(self):
        for key, valid in (("pooling", POOLINGS), ("router", ROUTERS), ("consensus", CONSENSUS),
                           ("filter_grad", FILTER_GRADS), ("selection", SELECTIONS),
                           ("user_vector", USER_VECTORS)):
            if getattr(self, key) not in valid:
                raise ConfigError(f"branch setting {key}={getattr(self, key)!r} is not valid; "
                                  f"use one of {', '.join(valid)}")
        if self.user_vector == "causal" and self.pooling == "batch":
            raise ConfigError("branch setting user_vector='causal' needs pooling='user': batch pooling "
                              "lets every position attend to the tokens picked for all positions of the "
                              "batch, later (future) positions included; set pooling=user (the corrected "
                              "protocol) or user_vector=window")
        if self.K < 1 or self.n_prototypes < 1:
            raise ConfigError(f"branch settings K={self.K} and n_prototypes={self.n_prototypes} must be >= 1")
        if self.table_weight_decay < 0:
            raise ConfigError(f"branch setting table_weight_decay={self.table_weight_decay} must be >= 0")
        if self.tau <= 0 or self.score_scale <= 0:
            raise ConfigError(f"branch settings tau={self.tau} and score_scale={self.score_scale} must be > 0")
        if self.d % self.n_heads:
            raise ConfigError(f"hidden size d={self.d} is not divisible by n_heads={self.n_heads}; "
                              "change one so that d / n_heads is an integer")

    @classmethod
    def for_protocol(cls, protocol: str, **overrides) -> "BranchConfig":
        """The protocol's branch settings (mltfr.spec.protocol: faithful = batch pooling + noise at
        evaluation, the authors' code; corrected = neither), then `overrides`."""
        if protocol not in PROTOCOLS:
            raise ConfigError(f"protocol {protocol!r} is unknown; use faithful or corrected")
        return cls(**{**branch_defaults(protocol), **overrides})
