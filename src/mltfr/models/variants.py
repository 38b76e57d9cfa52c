"""Study variant names -> LLM branch configuration (the same names in the CLI, config and workflow).

    base                  ID-only backbone, no branch
    direct-<llm>          one LLM, whole vocabulary as P learned prototypes (Time-LLM style)
    filter-<llm>          one LLM, user-guided token filtering
    mltfr                 all LLMs: filtering + router + Fisher consensus (two rounds)
    mltfr-nofilter        prototypes instead of filtering
    mltfr-norouter        uniform mean instead of the router
    mltfr-noconsensus     no consensus expert (one round)
    mltfr-meanconsensus   consensus merged by plain mean instead of Fisher
    mltfr-frozen          token tables frozen
    mltfr-random          random tables of the same shapes (LLM names `random-<llm>`)

Sensitivity (K, lambda_s, tau, the LLM subset) is plain config: it lives in `base`/llm_names.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace

from torch import Tensor

from mltfr.errors import ConfigError
from mltfr.models.mltfr import (BranchConfig, MltfrBranch, build_branch, default_consensus_group,
                                resolve_consensus_group)

RANDOM_PREFIX = "random-"   # registry name of an LLM's random control table

# Every MLTFR variant starts from the full method and changes one thing.
FULL_METHOD = {"filtering": True, "router": "softmax", "trainable_tables": True, "consensus": "fisher"}
MLTFR_VARIANTS = {
    "mltfr": {},
    "mltfr-nofilter": {"filtering": False},
    "mltfr-norouter": {"router": "mean"},
    "mltfr-noconsensus": {"consensus": "none"},
    "mltfr-meanconsensus": {"consensus": "mean"},
    "mltfr-frozen": {"trainable_tables": False},
    "mltfr-random": {},
}
SINGLE_LLM = {"direct": {"filtering": False}, "filter": {"filtering": True}}

# Authors' per-backbone settings; GRU4Rec is not in their code and takes SASRec's. Their
# BERT4Rec/FMLP-Rec GatingNetwork returns a softmax that their MoE softmaxes again.
BACKBONE_DEFAULTS = {
    "sasrec": {"lambda_s": 0.01, "K": 1, "router_softmax_twice": False},
    "sasrec-ce": {"lambda_s": 0.01, "K": 1, "router_softmax_twice": False},
    "bert4rec": {"lambda_s": 0.2, "K": 1, "router_softmax_twice": True},
    "fmlprec": {"lambda_s": 0.05, "K": 10, "router_softmax_twice": True},
    "gru4rec": {"lambda_s": 0.01, "K": 1, "router_softmax_twice": False},
}


def backbone_defaults(backbone: str) -> dict:
    """The branch settings (lambda_s, K, router_softmax_twice) the authors use with `backbone`."""
    if backbone not in BACKBONE_DEFAULTS:
        raise ConfigError(f"backbone {backbone!r} is unknown; use one of {', '.join(BACKBONE_DEFAULTS)}")
    return dict(BACKBONE_DEFAULTS[backbone])


def variant_names(llm_names: list[str]) -> list[str]:
    """Every valid variant name for these LLMs."""
    singles = [f"{kind}-{llm}" for kind in SINGLE_LLM for llm in llm_names]
    return ["base", *singles, *MLTFR_VARIANTS]


def _unknown(variant: str, llm_names: list[str]) -> ConfigError:
    return ConfigError(f"variant {variant!r} is unknown for LLMs {llm_names}; valid variants: "
                       f"{', '.join(variant_names(llm_names))}")


def _single_llm(variant: str, llm_names: list[str], base: BranchConfig) -> tuple[BranchConfig, list[str]]:
    kind, _, llm = variant.partition("-")
    if llm not in llm_names:
        raise _unknown(variant, llm_names)
    cfg = replace(base, **SINGLE_LLM[kind], router="mean", consensus="none", trainable_tables=True,
                  consensus_group=None, names=[llm])
    return cfg, [llm]


def variant_config(variant: str, llm_names: list[str], base: BranchConfig,
                   dims: list[int] | None = None) -> tuple[BranchConfig | None, list[str]]:
    """(branch config or None for `base`, the LLM names whose tables the branch takes).

    With `dims` (token dimension per llm_names entry) the consensus group is resolved now, so a
    variant that cannot form one fails before round 1 trains.
    """
    if variant == "base":
        return None, []
    if variant.partition("-")[0] in SINGLE_LLM:
        return _single_llm(variant, llm_names, base)
    if variant not in MLTFR_VARIANTS:
        raise _unknown(variant, llm_names)
    if not llm_names:
        raise ConfigError(f"variant {variant} needs at least one LLM; pass --llm NAME=FOLDER")
    names = list(llm_names)
    if variant == "mltfr-random":
        names = list(dict.fromkeys(n if n.startswith(RANDOM_PREFIX) else RANDOM_PREFIX + n for n in names))
    cfg = replace(base, **{**FULL_METHOD, **MLTFR_VARIANTS[variant]}, names=names)
    if dims is not None and cfg.consensus != "none":
        cfg = replace(cfg, consensus_group=resolve_consensus_group(cfg, list(dims)))
    return cfg, names


def needs_round2(variant: str) -> bool:
    """True when the variant trains a second round with a merged consensus expert."""
    return variant in MLTFR_VARIANTS and {**FULL_METHOD, **MLTFR_VARIANTS[variant]}["consensus"] != "none"


def base_config(protocol: str, backbone: str, d: int, overrides: Mapping | None = None) -> BranchConfig:
    """Protocol settings + the backbone's lambda_s, K and router + config overrides (e.g. K, tau, lambda_s)."""
    overrides = {("K" if key == "k" else key): v for key, v in (overrides or {}).items()}  # `branch.k=10`
    valid = {f.name for f in fields(BranchConfig)} - {"d", "names"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown branch setting(s) {unknown}; valid: {', '.join(sorted(valid))}")
    return BranchConfig.for_protocol(protocol, d=d, **{**backbone_defaults(backbone), **overrides})


def make_branch(variant: str, llm_names: list[str], tables: Mapping[str, Tensor], base: BranchConfig,
                shared_state: dict[str, Tensor] | None = None) -> MltfrBranch | None:
    """The variant's branch (None for `base`); `tables` maps every LLM name it uses to its table.

    Round 1: shared_state None. Round 2: the merged expert from `mltfr.models.fisher.load_consensus`.
    """
    cfg, names = variant_config(variant, llm_names, base)
    if cfg is None:
        return None
    missing = [n for n in names if n not in tables]
    if missing:
        raise ConfigError(f"variant {variant} needs the token tables of {missing}; pass them with "
                          f"--llm NAME=results/llm/NAME (given: {sorted(tables)})")
    chosen = [tables[n] for n in names]
    cfg, _ = variant_config(variant, llm_names, base, dims=[t.shape[1] for t in chosen])
    return build_branch(cfg, chosen, shared_state=shared_state)


__all__ = ["backbone_defaults", "base_config", "default_consensus_group", "make_branch", "needs_round2",
           "variant_config", "variant_names", "RANDOM_PREFIX"]
