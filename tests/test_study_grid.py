"""The run grid and the cross-key checks (mltfr.study.grid, mltfr.study.checks) on small configs."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from mltfr.errors import ConfigError
from mltfr.study.config import load_study

REPO = Path(__file__).resolve().parents[1]
TEST_CONFIG = yaml.safe_load((REPO / "config/test.yaml").read_text())


@pytest.fixture(autouse=True)
def at_repo(monkeypatch):
    monkeypatch.chdir(REPO)   # registries are relative to the working directory


def study(edit=None):
    cfg = copy.deepcopy(TEST_CONFIG)
    if edit:
        edit(cfg)
    return load_study(cfg, "t.yaml")


def only(*blocks):
    """An edit that keeps only these study blocks enabled."""
    def edit(cfg):
        for name, block in cfg["study"]["blocks"].items():
            block["enabled"] = name in blocks
    return edit


def test_test_config_runs_by_block():
    grid = study()
    assert len(grid.runs) == 26                                  # tests/test_workflow_e2e.py's 26 runs
    baselines = [r for r in grid.runs if r.variant == "base" and r.protocol in ("faithful", "corrected")]
    assert sorted({r.backbone for r in baselines}) == ["pop", "sasrec", "sasrec-ce"]
    assert grid.all_llms() == ["minilm", "paraphrase-minilm", "planted-pantry-u10", "random-minilm",
                               "random-paraphrase-minilm"]


def test_random_controls_auto_maps_each_mltfr_llm_to_its_twin():
    grid = study(only("ablations"))
    assert grid.random_controls() == {"minilm": "random-minilm", "paraphrase-minilm": "random-paraphrase-minilm"}
    assert grid.variant_llms("mltfr-random", "sasrec", "pantry-u10") == ("random-minilm", "random-paraphrase-minilm")
    assert grid.like_llm("random-minilm") == "minilm"


def test_run_arguments_of_a_sensitivity_and_a_ladder_run():
    grid = study()
    run = {"dataset": "pantry-u10", "backbone": "sasrec", "variant": "mltfr@branch.tau=1.0",
           "protocol": "corrected", "seed": "1"}
    spec = grid.run_spec(run, "out/{variant}")
    assert (spec.data, spec.out, spec.variant, spec.study_variant, spec.dataset) == (
        "results/test/data/pantry-u10", "out/mltfr@branch.tau=1.0", "mltfr", "mltfr@branch.tau=1.0", "pantry-u10")
    assert spec.llm == {"minilm": "results/test/llm/minilm", "paraphrase-minilm": "results/test/llm/paraphrase-minilm"}
    assert spec.sets == {"branch.tau": 1.0} and spec.train == TEST_CONFIG["train"]
    assert spec.tuned == "results/test/tuning/pantry-u10/sasrec/choice.json"   # corrected: the search's choice
    assert spec.config({"lr": 0.003}).branch["tau"] == 1.0 and spec.config({"lr": 0.003}).lr == 0.003
    order = tuple(TEST_CONFIG["study"]["blocks"]["protocol_ladder"]["order"])
    assert grid.rung_sets("rung-eval_noise") == (
        {"holdout_valid": True, "select_on": "valid", "branch.eval_noise": False, "trace_test": True}, order)
    ladder_run = grid.run_spec(run | {"variant": "mltfr", "protocol": "rung-eval_noise"}, "out")
    cfg = ladder_run.config()
    assert (cfg.protocol, cfg.select_on, cfg.branch["eval_noise"], cfg.trace_test) == ("faithful", "valid", False, True)
    assert ladder_run.rung_record()["name"] == "rung-eval_noise" and ladder_run.tuned is None
    lam = run | {"variant": "mltfr@branch.lambda_s=0.1"}   # lambda_s acts in round 1 too: its own round 1
    assert grid.consensus_file(lam) == ("results/test/runs/pantry-u10/sasrec/mltfr@branch.lambda_s=0.1/corrected/"
                                        "seed1/round1/consensus.safetensors")


def protocol_factors(cfg, **block):
    cfg["study"]["blocks"]["protocol_factors"] = {"enabled": True, "variants": ["mltfr", "base"],
                                                  "factors": ["eval_noise", "pooling"], "together": True, **block}


def test_protocol_factors_add_corrected_and_factor_runs_base_only_where_a_factor_acts():
    plain = set(study(only("mltfr", "baselines")).runs)
    grid = study(lambda cfg: (only("mltfr", "baselines")(cfg), protocol_factors(cfg, seeds=[1])))
    added = set(grid.runs) - plain
    settings = ["with-eval_noise", "with-pooling", "with-eval_noise+pooling"]
    # mltfr under each setting; base skips them (no LLM branch: its corrected run stands in)
    assert sorted((r.variant, r.protocol, r.seed) for r in added) == sorted(("mltfr", s, 1) for s in settings)
    assert {(r.variant, r.protocol) for r in grid.runs if r.protocol == "corrected"} >= {
        ("mltfr", "corrected"), ("base", "corrected")}
    run = {"dataset": "pantry-u10", "backbone": "sasrec", "variant": "mltfr", "protocol": "with-eval_noise+pooling",
           "seed": "1"}
    spec = grid.run_spec(run, "out")
    assert spec.sets == {"branch.eval_noise": True, "branch.pooling": "batch", "trace_test": True}
    assert spec.rung_order == ("eval_noise", "pooling") and spec.config().protocol == "corrected"
    # a factor that acts on base too (the selection rule) runs base as well
    with_selection = study(lambda cfg: (only("mltfr", "baselines")(cfg),
                                        protocol_factors(cfg, factors=["selection"], seeds=[1])))
    assert sorted((r.variant, r.protocol) for r in set(with_selection.runs) - plain) == [
        ("base", "with-selection"), ("mltfr", "with-selection")]
    assert with_selection.rung_sets("with-selection") == ({"select_on": "test", "trace_test": True}, ("selection",))



def test_a_tuned_backbone_trains_its_factor_settings_with_its_choice():
    """with-<factor> runs are compared with the corrected runs, so they train with the same choice."""
    def edit(cfg):
        only("mltfr", "baselines")(cfg)
        protocol_factors(cfg, seeds=[1])
        cfg["study"]["blocks"]["tuning"] = {"enabled": True, "grid": {"lr": [0.001, 0.003]}}

    grid = study(edit)
    choice = "results/test/tuning/pantry-u10/sasrec/choice.json"
    for protocol in ("corrected", "with-pooling", "with-eval_noise+pooling"):
        assert grid.tuned_choice("pantry-u10", "sasrec", protocol) == choice, protocol
    assert grid.tuned_choice("pantry-u10", "sasrec", "faithful") is None
    assert grid.tuned_choice("pantry-u10", "sasrec", "rung-selection") is None


def test_per_dataset_llms_come_before_per_backbone_ones():
    """A third table on one dataset only (issue: SmolLM2 on ML-1M): the dataset's entry is looked up
    first, its random twin joins the controls, the MiniLM pair stays the consensus group."""
    def edit(cfg):
        cfg["study"]["blocks"]["mltfr"]["llms"] = {
            "pantry-u10": {"sasrec": ["minilm", "paraphrase-minilm", "smollm2"]}, "sasrec": ["minilm"]}

    grid = study(edit)
    assert grid.variant_llms("mltfr", "sasrec", "pantry-u10") == ("minilm", "paraphrase-minilm", "smollm2")
    assert grid.variant_llms("mltfr-random", "sasrec", "pantry-u10") == (
        "random-minilm", "random-paraphrase-minilm", "random-smollm2")
    assert grid.mltfr_llms("sasrec", "other-dataset") == ["minilm"]
    assert grid.mltfr_llms_key("sasrec", "pantry-u10") == "study.blocks.mltfr.llms.pantry-u10.sasrec"
    assert "smollm2" in grid.all_llms() and "random-smollm2" in grid.all_llms()


@pytest.mark.parametrize("llms, words", [
    ({"ml-100": ["minilm", "paraphrase-minilm"]}, ["study.blocks.mltfr.llms", "'ml-100'", "not a dataset or a backbone"]),
    ({"pantry-u10": {"pantry-u10": ["minilm", "paraphrase-minilm"]}},
     ["study.blocks.mltfr.llms.pantry-u10", "'pantry-u10' is not one of"]),
    ({"sasrec": ["minilm", "paraphrase-minilm"]},
     ["study.blocks.mltfr.llms", "no entry for dataset 'pantry-u10' or backbone 'gru4rec'"]),
])
def test_per_cell_llm_mappings_name_their_cells(llms, words):
    def edit(cfg):
        cfg["study"]["backbones"] = ["sasrec", "gru4rec"]
        cfg["study"]["blocks"]["mltfr"]["llms"] = llms

    with pytest.raises(ConfigError) as err:
        study(edit)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_per_backbone_llms_and_group_positions():
    def edit(cfg):
        cfg["study"]["blocks"]["mltfr"]["llms"] = {"sasrec": ["paraphrase-minilm", "minilm"]}
        cfg["study"]["blocks"]["mltfr"]["consensus_group"] = ["minilm", "paraphrase-minilm"]

    grid = study(edit)
    run = {"dataset": "pantry-u10", "backbone": "sasrec", "variant": "mltfr-random", "protocol": "corrected", "seed": "1"}
    spec = grid.run_spec(run, "out")
    assert list(spec.llm) == ["random-paraphrase-minilm", "random-minilm"]
    assert spec.sets == {"branch.consensus_group": [1, 0]}


def written_random(cfg, seed_a=1, seed_b=2, like_b="paraphrase-minilm"):
    cfg["llms"] = {"random-minilm": {"source": "random", "like": "minilm", "seed": seed_a},
                   "random-paraphrase-minilm": {"source": "random", "like": like_b, "seed": seed_b}}


@pytest.mark.parametrize("edit, message", [
    (lambda cfg: written_random(cfg, like_b="minilm"),
     "config key `study.blocks.ablations.random_controls.paraphrase-minilm`: names 'random-paraphrase-minilm', "
     "which copies the shape of 'minilm'"),
    (lambda cfg: cfg["study"]["blocks"]["ablations"].update(random_controls={"minilm": "random-minilm"}),
     "config key `study.blocks.ablations.random_controls`: mltfr-random needs a random table for 'paraphrase-minilm'"),
    (lambda cfg: cfg["study"]["blocks"]["mltfr"].update(llms=["minilm", "random-minilm"]),
     "config key `study.blocks.ablations.random_controls`: names 'random-random-minilm', which is not in `llms`"),
    (lambda cfg: cfg["study"].update(backbones=["sasrec", "pop"]),
     "config key `study.backbones`: lists ['pop'], a popularity ranking"),
    (lambda cfg: cfg["study"]["blocks"]["sensitivity"].update(n_llms=[3]),
     "config key `study.blocks.sensitivity.n_llms`: asks for 3 LLMs but the mltfr set of sasrec on pantry-u10 has 2"),
    (lambda cfg: cfg["study"]["blocks"]["protocol_ladder"].update(order=["user_vector", "pooling"]),
     "config key `study.blocks.protocol_ladder.order`"),
    (lambda cfg: protocol_factors(cfg, factors=["user_vector"]), "config key `study.blocks.protocol_factors.factors"),
    (lambda cfg: protocol_factors(cfg, variants=["mltfr-nothing"]),
     "config key `study.blocks.protocol_factors.variants`: names 'mltfr-nothing'"),
])
def test_checks_name_the_key(edit, message):
    with pytest.raises(ConfigError) as info:
        study(edit)
    assert message in str(info.value)


def test_consensus_needs_two_llms_of_one_dim():
    def edit(cfg):
        cfg["llms"] = {"paraphrase-minilm": {"source": "package", "package": "paraphrase-minilm", "dim": 576}}

    with pytest.raises(ConfigError, match=r"config key `study.llms`: no two of the LLMs .* share a token dimension"):
        study(edit)


def seeds_per_protocol(cfg):
    cfg["study"]["seeds"] = [1, 2, 3, 4, 5]
    cfg["study"]["blocks"]["baselines"]["seeds"] = {"corrected": [1, 2, 3, 4, 5], "faithful": [2, 3]}


def test_a_block_can_run_more_seeds_under_one_protocol():
    grid = study(lambda cfg: (only("baselines")(cfg), seeds_per_protocol(cfg)))
    seeds = {(r.backbone, r.protocol): sorted(s.seed for s in grid.runs if (s.backbone, s.protocol) ==
                                              (r.backbone, r.protocol)) for r in grid.runs}
    assert seeds[("sasrec", "corrected")] == [1, 2, 3, 4, 5] and seeds[("sasrec", "faithful")] == [2, 3]
    assert seeds[("pop", "corrected")] == [1] and seeds[("pop", "faithful")] == [2]   # counted: first seed


@pytest.mark.parametrize("seeds, message", [
    ({"corrected": [1]}, "config key `study.blocks.baselines.seeds`: maps protocols to seeds but has no entry "
                         "for 'faithful'"),
    ({"corrected": [1], "faithful": [9]}, "config key `study.blocks.baselines.seeds`: [9] not in `study.seeds`"),
    ({"valid": [1]}, "config key `study.blocks.baselines.seeds`"),
])
def test_seeds_per_protocol_are_checked(seeds, message):
    with pytest.raises(ConfigError) as info:
        study(lambda cfg: cfg["study"]["blocks"]["baselines"].update(seeds=seeds))
    assert message in str(info.value)


def expensive_dataset(cfg, seeds=None, variants=None):
    """Two datasets; the ablations block gives the second fewer corrected seeds and fewer variants."""
    cfg["study"].update(datasets=["pantry-u10", "ml-1m"], seeds=[1, 2, 3, 4, 5])
    only("ablations")(cfg)
    block = cfg["study"]["blocks"]["ablations"]
    block.update(datasets=None, protocols=["corrected"],
                 seeds=seeds or {"corrected": {"pantry-u10": [1, 2, 3, 4, 5], "ml-1m": [1, 2, 3]}},
                 variants=variants or {"pantry-u10": ["mltfr-random", "mltfr-learnfilter"], "ml-1m": ["mltfr-random"]})


def test_an_expensive_dataset_can_run_fewer_seeds_and_leave_a_variant_out():
    grid = study(expensive_dataset)
    cells = {}
    for run in grid.runs:
        cells.setdefault((run.dataset, run.variant), []).append(run.seed)
    assert cells == {("pantry-u10", "mltfr-random"): [1, 2, 3, 4, 5],
                     ("pantry-u10", "mltfr-learnfilter"): [1, 2, 3, 4, 5], ("ml-1m", "mltfr-random"): [1, 2, 3]}


@pytest.mark.parametrize("seeds, variants, message", [
    ({"corrected": {"pantry-u10": [1]}}, None,
     "config key `study.blocks.ablations.seeds.corrected`: maps datasets to seeds but has no entry for 'ml-1m'"),
    ({"corrected": {"pantry-u10": [1], "ml-1m": [1], "ml-10m": [1]}}, None,
     "config key `study.blocks.ablations.seeds.corrected`: has an entry 'ml-10m', which is not in `study.datasets`"),
    ({"corrected": {"pantry-u10": [1], "ml-1m": [6]}}, None,
     "config key `study.blocks.ablations.seeds`: [6] not in `study.seeds`"),
    (None, {"pantry-u10": ["mltfr-random"]},
     "config key `study.blocks.ablations.variants`: maps datasets to variants but has no entry for 'ml-1m'"),
    (None, {"pantry-u10": ["mltfr-random"], "ml-1m": ["mltfr-nothing"]},
     "config key `study.blocks.ablations.variants`: names 'mltfr-nothing'"),
])
def test_seeds_and_variants_per_dataset_are_checked(seeds, variants, message):
    with pytest.raises(ConfigError) as info:
        study(lambda cfg: expensive_dataset(cfg, seeds, variants))
    assert message in str(info.value)


def null_gains(cfg, **block):
    cfg["study"]["seeds"] = list(range(1, 11))
    cfg["study"]["blocks"]["null_gains"] = {"enabled": True, **block}


def test_the_null_gain_block_adds_faithful_seeds_per_dataset_and_shares_the_baselines_runs():
    def edit(cfg, enabled):
        null_gains(cfg, enabled=enabled, seeds={"pantry-u10": [1, 2, 3, 4]})
        cfg["study"].update(backbones=["sasrec", "pop"])
        cfg["study"]["blocks"]["baselines"]["seeds"] = [1]
        only("baselines", "null_gains" if enabled else "baselines")(cfg)

    added = set(study(lambda cfg: edit(cfg, True)).runs) - set(study(lambda cfg: edit(cfg, False)).runs)
    # seed 1 is the baselines' faithful run (one folder); pop ranks alike under every seed: none added
    assert sorted((r.backbone, r.variant, r.protocol, r.seed) for r in added) == [
        ("sasrec", "base", "faithful", s) for s in (2, 3, 4)]
    one_list = study(lambda cfg: (only("null_gains")(cfg), null_gains(cfg, seeds=[5, 6], variants=["base", "mltfr"])))
    assert sorted((r.variant, r.seed) for r in one_list.runs) == [("base", 5), ("base", 6), ("mltfr", 5), ("mltfr", 6)]
    assert {r.protocol for r in one_list.runs} == {"faithful"}


@pytest.mark.parametrize("block, message", [
    ({"seeds": {"ml-1m": [1]}}, "config key `study.blocks.null_gains.seeds`: has an entry 'ml-1m', which is not "
                                "in `study.datasets`"),
    ({"seeds": {"pantry-u10": [11]}}, "config key `study.blocks.null_gains.seeds`: [11] not in `study.seeds`"),
    ({"variants": ["mltfr-nothing"]}, "config key `study.blocks.null_gains.variants`: names 'mltfr-nothing'"),
])
def test_the_null_gain_block_is_checked(block, message):
    with pytest.raises(ConfigError) as info:
        study(lambda cfg: null_gains(cfg, **block))
    assert message in str(info.value)


def test_outputs_go_under_the_study_name():
    grid = study(lambda cfg: cfg["study"].update(name="other", findings="docs/other.md"))
    assert grid.layout.run_dir == "results/other/runs/{dataset}/{backbone}/{variant}/{protocol}/seed{seed}"
    assert (grid.layout.figures, grid.layout.logs, grid.layout.findings) == ("figures/other", "logs/other",
                                                                             "docs/other.md")
    assert study().layout.findings == "results/test/findings.md"


def test_a_study_needs_a_name():
    with pytest.raises(ConfigError, match=r"config key `study`: 'name' is a required property"):
        study(lambda cfg: cfg["study"].pop("name"))


def test_the_search_runs_base_at_each_point_and_corrected_runs_read_its_choice():
    grid = study()
    assert grid.tuned_cells == (("pantry-u10", "sasrec"),)
    assert list(grid.tuning_points) == ["lr=0.001", "lr=0.003"]
    point = {"dataset": "pantry-u10", "backbone": "sasrec", "point": "lr=0.003"}
    search = grid.tuning_spec(point)
    assert (search.data, search.out, search.variant, search.protocol, search.seed, search.sets) == (
        "results/test/data/pantry-u10", "results/test/tuning/pantry-u10/sasrec/lr=0.003", "base", "corrected", 0,
        {"lr": 0.003})
    choice = "results/test/tuning/pantry-u10/sasrec/choice.json"
    run = {"dataset": "pantry-u10", "backbone": "sasrec", "variant": "base", "seed": "1"}
    assert grid.run_spec(run | {"protocol": "corrected"}, "out").tuned == choice
    assert grid.run_spec(run | {"protocol": "faithful"}, "out").tuned is None
    assert grid.run_spec(run | {"protocol": "corrected", "backbone": "sasrec-ce"}, "out").tuned is None


@pytest.mark.parametrize("tuning, key", [({"grid": {}}, "study.blocks.tuning.grid"),
                                         ({"backbones": ["pop"]}, "study.blocks.tuning.backbones")])
def test_a_search_without_a_grid_or_on_pop_names_the_key(tuning, key):
    def edit(cfg):
        cfg["study"]["backbones"] = ["sasrec", "pop"] if tuning.get("backbones") else ["sasrec"]
        cfg["study"]["blocks"]["tuning"].update(tuning)
        for name in ("single_llm", "mltfr", "ablations", "sensitivity", "protocol_ladder"):
            cfg["study"]["blocks"][name]["backbones"] = ["sasrec"]
    with pytest.raises(ConfigError, match=f"config key `{key}`"):
        study(edit)


def test_positive_controls_read_their_datasets_planted_table():
    """planted-<dataset> is derived for every dataset (no random twin), built only for a study that
    names a positive control, and passed to its runs; the default ablations never run one."""
    def planted(cfg):
        only("ablations")(cfg)
        cfg["study"]["blocks"]["ablations"]["variants"] = ["mltfr-planted", "mltfr-planted-lookup"]
    grid = study(planted)
    entry = grid.llms["planted-pantry-u10"]
    assert (entry["source"], entry["dataset"]) == ("planted", "pantry-u10")
    assert entry["description"].startswith("positive control (leaky by construction)")
    assert "planted-pantry" in grid.llms and "random-planted-pantry-u10" not in grid.llms
    assert grid.variant_llms("mltfr-planted", "sasrec", "pantry-u10") == ("planted-pantry-u10",)
    assert grid.all_llms() == ["planted-pantry-u10"]
    run = {"dataset": "pantry-u10", "backbone": "sasrec", "variant": "mltfr-planted-lookup",
           "protocol": "corrected", "seed": "1"}
    spec = grid.run_spec(run, "out")
    assert (spec.variant, spec.llm, spec.sets, spec.tuned) == (
        "mltfr-planted-lookup", {"planted-pantry-u10": "results/test/llm/planted-pantry-u10"}, {}, None)

    def default_ablations(cfg):
        only("ablations")(cfg)
        cfg["study"]["blocks"]["ablations"]["variants"] = None
    variants = {r.variant for r in study(default_ablations).runs}
    assert "mltfr-sharpfilter" in variants and not any(v.startswith("mltfr-planted") for v in variants)
