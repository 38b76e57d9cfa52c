"""Variant names -> study block, read from the one registry (`mltfr.spec.variants`).

Blocks: base, direct, filter, mltfr, ablation, control, positive, sensitivity; a name the registry
does not know is block "other": it is still aggregated, but belongs to no study block. The positive
controls (leaky by construction) are labelled so wherever they are shown (`positive_control_note`
in captions, `display_name` in figures).
"""
from __future__ import annotations

from dataclasses import dataclass

from mltfr.spec.variants import ABLATIONS as _ABLATIONS
from mltfr.spec.variants import BASE, CONTROLS, FULL, POSITIVE_CONTROLS, POSITIVE_LABEL, SINGLE_MODES, parse

ABLATIONS = (*_ABLATIONS, *CONTROLS)   # the ablation table compares the full method with both

__all__ = ["ABLATIONS", "BASE", "FULL", "POSITIVE_CONTROLS", "SINGLE_MODES", "VariantInfo", "display_name", "parse_variant",
           "positive_control_note", "scaled_filters"]


@dataclass(frozen=True)
class VariantInfo:
    block: str                  # base | direct | filter | mltfr | ablation | control | positive |
    #                             sensitivity | other
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


def positive_control_note(variants) -> str | None:
    """The caption sentence for the positive controls among `variants`, None when there are none."""
    shown = sorted(set(variants) & set(POSITIVE_CONTROLS))
    if not shown:
        return None
    return (f"{', '.join(shown)}: {POSITIVE_LABEL}: the planted table holds every user's held-out items; "
            "they check that the branch and the tests can show a gain, and are never a finding.")


def scaled_filters(variants) -> dict[str, float]:
    """Variant -> the logit scale c of its filter's scores, for the variants among `variants` whose
    c is not 1 (the sharp filter's)."""
    scales = {v: parse(v).variant.settings.get("score_scale", 1.0) for v in sorted(set(variants)) if parse(v)}
    return {v: c for v, c in scales.items() if c != 1.0}


def display_name(variant: str) -> str:
    """A variant's name as figures show it: a positive control carries its label."""
    return f"{variant} [{POSITIVE_LABEL}]" if variant in POSITIVE_CONTROLS else variant
