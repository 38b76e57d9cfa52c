"""Quality check: SASRec (full CE and BCE) on Amazon Beauty against the published numbers.

    python benchmarks/bench_sasrec_beauty.py [--backbone sasrec-ce sasrec] [--epochs 200]
        [--patience 10] [--threads 2] [--device auto] [--out results/bench/sasrec-beauty]

Corrected protocol (early stopping on valid NDCG@10, test once), full ranking over all items,
history masked, method.md defaults (d=64, L=50, 2 blocks, dropout 0.2, Adam 1e-3, batch 128).
References for exactly the `beauty.txt` of antklen/sasrec-bert4rec-recsys23 (benchmarks/beauty.py):
SASRec-CE NDCG@10 0.0327 / HR@10 0.0533; SASRec-BCE 0.0126 / 0.0246 (docs/targets.md).
Run folders live under --out, so an interrupted benchmark resumes where it stopped.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import beauty
import torch

from mltfr.data import make_split
from mltfr.spec.run_config import RunConfig, apply_overrides
from mltfr.train.run import train_and_evaluate

PUBLISHED = {"sasrec-ce": (0.0327, 0.0533), "sasrec": (0.0126, 0.0246)}  # (NDCG@10, HR@10)


def run_one(prepared, backbone: str, args) -> dict:
    cfg = RunConfig.from_dict({"backbone": backbone, "protocol": "corrected", "seed": args.seed,
                               "epochs": args.epochs, "patience": args.patience, "device": args.device})
    cfg = apply_overrides(cfg, args.set)
    split = make_split(prepared, cfg.protocol, cfg.model.max_len)
    start = time.perf_counter()
    result = train_and_evaluate(split, cfg, args.out / backbone / f"seed{args.seed}", prepared.meta)
    result["wall_s"] = time.perf_counter() - start
    return result


def print_table(results: dict[str, dict]) -> None:
    print(f"\n| {'backbone':<10} | NDCG@10 | published | ratio | HR@10  | published | epochs (best) | wall s  |")
    print("|------------|---------|-----------|-------|--------|-----------|---------------|---------|")
    for backbone, r in results.items():
        t = r["metrics"]["test"]
        ndcg, hr = PUBLISHED[backbone]
        print(f"| {backbone:<10} | {t['ndcg@10']:.4f}  | {ndcg:.4f}    | {t['ndcg@10'] / ndcg:.2f}  | "
              f"{t['hr@10']:.4f} | {hr:.4f}    | {r['epochs_run']:>5} ({r['best_epoch']:>3})   | {r['wall_s']:>7.0f} |")
    print("(corrected protocol, full ranking over all items, history masked; "
          "wall s = this session's time, a resumed run counts only its rest)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", nargs="+", default=["sasrec-ce", "sasrec"], choices=list(PUBLISHED),
                   help="which SASRec losses to run (default both)")
    p.add_argument("--epochs", type=int, default=200, help="epoch budget (default 200)")
    p.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (default 10)")
    p.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="extra RunConfig overrides")
    p.add_argument("--out", type=Path, default=Path("results/bench/sasrec-beauty"), help="run folders")
    beauty.add_argument(p)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    prepared = beauty.prepare(args.data_file)
    print(f"Beauty: {prepared.meta['stats']}")
    print_table({b: run_one(prepared, b, args) for b in args.backbone})


if __name__ == "__main__":
    main()
