"""Where a variant attaches its LLM branch to a freshly built backbone (issue 4).

`llm_tables` maps LLM names to cached token-table folders (`mltfr extract-llm --out`); the
branch is built from the tensors (a model never reads paths). Round 2 of a consensus variant
also gets the merged expert written by `mltfr fisher` (`cfg.consensus_file`).
"""
from __future__ import annotations

from pathlib import Path

from mltfr.errors import ConfigError


def attach_branch(model, cfg, llm_tables: dict[str, Path]) -> None:
    """Attach the branch of `cfg.variant` to `model` in place; `base` = ID-only (no branch)."""
    from mltfr.models.mltfr import attach
    from mltfr.models.variant_branch import base_config, make_branch, variant_config
    from mltfr.spec.round_plan import needs_round2

    if cfg.variant == "base":
        if llm_tables:
            raise ConfigError(f"variant 'base' is ID-only but --llm was given ({', '.join(llm_tables)}); "
                              "drop --llm or choose an LLM variant")
        if cfg.consensus_file:
            raise ConfigError("variant 'base' has no consensus expert; drop --consensus")
        return
    base = base_config(cfg.protocol, cfg.backbone, model.d, cfg.branch, impl=cfg.backbone_impl)
    _, names = variant_config(cfg.variant, list(llm_tables), base)
    shared = load_shared(cfg, names) if cfg.consensus_file else None
    if shared is not None and not needs_round2(cfg.variant):
        raise ConfigError(f"variant {cfg.variant} has no consensus expert; drop --consensus")
    tables = {name: load_llm_table(name, llm_tables) for name in names}
    attach(model, make_branch(cfg.variant, list(llm_tables), tables, base, shared))


def load_llm_table(name: str, llm_tables: dict[str, Path]):
    from mltfr.llm import load_table

    if name not in llm_tables:
        raise ConfigError(f"the variant needs the token table of LLM {name!r}; pass "
                          f"--llm {name}=results/llm/{name} (given: {', '.join(llm_tables) or 'none'})")
    table, _ = load_table(llm_tables[name])
    return table


def load_shared(cfg, names: list[str]):
    """The merged consensus expert of round 2 (its LLMs must be this run's consensus group)."""
    from mltfr.models.fisher_merge import load_consensus

    state, meta = load_consensus(cfg.consensus_file)
    unknown = [n for n in meta.get("llms", []) if n not in names]
    if unknown:
        raise ConfigError(f"{cfg.consensus_file} was merged from LLMs {meta.get('llms')} but this run "
                          f"uses {names}; rerun `mltfr fisher` for this run's round 1")
    return state
