"""Each backbone as the MLTFR authors ran it (`model.impl: authors`, the faithful protocol's
default), checked against the quirk it must reproduce, on real Pantry windows and the packaged
MiniLM table; and the corrected protocol's path (impl ours) left as it was."""
import numpy as np
import pytest
import torch
from torch import nn

from mltfr.models import BackboneConfig, build_backbone
from mltfr.models.sampling import distinct_negatives
from mltfr.train.config import RunConfig
from test_mltfr_real import MAX_LEN, pantry_windows  # noqa: F401  (a fixture)

torch.set_num_threads(1)


def authors(name: str, n_items: int, **over) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, n_items, BackboneConfig(d=16, max_len=MAX_LEN, impl="authors", **over)).eval()


# ---------------------------------------------------------------- SASRec
def test_sasrec_numbers_positions_from_the_oldest_item(pantry_windows):  # noqa: F811
    windows, n_items = pantry_windows
    model = authors("sasrec", n_items)
    inputs = windows[:, :-1]                                        # (64, 20), left-padded
    h0 = model.embed(inputs)
    first = (inputs != 0).float().argmax(1)                         # each row's oldest item
    rows = torch.arange(len(inputs))
    want = model.embed.item_emb(inputs[rows, first]) * 4.0 + model.embed.pos_emb.weight[0]   # sqrt(16)
    assert torch.allclose(h0[rows, first], want, atol=1e-6)
    # so the outputs ignore the amount of left padding (the evaluator may trim it)
    longest = int((inputs != 0).sum(1).max())
    with torch.no_grad():
        assert torch.allclose(model.user_representation(inputs), model.user_representation(inputs[:, -longest:]),
                              atol=1e-5)
    assert model.left_padding_invariant


def test_sasrec_feed_forward_and_init_are_the_authors(pantry_windows):  # noqa: F811
    _, n_items = pantry_windows
    ours, theirs = build_backbone("sasrec", n_items, BackboneConfig(d=16)), authors("sasrec", n_items)
    assert [type(m).__name__ for m in theirs.blocks[0].ffn] == ["Linear", "ReLU", "Linear", "Dropout"]
    assert [type(m).__name__ for m in ours.blocks[0].ffn] == ["Linear", "Dropout", "ReLU", "Linear", "Dropout"]
    bound = (6 / (n_items + 1 + 16)) ** 0.5                         # Xavier-uniform over their n+1 rows
    item = theirs.embed.item_emb.weight
    assert item.abs().max() <= bound and item.abs().max() > 0.9 * bound and item[0].abs().sum() > 0
    assert (theirs.blocks[0].q_proj.bias == 0).all() and (theirs.blocks[0].out_proj.bias == 0).all()


def test_faithful_negatives_never_equal_an_input_item(pantry_windows):  # noqa: F811
    windows, n_items = pantry_windows
    gen = torch.Generator().manual_seed(0)
    inputs, last_target = windows[:, :-1], windows[:, -1]
    hits_last = 0
    for _ in range(200):
        neg = distinct_negatives(inputs, n_items, gen)              # (64, 20)
        assert neg.shape == inputs.shape and (neg >= 1).all() and (neg <= n_items).all()
        assert not (neg[:, :, None] == inputs[:, None, :]).any()     # never an input item
        assert all(len(set(row.tolist())) == row.numel() for row in neg)   # distinct in a row
        hits_last += int((neg == last_target[:, None]).any(1).sum())
    assert hits_last > 0                                            # the last target is not excluded


# ---------------------------------------------------------------- training settings
def test_faithful_windows_hold_the_authors_last_l_items():
    from mltfr.train.batching import train_windows

    offsets, items = np.array([0, 7]), np.arange(1, 8)
    faithful, corrected = (RunConfig(protocol=p, model={"max_len": 4}) for p in ("faithful", "corrected"))
    assert (faithful.window_items, corrected.window_items) == (4, 5)
    assert train_windows(offsets, items, 4, faithful.window_items).tolist() == [[0, 4, 5, 6, 7]]
    assert train_windows(offsets, items, 4).tolist() == [[3, 4, 5, 6, 7]]
