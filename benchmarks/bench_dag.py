"""Time to build the full-scale DAG: `snakemake -n --profile slurm` on config/paper.yaml.

    python benchmarks/bench_dag.py [--repeat 3]

Prints the job count, the CPU seconds of the snakemake process (user + sys: on a shared machine
wall time measures the other users as much as the DAG) and the wall seconds of each repeat.
The target (docs/benchmarks.md): a few seconds for a few thousand jobs.
"""
from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run() -> tuple[int, float, float]:
    """(jobs, CPU s, wall s) of one paper dry run with the slurm profile."""
    env = os.environ | {"MLTFR_SLURM_PARTITION": "bench", "MLTFR_SLURM_ACCOUNT": "bench"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "--quiet", "rules",
                          "--profile", "slurm"], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    jobs = int(re.search(r"^total\s+(\d+)$", out.stdout, re.M)[1])
    return jobs, cpu, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| repeat | jobs | CPU s | wall s |\n|---|---|---|---|")
    for i in range(1, args.repeat + 1):
        jobs, cpu, wall = dry_run()
        print(f"| {i} | {jobs:,} | {cpu:.1f} | {wall:.1f} |")


if __name__ == "__main__":
    main()
