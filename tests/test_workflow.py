"""The Snakemake workflow: lint, format, the run grid by dry-run job counts, early config errors.

Dry runs need only the target list, so these tests run without the library CLI. Job counts
are hand-computed from the configs' grids (see each test).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = str(BIN / "snakemake")
DAG_BUDGET_S = 10.0  # issue 5: the paper-scale dry run builds its DAG in under 10 s


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The environment of every snakemake call: the venv first, and a failing `scontrol`.

    With Slurm's client installed but no controller running, the slurm plugin's import runs
    `scontrol show config`, which hangs for its 10 s timeout on every snakemake call.
    """
    stub = tmp_path_factory.mktemp("stub")
    (stub / "scontrol").write_text("#!/bin/sh\nexit 1\n")
    (stub / "scontrol").chmod(0o755)
    return os.environ | {"PATH": f"{stub}:{BIN}:{os.environ['PATH']}"}


def snakemake(env, *args, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run([SNAKEMAKE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def job_counts(env, *args) -> dict[str, int]:
    """Jobs per rule of a dry run, from its "Job stats" table."""
    out = snakemake(env, "--dry-run", "--quiet", "rules", *args).stdout
    table = out.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def write_config(tmp_path, base: str, edit) -> str:
    """A copy of a shipped config with `edit(cfg)` applied, as a temp file."""
    cfg = yaml.safe_load((REPO / base).read_text())
    edit(cfg)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def test_lint_is_clean(env):
    proc = snakemake(env, "--lint")
    assert "Congratulations, your workflow is in a good condition!" in proc.stdout + proc.stderr


def test_snakefmt_check_is_clean():
    files = ["Snakefile", *sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow/rules").glob("*.smk"))]
    proc = subprocess.run([str(BIN / "snakefmt"), "--check", *files], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_default_config_grid(env):
    # 2 datasets; baselines 2 x (sasrec, sasrec-ce) x 2 protocols x 3 seeds = 24;
    # single-LLM 5 LLMs x 2 modes = 10; mltfr 2 x 2 x 3 = 12; ablations 6; sensitivity 4.
    # Round 1 + merge: mltfr 12, ablations 5 (noconsensus has none), sensitivity 3
    # (branch.lambda_s acts in round 2 only and reuses mltfr's round 1).
    counts = job_counts(env)
    assert counts["train"] == 24 + 10 + 12 + 6 + 4
    assert counts["train_round1"] == counts["fisher"] == 12 + 5 + 3
    assert counts["extract_llm"] == 7  # 5 study LLMs + 2 more random controls for mltfr-random
    assert counts["prepare_dataset"] == 2
    assert counts["total"] == 56 + 20 + 20 + 7 + 2 + 3  # + manifest, aggregate, all


@pytest.mark.slow
def test_paper_dry_run_with_slurm_profile(env):
    # 7 datasets x 4 backbones x 2 protocols x 5 seeds = 280 cells; per cell: base 1,
    # single-LLM 7 x 2 = 14, mltfr 1, ablations 6 -> 22 runs; + sasrec-ce base 70;
    # sensitivity: 2 datasets x sasrec x corrected x 5 seeds x 17 values = 170 runs.
    start = time.perf_counter()
    counts = job_counts(env, "--profile", "slurm")
    seconds = time.perf_counter() - start
    print(f"paper dry run with --profile slurm: {counts['total']} jobs in {seconds:.1f} s")
    assert counts["train"] == 280 * 22 + 70 + 170
    assert counts["train_round1"] == counts["fisher"] == 280 * 6 + 10 * 12
    assert counts["extract_llm"] == 12 and counts["prepare_dataset"] == 7
    assert counts["total"] == 6400 + 2 * 1800 + 12 + 7 + 3
    assert seconds < DAG_BUDGET_S, f"{counts['total']} jobs took {seconds:.1f} s"


def test_slurm_profile_requests_gpu_for_training_only(env):
    env = env | {"MLTFR_SLURM_PARTITION": "gpuq", "MLTFR_SLURM_ACCOUNT": "proj7"}
    out = snakemake(env, "-n", "--profile", "slurm", "--configfile", "config/test.yaml").stdout
    jobs = {m[1]: m[2] for m in re.finditer(r"^(?:local)?rule (\w+):\n(.*?)\n\n", out + "\n\n", re.M | re.S)}
    for rule in ("train", "train_round1", "fisher"):
        assert re.search(r"resources:.*\bgpu=1\b", jobs[rule]), jobs[rule]
    for rule in ("prepare_dataset", "extract_llm"):
        assert "gpu=" not in jobs[rule], jobs[rule]
    assert "slurm_partition=gpuq" in jobs["train"] and "slurm_account=proj7" in jobs["train"]
    assert "mem_mb=32000" in jobs["train"]  # attempt 1 of `32000 * attempt`


def test_adding_an_llm_adds_exactly_its_jobs(env, tmp_path):
    before = job_counts(env, "--configfile", "config/test.yaml")

    def add_llm(cfg):
        cfg["llms"]["minilm-b"] = dict(cfg["llms"]["minilm"])
        cfg["study"]["llms"].append("minilm-b")
        cfg["study"]["blocks"]["mltfr"]["llms"] = ["minilm", "paraphrase-minilm"]

    after = job_counts(env, "--configfile", write_config(tmp_path, "config/test.yaml", add_llm))
    # one extraction, and direct-/filter-minilm-b on 1 dataset x 1 backbone x corrected x 1 seed
    assert after["extract_llm"] == before["extract_llm"] + 1
    assert after["train"] == before["train"] + 2
    assert after["total"] == before["total"] + 3


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda cfg: cfg["study"].update(sedes=[1]), "sedes"),  # unknown key
        (lambda cfg: cfg["study"].update(seeds="one"), "seeds"),  # wrong type
        (lambda cfg: cfg["study"]["blocks"]["ablations"]["variants"].append("mltfr-nothing"), "mltfr-nothing"),
    ],
)
def test_schema_errors_name_the_key_before_any_job(env, tmp_path, edit, named):
    proc = snakemake(env, "-n", "--configfile", write_config(tmp_path, "config/test.yaml", edit), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Error validating config file" in out and named in out
    assert "Job stats" not in out


@pytest.mark.parametrize(
    "edit, named",
    [
        (lambda cfg: cfg["study"]["llms"].append("nosuchllm"), ["study.llms", "nosuchllm"]),
        (lambda cfg: cfg["study"].update(datasets=["pantry", "nosuchdata"]), ["study.datasets", "nosuchdata"]),
        (lambda cfg: cfg["study"]["blocks"]["ablations"]["random_controls"].pop("minilm"),
         ["study.blocks.ablations.random_controls", "minilm"]),
        (lambda cfg: cfg["study"]["blocks"]["sensitivity"].update(n_llms=[3]), ["study.blocks.sensitivity.n_llms"]),
    ],
)
def test_unknown_names_error_naming_the_key(env, tmp_path, edit, named):
    proc = snakemake(env, "-n", "--configfile", write_config(tmp_path, "config/test.yaml", edit), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    for text in named:
        assert text in out


def test_consensus_group_that_cannot_form_is_an_error(env, tmp_path):
    def no_shared_dim(cfg):
        cfg["llms"]["paraphrase-minilm"]["dim"] = 576
        cfg["llms"]["random-paraphrase-minilm"]["dim"] = 576

    proc = snakemake(env, "-n", "--configfile", write_config(tmp_path, "config/test.yaml", no_shared_dim), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Job stats" not in out
    assert "config key `study.llms`" in out and "Fisher consensus expert cannot be formed" in out


def test_config_override_of_a_registry_is_refused(env):
    proc = snakemake(env, "-n", "--configfile", "config/test.yaml", "--config", "train={epochs: 9}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config key `train`" in out and "config/test.yaml" in out


def test_env_file_pins_the_pyproject_dependencies():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    conda = yaml.safe_load((REPO / "envs/mltfr.yaml").read_text())["dependencies"]
    pip = next(d["pip"] for d in conda if isinstance(d, dict))
    assert pip == deps
    assert "python=3.11" in conda


def test_slurm_profile_is_found_from_the_repo_root():
    assert (REPO / "slurm" / "config.yaml").resolve() == (REPO / "profiles/slurm/config.yaml").resolve()
    profile = yaml.safe_load((REPO / "slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm" and profile["configfile"] == "config/paper.yaml"
    default = yaml.safe_load((REPO / "profiles/default/config.yaml").read_text())
    # the default profile wins over --profile: it must not set what the cluster profile sets
    assert not set(default) & {"executor", "jobs", "default-resources", "set-resources", "retries",
                               "latency-wait", "keep-going", "configfile"}
