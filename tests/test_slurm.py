"""The cluster path on a real Slurm: the shipped profile (layered with local-node settings) runs
the CI study through sbatch, GPU rules ask for a GPU, a simulated out-of-memory is retried with
more memory and runtime, a preempted job resumes from its checkpoint, and the outputs equal a
local run's.

One Slurm run of a reduced copy of config/test.yaml (its CI-sized Pantry and tiny model; runs
`base` and `mltfr`, corrected protocol; fixtures/slurm/workflow.py) serves every test here; the
local comparison run goes on at the same time (Slurm's status polling leaves the cores idle).
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fixtures.slurm.workflow import (
    LOCAL_MEM_MB,
    LOCAL_OVERRIDES,
    LOCAL_RUNTIME,
    LOCAL_THREADS,
    SNAKEMAKE,
    copy_workflow,
    env_with,
    local_profile,
    local_threads_args,
    reduced_config,
    run_dir,
    scontrol_stub,
    shipped_profile,
    slurm_jobs,
    snakemake,
    write_profile,
)
from safetensors.numpy import load_file

from mltfr.io import sha256_file

pytestmark = pytest.mark.slurm

GPU_RULES = {"train_round1", "fisher", "train"}
FAULT_HOOK = Path(__file__).parent / "fixtures/slurm/fault_hook"  # sitecustomize.py: OOM, preemption
CFG = reduced_config()
DATASET = CFG["study"]["datasets"][0]
BASE, MLTFR = run_dir(CFG, "base"), run_dir(CFG, "mltfr")
# The run results (not the report rules: they are CPU jobs like prepare_dataset, and cost a
# Slurm round trip each): base, and mltfr's round 1 -> fisher -> round 2 chain.
TARGETS = (f"{BASE}/result.json", f"{MLTFR}/result.json")
FAULTY_JOB = f"rule_train_wildcards_{DATASET}_sasrec_base_corrected_1"  # the hook's job (base run)


# ---------------------------------------------------------------- the two runs
def fault_env() -> dict:
    """The Slurm run's environment (jobs inherit it: --export=ALL) with the fault hook: the base
    run's training runs out of memory on attempt 1, is preempted on attempt 2, ends on attempt 3."""
    env = env_with()
    path = os.pathsep.join(filter(None, [str(FAULT_HOOK), env.get("PYTHONPATH")]))
    return env | {"PYTHONPATH": path, "MLTFR_FAULT_BASE_MB": str(LOCAL_MEM_MB["gpu"])}


@pytest.fixture(scope="module")
def runs(local_slurm, module_scratch) -> SimpleNamespace:
    """The reduced study through the local Slurm (test profile) and locally (`--cores 2`)."""
    root = module_scratch("cluster")
    slurm_dir, local_dir = copy_workflow(root / "slurm"), copy_workflow(root / "local")
    with open(root / "local.log", "w") as local_log:
        local = subprocess.Popen(
            [SNAKEMAKE, *TARGETS, "--cores", "2", "--configfile", LOCAL_OVERRIDES["configfile"],
             *local_threads_args()],
            cwd=local_dir, env=env_with(scontrol_stub(root / "stub")), stdout=local_log,
            stderr=subprocess.STDOUT)
        try:
            profile = write_profile(root / "profile")
            proc = snakemake(slurm_dir, fault_env(), *TARGETS, "--profile", str(profile), timeout=420)
            local.wait(timeout=300)
        finally:
            local.kill()
    assert local.returncode == 0, (root / "local.log").read_text()[-6000:]
    return SimpleNamespace(slurm=slurm_dir, local=local_dir, log=proc.stdout + proc.stderr,
                           jobs=slurm_jobs(slurm_dir))


def rule_of(job: dict) -> str:
    """`rule_train_round1_wildcards_<dataset>_...` -> `train_round1` (the plugin's --comment)."""
    return re.match(r"rule_(\w+?)(_wildcards_.*)?$", job["Comment"])[1]


def planned_jobs(log: str) -> dict[str, int]:
    """Jobs per rule from the run's "Job stats" table."""
    table = log.split("Job stats:")[1].split("\n\n")[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M) if m[1] != "total"}


