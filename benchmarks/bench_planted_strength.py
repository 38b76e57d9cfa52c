"""How strong is a positive control's leak? The planted table's rows ranked against the test item
by themselves, beside tables built from the training part only (no leak), on one prepared dataset.

    .venv/bin/python benchmarks/bench_planted_strength.py --data results/cpu/data/ml-1m

Prints test NDCG@10 (2,000 users, history items excluded, ties against the test item) of:
- item rows: z_i . row of the last input item, row j = the codes of the items that followed j
  (the first planted table, too weak on a dense dataset), the held-out transitions weighted w
  times and codes of `dim` dimensions;
- item counts: the follower counts themselves, full rank (weight 0: the training part alone);
- user rows: the rank-`dim` SVD factors of the user x item matrix, z_i . (U S)_u: the committed
  planted table (mltfr.llm.planted), full and from the training part only.
A control worth running scores well above the backbone with the leak and near nothing without it.
"""
from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mltfr.data import load_prepared
from mltfr.data.prepared import Prepared
from mltfr.data.split import without_last
from mltfr.llm.planted import leak_ndcg_at_10, svd_codes, unit_rows


def forward_counts(prepared: Prepared, window: int) -> sp.csr_matrix:
    """C (n+1, n+1): C[j, k] = times item k comes 1..window positions after item j, per user."""
    n, items = prepared.n_items + 1, prepared.items
    user_end = np.repeat(prepared.offsets[1:], np.diff(prepared.offsets))   # (N,) end of each item's user
    first = np.arange(len(items))                                          # (N,) position of item j
    counts = sp.csr_matrix((n, n), dtype=np.float64)
    for lag in range(1, window + 1):    # one lag at a time: N pairs in memory, not N * window
        ok = first + lag < user_end
        pairs = (np.ones(int(ok.sum())), (items[first[ok]], items[first[ok] + lag]))
        counts = counts + sp.csr_matrix(pairs, shape=(n, n))
    return counts


def split_counts(p: Prepared) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Follower counts (window 1) of the training part and of the held-out transitions alone."""
    train_counts = forward_counts(without_last(p, 2), 1)
    return train_counts, forward_counts(p, 1) - train_counts


def item_rows(p: Prepared, users, counts, full_codes, weights) -> list[dict]:
    """The item-level table with the held-out transitions weighted w times."""
    train_counts, held_counts = counts
    out = []
    for dim, (_, codes) in full_codes.items():                        # codes: (n+1, dim)
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


def user_rows(p: Prepared, users, full_codes) -> list[dict]:
    """The user-level table: SVD factors of the full (leak) and the training-part (no leak) matrix."""
    out, blind = [], without_last(p, 2)
    for part, codes_of in (("full", full_codes.get), ("training part", lambda dim: svd_codes(blind, dim))):
        for dim in full_codes:
            user_codes, codes = codes_of(dim)
            score = leak_ndcg_at_10(p, users, lambda u, seq: codes @ user_codes[u])
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
    full_codes = {dim: svd_codes(p, dim) for dim in args.dims}     # one SVD per dim, for item and user rows
    rows = (item_rows(p, users, counts, full_codes, args.weights) + count_rows(p, users, counts, args.weights)
            + user_rows(p, users, full_codes))
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))


if __name__ == "__main__":
    main()
