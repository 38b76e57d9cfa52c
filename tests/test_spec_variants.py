"""The variant registry (mltfr.spec.variants): one definition read by models, analysis and workflow."""
import subprocess
import sys
from dataclasses import fields

import pytest

from mltfr.spec import variants as registry


def test_registry_is_torch_free():
    code = "import mltfr.spec.variants, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name, block, llm, rounds", [
    ("base", "base", None, 1),
    ("filter-minilm", "filter", "minilm", 1),
    ("direct-random-minilm", "direct", "random-minilm", 1),   # an LLM name may hold dashes
    ("mltfr", "mltfr", None, 2),
    ("mltfr-noconsensus", "ablation", None, 1),
    ("mltfr-meanconsensus", "ablation", None, 2),
    ("mltfr-random", "control", None, 2),
    ("mltfr-randomselect", "control", None, 2),
    ("mltfr-sharpfilter", "control", None, 2),
    ("mltfr-planted-sharp", "positive", None, 1),
])
def test_parse(name, block, llm, rounds):
    parsed = registry.parse(name)
    assert (parsed.variant.block, parsed.llm, parsed.variant.rounds) == (block, llm, rounds)


def test_sensitivity_names_carry_their_setting():
    parsed = registry.parse("mltfr@branch.K=5")
    assert (parsed.variant.block, parsed.key, parsed.value, parsed.number) == ("sensitivity", "branch.K", "5", 5.0)
    assert registry.parse("mltfr@branch.pooling=user").number != registry.parse("mltfr@x=1").number  # NaN
    assert registry.parse("mltfr-nothing") is None and registry.parse("filter-") is None


def test_every_setting_is_a_branch_setting():
    from mltfr.models.mltfr import BranchConfig

    valid = {f.name for f in fields(BranchConfig)}
    entries = [*registry.VARIANTS.values(), *registry.SINGLE.values()]
    assert all(set(v.settings) <= valid for v in entries), [v.name for v in entries if set(v.settings) - valid]


def test_models_and_analysis_read_the_registry():
    from mltfr.analysis.blocks import ABLATIONS, parse_variant
    from mltfr.models.variant_branch import variant_names
    from mltfr.spec.round_plan import needs_round2

    assert variant_names(["a", "b"]) == registry.names(["a", "b"])
    assert ABLATIONS == registry.ABLATIONS + registry.CONTROLS
    for name in registry.names(["a"]):
        assert parse_variant(name).block == registry.parse(name).variant.block
        assert needs_round2(name) == (registry.parse(name).variant.rounds == 2)
