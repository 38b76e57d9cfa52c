"""The consensus group: which LLMs' experts are merged into the consensus expert (they must
share a token dimension D), checked or chosen by default (the largest same-D set)."""
from __future__ import annotations

from mltfr.errors import ConfigError
from mltfr.spec.branch_config import BranchConfig


def default_consensus_group(names: list[str], dims: list[int]) -> list[int]:
    """The largest set of LLMs sharing a token dimension (ties: the first in order)."""
    groups: dict[int, list[int]] = {}
    for m, dim in enumerate(dims):
        groups.setdefault(dim, []).append(m)
    best = max(groups.values(), key=len, default=[])
    if len(best) < 2:
        listing = ", ".join(f"{n} (D={dim})" for n, dim in zip(names, dims))
        raise ConfigError(f"no two LLMs share a token dimension, so the consensus expert cannot be "
                          f"formed: {listing or 'no LLMs'}; add an LLM of the same D as another, "
                          "or use variant mltfr-noconsensus")
    return best


def check_consensus_group(group: list[int], names: list[str], dims: list[int]) -> list[int]:
    """A valid group has >= 2 distinct known LLMs, all of one token dimension."""
    if any(not 0 <= m < len(dims) for m in group):
        raise ConfigError(f"consensus_group {group} refers to LLMs outside 0..{len(dims) - 1} ({names})")
    listing = ", ".join(f"{names[m]} (D={dims[m]})" for m in group)
    if len(set(group)) < 2:
        raise ConfigError(f"consensus group has fewer than two LLMs: [{listing}]; name at least two "
                          "LLMs of the same token dimension, or use variant mltfr-noconsensus")
    if len({dims[m] for m in group}) > 1:
        raise ConfigError(f"consensus group mixes token dimensions: [{listing}]; keep only LLMs of "
                          "one D in consensus_group (their experts must have the same shapes)")
    return list(group)


def resolve_consensus_group(cfg: BranchConfig, dims: list[int]) -> list[int]:
    """cfg.consensus_group checked, or the default largest same-D group."""
    names = cfg.names or [f"llm{m}" for m in range(len(dims))]
    if cfg.consensus_group is None:
        return default_consensus_group(names, dims)
    return check_consensus_group(cfg.consensus_group, names, dims)
