"""Variant names -> study block, read from the one registry (`mltfr.study.variants`).

Blocks: base, direct, filter, mltfr, ablation, control, sensitivity; a name the registry does not
know is block "other": it is still aggregated, but belongs to no study block.
"""
from __future__ import annotations

from dataclasses import dataclass

from mltfr.study.variants import BASE, CONTROLS, FULL, SINGLE_MODES, parse
from mltfr.study.variants import ABLATIONS as _ABLATIONS

ABLATIONS = (*_ABLATIONS, *CONTROLS)   # the ablation table compares the full method with both

__all__ = ["ABLATIONS", "BASE", "FULL", "SINGLE_MODES", "VariantInfo", "parse_variant"]


@dataclass(frozen=True)
class VariantInfo:
    block: str                  # base | direct | filter | mltfr | ablation | control | sensitivity | other
    llm: str | None = None      # the LLM of a single-LLM variant
    param: str | None = None    # the parameter of a sensitivity variant
    value: float | None = None  # its value (NaN when it is not a number)


def parse_variant(name: str) -> VariantInfo:
    """Which study block a variant name belongs to, with its LLM or sensitivity parameter."""
    parsed = parse(name)
    if parsed is None:
        return VariantInfo("other")
    if parsed.key is not None:
        return VariantInfo("sensitivity", param=parsed.key, value=parsed.number)
    return VariantInfo(parsed.variant.block, llm=parsed.llm)
