"""Full ranking over all items, blocked, with pessimistic ties; and the sampled-100 protocol.

rank = 1 + #(candidate items with score >= the target's score), where the candidates are all
items 1..n_items except the target itself (and, with history masking, except the user's
history items). An item that ties with the target therefore counts as ranked above it
(pessimistic ties: a model that scores everything equal gets rank n_items, never rank 1).
An item whose score is NaN also counts as above the target; a NaN target score gives rank n_items.
A target 0 is an item the model does not number (a train-only vocabulary, mltfr.data.split): it is
never a candidate, so it ranks below every item, n_items + 1 (sampled: 1 + n_neg).

Scores are computed in (user block x item block) tiles so that no more than one
(users_block x item_block) score matrix exists at a time: the tiles stay in cache on a CPU,
which is where full-ranking speed comes from (a dense users x items matrix is memory-bound).
The target's score is taken from the same kind of matrix product as the tiles
(`diag(U @ I[targets].T)`), so an item with the same representation as the target ties exactly.
"""
from __future__ import annotations

import numpy as np
import torch

from mltfr.errors import MltfrError

SAMPLED_LABEL = "sampled-{n}"  # label of the sampled-negatives protocol, e.g. "sampled-100"
FULL_LABEL = "full-ranking"    # label of the full-ranking protocol


