"""Tests of the ID-only backbones (mltfr.models): shapes, padding, causality, losses, inject."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mltfr.errors import ConfigError
from mltfr.models import BACKBONES, UNTRAINED_BACKBONES, BackboneConfig, build_backbone
from mltfr.models.losses import bce_loss, full_ce_loss
from mltfr.models.sampling import sample_negatives

torch.set_num_threads(1)
NAMES = [name for name in BACKBONES if name not in UNTRAINED_BACKBONES]  # pop: tests/test_train.py
TINY = dict(d=16, max_len=10, n_blocks=2)


def tiny(name: str, n_items: int = 30, **over) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, n_items, BackboneConfig(**{**TINY, **over}))


def windows(n_items: int = 30, batch: int = 6, width: int = 11, seed: int = 1) -> torch.Tensor:
    """(batch, width) left-padded windows with lengths 2..width."""
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(1, n_items + 1, (batch, width), generator=g)
    for row in range(batch):
        seqs[row, : max(0, width - 2 - 2 * row)] = 0
    return seqs


class ConstantBranch(nn.Module):
    """Returns a fixed (d,) vector everywhere and records its inputs."""

    def __init__(self, d: int):
        super().__init__()
        self.c = torch.linspace(-1.0, 1.0, d)

    def forward(self, h0, seqs):
        self.seen = (h0.detach().clone(), seqs.clone())
        return self.c.expand_as(h0)


# ---------------------------------------------------------------- config and registry


def test_config_defaults_and_errors():
    cfg = BackboneConfig()
    assert (cfg.d, cfg.max_len, cfg.dropout, cfg.mask_prob) == (64, 50, 0.2, 0.5)
    assert cfg.n_blocks is None and cfg.n_heads is None   # each backbone's own default
    with pytest.raises(ConfigError, match="unknown key 'hidden'"):
        BackboneConfig.from_dict({"hidden": 3})
    with pytest.raises(ConfigError, match="'d' must be an integer"):
        BackboneConfig.from_dict({"d": 6.5})
    with pytest.raises(ConfigError, match="n_heads=3 must be >= 1 and divide d=64"):
        BackboneConfig(n_heads=3)
    with pytest.raises(ConfigError, match="unknown backbone 'sasrex'"):
        build_backbone("sasrex", 10, BackboneConfig())


# The MLTFR authors' confs: SASRec 2 blocks 8 heads, BERT4Rec 2 blocks 1 head, FMLP-Rec 1 block.
@pytest.mark.parametrize("name, blocks, heads", [("sasrec", 2, 8), ("sasrec-ce", 2, 8), ("bert4rec", 2, 1),
                                                ("fmlprec", 1, None), ("gru4rec", 2, None)])
def test_default_blocks_and_heads_per_backbone(name, blocks, heads):
    model = build_backbone(name, 100, BackboneConfig())
    assert (model.cfg.n_blocks, model.cfg.n_heads) == (blocks, heads)
    if heads is not None:
        assert len(model.blocks) == blocks and model.blocks[0].n_heads == heads


def test_explicit_blocks_and_heads_win_over_the_backbone_defaults():
    assert build_backbone("bert4rec", 100, {"n_heads": 4}).blocks[0].n_heads == 4
    model = build_backbone("sasrec", 100, {"n_heads": 2, "n_blocks": 3})
    assert (len(model.blocks), model.blocks[0].n_heads) == (3, 2)
    assert len(build_backbone("fmlprec", 100, {"n_blocks": 2}).blocks) == 2
    with pytest.raises(ConfigError, match="default n_heads=8 does not divide d=12; set model.n_heads"):
        build_backbone("sasrec", 100, {"d": 12})
    assert build_backbone("sasrec", 100, {"d": 12, "n_heads": 3}).blocks[0].n_heads == 3


@pytest.mark.parametrize("name", NAMES)
def test_shapes(name):
    model = tiny(name).eval()
    seqs = windows()
    assert model(seqs[:, 1:]).shape == (6, 10, 16)
    assert model(seqs[:, 4:]).shape == (6, 7, 16)  # shorter than max_len
    assert model.user_representation(seqs[:, 1:]).shape == (6, 16)
    assert model.item_representation().shape == (31, 16)
    assert model.loss(seqs, torch.Generator().manual_seed(0)).shape == ()


# ---------------------------------------------------------------- padding and causality


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec"])
def test_padding_does_not_leak(name):
    model = tiny(name).eval()
    real = torch.tensor([[4, 9, 2, 17, 5]])
    outs = [model(F.pad(real, (pad, 0)))[:, -5:] for pad in (0, 2, 5)]  # L = 5, 7, 10
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_causal_output_ignores_later_items(name):
    model = tiny(name).eval()
    seqs = torch.tensor([[0, 0, 3, 8, 1, 12, 7, 22, 5, 6]])
    changed = seqs.clone()
    changed[0, 6:] = torch.tensor([30, 29, 28, 27])
    a, b = model(seqs), model(changed)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert (a[:, 6] - b[:, 6]).abs().max() > 1e-3


# ---------------------------------------------------------------- losses


def test_full_ce_loss_hand_computed():
    items = torch.tensor([[5.0, 5.0], [1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # row 0 = padding
    h = torch.tensor([[1.0, 0.0]])
    # logits over items 1..3 = [1, 0, 0]; padding excluded: -log(e / (e + 2))
    assert full_ce_loss(h, torch.tensor([1]), items).item() == pytest.approx(math.log(1 + 2 / math.e))
    h = torch.randn(7, 2)
    targets = torch.tensor([1, 2, 3, 3, 1, 2, 2])
    naive = (h @ items.T).masked_fill(torch.arange(4) == 0, float("-inf"))
    torch.testing.assert_close(full_ce_loss(h, targets, items), F.cross_entropy(naive, targets))


@pytest.mark.parametrize("chunk", [1, 3, 128])
def test_full_ce_loss_gradients_equal_autograd_of_the_plain_loss(chunk):
    """The fused loss computes its gradients in forward; they must equal autograd's."""
    gen = torch.Generator().manual_seed(0)
    items = torch.randn(6, 4, generator=gen, requires_grad=True)
    h = torch.randn(5, 4, generator=gen, requires_grad=True)
    targets = torch.tensor([1, 5, 2, 2, 4])
    (3.0 * full_ce_loss(h, targets, items, chunk=chunk)).backward()
    fused = h.grad.clone(), items.grad.clone()
    h.grad, items.grad = None, None
    (3.0 * F.cross_entropy(h @ items[1:].T, targets - 1)).backward()
    torch.testing.assert_close(fused, (h.grad, items.grad))
    assert fused[1][0].abs().sum() == 0  # padding row receives no gradient


