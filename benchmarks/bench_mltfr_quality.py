"""Quality of MLTFR vs the ID-only backbone and single-LLM filtering, mean +- std over seeds.

    python benchmarks/bench_mltfr_quality.py [--datasets pantry beauty] [--seeds 1 2 3]
        [--llms minilm paraphrase-minilm smollm2] [--epochs 200] [--patience 10] [--threads 2]
        [--variants base filter-minilm mltfr] [--out results/bench/mltfr-quality] [--summary]

Corrected protocol (early stopping on valid NDCG@10, test once), SASRec (BCE, as the authors),
full ranking. Variants: base, filter-<each LLM>, mltfr (round 1 -> Fisher merge -> round 2), or
the subset named by --variants (to split the work between processes sharing --out; --summary
then tabulates every finished run), run through the same `mltfr` commands the workflow uses.
Datasets and LLMs are the entries of config/config.yaml (the embedded Pantry; LLMs by name),
except Amazon Beauty, which is not shipped (`--data-file`, see benchmarks/beauty.py). Each
variant runs through `mltfr.train.rounds.train_variant` (round 1 -> the merge -> round 2 for
mltfr, in the workflow's layout, the library calls of the workflow's commands). Run folders live under --out, so an interrupted benchmark
resumes where it stopped; finished runs are not retrained. Run it from the repository root
(the config's paths are relative to it).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import beauty
import pandas as pd
import yaml

from mltfr.cli import main
from mltfr.data import get_entry
from mltfr.errors import MltfrError
from mltfr.llm.llm_entries import load_llm_entry
from mltfr.spec.run_config import RunConfig
from mltfr.study.config import load_registries
from mltfr.train.rounds import train_variant

REPO = Path(__file__).resolve().parents[1]
STUDY_CONFIG = REPO / "config" / "config.yaml"
DATASETS = ("pantry",)   # entries of STUDY_CONFIG the benchmark trains on (besides Beauty)


def write_config(out: Path, llms: list[str], beauty_file: Path | None) -> Path:
    """out/config.yaml: the study config's entries of these datasets and LLMs, as written there
    (checked first), and Beauty's."""
    study = load_registries(STUDY_CONFIG)
    for name in DATASETS:
        get_entry(study, name, where=str(STUDY_CONFIG))
    datasets = {name: study["datasets"][name] for name in DATASETS}
    if beauty_file:
        datasets["beauty"] = beauty.entry(beauty_file)
    config = {"datasets": datasets, "llms": llm_entries(llms)}
    path = out / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def llm_entries(names: list[str]) -> dict:
    """The study config's entries of `names`, plus the LLM a random control copies (`like:`)."""
    checked = [load_llm_entry(STUDY_CONFIG, n) for n in names]
    likes = {entry.params.get("like") for entry in checked} - {None}
    return {n: checked[0].registry[n] for n in [*names, *sorted(likes - set(names))]}


def call(*args: str) -> None:
    if main([str(a) for a in args]) != 0:
        raise SystemExit(f"failed: mltfr {' '.join(map(str, args))}")


def run_variant(root: Path, data: Path, variant: str, seed: int, llms: dict[str, Path], args) -> dict:
    """One (variant, seed) under the corrected protocol on SASRec, resumed when already there."""
    import torch

    torch.set_num_threads(args.threads)
    names = {n: p for n, p in llms.items() if variant in ("mltfr", f"filter-{n}")}
    cfg = RunConfig(backbone="sasrec", protocol="corrected", seed=seed, variant=variant, epochs=args.epochs,
                    patience=args.patience)
    try:
        return train_variant(root / variant / f"seed{seed}", cfg, data, names)
    except MltfrError as exc:
        raise SystemExit(str(exc)) from None


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
    if Path.cwd().resolve() != REPO:
        raise SystemExit(f"run from the repository root ({REPO}): {STUDY_CONFIG.name}'s paths are relative to it")
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
