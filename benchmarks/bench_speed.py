"""Training and full-ranking evaluation speed of SASRec on Amazon Beauty, beside the FLOP floor.

    python benchmarks/bench_speed.py [--threads 2] [--device auto] [--max-steps 0] [--data-file F]

The floor of a piece of work is its FLOPs over the matmul rate measured in the same run
(float32 (2048 x 2048) @ (2048 x 2048)): no implementation on this machine runs much faster.
FLOPs counted (multiply-add = 2 FLOPs, backward = 2x forward, so training = 3x forward):
  per Transformer block and position: q, k, v, out projections and the d -> d -> d feed-forward
  (6 d^2 MACs) plus causal attention over the real keys before it (2 d MACs per key);
  loss per position: BCE 2 d MACs (positive and one negative), CE n_items * d MACs (all logits).
"real" counts only real (non-padding) target positions, the way our loss works; "padded"
counts all L positions with full L x L attention, the way the peers in docs/targets.md count.
Evaluation: the network over each user's real input positions plus users x items x d scores.
Data: Amazon Beauty (`--data-file`, see benchmarks/beauty.py), corrected split, L = 50.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import beauty
import numpy as np
import torch

from mltfr.data import make_split
from mltfr.evaluate import rank
from mltfr.spec.run_config import RunConfig
from mltfr.train import batching
from mltfr.train.run import build_trainer, resolve_device


def matmul_gflops(device: torch.device, n: int = 2048, reps: int = 10) -> float:
    """Sustained float32 matmul rate (GFLOP/s): the yardstick of every floor below."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_beauty(path: Path, max_len: int):
    return make_split(beauty.prepare(path), "corrected", max_len)


def network_macs(lengths: np.ndarray, d: int, n_blocks: int, padded_to: int | None = None) -> float:
    """Forward multiply-adds of the Transformer blocks over sequences of `lengths` real positions."""
    n = np.full_like(lengths, padded_to) if padded_to else lengths.astype(np.float64)
    keys = n * n if padded_to else n * (n + 1) / 2                      # full vs causal attention
    return float(n_blocks * (6 * d * d * n.sum() + 2 * d * keys.sum()))


def train_floor_flops(windows: np.ndarray, d: int, n_blocks: int, n_items: int, loss: str,
                      padded: bool) -> float:
    """FLOPs of one training epoch over `windows` (n, L+1): 3 x forward (forward + backward)."""
    real = (windows[:, 1:] != 0).sum(1)                                  # real target positions
    L = windows.shape[1] - 1
    positions = len(windows) * L if padded else real.sum()
    loss_macs = positions * (2 * d if loss == "bce" else n_items * d)
    return 3 * 2 * (network_macs(real, d, n_blocks, L if padded else None) + loss_macs)


def eval_floor_flops(evalset, d: int, n_blocks: int, n_items: int) -> float:
    lengths = (evalset.inputs != 0).sum(1)
    return 2 * (network_macs(lengths, d, n_blocks) + len(lengths) * n_items * d)


def time_train_epoch(trainer, max_steps: int) -> tuple[float, int, int]:
    """Seconds of one epoch of train steps (extrapolated from `max_steps` when > 0)."""
    order = batching.epoch_order(len(trainer.windows), trainer.gens.shuffle)
    total = batching.n_steps(len(order), trainer.cfg.batch_size)
    steps = min(total, max_steps) if max_steps else total
    trainer.model.train()
    done, start = 0, time.perf_counter()
    for step, seqs in batching.batches(trainer.windows, order, trainer.cfg.batch_size):
        trainer.train_step(seqs).item() if step + 1 == steps else trainer.train_step(seqs)
        done += 1
        if done == steps:
            break
    sync(trainer.device)
    return (time.perf_counter() - start) * total / steps, steps, total


def time_eval(model, evalset, cfg: RunConfig, device) -> float:
    start = time.perf_counter()
    rank(model, evalset, cfg.masks_history, user_block=cfg.eval_batch_size,
         item_block=cfg.eval_item_block, device=device)
    sync(device)
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    split = load_beauty(args.data_file, 50)
    rows, gflops = [], matmul_gflops(device)
    print(f"device {device}, {torch.get_num_threads()} threads, matmul {gflops:.0f} GFLOP/s; "
          f"{len(split.test.users)} users, {split.n_items} items")
    for backbone, loss in (("sasrec", "bce"), ("sasrec-ce", "ce")):
        cfg = RunConfig.from_dict({"backbone": backbone, "device": args.device,
                                   "bf16": args.bf16, "eval_batch_size": args.eval_batch_size,
                                   "eval_item_block": args.item_block})
        with tempfile.TemporaryDirectory() as tmp:
            trainer = build_trainer(split, cfg, Path(tmp))
        seconds, steps, total = time_train_epoch(trainer, args.max_steps)
        windows = trainer.windows.cpu().numpy()
        for padded in (False, True):
            floor = train_floor_flops(windows, 64, 2, split.n_items, loss, padded) / gflops / 1e9
            rows.append((f"train epoch {backbone} ({'padded' if padded else 'real'} floor)", seconds, floor,
                         f"{len(windows) / seconds:,.0f} seq/s" + ("" if steps == total else f" ({steps}/{total} steps)")))
        if backbone == "sasrec":
            ev = time_eval(trainer.model, split.test, cfg, device)
            floor = eval_floor_flops(split.test, 64, 2, split.n_items) / gflops / 1e9
            rows.append(("full-ranking eval, all users", ev, floor, f"{len(split.test.users) / ev:,.0f} users/s"))
    print_table(rows)


def print_table(rows) -> None:
    print(f"\n| {'what':<44} | {'measured s':>10} | {'floor s':>8} | {'ratio':>6} | throughput |")
    print(f"|{'-' * 46}|{'-' * 12}|{'-' * 10}|{'-' * 8}|------------|")
    for what, seconds, floor, extra in rows:
        print(f"| {what:<44} | {seconds:>10.2f} | {floor:>8.2f} | {seconds / floor:>5.1f}x | {extra} |")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for training (CUDA only)")
    p.add_argument("--max-steps", type=int, default=0,
                   help="time only this many training steps and extrapolate to the epoch (0 = whole epoch)")
    p.add_argument("--eval-batch-size", type=int, default=1024, help="users per evaluation block")
    p.add_argument("--item-block", type=int, default=2048, help="items per score tile")
    beauty.add_argument(p)
    return p.parse_args()


if __name__ == "__main__":
    main()
