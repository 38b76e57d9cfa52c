"""Same behaviour before and after a refactor: compare two trees' runs of one study, run by run.

    python scripts/same_behaviour.py BEFORE_DIR AFTER_DIR [--study test]

Each DIR is a repository checkout whose `snakemake --configfile config/<study>.yaml` has run (for
example the CI-sized config/test.yaml: every block, both protocols, the ladder and the positive
control). For every run folder (result.json) of results/<study>/ in either tree it checks that
both trees have it, that the result documents are equal except for what records the machine or
the moment (timings, memory, code version, dates), that ranks.npz holds bit-identical arrays and
that every round 1's merged expert (consensus.safetensors) holds bit-identical tensors. Prints one
line per difference and exits 1 when there is any (0: the same behaviour).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

# result.json keys that record the machine, the moment or the code version, not the computation
VOLATILE = {"code_version", "finished_at", "timings", "peak_memory_mb", "seconds", "torch_version", "device"}
# result.json keys that record how the run was asked for, not what it computed (new keys may appear)
RECORDS = {"spec"}


def stable(doc):
    """A result document without its volatile keys, at every depth."""
    if isinstance(doc, dict):
        return {k: stable(v) for k, v in doc.items() if k not in VOLATILE | RECORDS}
    if isinstance(doc, list):
        return [stable(v) for v in doc]
    return doc


def differences(before: Path, after: Path, rel: Path) -> list[str]:
    """What differs between the two trees' copies of one run folder."""
    out = []
    a, b = (json.loads((root / rel / "result.json").read_text()) for root in (before, after))
    if stable(a) != stable(b):
        keys = sorted(k for k in set(stable(a)) | set(stable(b)) if stable(a.get(k)) != stable(b.get(k)))
        out.append(f"{rel}: result.json differs in {keys}")
    ranks = [root / rel / "ranks.npz" for root in (before, after)]
    if all(p.exists() for p in ranks):
        x, y = (np.load(p) for p in ranks)
        if sorted(x.files) != sorted(y.files) or any(not np.array_equal(x[k], y[k]) for k in x.files):
            out.append(f"{rel}: ranks.npz differs")
    merged = [root / rel / "round1" / "consensus.safetensors" for root in (before, after)]
    if any(p.exists() for p in merged):
        from safetensors.numpy import load_file

        x, y = (load_file(p) if p.exists() else {} for p in merged)
        if sorted(x) != sorted(y) or any(not np.array_equal(x[k], y[k]) for k in x):
            out.append(f"{rel}: round1/consensus.safetensors differs")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--study", default="test")
    args = parser.parse_args(argv)
    runs = {}
    for root in (args.before, args.after):
        top = root / "results" / args.study
        runs[root] = {p.parent.relative_to(root) for p in top.rglob("result.json")}
    missing = runs[args.before] ^ runs[args.after]
    problems = [f"{rel}: only in {'before' if rel in runs[args.before] else 'after'}" for rel in sorted(missing)]
    common = sorted(runs[args.before] & runs[args.after])
    for rel in common:
        problems += differences(args.before, args.after, rel)
    print("\n".join(problems) or f"same behaviour: {len(common)} runs, identical results, ranks and merged experts")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
