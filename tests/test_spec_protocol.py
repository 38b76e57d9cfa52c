"""The protocol table (mltfr.spec.protocol) is the one definition of the two protocols: a run's
by-protocol settings, the branch's, the ladder's factors and the schemas' enums all follow it."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mltfr.spec import protocol, rungs
from mltfr.spec.backbones import BACKBONE_NAMES
from mltfr.spec.branch_config import BranchConfig
from mltfr.spec.run_config import RunConfig

SCHEMAS = Path(__file__).resolve().parents[1] / "src" / "mltfr" / "schemas"
# RunConfig's resolved value of each factor's setting (the branch's come from BranchConfig)
RESOLVED = {"select_on": lambda c: c.selects_on, "mask_history": lambda c: c.masks_history,
            "train_vocab": lambda c: c.uses_train_vocab, "model.impl": lambda c: c.backbone_impl,
            "round1_budget": lambda c: c.round1_length, "fisher_shuffle": lambda c: c.shuffles_fisher,
            "holdout_valid": lambda c: c.holds_out_valid}


@pytest.mark.parametrize("name", protocol.PROTOCOLS)
def test_every_by_protocol_setting_takes_the_tables_value(name):
    cfg, branch = RunConfig(protocol=name), BranchConfig.for_protocol(name)
    for factor in protocol.FACTORS:
        if factor.key.startswith("branch."):
            assert getattr(branch, factor.key.removeprefix("branch.")) == factor.value(name), factor.name
        else:
            assert RESOLVED[factor.key](cfg) == factor.value(name), factor.name


def test_a_set_value_wins_over_the_protocols():
    cfg = RunConfig(protocol="faithful", select_on="valid", mask_history=True, model={"impl": "ours"})
    assert (cfg.selects_on, cfg.masks_history, cfg.backbone_impl) == ("valid", True, "ours")


def test_the_ladder_and_the_differences_are_the_tables_rows():
    assert tuple(rungs.FACTORS) == tuple(f.name for f in protocol.FACTORS)
    assert [f.name for f in protocol.DIFFERENCES] == [n for n in rungs.FACTORS if n != "user_vector"]
    assert rungs.FACTORS["user_vector"] == ("branch.user_vector", "causal")   # the repair neither makes
    assert set(rungs.FAITHFUL_VALUES) == {f.name for f in protocol.DIFFERENCES}


def enums(node) -> list[list]:
    """Every `enum` list of a schema document, at any depth."""
    if isinstance(node, dict):
        return ([node["enum"]] if "enum" in node else []) + [e for v in node.values() for e in enums(v)]
    return [e for v in node for e in enums(v)] if isinstance(node, list) else []


def test_the_schemas_name_the_specs_protocols_backbones_and_factors():
    found = [tuple(e) for path in SCHEMAS.glob("*.yaml") for e in enums(yaml.safe_load(path.read_text()))]
    assert set(protocol.PROTOCOLS) in [set(e) for e in found]
    assert BACKBONE_NAMES in found
    assert tuple(rungs.FACTORS) in found                      # the ladder's order
    assert tuple(rungs.FAITHFUL_VALUES) in found               # the protocol-factor block's factors
    for e in found:   # an enum that names protocols, backbones or factors names them all, in the spec's words
        if set(e) & {"faithful", "corrected"} and len(e) == 2:
            assert set(e) == set(protocol.PROTOCOLS)
        if set(e) & set(BACKBONE_NAMES):
            assert e == BACKBONE_NAMES
        if set(e) & set(rungs.FACTORS) and "selection" in e:
            assert e in (tuple(rungs.FACTORS), tuple(rungs.FAITHFUL_VALUES))
