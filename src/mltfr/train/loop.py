"""The training loop: epochs of shuffled windows, evaluation, model selection, checkpoints.

Selection follows `RunConfig.selects_on` (by protocol unless `select_on` is set).
valid (corrected): evaluate on validation every `eval_every` epochs, keep the best state, stop
after `patience` evaluations without improvement; the test set is touched once, at the end, by
the caller (mltfr.train.run), unless `trace_test` also logs it at every evaluation (never used
for selection). test (faithful): a fixed epoch budget, the test set evaluated at every
evaluation and the best epoch picked on it by the authors' majority rule over
{HR, Precision, Recall, NDCG}@20 (mltfr.evaluate.wins_majority; labelled so in outputs).

A checkpoint is written after every epoch and on SIGTERM (at the next batch boundary), so a
rerun of the same command continues to exactly the result of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mltfr.errors import ConfigError, MltfrError
from mltfr.evaluate import majority_metrics, metric_names, metrics_from_ranks, rank, rank_sampled, wins_majority
from mltfr.io import atomic_write_text
from mltfr.models.diagnostics import attach_diagnostics
from mltfr.spec.run_config import RunConfig
from mltfr.train import batching
from mltfr.train.allocator import keep_freed_memory
from mltfr.train.checkpoint import TrainState, check_same_config, load_checkpoint, save_checkpoint
from mltfr.train.seed import Generators, rng_state, set_rng_state

CHECKPOINT = "checkpoint.pt"
EPOCH_LOG = "epochs.csv"


class Preempted(MltfrError):
    """SIGTERM arrived (e.g. Slurm preemption): a checkpoint was saved; rerun to resume."""


class Trainer:
    """Trains `model` on `split` under `cfg`, writing epochs.csv and checkpoint.pt to run_dir."""

    def __init__(self, model, split, cfg: RunConfig, run_dir: Path, gens: Generators,
                 device: torch.device):
        self.model, self.split, self.cfg, self.gens, self.device = model, split, cfg, gens, device
        if cfg.selects_on == "valid" and split.valid is None:
            raise ConfigError("select_on valid needs a validation set but the split has none; build "
                              "the split with mltfr.train.run.split_for_run(prepared, cfg)")
        self.run_dir = Path(run_dir)
        keep_freed_memory()  # no page faults for per-step gradient buffers (CPU)
        self.optimizer = make_optimizer(model, cfg) if cfg.trains else None  # pop: nothing to optimise
        windows = batching.run_windows(split, cfg)
        if len(windows) == 0:
            raise MltfrError("no user has 2 or more training items: nothing to train on "
                             "(check the dataset's k-core filtering)")
        self.windows = torch.from_numpy(windows).to(device)  # (n_windows, L+1)
        self.window_users = torch.from_numpy(batching.window_users(split.train_offsets)).to(device)  # (n_windows,)
        self.state = TrainState()
        self.stop_requested = False
        self.diagnostics = attach_diagnostics(model, cfg.diagnostics_every)  # None: no branch

    # ----------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / CHECKPOINT

    def resume(self) -> bool:
        """Load checkpoint.pt when present (its config must match); True when it was loaded."""
        if not self.checkpoint_path.exists():
            return False
        payload = load_checkpoint(self.checkpoint_path)
        check_same_config(self.checkpoint_path, payload["config"], self.cfg.to_dict())
        if payload["model"] is not None:          # None: a finished run that selected on valid
            self.model.load_state_dict(payload["model"])
        if self.optimizer is not None and payload["optimizer"] is not None:   # None: finished
            self.optimizer.load_state_dict(payload["optimizer"])
        set_rng_state(payload["rng"], self.gens)
        self.state = payload["state"]
        return True

    def save(self) -> None:
        """A finished run never trains again, so its checkpoint drops the optimizer state (twice
        the trainable weights, the LLM tables included) and, when it selected on validation, the
        last epoch's weights: evaluation and the Fisher pass read best_state. A test-selected run
        keeps them, as the authors' Fisher pass reads the last epoch (mltfr.cli.fisher)."""
        done = self.state.finished
        last = None if done and self.cfg.selects_on == "valid" else self.model
        save_checkpoint(self.checkpoint_path, self.cfg.to_dict(), last,
                        None if done else self.optimizer, rng_state(self.gens), self.state)

    # ----------------------------------------------------------------- the loop
    def fit(self, stop_after_epoch: int | None = None) -> TrainState:
        """Train until the budget is spent or early stopping; `stop_after_epoch` is a test hook
        that returns after that epoch as if the process had been killed."""
        if not self.cfg.trains:
            if not self.state.finished:
                self.evaluate_untrained()
            return self.state
        with self._sigterm_saves_checkpoint():
            while not self.state.finished:
                self.run_epoch()
                if self.state.finished or self.state.epoch == stop_after_epoch:
                    break
        return self.state

    def run_epoch(self) -> None:
        """One epoch: train, maybe evaluate and update the best state, log, checkpoint."""
        s = self.state
        loss, seconds = self.train_epoch()
        s.epoch += 1
        row = {"epoch": s.epoch, "train_loss": loss, "seconds": round(seconds, 3)}
        if s.epoch % self.cfg.eval_every == 0 or s.epoch == self.cfg.max_epochs:
            row.update(self.evaluate_and_select())
        s.finished = s.epoch >= self.cfg.max_epochs or (
            self.cfg.selects_on == "valid" and s.bad_evals >= self.cfg.patience)
        s.history.append(row)
        self.write_epoch_log()
        self.save()
        self.log_epoch(row)

    def evaluate_untrained(self) -> None:
        """A model without trainable parameters (pop): no epochs, one evaluation as "epoch 0".

        The selection set (`selects_on`) is evaluated once, so the result, the ranks and
        epochs.csv are written like any run's; select_on valid adds the test pass."""
        s = self.state
        row = {"epoch": 0, "train_loss": None, "seconds": 0.0, **self.evaluate_and_select()}
        s.finished = True
        s.history.append(row)
        self.write_epoch_log()
        self.save()
        print(f"{self.cfg.backbone}: no trainable parameters, evaluated once ({self.cfg.selection})",
              file=sys.stderr, flush=True)

    def log_epoch(self, row: dict) -> None:
        """One line per epoch on stderr (the job log; the tqdm bar only shows on a terminal)."""
        s, key = self.state, self.cfg.metric_for_selection
        scores = "".join(f", {k} {v:.4f}" for k, v in row.items() if k.endswith(f"_{key}"))
        print(f"epoch {row['epoch']}/{self.cfg.max_epochs}: loss {row['train_loss']:.4f}, {row['seconds']:.1f} s"
              f"{scores} (best {s.best_score:.4f} at epoch {s.best_epoch}, {self.cfg.selection})",
              file=sys.stderr, flush=True)

    def train_epoch(self) -> tuple[float, float]:
        """Train over all windows once (or the rest of a preempted epoch): (mean loss, seconds)."""
        s, cfg = self.state, self.cfg
        if s.order is None:  # a fresh epoch (not the rest of a preempted one)
            s.order, s.step, s.loss_sum, s.epoch_seconds = self._new_order(), 0, 0.0, 0.0
            if self.diagnostics is not None:  # a resumed epoch keeps only the steps after resume
                self.diagnostics.reset()
        total = batching.n_steps(len(s.order), cfg.batch_size)
        start = time.perf_counter()
        loss_sum = torch.tensor(s.loss_sum, dtype=torch.float64, device=self.device)
        self.model.train()
        bar = tqdm(total=total, initial=s.step, desc=f"epoch {s.epoch + 1}", leave=False,
                   disable=not sys.stderr.isatty())
        for step, seqs, users in batching.batches(self.windows, self.window_users, s.order, cfg.batch_size, s.step):
            if self.diagnostics is not None:
                self.diagnostics.arm(step)
            loss_sum += self.train_step(seqs, users)
            if (step + 1) % cfg.log_every == 0 or step + 1 == total:
                mean = loss_sum.item() / (step + 1)               # the only device sync of the loop
                self._check_finite(mean, step)
                bar.set_postfix(loss=f"{mean:.4f}")
            bar.update()
            if self.stop_requested:
                self._save_preempted(step + 1, loss_sum, time.perf_counter() - start)
        bar.close()
        elapsed = time.perf_counter() - start
        seconds, s.train_seconds = s.epoch_seconds + elapsed, s.train_seconds + elapsed
        s.order, s.step, s.loss_sum, s.epoch_seconds = None, 0, 0.0, 0.0
        return loss_sum.item() / total, seconds

    def _new_order(self) -> torch.Tensor:
        return batching.epoch_order(len(self.windows), self.gens.shuffle)

    def train_step(self, seqs: torch.Tensor, users: torch.Tensor | None = None) -> torch.Tensor:
        """One Adam step on (B, L+1) windows of `users` (B,); returns the detached loss (no device sync)."""
        bf16 = self.cfg.bf16 and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=bf16), \
                self.model.users_of(users):
            loss = self.model.loss(seqs, self.gens.sample)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.diagnostics is not None:
            self.diagnostics.record_gradients(self.model.branch)
        self.optimizer.step()
        return loss.detach()

    def _check_finite(self, mean_loss: float, step: int) -> None:
        if not math.isfinite(mean_loss):
            kept = (f"the last good checkpoint (epoch {self.state.epoch}) is kept in {self.checkpoint_path}"
                    if self.checkpoint_path.exists() else "no checkpoint was written yet")
            raise MltfrError(f"training loss became {mean_loss} in epoch {self.state.epoch + 1} by step "
                             f"{step + 1}; {kept}. Lower the learning rate (--set lr=...) or check the data; "
                             f"delete {self.run_dir} to restart from scratch")

    # ----------------------------------------------------------------- evaluation and selection
    def evaluate_and_select(self) -> dict[str, float]:
        """Evaluate the selection set (`selects_on`), update the best state.

        Returns the metrics for the epoch log, keys prefixed by the set's name (with trace_test
        the test metrics too)."""
        s, cfg = self.state, self.cfg
        which = cfg.selects_on
        ranks, seconds = evaluate_ranks(self.model, getattr(self.split, which), cfg, self.device)
        s.eval_seconds += seconds
        metrics = metrics_from_ranks(ranks)
        scores = selection_scores(cfg, ranks, metrics)
        if self.improves(scores):
            s.best_score, s.best_scores = metrics[cfg.metric_for_selection], scores
            s.best_epoch, s.bad_evals = s.epoch, 0
            s.best_state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            s.best_ranks = {which: torch.from_numpy(ranks)}
        else:
            s.bad_evals += 1
        row = {f"{which}_{name}": value for name, value in metrics.items()}
        if cfg.trace_test and which == "valid":
            row.update(self.trace_test())
        return row

    def trace_test(self) -> dict[str, float]:
        """Test metrics for the epoch log only (trace_test): never compared, never kept. The RNG
        is restored after, so evaluation noise drawn here leaves the training draws unchanged."""
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            ranks, seconds = evaluate_ranks(self.model, self.split.test, self.cfg, self.device)
        self.state.eval_seconds += seconds
        return {f"test_{name}": value for name, value in metrics_from_ranks(ranks).items()}

    def improves(self, scores: dict[str, float]) -> bool:
        """Whether an evaluation with these selection scores replaces the best one so far."""
        best = self.state.best_scores
        if not best:
            return True
        if self.cfg.selects_on == "test":
            return wins_majority(scores, best)
        key = self.cfg.metric_for_selection
        return scores[key] > best[key]

    def write_epoch_log(self) -> None:
        """Rewrite epochs.csv (atomically) from the history: one row per epoch; the column
        `selected` names the selection rule on the row of the best epoch so far."""
        columns = ["epoch", "train_loss", "seconds"] + [
            f"{which}_{m}" for which in ("valid", "test") for m in metric_names()]
        columns = [c for c in columns if any(c in row for row in self.state.history)] + ["selected"]
        rows = [{**row, "selected": self.cfg.selection if row["epoch"] == self.state.best_epoch else ""}
                for row in self.state.history]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.run_dir / EPOCH_LOG, buf.getvalue())

    # ----------------------------------------------------------------- preemption
    @contextlib.contextmanager
    def _sigterm_saves_checkpoint(self):
        """While training, SIGTERM only raises a flag; the loop saves at the next batch boundary."""
        if threading.current_thread() is not threading.main_thread():
            yield  # signal handlers can only be installed from the main thread
            return
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _on_sigterm(self, signum, frame) -> None:
        self.stop_requested = True

    def _save_preempted(self, steps_done: int, loss_sum: torch.Tensor, elapsed: float) -> None:
        s = self.state
        s.step, s.loss_sum = steps_done, loss_sum.item()
        s.epoch_seconds, s.train_seconds = s.epoch_seconds + elapsed, s.train_seconds + elapsed
        self.save()
        raise Preempted(f"received SIGTERM: checkpoint saved in {self.checkpoint_path} (epoch {s.epoch + 1}, "
                        f"step {steps_done}); rerun the same command to resume")