# ---------------------------------------------------------------- the profile
def test_test_profile_changes_only_what_a_local_node_needs():
    shipped, local = shipped_profile(), local_profile()
    changed = {"default-resources", "set-threads", "set-resources", *LOCAL_OVERRIDES}
    assert {k: v for k, v in local.items() if k not in changed} == \
           {k: v for k, v in shipped.items() if k not in changed}
    assert local["slurm-status-command"] == "squeue" and "slurm-status-command" not in shipped
    assert shipped["executor"] == "slurm" and shipped["retries"] == 2 and shipped["rerun-incomplete"]
    for key in ("slurm_partition", "slurm_account"):
        assert local["default-resources"][key] == shipped["default-resources"][key]
    assert local["default-resources"]["mem_mb"] == f"{LOCAL_MEM_MB['default']} * attempt"
    assert local["default-resources"]["runtime"] == f"{LOCAL_RUNTIME['default']} * attempt"
    assert set(local["set-threads"]) == set(shipped["set-threads"])
    assert set(local["set-threads"].values()) == {LOCAL_THREADS}
    for rule, res in shipped["set-resources"].items():
        assert set(local["set-resources"][rule]) == set(res)          # same keys, gpu kept
        assert local["set-resources"][rule].get("gpu") == res.get("gpu")
        for key in ("mem_mb", "runtime"):                              # still attempt-scaled
            assert res[key].endswith("* attempt") and local["set-resources"][rule][key].endswith("* attempt")
    assert {r for r, res in shipped["set-resources"].items() if res.get("gpu")} == GPU_RULES


# ---------------------------------------------------------------- through sbatch
def test_every_job_ran_as_a_slurm_job(runs):
    """Each planned job is a Slurm job of this run's directory (no local rules among them)."""
    planned = planned_jobs(runs.log)
    completed: dict[str, int] = {}
    for job in runs.jobs:
        if job["JobState"] == "COMPLETED":
            completed[rule_of(job)] = completed.get(rule_of(job), 0) + 1
    assert completed == planned
    assert completed == {"prepare_dataset": 1, "extract_llm": 2, "train_round1": 1, "fisher": 1,
                         "train": 2}
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", runs.log)
    assert sorted(map(int, submitted)) == [int(job["JobId"]) for job in runs.jobs]


def test_gpu_rules_requested_a_gpu_and_cpu_rules_did_not(runs):
    for job in runs.jobs:
        gpu = job.get("TresPerJob")
        assert (gpu == "gres:gpu:1") if rule_of(job) in GPU_RULES else gpu in (None, "(null)"), job["Comment"]
        assert job["NumCPUs"] == str(LOCAL_THREADS)


def faulty_attempts(runs) -> list[dict]:
    return [job for job in runs.jobs if job["Comment"] == FAULTY_JOB]


def test_out_of_memory_is_retried_with_more_memory_and_runtime(runs):
    """Attempt n gets n x the profile's memory and runtime (`* attempt`), as Slurm records."""
    attempts = faulty_attempts(runs)
    assert [job["JobState"] for job in attempts] == ["FAILED", "CANCELLED", "COMPLETED"]
    assert attempts[0]["ExitCode"] != "0:0"
    assert [job["MinMemoryNode"] for job in attempts] == [f"{n * LOCAL_MEM_MB['gpu']}M" for n in (1, 2, 3)]
    minutes = [n * LOCAL_RUNTIME["gpu"] for n in (1, 2, 3)]
    assert [job["TimeLimit"] for job in attempts] == [f"{m // 60:02d}:{m % 60:02d}:00" for m in minutes]
    assert "oom_kill event" in runs.log                      # the failed attempt's log was shown


def test_preempted_job_is_rerun_and_resumes_from_its_checkpoint(runs):
    """Attempt 2 got SIGTERM from Slurm mid-epoch: the trainer saved, attempt 3 resumed there."""
    assert faulty_attempts(runs)[1]["JobState"] == "CANCELLED"
    assert "received SIGTERM: checkpoint saved" in runs.log and "(epoch 1, step 2)" in runs.log
    logs = "".join(p.read_text() for p in (runs.slurm / "logs").rglob("*.log"))
    assert "fault hook: resumed=True epoch=0 step=2" in logs
    results = [json.loads((root / BASE / "result.json").read_text()) for root in (runs.slurm, runs.local)]
    assert results[0]["metrics"] == results[1]["metrics"]   # the local run was never interrupted


def test_outputs_equal_the_local_run(runs):
    results = sorted(p.relative_to(runs.slurm) for p in (runs.slurm / "results/test/runs").rglob("result.json"))
    assert len(results) == 3                                 # base, mltfr round 1, mltfr
    for path in results:
        on_slurm, local = (json.loads((root / path).read_text()) for root in (runs.slurm, runs.local))
        assert on_slurm["metrics"] == local["metrics"], path
        assert on_slurm["config"] == local["config"] and on_slurm["best_epoch"] == local["best_epoch"]
        ranks = [np.load(root / path.parent / "ranks.npz") for root in (runs.slurm, runs.local)]
        for key in ranks[0].files:
            np.testing.assert_array_equal(ranks[0][key], ranks[1][key])
    for path in (f"results/test/data/{DATASET}/prepared.npz", "results/test/llm/minilm/table.safetensors",
                 "results/test/llm/paraphrase-minilm/table.safetensors"):
        assert sha256_file(runs.slurm / path) == sha256_file(runs.local / path), path
    merged = f"{MLTFR}/round1/consensus.safetensors"
    a, b = load_file(runs.slurm / merged), load_file(runs.local / merged)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)