def test_full_ce_loss_gradients_keep_input_dtypes_under_autocast():
    """A bf16 hidden state (e.g. a GRU under autocast) gets a bf16 gradient, the table fp32."""
    h = torch.randn(5, 4).bfloat16().requires_grad_()
    items = torch.randn(7, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = full_ce_loss(h, torch.tensor([1, 2, 3, 4, 6]), items)
    loss.backward()
    assert (h.grad.dtype, items.grad.dtype) == (torch.bfloat16, torch.float32)
    assert torch.isfinite(h.grad.float()).all() and items.grad[1:].abs().sum() > 0


def test_full_ce_loss_without_grad_matches():
    items, h = torch.randn(9, 3), torch.randn(4, 3)
    targets = torch.tensor([1, 8, 3, 3])
    with torch.no_grad():
        torch.testing.assert_close(full_ce_loss(h, targets, items, chunk=2),
                                   F.cross_entropy(h @ items[1:].T, targets - 1))


def test_bce_loss_hand_computed_and_skips_padding():
    items = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    h = torch.tensor([[[9.0, 9.0], [1.0, 0.0]]])  # position 0 is padding (pos 0)
    loss = bce_loss(h, torch.tensor([[0, 1]]), torch.tensor([[1, 2]]), items)
    # softplus(-1) + softplus(0)
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)) + math.log(2))


def test_sasrec_ce_loss_equals_naive():
    model = tiny("sasrec-ce").eval()
    seqs = windows()
    h = model(seqs[:, :-1]).reshape(-1, 16)
    targets = seqs[:, 1:].reshape(-1)
    logits = (h @ model.item_representation().T)[targets != 0]
    logits[:, 0] = float("-inf")
    expected = F.cross_entropy(logits, targets[targets != 0])
    torch.testing.assert_close(model.loss(seqs, torch.Generator()), expected)


def test_negatives_avoid_the_window():
    seqs = windows(n_items=25, batch=200, width=21, seed=3)
    neg = sample_negatives(seqs, 25, torch.Generator().manual_seed(0))
    assert neg.shape == (200, 20)
    assert neg.min() >= 1 and neg.max() <= 25
    assert not (neg[:, :, None] == seqs[:, None, :]).any()


