"""How strong is a positive control's leak? The planted table's rows ranked against the test item
by themselves, beside tables built from the training part only (no leak), on one prepared dataset.

    .venv/bin/python benchmarks/bench_planted_strength.py --data results/cpu/data/ml-1m

Prints test NDCG@10 (2,000 users, history items excluded, ties against the test item) of:
- item rows, mltfr.llm.planted: z_i . row of the last input item, the held-out transitions
  weighted w times (w = 1 is the committed table) and codes of `dim` dimensions;
- item counts: the follower counts themselves, full rank (weight 0: the training part alone);
- user rows: the rank-`dim` SVD factors of the user x item matrix, z_i . (U S)_u (a user-level
  leak, which the branch cannot take yet: docs/method.md, "The positive control").
A control worth running scores well above the backbone with the leak and near nothing without it.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from mltfr.data import load_prepared
from mltfr.data.prepared import Prepared
from mltfr.data.split import without_last
from mltfr.llm.planted import forward_counts, item_codes, leak_ndcg_at_10, unit_rows, user_item_matrix


def split_counts(p: Prepared) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Follower counts (window 1) of the training part and of the held-out transitions alone."""
    train_counts = forward_counts(without_last(p, 2), 1)
    return train_counts, forward_counts(p, 1) - train_counts


def item_rows(p: Prepared, users, counts, dims, weights) -> list[dict]:
    """The item-level table with the held-out transitions weighted w times."""
    train_counts, held_counts = counts
    out = []
    for dim in dims:
        codes = item_codes(p, dim)                                    # (n+1, dim)
        for w in weights:
            rows = unit_rows((train_counts + w * held_counts) @ codes)
            score = leak_ndcg_at_10(p, users, lambda u, seq: codes @ rows[seq[-2]])
            out.append({"table": "item rows", "dim": dim, "held-out weight": f"{w:g}", "ndcg@10": score})
    return out


def count_rows(p: Prepared, users, counts, weights) -> list[dict]:
    """Full-rank item rows: the follower counts themselves (one code per item, D = n + 1); weight 0
    is the training part alone (no leak: a first-order Markov ranking)."""
    train_counts, held_counts = counts
    out = []
    for w in [0.0, *weights]:
        rows = (train_counts + w * held_counts).tocsr()
        score = leak_ndcg_at_10(p, users, lambda u, seq: rows[seq[-2]].toarray().ravel())
        out.append({"table": "item counts (full rank)", "dim": p.n_items + 1, "held-out weight": f"{w:g}",
                    "ndcg@10": score})
    return out


def user_rows(p: Prepared, users, dims) -> list[dict]:
    """The user-level table: SVD factors of the full (leak) and the training-part (no leak) matrix."""
    out = []
    for part, q in (("full", p), ("training part", without_last(p, 2))):
        for dim in dims:
            factors, singular, vt = svds(user_item_matrix(q), k=dim, random_state=0)
            score = leak_ndcg_at_10(p, users, lambda u, seq: (factors[u] * singular) @ vt)
            out.append({"table": f"user rows ({part})", "dim": dim, "held-out weight": "-", "ndcg@10": score})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="a prepared dataset folder (results/<study>/data/<name>)")
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--weights", type=float, nargs="+", default=[1, 100, 1000])
    args = parser.parse_args()
    p = load_prepared(args.data)
    users = np.random.default_rng(0).choice(p.n_users, min(args.users, p.n_users), replace=False)
    counts = split_counts(p)
    rows = (item_rows(p, users, counts, args.dims, args.weights) + count_rows(p, users, counts, args.weights)
            + user_rows(p, users, args.dims))
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
