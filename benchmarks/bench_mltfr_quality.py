"""Quality of MLTFR vs the ID-only backbone and single-LLM filtering, mean +- std over seeds.

    python benchmarks/bench_mltfr_quality.py [--datasets pantry beauty] [--seeds 1 2 3]
        [--llms minilm paraphrase-minilm smollm2] [--epochs 200] [--patience 10] [--threads 2]
        [--variants base filter-minilm mltfr] [--out results/bench/mltfr-quality] [--summary]

Corrected protocol (early stopping on valid NDCG@10, test once), SASRec (BCE, as the authors),
full ranking. Variants: base, filter-<each LLM>, mltfr (round 1 -> Fisher merge -> round 2), or
the subset named by --variants (to split the work between processes sharing --out; --summary
then tabulates every finished run), run through the same `mltfr` commands the workflow uses.
Datasets: the embedded Pantry and Amazon Beauty (`--data-file`, see benchmarks/beauty.py). Run folders live under --out, so an interrupted
benchmark resumes where it stopped; finished runs are not retrained.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import yaml

import beauty
from mltfr.cli import main

REPO = Path(__file__).resolve().parents[1]
DATASETS = {
    "pantry": {"source": [{"path": str(REPO / "data/amazon-pantry/train.txt.gz")},
                          {"path": str(REPO / "data/amazon-pantry/test.txt.gz")}], "format": "mltfr-pair"},
}


def write_config(out: Path, llms: list[str], beauty_file: Path | None) -> Path:
    datasets = {**DATASETS, "beauty": beauty.entry(beauty_file)} if beauty_file else DATASETS
    config = {"datasets": datasets, "llms": {n: {"source": "package", "package": n} for n in llms}}
    path = out / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def call(*args: str) -> None:
    if main([str(a) for a in args]) != 0:
        raise SystemExit(f"failed: mltfr {' '.join(map(str, args))}")


def train(out: Path, data: Path, variant: str, seed: int, llm_args: list[str], args, *extra) -> dict:
    result = out / "result.json"
    if not result.exists():
        call("train", "--data", data, "--out", out, "--backbone", "sasrec", "--protocol", "corrected",
             "--seed", seed, "--variant", variant, "--threads", args.threads, "--set",
             f"epochs={args.epochs}", f"patience={args.patience}", *llm_args, *extra)
    return json.loads(result.read_text())


def run_variant(root: Path, data: Path, variant: str, seed: int, llms: dict[str, Path], args) -> dict:
    run = root / variant / f"seed{seed}"
    names = {n: p for n, p in llms.items() if variant in ("mltfr", f"filter-{n}")}
    llm_args = ["--llm", *[f"{n}={p}" for n, p in names.items()]] if names else []
    if variant != "mltfr":
        return train(run, data, variant, seed, llm_args, args)
    train(run / "round1", data, variant, seed, llm_args, args)
    merged = run / "round1" / "consensus.safetensors"
    if not merged.exists():
        call("fisher", "--run", run / "round1", "--out", merged)
    return train(run, data, variant, seed, llm_args, args, "--consensus", str(merged))


def default_variants(llms: list[str]) -> list[str]:
    return ["base", *[f"filter-{n}" for n in llms], "mltfr"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["pantry", "beauty"], choices=[*DATASETS, "beauty"])
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    p.add_argument("--llms", nargs="+", default=["minilm", "paraphrase-minilm", "smollm2"],
                   help="packaged LLMs (offline); the first two form the Fisher consensus group")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", nargs="+", help="a subset of base, filter-<llm>, mltfr (default: all)")
    p.add_argument("--summary", action="store_true",
                   help="train nothing: print the table of every finished run under --out")
    p.add_argument("--out", type=Path, default=Path("results/bench/mltfr-quality"))
    beauty.add_argument(p)
    args = p.parse_args()
    if "beauty" in args.datasets and not args.summary:
        beauty.entry(args.data_file)      # a missing file stops here, before any training
    unknown = set(args.variants or []) - set(default_variants(args.llms))
    if unknown:
        p.error(f"unknown variant(s) {', '.join(sorted(unknown))}; choose from {', '.join(default_variants(args.llms))}")
    return args


def result_row(dataset: str, variant: str, seed: int, r: dict) -> dict:
    return {"dataset": dataset, "variant": variant, "seed": seed, "epochs": r["epochs_run"],
            "train_s": r["timings"]["train_s"], **{k: r["metrics"]["test"][k] for k in ("ndcg@10", "hr@10")}}


def finished_rows(out: Path) -> list[dict]:
    """Every finished run under out/runs/{dataset}/{variant}/seed{S} (also those of other processes)."""
    return [result_row(path.parts[-4], path.parts[-3], int(path.parts[-2][4:]), json.loads(path.read_text()))
            for path in sorted((out / "runs").glob("*/*/seed*/result.json"))]


def print_table(rows: list[dict]) -> None:
    table = pd.DataFrame(rows).groupby(["dataset", "variant"], sort=False).agg(
        ndcg10_mean=("ndcg@10", "mean"), ndcg10_std=("ndcg@10", "std"), hr10_mean=("hr@10", "mean"),
        hr10_std=("hr@10", "std"), seeds=("seed", "count"), epochs=("epochs", "mean"), train_s=("train_s", "mean"))
    print(table.to_markdown(floatfmt=".4f"))


def main_bench() -> None:
    args = parse_args()
    if args.summary:
        rows = finished_rows(args.out)
        if not rows:
            raise SystemExit(f"no finished runs under {args.out}/runs; run the benchmark first")
        return print_table(rows)
    config = write_config(args.out, args.llms, args.data_file if "beauty" in args.datasets else None)
    llms = {n: args.out / "llm" / n for n in args.llms}
    for name, folder in llms.items():
        call("extract-llm", "--config", config, "--llm", name, "--out", folder)
    rows = []
    for dataset in args.datasets:
        data = args.out / "data" / dataset
        if not (data / "meta.json").exists():
            call("prepare", "--config", config, "--dataset", dataset, "--out", data)
        for variant in args.variants or default_variants(args.llms):
            for seed in args.seeds:
                r = run_variant(args.out / "runs" / dataset, data, variant, seed, llms, args)
                rows.append(result_row(dataset, variant, seed, r))
    print_table(rows)


if __name__ == "__main__":
    main_bench()
