"""Step time of SASRec `base` vs the MLTFR branch, peak memory, and trainable parameters per variant.

    python benchmarks/bench_mltfr_step.py [--steps 5] [--threads 1] [--device cpu] [--cases NAME ...]
                                          [--authors-peer PATH]             (from the repo root)

A training step is forward + backward + Adam on one batch of 128 real training windows of the
embedded Pantry data, its entry read from config/config.yaml (L=50, d=64; most positions are
padding, as in real training). Token tables are random tensors of the real shapes: the offline
LLMs of the study (two MiniLM-L6 tables 30522x384, SmolLM2 49152x576, Gemma-3 262144x640) and
paper-sized ones (LLaMA-7B 32000x4096, Qwen3-0.6B 151936x1024), and the positive control's
user-level table (one 256-d row per Pantry user); values do not change the cost.
Each case runs in its own subprocess, so the peak memory (max RSS on CPU, max allocated on
CUDA) is its own.

Where the time goes: with the authors' weights at K = 1 (the default) no gradient reaches the
scores, so a training step draws its picks from softmax(s) by rejection sampling (a few projected
rows per user, no vocabulary-wide work) and pays mostly the tables' zero-filled gradients and Adam
over every table row; evaluation compares each table with the snapshot of its cached projection
and projects the rows that changed. With a filter that learns ("learn", or
K > 1) filtering projects every vocabulary row at every step, |V| x D x d multiply-adds forward
and as much again for the projection's gradient and, with trainable tables, for the table's
gradient (three matmuls per LLM in `FusedTokenFilter`). On CPU, THP_MEM_ALLOC_ENABLE=1 saves the
page faults of each step's fresh (|V|, D) table gradients.

--authors-peer PATH runs a developer's re-typed copy of the authors' training step (a separate
script, not part of the project; it takes --tables VxD ... --shared-group ... --threads --steps
--json FILE) on the MiniLM pair with the shared expert, in a subprocess of the same run, and adds
the ratio of our step to theirs for the matching cases (`base` vs their ID-only SASRec,
`mltfr minilm pair +consensus` vs their SASRec+MoE) and their peak RSS.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mltfr.data import get_entry, make_split, prepare_dataset
from mltfr.models import build_backbone
from mltfr.models.mltfr import BranchConfig, attach, build_branch, resolve_consensus_group
from mltfr.models.variant_branch import variant_config, variant_names
from mltfr.study.config import load_registries
from mltfr.train.allocator import keep_freed_memory
from mltfr.train.batching import train_windows, window_users

OFFLINE = {"minilm": (30522, 384), "paraphrase-minilm": (30522, 384),
           "smollm2": (49152, 576), "gemma3": (262144, 640)}
PAIR = {n: OFFLINE[n] for n in ("minilm", "paraphrase-minilm")}    # the default study's mltfr
THREE = {n: OFFLINE[n] for n in ("minilm", "paraphrase-minilm", "smollm2")}
PAPER = {"llama-7b": (32000, 4096), "qwen3-0.6b": (151936, 1024)}
PLANTED = {"planted-pantry": (None, 256)}    # the positive control: one row per user (None: Pantry's users)
BATCH, MAX_LEN = 128, 50                     # method.md batch and length
STUDY_CONFIG = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
PEER_ARGS = ["--tables", "30522x384", "30522x384", "--shared-group", "0", "1"]   # the MiniLM pair
PEER_CASES = {"base": "id", "mltfr minilm pair +consensus": "moe"}   # our case -> the peer's variant
CASES = {  # name -> (variant, table set)
    "base": ("base", {}),
    "filter-minilm": ("filter-minilm", OFFLINE),
    "filter-smollm2": ("filter-smollm2", OFFLINE),
    "filter-gemma3": ("filter-gemma3", OFFLINE),
    "mltfr minilm pair": ("mltfr-noconsensus", PAIR),
    "mltfr minilm pair +consensus": ("mltfr", PAIR),      # + the frozen shared expert (round 2)
    "mltfr +smollm2": ("mltfr-noconsensus", THREE),
    "mltfr all offline": ("mltfr-noconsensus", OFFLINE),
    "mltfr-frozen offline": ("mltfr-frozen", OFFLINE),
    "mltfr paper-sized": ("mltfr-noconsensus", PAPER),
    # the filters that learn (a dense vocabulary backward every step) and the positive control
    "mltfr-learnfilter pair +consensus": ("mltfr-learnfilter", PAIR),
    "mltfr-sharpfilter pair +consensus": ("mltfr-sharpfilter", PAIR),
    "mltfr-sharpfilter +smollm2": ("mltfr-sharpfilter", THREE),
    "mltfr-planted (users x 256)": ("mltfr-planted", PLANTED),
    "mltfr-planted-sharp (users x 256)": ("mltfr-planted-sharp", PLANTED),
    "mltfr-planted-lookup (users x 256)": ("mltfr-planted-lookup", PLANTED),
}


def pantry_batch(device: str) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """128 training windows (B, L+1) of the embedded Pantry data, drawn with a fixed seed, their
    users (B,) (the positive control's lookup reads them); n_items, n_users."""
    entry = get_entry(load_registries(STUDY_CONFIG), "pantry", where=str(STUDY_CONFIG))
    split = make_split(prepare_dataset(entry, "pantry"), "corrected", MAX_LEN)
    windows = train_windows(split.train_offsets, split.train_items, MAX_LEN)
    rows = np.random.default_rng(0).choice(len(windows), BATCH, replace=False)
    users = window_users(split.train_offsets)[rows]
    return (torch.from_numpy(windows[rows]).to(device), torch.from_numpy(users).to(device), split.n_items,
            len(split.train_offsets) - 1)


def build_model(variant: str, shapes: dict, device: str, n_items: int, n_users: int,
                meta: bool = False) -> torch.nn.Module:
    """SASRec with the variant's branch over random tables of `shapes` (rows None: one per user;
    meta: no memory)."""
    torch.manual_seed(0)
    model = build_backbone("sasrec", n_items, {"d": 64, "max_len": MAX_LEN})
    names = list(shapes)
    cfg, used = variant_config(variant, names, BranchConfig.for_protocol("corrected"))
    if cfg is not None:
        table_device = "meta" if meta else device
        rows_dims = [shapes[n.removeprefix("random-")] for n in used]
        tables = [torch.randn(rows or n_users, dim, device=table_device) for rows, dim in rows_dims]
        attach(model, build_branch(cfg, tables))
    return model.to(device) if not meta else model


def add_consensus_expert(model: torch.nn.Module) -> None:
    """A frozen shared expert over the consensus group (round 2's shape; its values do not change
    the cost), when the variant has one and the branch was built without it."""
    branch = model.branch
    if branch is not None and branch.cfg.consensus != "none" and branch.shared is None:
        group = resolve_consensus_group(branch.cfg, branch.dims)
        branch.set_shared(branch.experts[group[0]].state_dict(), group)


def time_case(variant: str, shapes: dict, steps: int, device: str) -> dict:
    """Mean train-step and eval-batch time (ms) and peak memory (MiB) of one case."""
    keep_freed_memory()                               # as the trainer does
    windows, users, n_items, n_users = pantry_batch(device)
    model = build_model(variant, shapes, device, n_items, n_users)
    add_consensus_expert(model)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    gen = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    train_ms = []
    for step in range(steps + 1):                     # step 0 warms up
        sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with model.users_of(users):
            model.loss(windows, gen).backward()
        opt.step()
        sync()
        train_ms.append(1000 * (time.perf_counter() - start))
    model.eval()
    eval_ms = []
    with torch.no_grad():
        for _ in range(steps + 1):
            start = time.perf_counter()
            with model.users_of(users):
                model.user_representation(windows[:, 1:])
            sync()
            eval_ms.append(1000 * (time.perf_counter() - start))
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda")
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"train_ms": statistics.median(train_ms[1:]), "eval_ms": statistics.median(eval_ms[1:]),
            "peak_mib": peak}