def make_optimizer(model, cfg: RunConfig) -> torch.optim.Optimizer:
    """Adam; the fused kernel when possible: on CPU it is ~5x faster over the dense item table.

    The LLM token tables get the branch's table_weight_decay, not the run's weight_decay: Adam's
    coupled L2 moves a row with no data gradient by ~lr a step towards 0, so a tuned backbone decay
    would zero every row the filter does not pick (ML-1M, weight decay 1e-4: median row norm 0)."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params) or None
    branch = getattr(model, "branch", None)
    tables = {id(t) for t in branch.trainable_tables()} if branch is not None else set()
    if not tables or branch.cfg.table_weight_decay == cfg.weight_decay:   # one group: as ever
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)
    groups = [{"params": [p for p in params if id(p) not in tables], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if id(p) in tables], "weight_decay": branch.cfg.table_weight_decay}]
    return torch.optim.Adam(groups, lr=cfg.lr, fused=fused)


def selection_scores(cfg: RunConfig, ranks: np.ndarray, metrics: dict[str, float]) -> dict[str, float]:
    """The metrics the selection compares: the authors' four @20 metrics (select_on test), or
    metric_for_selection (select_on valid)."""
    if cfg.selects_on == "test":
        return majority_metrics(ranks)
    return {cfg.metric_for_selection: metrics[cfg.metric_for_selection]}


def eval_user_block(model, cfg: RunConfig) -> int:
    """Users per evaluation forward pass. A faithful branch pools the filtered tokens of the whole
    batch, so it is evaluated in training-sized batches in user order, as the authors' code does."""
    return cfg.batch_size if model.batch_dependent else cfg.eval_batch_size


def evaluate_ranks(model, evalset, cfg: RunConfig, device: torch.device) -> tuple[np.ndarray, float]:
    """Ranks of `evalset` under the run's evaluation protocol, and the seconds it took."""
    start = time.perf_counter()
    if cfg.sampled_negatives:
        ranks = rank_sampled(model, evalset, cfg.sampled_negatives, seed=cfg.seed,
                             user_block=cfg.eval_batch_size, device=device)
    else:
        ranks = rank(model, evalset, cfg.masks_history, user_block=eval_user_block(model, cfg),
                     item_block=cfg.eval_item_block, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return ranks, time.perf_counter() - start
