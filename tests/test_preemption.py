"""Jobs that die: `mltfr train` killed mid-run (SIGTERM as Slurm preemption sends it, SIGKILL as
a lost node or an OOM kill) resumes from its last checkpoint and ends with the same metrics and
ranks as an uninterrupted run; nothing partial is left that could pass for a result. A NaN loss
stops the run with a one-line error and keeps the last good checkpoint.

All on the embedded Pantry (config/config.yaml's `pantry`: all 7,123 users, so an epoch lasts
about a second and a kill lands mid-run; config/test.yaml's CI subset trains in a blink),
prepared by `mltfr prepare`, run as subprocesses of the installed `mltfr`, as workflow jobs are.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mltfr.cli import main
from mltfr.train.checkpoint import load_checkpoint
from mltfr.train.loop import Trainer

REPO = Path(__file__).resolve().parents[1]
MLTFR = str(Path(sys.executable).parent / "mltfr")
CONFIG = "config/config.yaml"  # its `pantry` entry and `train:` section, with the settings below
EPOCHS = 3  # the kill lands in epoch 2 (or 3 on a slow machine), after epoch 1's checkpoint
SETTINGS = [f"epochs={EPOCHS}"]  # 55 steps of 128 windows per epoch on Pantry (~1 s)


@pytest.fixture(scope="module")
def pantry(tmp_path_factory) -> Path:
    """config/config.yaml's `pantry` (the embedded authors' split), prepared in a temp folder."""
    out = tmp_path_factory.mktemp("pantry") / "data"
    subprocess.run([MLTFR, "prepare", "--config", CONFIG, "--dataset", "pantry",
                    "--out", str(out)], cwd=REPO, check=True, capture_output=True, timeout=120)
    return out


def train_command(data: Path, out: Path, *settings: str) -> list[str]:
    return [MLTFR, "train", "--data", str(data), "--out", str(out), "--backbone", "sasrec",
            "--protocol", "corrected", "--seed", "7", "--config", str(REPO / CONFIG),
            "--set", *SETTINGS, *settings, "--device", "cpu", "--threads", "1"]


def train(data: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(data, out), capture_output=True, text=True, timeout=300)


class Uninterrupted:
    """The reference run, started at once in the background; `folder()` waits for it."""

    def __init__(self, data: Path, out: Path):
        self.out = out
        self.proc = subprocess.Popen(train_command(data, out), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)

    def folder(self) -> Path:
        stderr = self.proc.communicate(timeout=300)[1]
        assert self.proc.returncode == 0, stderr
        return self.out


@pytest.fixture(scope="module")
def uninterrupted(pantry, tmp_path_factory):
    run = Uninterrupted(pantry, tmp_path_factory.mktemp("uninterrupted") / "run")
    yield run
    run.proc.kill()


def kill_after_first_checkpoint(data: Path, out: Path, sig: int) -> subprocess.CompletedProcess:
    """Start a run, send `sig` as soon as epoch 1's checkpoint is on disk, wait for the end."""
    proc = subprocess.Popen(train_command(data, out), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, f"run ended before its first checkpoint: {proc.communicate()}"
        assert time.monotonic() < deadline, "no checkpoint after 240 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def assert_same_run(resumed: Path, reference: Path) -> dict:
    """Metrics, selection and every per-user rank equal; returns the resumed result."""
    got, want = (json.loads((d / "result.json").read_text()) for d in (resumed, reference))
    assert got["metrics"] == want["metrics"]
    assert got["epochs_run"] == want["epochs_run"] == EPOCHS and got["best_epoch"] == want["best_epoch"]
    ranks = [np.load(d / "ranks.npz") for d in (resumed, reference)]
    assert ranks[0].files == ranks[1].files and "test_ranks" in ranks[0].files
    for key in ranks[0].files:
        np.testing.assert_array_equal(ranks[0][key], ranks[1][key])
    return got


# ---------------------------------------------------------------- preemption and kills
def test_sigterm_saves_mid_epoch_and_rerun_resumes_to_the_same_result(pantry, uninterrupted, tmp_path):
    out = tmp_path / "run"
    killed = kill_after_first_checkpoint(pantry, out, signal.SIGTERM)
    assert killed.returncode == 2, killed.stderr                  # a clean, reported stop
    message = killed.stderr.strip().splitlines()[-1]
    assert message.startswith("mltfr train: error: received SIGTERM: checkpoint saved in")
    assert message.endswith("rerun the same command to resume")
    assert not (out / "result.json").exists() and not (out / "ranks.npz").exists()
    saved = load_checkpoint(out / "checkpoint.pt")["state"]
    assert saved.epoch in (1, 2) and saved.step > 0 and not saved.finished   # mid-epoch
    assert train(pantry, out).returncode == 0
    result = assert_same_run(out, uninterrupted.folder())
    # Resumed, not restarted: epoch 1's time is the one measured before the kill.
    assert result["timings"]["per_epoch_s"][0] == saved.history[0]["seconds"]


def test_sigkill_after_a_checkpoint_rerun_resumes_to_the_same_result(pantry, uninterrupted, tmp_path):
    out = tmp_path / "run"
    killed = kill_after_first_checkpoint(pantry, out, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert not (out / "result.json").exists() and not (out / "ranks.npz").exists()
    saved = load_checkpoint(out / "checkpoint.pt")["state"]                # still a valid file
    assert saved.epoch >= 1 and not saved.finished
    assert train(pantry, out).returncode == 0
    result = assert_same_run(out, uninterrupted.folder())
    assert result["timings"]["per_epoch_s"][0] == saved.history[0]["seconds"]


# ---------------------------------------------------------------- NaN / infinite loss
def test_diverging_loss_is_a_one_line_error_without_results(pantry, tmp_path):
    """lr=1e30 blows the weights up after the first step: inf/NaN loss at the first check."""
    proc = subprocess.run(train_command(pantry, tmp_path / "run", "lr=1e30", "log_every=1"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("mltfr train: error: ")
    assert "training loss became" in proc.stderr and "in epoch 1 by step 2" in proc.stderr
    assert "no checkpoint was written yet" in proc.stderr and "Lower the learning rate" in proc.stderr
    assert not (tmp_path / "run" / "result.json").exists()


def test_nan_in_epoch_2_keeps_epoch_1_checkpoint(pantry, tmp_path, monkeypatch, capsys):
    """Through the CLI entry point: the model turns NaN after epoch 1 (a test hook on the
    trainer); the run stops with exit code 2, one line, and the epoch-1 checkpoint intact."""
    run_epoch = Trainer.run_epoch

    def poison_after_epoch_1(self):
        if self.state.epoch == 1:
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("nan"))
        run_epoch(self)

    monkeypatch.setattr(Trainer, "run_epoch", poison_after_epoch_1)
    out = tmp_path / "run"
    code = main(train_command(pantry, out, "log_every=1")[1:])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    epoch_log, message = err.strip().split("\n")                 # epoch 1's log line, the error
    assert epoch_log.startswith("epoch 1/3: loss ")
    assert message.startswith("mltfr train: error: training loss became nan in epoch 2 by step 1;")
    assert f"the last good checkpoint (epoch 1) is kept in {out / 'checkpoint.pt'}" in message
    saved = load_checkpoint(out / "checkpoint.pt")
    assert saved["state"].epoch == 1 and saved["state"].best_epoch == 1
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if t.is_floating_point())
    assert not (out / "result.json").exists()


# ---------------------------------------------------------------- disk full
def test_disk_full_while_checkpointing_is_a_one_line_error_and_keeps_the_old_one(
        pantry, tmp_path, monkeypatch, capsys):
    """Epoch 2's checkpoint write fails half-way (ENOSPC): the error names the file, the epoch-1
    checkpoint is intact, and no temp file or result is left behind."""
    import errno

    import mltfr.train.checkpoint as checkpoint

    save, calls = torch.save, []

    def save_then_fill_disk(obj, path):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, path)

    monkeypatch.setattr(checkpoint.torch, "save", save_then_fill_disk)
    out = tmp_path / "run"
    code = main(train_command(pantry, out)[1:])
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and message.startswith(f"mltfr train: error: cannot write {out / 'checkpoint.pt'} "
                                            "(No space left on device;")
    assert "rerun the same command" in message
    assert load_checkpoint(out / "checkpoint.pt")["state"].epoch == 1
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "epochs.csv"]
