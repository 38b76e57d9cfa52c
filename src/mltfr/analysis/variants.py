"""Variant names -> study block (see docs: method.md, "The study").

    base                     ID-only backbone
    direct-<llm>             one LLM, whole vocabulary through P prototypes
    filter-<llm>             one LLM with user-guided filtering
    mltfr                    the full method
    mltfr-<ablation>         nofilter, norouter, noconsensus, meanconsensus, frozen, random
    mltfr@<param>=<value>    sensitivity: any RunConfig key (e.g. the filter's K, lambda_s, tau)
                             or n_llms; a non-numeric value is kept with value NaN
Anything else is block "other": it is still aggregated, but belongs to no study block.
"""
from __future__ import annotations

from dataclasses import dataclass

BASE = "base"
FULL = "mltfr"
ABLATIONS = ("mltfr-nofilter", "mltfr-norouter", "mltfr-noconsensus", "mltfr-meanconsensus",
             "mltfr-frozen", "mltfr-random")
SINGLE_MODES = ("direct", "filter")


@dataclass(frozen=True)
class VariantInfo:
    block: str                  # base | direct | filter | mltfr | ablation | sensitivity | other
    llm: str | None = None      # the LLM of a single-LLM variant
    param: str | None = None    # the parameter of a sensitivity variant
    value: float | None = None  # its value


def parse_variant(name: str) -> VariantInfo:
    """Which study block a variant name belongs to, with its LLM or sensitivity parameter."""
    if name == BASE:
        return VariantInfo("base")
    if name == FULL:
        return VariantInfo("mltfr")
    if name in ABLATIONS:
        return VariantInfo("ablation")
    mode, _, llm = name.partition("-")
    if mode in SINGLE_MODES and llm:
        return VariantInfo(mode, llm=llm)
    if name.startswith(FULL + "@") and "=" in name:
        param, _, value = name[len(FULL) + 1:].partition("=")
        try:
            number = float(value)
        except ValueError:
            number = float("nan")
        if param:
            return VariantInfo("sensitivity", param=param, value=number)
    return VariantInfo("other")
