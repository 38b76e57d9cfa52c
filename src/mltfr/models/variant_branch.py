"""Study variant names -> LLM branch configuration.

The names, what each changes and which LLMs it takes are defined once, in
`mltfr.spec.variants`; this module turns an entry into a `BranchConfig` (the variant's settings
over the protocol's and the backbone's defaults). Sensitivity (K, lambda_s, tau, the LLM subset)
is plain config: it arrives through `base` and llm_names.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, replace

from torch import Tensor

from mltfr.errors import ConfigError
from mltfr.models.mltfr import BranchConfig, MltfrBranch, build_branch, default_consensus_group, resolve_consensus_group
from mltfr.spec.backbones import branch_defaults
from mltfr.spec.branch_config import branch_key
from mltfr.spec.variants import FULL_METHOD, PLANTED_PREFIX, RANDOM_PREFIX, names, parse, random_twins


def variant_names(llm_names: list[str]) -> list[str]:
    """Every valid variant name for these LLMs."""
    return names(llm_names)


def _unknown(variant: str, llm_names: list[str]) -> ConfigError:
    return ConfigError(f"variant {variant!r} is unknown for LLMs {llm_names}; valid variants: "
                       f"{', '.join(variant_names(llm_names))}")


def variant_config(variant: str, llm_names: list[str], base: BranchConfig,
                   dims: list[int] | None = None) -> tuple[BranchConfig | None, list[str]]:
    """(branch config or None for `base`, the LLM names whose tables the branch takes).

    With `dims` (token dimension per llm_names entry) the consensus group is resolved now, so a
    variant that cannot form one fails before round 1 trains.
    """
    parsed = parse(variant)
    if parsed is None or parsed.variant.block == "sensitivity" or (
            parsed.llm is not None and parsed.llm not in llm_names):
        raise _unknown(variant, llm_names)
    entry = parsed.variant
    if entry.llms == "none":
        return None, []
    if entry.llms == "one":
        return replace(base, **entry.settings, names=[parsed.llm]), [parsed.llm]
    if not llm_names:
        raise ConfigError(f"variant {variant} needs at least one LLM; pass --llm NAME=FOLDER")
    chosen = {"random": random_twins, "planted": planted_table_name}.get(entry.llms, list)(llm_names)
    cfg = replace(base, **{**FULL_METHOD, **entry.settings}, names=chosen)
    if dims is not None and cfg.consensus != "none":
        cfg = replace(cfg, consensus_group=resolve_consensus_group(cfg, list(dims)))
    return cfg, chosen


def planted_table_name(llm_names: list[str]) -> list[str]:
    """The one planted table (planted-<dataset>) among the given LLMs, as a list."""
    planted = [n for n in llm_names if n.startswith(PLANTED_PREFIX)]
    if len(planted) != 1:
        raise ConfigError(f"a positive-control variant takes exactly one planted table, the run's dataset's "
                          f"(--llm {PLANTED_PREFIX}<dataset>=DIR); given: {llm_names}")
    return planted


def base_config(protocol: str, backbone: str, d: int, overrides: Mapping | None = None,
                impl: str = "ours") -> BranchConfig:
    """Protocol settings + the backbone's lambda_s, K and router (and its impl's quirks) + config
    overrides (e.g. K, tau, lambda_s)."""
    overrides = {branch_key(key): v for key, v in (overrides or {}).items()}  # `branch.k=10` is K
    valid = {f.name for f in fields(BranchConfig)} - {"d", "names"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"unknown branch setting(s) {unknown}; valid: {', '.join(sorted(valid))}")
    return BranchConfig.for_protocol(protocol, d=d, **{**branch_defaults(backbone, impl), **overrides})


def make_branch(variant: str, llm_names: list[str], tables: Mapping[str, Tensor], base: BranchConfig,
                shared_state: dict[str, Tensor] | None = None) -> MltfrBranch | None:
    """The variant's branch (None for `base`); `tables` maps every LLM name it uses to its table.

    Round 1: shared_state None. Round 2: the merged expert from `mltfr.models.fisher_merge.load_consensus`.
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


__all__ = ["base_config", "default_consensus_group", "make_branch",
           "variant_config", "variant_names", "RANDOM_PREFIX"]
