"""A workflow job killed mid-run (SIGKILL of Snakemake and the job together, as when the
submitting node is lost) is not taken as complete: after `snakemake --unlock` (the lock of the
killed Snakemake remains, and the error says so) the next `snakemake` reruns it
(`rerun-incomplete`, set in profiles/default) and the run resumes from the checkpoint that
survived the kill, ending with the same metrics and ranks as an uninterrupted run.

Local executor, in temp copies of the workflow (fixtures/slurm/workflow.py).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import yaml
from fixtures.slurm.workflow import (
    CONFIG,
    REPO,
    SNAKEMAKE,
    copy_workflow,
    env_with,
    reduced_config,
    run_dir,
    scontrol_stub,
    snakemake,
)

from mltfr.train.checkpoint import load_checkpoint

EPOCHS = 3


def base_on_full_pantry(cfg: dict) -> None:
    """One `base` run, 3 epochs of the default model on the embedded Pantry (config/registry.yaml's
    entry: ~1 s per epoch, so the kill lands between epoch 1's checkpoint and the end)."""
    embedded = yaml.safe_load((REPO / "config/registry.yaml").read_text())["datasets"]["pantry"]
    cfg["datasets"] = {"pantry": embedded}
    cfg["study"]["datasets"] = ["pantry"]
    for name, block in cfg["study"]["blocks"].items():
        block["enabled"] = name == "baselines"
    cfg["train"] = {"epochs": EPOCHS}


RUN = run_dir(reduced_config(base_on_full_pantry), "base")
TARGET = f"{RUN}/result.json"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow_kill")
    env = env_with(scontrol_stub(root / "stub"))
    killed, reference = (copy_workflow(root / name, edit=base_on_full_pantry)
                         for name in ("killed", "reference"))
    return env, killed, reference


def start(cwd, env) -> subprocess.Popen:
    """`snakemake --cores 1 TARGET` in its own process group (to kill it with its job); its
    output goes to cwd/snakemake.out (a pipe left unread could fill and stall it)."""
    with open(cwd / "snakemake.out", "w") as out:
        return subprocess.Popen([SNAKEMAKE, TARGET, "--cores", "1", "--configfile", CONFIG],
                                cwd=cwd, env=env, start_new_session=True, stdout=out,
                                stderr=subprocess.STDOUT)


def kill_group_after_checkpoint(proc: subprocess.Popen, checkpoint) -> None:
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert proc.poll() is None, "snakemake ended before the checkpoint: see snakemake.out"
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def test_killed_job_is_rerun_and_resumes_from_its_checkpoint(dirs):
    env, killed, reference = dirs
    uninterrupted = start(reference, env)  # alongside: both runs use one thread
    try:
        proc = start(killed, env)
        kill_group_after_checkpoint(proc, killed / RUN / "checkpoint.pt")
        assert not (killed / TARGET).exists() and not (killed / RUN / "ranks.npz").exists()
        assert any((killed / ".snakemake/incomplete").iterdir())        # marked incomplete
        saved = load_checkpoint(killed / RUN / "checkpoint.pt")["state"]
        assert 1 <= saved.epoch < EPOCHS and not saved.finished

        # Snakemake died too, so its lock remains: the user is told to unlock, then reruns.
        locked = snakemake(killed, env, TARGET, "--cores", "1", "--configfile", CONFIG, check=False)
        assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
        snakemake(killed, env, TARGET, "--configfile", CONFIG, "--unlock")
        rerun = snakemake(killed, env, TARGET, "--cores", "1", "--configfile", CONFIG)
        assert "Job stats" in rerun.stdout + rerun.stderr                # it did rerun the job
        uninterrupted.wait(timeout=300)
    finally:
        uninterrupted.kill()
    assert uninterrupted.returncode == 0, (reference / "snakemake.out").read_text()[-4000:]
    got, want = (json.loads((d / TARGET).read_text()) for d in (killed, reference))
    assert got["metrics"] == want["metrics"] and got["epochs_run"] == want["epochs_run"] == EPOCHS
    assert got["timings"]["per_epoch_s"][: saved.epoch] == [row["seconds"] for row in saved.history]
    ranks = [np.load(d / RUN / "ranks.npz") for d in (killed, reference)]
    for key in ranks[0].files:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key])
