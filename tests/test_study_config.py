"""The study config loader (mltfr.study.config): registries merged once, random twins derived,
`train:` checked by RunConfig, schema errors naming the key; torch-free; the CLI reads through it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mltfr.errors import ConfigError
from mltfr.study.config import derive_random_twins, load_registries, load_study

REPO = Path(__file__).resolve().parents[1]
MINILM = {"source": "package", "package": "minilm", "dim": 384}


def write(path: Path, doc: dict) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.fixture
def in_tmp(tmp_path, monkeypatch) -> Path:
    """Registry paths are relative to the working directory: work in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_loader_is_torch_free():
    code = ("import sys; from mltfr.study.config import load_study, load_registries; "
            "import yaml; s = load_study(yaml.safe_load(open('config/test.yaml')), 'config/test.yaml'); "
            "assert len(s.runs) == 26 and 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env)


def test_registries_merge_in_order_and_the_study_config_replaces_whole_entries(in_tmp):
    write(in_tmp / "a.yaml", {"llms": {"x": MINILM, "y": {"source": "package", "package": "smollm2"}}})
    write(in_tmp / "b.yaml", {"llms": {"y": {"source": "package", "package": "gemma3"}}})
    own = {"source": "hf", "repo": "openai-community/gpt2"}
    cfg = load_registries(write(in_tmp / "s.yaml", {"registries": ["a.yaml", "b.yaml"], "llms": {"x": own}}))
    assert cfg["llms"]["x"] == own                              # replaced as a whole, no dim left over
    assert cfg["llms"]["y"] == {"source": "package", "package": "gemma3"}   # the later file wins
    assert cfg["datasets"] == {}


def test_random_twins_are_derived_unless_written():
    llms = {"x": MINILM, "random-y": {"source": "random", "like": "x", "seed": 3}, "y": {"source": "hf", "repo": "a/b"}}
    derive_random_twins(llms)
    assert llms["random-x"] == {"source": "random", "like": "x", "seed": 0, "dim": 384,
                                "description": "random twin of x: its shape, mean and std (derived)"}
    assert llms["random-y"]["seed"] == 3                       # written: kept as written
    assert "random-random-y" not in llms                       # a random table has no twin


def test_the_shipped_configs_share_one_registry():
    for name in ("config", "paper", "test"):
        assert yaml.safe_load((REPO / f"config/{name}.yaml").read_text())["registries"] == ["config/registry.yaml"]
    shipped = yaml.safe_load((REPO / "config/registry.yaml").read_text())
    assert not [n for n, e in shipped["llms"].items() if e["source"] == "random"]   # twins are derived
    test = yaml.safe_load((REPO / "config/test.yaml").read_text())
    assert set(test) >= {"registries", "datasets"} and "llms" not in test and list(test["datasets"]) == ["pantry-u10"]


def study_doc(**train) -> dict:
    return {"registries": ["config/registry.yaml"], "study": {"name": "t", "datasets": ["pantry"], "llms": ["minilm"]},
            "train": train}


@pytest.mark.parametrize("train, named", [
    ({"epochz": 2}, "unknown key 'epochz'"),
    ({"epochs": 0}, "train.epochs=0 is invalid"),
    ({"model": {"d": "big"}}, "key 'd' must be an integer"),
    ({"lr": True}, "train.lr: expected float"),
])
def test_a_bad_train_key_fails_the_loader_naming_it(train, named, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"Error validating config file s.yaml: .*") as info:
        load_study(study_doc(**train), "s.yaml")
    assert named in str(info.value)


def test_schema_error_in_a_registry_entry_names_the_file_and_key(in_tmp):
    write(in_tmp / "r.yaml", {"llms": {"x": {**MINILM, "dim": 0}}})
    with pytest.raises(ConfigError, match=r"Error validating config file r.yaml: config key `llms.x.dim`"):
        load_study({"registries": ["r.yaml"], "study": {"name": "t"}}, "s.yaml")


@pytest.mark.parametrize("doc, named", [
    ({"registries": ["missing.yaml"]}, "config key `registries`: names missing.yaml, which is not a file"),
    ({"registries": "r.yaml"}, "config key `registries`: is 'r.yaml' in s.yaml, not a list"),
])
def test_bad_registries_name_the_key(in_tmp, doc, named):
    with pytest.raises(ConfigError, match=None) as info:
        load_study(doc, "s.yaml")
    assert named in str(info.value)


def test_a_registry_file_holds_registries_only(in_tmp):
    write(in_tmp / "r.yaml", {"llms": {"x": MINILM}, "train": {"epochs": 1}})
    with pytest.raises(ConfigError, match=r"r.yaml has the sections \['train'\].*move \['train'\] into"):
        load_registries(write(in_tmp / "s.yaml", {"registries": ["r.yaml"]}))


def test_cli_extracts_a_derived_twin(tmp_path):
    """`mltfr extract-llm --llm random-minilm` with the shipped study config: the twin comes from the
    loader (like: minilm, extracted first from the sibling folder), its seed derived from its name."""
    out = tmp_path / "llm"
    env = os.environ | {"PYTHONPATH": str(REPO / "src")}
    for name in ("minilm", "random-minilm"):
        subprocess.run([sys.executable, "-m", "mltfr", "extract-llm", "--config", "config/test.yaml",
                        "--llm", name, "--out", str(out / name)], check=True, cwd=REPO, env=env,
                       capture_output=True, text=True)
    from mltfr.llm import load_table
    from mltfr.llm.random_table import draw_seed

    minilm, _ = load_table(out / "minilm")
    twin, meta = load_table(out / "random-minilm")
    assert twin.shape == minilm.shape == (30522, 384)
    assert meta["source_identity"]["draw_seed"] == draw_seed("random-minilm", 0)


@pytest.mark.parametrize("value, expected", [(True, True), ("true", True), ("True", True), ("false", False),
                                             (False, False)])
def test_rebuild_only_reads_the_string_snakemake_passes(value, expected, monkeypatch):
    # `--config rebuild_only=true` arrives as the string "true"
    monkeypatch.chdir(REPO)
    assert load_study(pair_study(rebuild_only=value), "s.yaml").config["rebuild_only"] is expected


def test_rebuild_only_rejects_other_words(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match="config key `rebuild_only`"):
        load_study(pair_study(rebuild_only="yes"), "s.yaml")


def pair_study(**top) -> dict:
    """A study of the MiniLM pair (a consensus group forms) with top-level keys added."""
    doc = study_doc()
    doc["study"]["llms"] = ["minilm", "paraphrase-minilm"]
    return doc | top


def test_the_equivalence_margin_defaults_to_the_statistics_default_and_is_checked(monkeypatch):
    """study.equivalence.margin: the schema's default is the one `mltfr aggregate` uses without
    --margin; a margin outside (0, 1) fails naming the key."""
    from mltfr.analysis.stats import StatsConfig

    monkeypatch.chdir(REPO)
    assert load_study(pair_study(), "s.yaml").study["equivalence"] == {"margin": StatsConfig.margin} == {"margin": 0.05}
    doc = pair_study()
    doc["study"]["equivalence"] = {"margin": 5}
    with pytest.raises(ConfigError, match=r"config key `study.equivalence.margin`"):
        load_study(doc, "s.yaml")
    doc["study"]["equivalence"] = {"margn": 0.1}
    with pytest.raises(ConfigError, match="margn"):
        load_study(doc, "s.yaml")