def test_negatives_are_uniform_over_free_items():
    window = torch.tensor([[0, 2, 3, 3, 7]]).repeat(4000, 1)  # free items of 1..8: 1 4 5 6 8
    neg = sample_negatives(window, 8, torch.Generator().manual_seed(0))
    counts = torch.bincount(neg.flatten(), minlength=9).float() / neg.numel()
    expected = torch.tensor([0, 0.2, 0, 0, 0.2, 0.2, 0.2, 0, 0.2])
    torch.testing.assert_close(counts, expected, atol=0.01, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_loss_decreases_on_tiny_overfit(name):
    model = tiny(name, n_items=20, dropout=0.0, attn_dropout=0.0)
    seqs = windows(n_items=20, batch=8, width=11, seed=5)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(50):
        loss = model.loss(seqs, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses  # untrained: no drop


# ---------------------------------------------------------------- BERT4Rec masking


def test_bert4rec_cloze_mask():
    model = tiny("bert4rec", mask_prob=0.2)
    window = windows(batch=400, width=10, seed=7)
    window[:, :2] = 0  # >= 2 padding slots in every row
    window[0, :9] = 0  # a row with a single real item
    masked = model.cloze_mask(window, torch.Generator().manual_seed(0))
    assert masked.any(dim=1).all()
    assert not (masked & (window == 0)).any()
    assert masked[0].tolist() == [False] * 9 + [True]
    rate = masked.sum() / (window != 0).sum()
    assert 0.18 < rate.item() < 0.26  # mask_prob plus the forced positions of short rows


def test_bert4rec_user_representation_appends_mask():
    model = tiny("bert4rec").eval()
    inputs = windows()[:, 1:]
    shifted = torch.cat([inputs[:, 1:], torch.full((6, 1), model.mask_id)], dim=1)
    torch.testing.assert_close(model.user_representation(inputs), model(shifted)[:, -1])
    assert model.item_representation().shape[0] == 31  # [MASK] row excluded


# ---------------------------------------------------------------- inject


def _add_after(module: nn.Module, c: torch.Tensor, pre: bool):
    if pre:
        return module.register_forward_pre_hook(lambda m, args: (args[0] + c,))
    return module.register_forward_hook(lambda m, args, out: out + c)


@pytest.mark.parametrize("name", NAMES)
def test_inject_adds_branch_after_first_block(name):
    model = tiny(name).eval()
    seqs = windows()[:, 1:]
    plain = model(seqs)
    branch = ConstantBranch(16)
    # reference: the same constant added by a hook right after the first block / layer
    hook = (_add_after(model.between, branch.c, pre=True) if name == "gru4rec"
            else _add_after(model.blocks[0], branch.c, pre=False))
    hooked = model(seqs)
    hook.remove()
    model.branch = branch
    injected = model(seqs)
    real = seqs != 0
    torch.testing.assert_close(injected[real], hooked[real], rtol=1e-5, atol=1e-5)
    assert (injected[real] - plain[real]).abs().max() > 1e-2
    h0, seen = branch.seen
    assert (h0[(seen == 0)] == 0).all() and (h0[seen != 0].abs().sum(-1) > 0).all()


# ---------------------------------------------------------------- real data


def _pantry_batch(real_data, n_users: int = 64, width: int = 51) -> tuple[torch.Tensor, int]:
    """Left-padded windows of the last `width` items of the first users of pantry's train.txt."""
    ids: dict[str, int] = {}
    rows = []
    with open(real_data / "amazon-pantry" / "train.txt") as fh:
        for line, _ in zip(fh, range(n_users)):
            uid, colon, *items = line.rstrip("\n").split("\t")
            assert colon == ":" and items, f"unexpected line: {line[:80]!r}"
            seq = [ids.setdefault(item, len(ids) + 1) for item in items][-width:]
            rows.append([0] * (width - len(seq)) + seq)
    return torch.tensor(rows), len(ids)


@pytest.mark.parametrize("name", NAMES)
def test_real_data_step(real_data, name):
    seqs, n_items = _pantry_batch(real_data)
    assert seqs.shape == (64, 51) and n_items > 100
    torch.manual_seed(0)
    model = build_backbone(name, n_items, BackboneConfig())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss = model.loss(seqs, torch.Generator().manual_seed(0))
    loss.backward()
    grad = model.embed.item_emb.weight.grad
    assert math.isfinite(loss.item()) and torch.isfinite(grad).all() and grad.abs().sum() > 0
    opt.step()
    scores = model.eval().user_representation(seqs[:, 1:]) @ model.item_representation().T
    assert scores.shape == (64, n_items + 1) and torch.isfinite(scores).all()