def masked_pairs(n_users: int, targets: np.ndarray, hist_offsets: np.ndarray | None,
                 hist_items: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the (user, item) scores excluded from counting, sorted by row.

    Always the target itself (it is the `1 +` in the rank); plus the history when given."""
    rows, cols = [np.arange(n_users, dtype=np.int64)], [np.asarray(targets, dtype=np.int64)]
    if hist_offsets is not None:
        lengths = np.diff(hist_offsets)
        rows.append(np.repeat(np.arange(n_users, dtype=np.int64), lengths))
        cols.append(np.asarray(hist_items[hist_offsets[0]:hist_offsets[-1]], dtype=np.int64))
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    order = np.argsort(rows, kind="stable")
    return rows[order], cols[order]


def _block_pairs(rows, cols, a, b, starts, device):
    """For users [a, b): per item block, (row - a, col - block start) index tensors."""
    lo, hi = np.searchsorted(rows, [a, b])
    r, c = rows[lo:hi] - a, cols[lo:hi]
    order = np.argsort(c, kind="stable")
    r, c = r[order], c[order]
    bounds = np.searchsorted(c, np.append(starts, np.iinfo(np.int64).max))
    out = []
    for j, start in enumerate(starts):
        s, e = bounds[j], bounds[j + 1]
        out.append((torch.from_numpy(r[s:e]).to(device), torch.from_numpy(c[s:e] - start).to(device))
                   if e > s else None)
    return out


def ranks_from_representations(users: torch.Tensor, items: torch.Tensor, targets: torch.Tensor,
                               pairs: list | None, item_block: int,
                               items_t: torch.Tensor | None = None) -> torch.Tensor:
    """Ranks (b,) int64 of `targets` for one user block.

    users (b, d); items (n_items+1, d) with row 0 = padding (never a candidate);
    targets (b,) item ids; pairs: per item block the (row, col) scores to exclude;
    items_t: items.T made contiguous (d, n_items+1), the faster matmul layout, if the caller
    has it. Counts are int32 (3x faster to sum than int64; a tile is far below 2**31)."""
    t = (users @ items[targets].T).diagonal()[:, None]            # (b, 1) target scores
    items_t = items.T.contiguous() if items_t is None else items_t
    count = torch.zeros(users.shape[0], dtype=torch.int32, device=users.device)
    for j, start in enumerate(range(1, items.shape[0], item_block)):
        scores = users @ items_t[:, start:start + item_block]       # (b, width)
        if pairs is not None and pairs[j] is not None:
            scores[pairs[j]] = float("-inf")
        count += scores.shape[1] - (scores < t).sum(1, dtype=torch.int32)  # not below: >= or NaN
    worst = torch.full_like(count, items.shape[0] - 1)              # NaN target score: rank n_items
    return torch.where(torch.isnan(t[:, 0]), worst, count + 1).long()


def _check_evalset(evalset, n_items: int) -> None:
    """Bad ids would silently index the padding row or crash deep in torch: refuse them here."""
    t = np.asarray(evalset.targets)
    if t.size and (t.min() < 0 or t.max() > n_items):
        raise MltfrError(f"evaluation targets must be item ids in 1..{n_items} (0: not numbered); got "
                         f"{t.min()}..{t.max()} (the split and the model disagree on the item count: "
                         "re-prepare the data)")


def unranked_targets(ranks: torch.Tensor, targets: np.ndarray, worst: int) -> torch.Tensor:
    """`ranks` with every target 0 (an item outside the vocabulary) set to `worst`."""
    missing = torch.from_numpy(np.asarray(targets) == 0).to(ranks.device)
    return ranks.masked_fill(missing, worst)


def user_representations(model, inputs: np.ndarray, block: int, device: torch.device,
                         users: np.ndarray | None = None) -> torch.Tensor:
    """(n, d) float32 user representations of `inputs` (n, L), `block` users per forward pass;
    `users` (n,), their user ids, reach the LLM branch (the model's users_of).

    A model whose `left_padding_invariant` is True (its outputs do not depend on the
    amount of left padding) gets its users sorted by length and each block trimmed to its
    longest input: most users are short, so this skips most of the padded positions."""
    n = len(inputs)
    trim = getattr(model, "left_padding_invariant", False)
    lengths = (inputs != 0).sum(1)
    order = np.argsort(lengths, kind="stable") if trim else np.arange(n)
    out = None
    for a in range(0, n, block):
        idx = order[a:a + block]
        x = inputs[idx][:, -max(int(lengths[idx].max()), 1):] if trim else inputs[idx]
        ids = None if users is None else torch.from_numpy(np.asarray(users)[idx]).to(device)
        with model.users_of(ids):
            u = model.user_representation(torch.from_numpy(np.ascontiguousarray(x)).to(device)).float()
        if out is None:
            out = torch.empty((n, u.shape[1]), dtype=torch.float32, device=device)
        out[torch.from_numpy(idx).to(device)] = u
    return out


def rank(model, evalset, mask_history: bool, *, user_block: int = 1024, item_block: int = 2048,
         device: torch.device | str | None = None) -> np.ndarray:
    """Full-ranking ranks (n,) int64 of each evaluated user's target (1 = best).

    The model is put in eval mode under torch.inference_mode and restored afterwards."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    n, n_items = len(evalset.targets), model.n_items
    _check_evalset(evalset, n_items)
    hist = (evalset.hist_offsets, evalset.hist_items) if mask_history else (None, None)
    rows, cols = masked_pairs(n, evalset.targets, *hist)
    starts = np.arange(1, n_items + 1, item_block)
    out = torch.empty(n, dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        items = model.item_representation().float()                 # (n_items+1, d)
        items_t = items.T.contiguous()                               # (d, n_items+1)
        users = user_representations(model, evalset.inputs, user_block, device, evalset.users)  # (n, d)
        for a in range(0, n, user_block):
            b = min(a + user_block, n)
            targets = torch.from_numpy(np.asarray(evalset.targets[a:b])).to(device)
            pairs = _block_pairs(rows, cols, a, b, starts, device)
            out[a:b] = ranks_from_representations(users[a:b], items, targets, pairs, item_block, items_t)
    model.train(was_training)
    return unranked_targets(out, evalset.targets, n_items + 1).cpu().numpy()


def sample_negatives(evalset, n_items: int, n_neg: int, seed: int) -> np.ndarray:
    """(n, n_neg) int64 negatives per user: uniform over 1..n_items, never the target nor an item
    of the user's history (drawn with replacement among themselves), reproducible from `seed`."""
    n = len(evalset.targets)
    rows, cols = masked_pairs(n, evalset.targets, evalset.hist_offsets, evalset.hist_items)
    forbidden = np.unique(rows * (n_items + 1) + cols)               # sorted (user, item) keys
    if n_items - np.bincount(rows, minlength=n).max() < 1:
        raise MltfrError("sampled evaluation: a user has interacted with every item, no negative exists")
    rng = np.random.default_rng(seed)
    negs = rng.integers(1, n_items + 1, size=(n, n_neg))
    bad = np.ones(negs.shape, dtype=bool)
    while bad.any():                                                 # rejection: a few rounds at most
        keys = np.arange(n)[:, None] * (n_items + 1) + negs
        pos = np.minimum(np.searchsorted(forbidden, keys), len(forbidden) - 1)
        bad = forbidden[pos] == keys
        negs[bad] = rng.integers(1, n_items + 1, size=int(bad.sum()))
    return negs


def rank_sampled(model, evalset, n_neg: int = 100, seed: int = 0, *, user_block: int = 1024,
                 device: torch.device | str | None = None) -> np.ndarray:
    """Ranks (n,) int64 of the target among itself + `n_neg` sampled negatives (pessimistic ties).

    This is the older sampled protocol, reported only under the label `sampled-<n_neg>`."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    _check_evalset(evalset, model.n_items)
    cand = np.concatenate([np.asarray(evalset.targets)[:, None],
                           sample_negatives(evalset, model.n_items, n_neg, seed)], axis=1)
    out = torch.empty(len(cand), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        items = model.item_representation().float()                 # (n_items+1, d)
        users = user_representations(model, evalset.inputs, user_block, device, evalset.users)  # (n, d)
        for a in range(0, len(cand), user_block):
            c = torch.from_numpy(cand[a:a + user_block]).to(device)  # (b, 1 + n_neg)
            scores = torch.bmm(items[c], users[a:a + user_block, :, None])[:, :, 0]  # (b, 1 + n_neg)
            out[a:a + user_block] = 1 + n_neg - (scores[:, 1:] < scores[:, :1]).sum(1)  # ties, NaN: above
    model.train(was_training)
    return unranked_targets(out, evalset.targets, 1 + n_neg).cpu().numpy()