def trainable_counts(shapes: dict, n_items: int, n_users: int) -> dict[str, int]:
    """Trainable parameters per variant (tables on the meta device: nothing is allocated)."""
    counts = {}
    for variant in variant_names(list(shapes)):
        model = build_model(variant, shapes, "cpu", n_items, n_users, meta=True)
        counts[variant] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return counts


def run_peer(path: str, args) -> dict[str, dict]:
    """The authors' step timings per peer variant ("id", "moe"), from its --json output."""
    with tempfile.TemporaryDirectory() as folder:
        out_json = Path(folder) / "peer.json"
        cmd = [sys.executable, path, *PEER_ARGS, "--threads", str(args.threads), "--steps", str(args.steps),
               "--json", str(out_json)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"the authors' peer {path} failed:\n{out.stderr[-2000:]}")
        print(out.stdout)
        return {r["variant"]: r for r in json.loads(out_json.read_text())}


def run_case(name: str, args) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--steps", str(args.steps),
           "--threads", str(args.threads), "--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"case {name!r} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ratio(ours: float, theirs: float | None) -> str:
    return f"{ours / theirs:.2f}" if theirs else "-"


def run_all(args) -> None:
    names = ["base", *[n for n in args.cases if n != "base"]]     # base: the reference of every ratio
    rows = [(name, run_case(name, args)) for name in names]
    peer = run_peer(args.authors_peer, args) if args.authors_peer else {}
    base = rows[0][1]
    print(f"SASRec step (forward+backward+Adam), B={BATCH}, L={MAX_LEN}, d=64, {args.device}, "
          f"{args.threads} thread(s), median of {args.steps} steps after 1 warm-up")
    print(f"{'case':<36}{'train ms':>10}{'x base':>8}{'x authors':>10}{'eval ms':>10}{'x base':>8}"
          f"{'peak MiB':>10}{'authors MiB':>12}")
    for name, r in rows:
        theirs = peer.get(PEER_CASES.get(name), {})
        print(f"{name:<36}{r['train_ms']:>10.1f}{r['train_ms'] / base['train_ms']:>8.1f}"
              f"{ratio(r['train_ms'], theirs.get('step_ms_median')):>10}{r['eval_ms']:>10.1f}"
              f"{r['eval_ms'] / base['eval_ms']:>8.1f}{r['peak_mib']:>10.0f}"
              f"{theirs.get('peak_rss_mib', '-'):>12}")
    if args.trainable_counts:
        print("\ntrainable parameters per variant (offline LLM shapes; round 2 adds a frozen expert)")
        for variant, n in trainable_counts(OFFLINE, *pantry_batch("cpu")[2:]).items():
            print(f"{variant:<28}{n:>14,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (after 1 warm-up); their median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES),
                        help="cases to time (base always runs: the ratios' reference)")
    parser.add_argument("--authors-peer", metavar="PATH",
                        help="script timing the authors' step (bench_authors_step.py), run for comparison")
    parser.add_argument("--no-trainable-counts", dest="trainable_counts", action="store_false",
                        help="skip the table of trainable parameters per variant")
    parser.add_argument("--one", choices=list(CASES), help=argparse.SUPPRESS)   # child process
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        variant, shapes = CASES[args.one]
        print(json.dumps(time_case(variant, shapes, args.steps, args.device)))
    else:
        run_all(args)


if __name__ == "__main__":
    main()
