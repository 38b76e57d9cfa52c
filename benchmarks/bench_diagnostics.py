"""Cost of the filter diagnostics (mltfr.models.diagnostics) on a training step.

    python benchmarks/bench_diagnostics.py [--steps 5] [--threads 1] [--every 10] [--cases ...]

SASRec step (forward + backward + Adam) on 128 real Pantry windows with random tables of the
offline LLMs' shapes (bench_mltfr_step.py's setup), three ways, interleaved step by step so that
machine noise hits all three alike: no diagnostics; diagnostics attached but not armed (only the
distinct-pick marks, every step); armed (the sampled step: one more projection, the (B, |V|)
softmax, the router entropy and the projection gradient norm). The overhead at `--every N` is
(unarmed - none) + (armed - unarmed) / N, as a share of the plain step.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from bench_mltfr_step import CASES, build_model, pantry_batch

from mltfr.models.diagnostics import attach_diagnostics
from mltfr.train.allocator import keep_freed_memory

MODES = ("none", "unarmed", "armed")
DEFAULT_CASES = ("filter-minilm", "mltfr minilm pair")


def step_ms(model, opt, windows, gen, diag, armed: bool) -> float:
    """One timed training step, with the diagnostics (if any) armed or not."""
    start = time.perf_counter()
    if diag is not None:
        diag.arm(0 if armed else 1)
    opt.zero_grad(set_to_none=True)
    model.loss(windows, gen).backward()
    if diag is not None:
        diag.record_gradients(model.branch)
    opt.step()
    return 1000 * (time.perf_counter() - start)


def time_case(case: str, steps: int, device: str) -> dict[str, float]:
    """Median step time (ms) of each mode for one case; one model per mode, same seed."""
    variant, shapes = CASES[case]
    windows, n_items = pantry_batch(device)
    runs = {}
    for mode in MODES:
        model = build_model(variant, shapes, device, n_items).train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
        diag = attach_diagnostics(model, every=2) if mode != "none" else None
        runs[mode] = (model, opt, torch.Generator(device=device).manual_seed(0), diag)
    times = {mode: [] for mode in MODES}
    for step in range(steps + 1):                       # step 0 warms up
        for mode in MODES[step % 3:] + MODES[:step % 3]:    # rotate: no mode always runs first
            model, opt, gen, diag = runs[mode]
            ms = step_ms(model, opt, windows, gen, diag, armed=mode == "armed")
            if step:
                times[mode].append(ms)
    return {mode: statistics.median(t) for mode, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--every", type=int, default=10, help="diagnostics_every to report the overhead for")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=list(CASES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    print(f"SASRec step, B=128, L=50, d=64, {args.device}, {args.threads} thread(s), median of "
          f"{args.steps} steps; overhead at diagnostics_every={args.every}")
    print(f"{'case':<22}{'none ms':>9}{'unarmed':>9}{'armed':>9}{'overhead':>10}")
    for case in args.cases:
        t = time_case(case, args.steps, args.device)
        overhead = (t["unarmed"] - t["none"]) + (t["armed"] - t["unarmed"]) / args.every
        print(f"{case:<22}{t['none']:>9.1f}{t['unarmed']:>9.1f}{t['armed']:>9.1f}"
              f"{100 * overhead / t['none']:>9.1f}%")


if __name__ == "__main__":
    main()
