"""The positive control, leaky by construction: a token table built from a prepared dataset's
*full* sequences, held-out (validation and test) items included. Never a finding: it checks that
the LLM branch can carry a table's content into the ranking, and that the tests would see it.

    X       = the binary user x item matrix of the full sequences                 (U, n+1)
    X      ~= U S V^T, its rank-`dim` SVD
    row u   = U[u] / ||U[u]||: user u's code, unit norm               |V| = U rows (one per user), D = dim

Why it leaks: user u's row codes u's whole profile, the validation and test items included, and
the item codes z_i = (V S)[i] read it back (z_i . U[u] is the rank-`dim` reconstruction of
X[u, i]): ranking the items outside the history by z_i . row gives a test NDCG@10 of 0.49 on
Pantry and 0.42 on ML-1M (rank 256; SASRec: 0.012 and 0.113), against 0.004 and 0.038 for the
table built from the training part only (docs/benchmarks.md). The row is right at every position
of the user's sequence (it holds the user's future training items too), so training teaches the
branch to read it. The branch takes it by user id (selection `lookup`, SequentialRecommender.users_of)
or through a filter over the U rows (docs/method.md, "The positive control").
An item-level table (row j: the codes of the items that followed j) leaked too little on a dense
dataset: each ML-1M item's row sums ~290 training transitions and ~3.5 held-out ones.
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


def user_item_matrix(prepared: Prepared) -> sp.csr_matrix:
    """The binary (U, n+1) user x item matrix of the sequences (column 0, padding: empty)."""
    users = np.repeat(np.arange(prepared.n_users), np.diff(prepared.offsets))
    return sp.csr_matrix((np.ones(len(prepared.items)), (users, prepared.items)),
                         shape=(prepared.n_users, prepared.n_items + 1))


def unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row scaled to unit norm; zero rows stay zero."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def svd_codes(prepared: Prepared, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(user codes U (U, dim), item codes Z = V S (n+1, dim)) of the rank-`dim` SVD of the binary
    user x item matrix of `prepared`'s sequences (item row 0, padding: zero). svds' start vector is
    seeded: the same data, the same codes."""
    n = prepared.n_items + 1
    if not 1 <= dim < min(prepared.n_users, n - 1):
        raise ConfigError(f"planted table dim={dim}: must be >= 1 and below the dataset's numbers of users "
                          f"({prepared.n_users:,}) and items ({n - 1:,}); lower `dim`")
    users, singular, vt = svds(user_item_matrix(prepared), k=dim, random_state=0)
    return users, vt.T * singular


def item_codes(prepared: Prepared, dim: int) -> np.ndarray:
    """(n+1, dim) item codes Z = V S (svd_codes)."""
    return svd_codes(prepared, dim)[1]


def planted_table(prepared: Prepared, dim: int) -> torch.Tensor:
    """The (U, dim) float32 table: row u = user u's code U[u] of the full sequences, unit norm."""
    return torch.from_numpy(unit_rows(svd_codes(prepared, dim)[0]).astype(np.float32))


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
    table = planted_table(prepared, params["dim"])
    identity = {"label": POSITIVE_LABEL, "dataset": params["dataset"], "level": "user", "dim": params["dim"],
                "prepared_sha256": prepared.meta["prepared_sha256"]}
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
