"""The round structure of a consensus variant, and where each round's files go.

A variant with a Fisher/mean consensus expert trains in two rounds: round 1 (its run folder
ROUND1 inside the variant's), the merge (CONSENSUS_FILE inside round 1's folder) and round 2 (the
variant's own folder, reading the merged expert). Every other variant is one round.
"""
from __future__ import annotations

from mltfr.spec.variants import parse

ROUND1 = "round1"                         # round 1's run folder inside the variant's
CONSENSUS_FILE = "consensus.safetensors"  # the merged expert, inside round 1's folder


def needs_round2(variant: str) -> bool:
    """True when the variant trains a second round with a merged consensus expert (a sensitivity
    name mltfr@key=value is mltfr with a setting changed: two rounds, like mltfr)."""
    parsed = parse(variant)
    return parsed is not None and parsed.variant.rounds == 2
