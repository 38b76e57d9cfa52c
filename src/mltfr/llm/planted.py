"""The positive control, leaky by construction: a token table built from a prepared dataset's
*full* sequences, held-out (validation and test) items included. Never a finding: it checks that
the LLM branch can carry a table's content into the ranking, and that the tests would see it.

    Z       = V S of the rank-`dim` SVD of the binary user x item matrix (full sequences)   (n+1, dim)
    C[j, k] = how often item k comes 1..window positions after item j in a user's full sequence
    row j   = (C Z)[j] / ||(C Z)[j]||: the codes of the items that followed j, with their counts
    |V| = n_items + 1 (one token per item; row 0, padding, and items nothing followed: zero)

Why it leaks: with window 1, the row of a user's last input item lists the user's own test item
among that item's followers (the validation item for the validation target); the backbone never
sees either. Ranking the items outside the history by z_i . row gives Pantry a test NDCG@10 of 0.10
against 0.006 for the table built from the training part only (docs/method.md, "The positive control").
The codes are low-rank so that one learned linear map can read any row (a one-hot column per item
left every item's value vector to be learned from its own few transitions: no gain, measured).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import svds

from mltfr.data.prepared import Prepared
from mltfr.errors import ConfigError, DataError
from mltfr.evaluate.metrics import metrics_from_ranks
from mltfr.llm.cache import Extracted
from mltfr.spec.variants import POSITIVE_LABEL


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


def user_item_matrix(prepared: Prepared) -> sp.csr_matrix:
    """The binary (U, n+1) user x item matrix of the sequences (column 0, padding: empty)."""
    users = np.repeat(np.arange(prepared.n_users), np.diff(prepared.offsets))
    return sp.csr_matrix((np.ones(len(prepared.items)), (users, prepared.items)),
                         shape=(prepared.n_users, prepared.n_items + 1))


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to unit norm; zero rows stay zero."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def item_codes(prepared: Prepared, dim: int) -> np.ndarray:
    """(n+1, dim) item codes Z = V S of the rank-`dim` SVD of the binary user x item matrix of the
    full sequences (row 0, padding: zero). svds' start vector is seeded: the same data, the same codes."""
    n = prepared.n_items + 1
    if not 1 <= dim < min(prepared.n_users, n - 1):
        raise ConfigError(f"planted table dim={dim}: must be >= 1 and below the dataset's numbers of users "
                          f"({prepared.n_users:,}) and items ({n - 1:,}); lower `dim`")
    _, singular, vt = svds(user_item_matrix(prepared), k=dim, random_state=0)
    return vt.T * singular


def planted_table(prepared: Prepared, window: int, dim: int) -> torch.Tensor:
    """The (n+1, dim) float32 table: row j = the codes of the items that followed j, summed with
    their counts, scaled to unit norm (zero where nothing followed j)."""
    rows = forward_counts(prepared, window) @ item_codes(prepared, dim)          # (n+1, dim)
    return torch.from_numpy(unit_rows(rows).astype(np.float32))


def leak_ndcg_at_10(prepared: Prepared, users: np.ndarray, scores_of) -> float:
    """How much a planted table leaks: mean test NDCG@10 of ranking the items outside each user's
    history by scores_of(u, sequence) -> (n+1,) scores alone (ties count against the test item)."""
    ranks = np.empty(len(users), dtype=np.int64)                      # 1 = first
    for row, u in enumerate(users):
        seq = prepared.sequence(u)
        scores = scores_of(u, seq)
        scores[0], scores[seq[:-1]] = -np.inf, -np.inf
        ranks[row] = int((scores >= scores[seq[-1]]).sum())
    return metrics_from_ranks(ranks, (10,))["ndcg@10"]


def extract_planted(params: dict, prepared: Prepared) -> Extracted:
    """The planted table of the `source: planted` entry `params` from its prepared dataset."""
    table = planted_table(prepared, params["window"], params["dim"])
    identity = {"label": POSITIVE_LABEL, "dataset": params["dataset"], "window": params["window"],
                "dim": params["dim"], "prepared_sha256": prepared.meta["prepared_sha256"]}
    return Extracted(table, identity, None, None)


def check_planted_tables(llm_metas: dict[str, dict | None], prepared_meta: dict) -> None:
    """A planted table must come from the very prepared dataset the run trains on."""
    for name, meta in llm_metas.items():
        if not meta or meta.get("source") != "planted":
            continue
        built_from = meta["origin"]["prepared_sha256"]
        if built_from != prepared_meta["prepared_sha256"]:
            raise DataError(f"--llm {name}: the planted table was built from prepared data {built_from[:12]}..., "
                            f"not from this run's --data ({prepared_meta['prepared_sha256'][:12]}...); rebuild "
                            f"it with `mltfr extract-llm --llm {name} --data <this run's data folder>`")
