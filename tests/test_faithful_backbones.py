"""Each backbone as the MLTFR authors ran it (`model.impl: authors`, the faithful protocol's
default), checked against the quirk it must reproduce, on real Pantry windows and the packaged
MiniLM table; and the corrected protocol's path (impl ours) left as it was."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_mltfr_real import MAX_LEN, minilm_table, pantry_windows  # noqa: F401  (fixtures)
from torch import nn

from mltfr.models import BackboneConfig, build_backbone
from mltfr.models.losses import ce_over_rows
from mltfr.models.sampling import distinct_negatives
from mltfr.spec.backbones import AUTHORS_ROUND1_EPOCHS
from mltfr.spec.run_config import RunConfig
from mltfr.train.run import build_model

torch.set_num_threads(1)


def authors(name: str, n_items: int, **over) -> nn.Module:
    torch.manual_seed(0)
    return build_backbone(name, n_items, BackboneConfig(d=16, max_len=MAX_LEN, impl="authors", **over)).eval()


@pytest.fixture(scope="module")
def tables(tmp_path_factory, minilm_table):  # noqa: F811
    """The MiniLM table and its first 4,096 rows as two cached LLM tables (a consensus group)."""
    from mltfr.llm.cache import write_meta, write_table

    root = tmp_path_factory.mktemp("tables")
    for name, table in (("minilm", minilm_table), ("minilm-head", minilm_table[:4096])):
        (root / name).mkdir()
        sha = write_table(root / name, table, "fp32")
        write_meta(root / name, {"vocab_size": table.shape[0], "dim": table.shape[1], "sha256": sha})
    return {name: root / name for name in ("minilm", "minilm-head")}


def mltfr_model(tables, backbone: str, protocol: str, n_items: int = 50):
    cfg = RunConfig(backbone=backbone, protocol=protocol, variant="mltfr", model={"d": 16, "max_len": MAX_LEN},
                    device="cpu")
    torch.manual_seed(0)
    return build_model(cfg, n_items, torch.device("cpu"), tables)


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


# ---------------------------------------------------------------- BERT4Rec
def test_bert4rec_reads_the_last_real_position_of_a_short_sequence(pantry_windows):  # noqa: F811
    windows, n_items = pantry_windows
    model = authors("bert4rec", n_items)
    inputs = windows[:8, 1:].clone()                                # (8, 20)
    inputs[0] = windows[0, 1:].clamp(min=1)                         # row 0 fills the window
    assert (inputs[1:, 0] == 0).all()
    with torch.no_grad():
        user = model.user_representation(inputs)
        appended = torch.cat([inputs[:, 1:], torch.full_like(inputs[:, :1], model.mask_id)], 1)
        h = model(appended)                                         # positions counted from the left
    assert torch.allclose(user[1:], h[1:, -2], atol=1e-6)            # the last item, not the [MASK]
    assert not torch.allclose(user[1:], h[1:, -1], atol=1e-3)
    shifted = torch.arange(1, MAX_LEN + 1).clamp(max=MAX_LEN - 1)   # full row: ids shifted, [MASK] last
    with torch.no_grad():
        assert torch.allclose(user[0], model(appended[:1], shifted[None])[0, -1], atol=1e-6)


def test_bert4rec_attends_to_padding_so_it_is_not_left_padding_invariant(pantry_windows):  # noqa: F811
    windows, n_items = pantry_windows
    model = authors("bert4rec", n_items)
    inputs = windows[1:9, 1:]
    longest = int((inputs != 0).sum(1).max())
    assert longest < MAX_LEN - 1
    with torch.no_grad():
        assert not torch.allclose(model.user_representation(inputs), model.user_representation(inputs[:, -longest:]),
                                  atol=1e-4)
    assert not model.left_padding_invariant


def test_bert4rec_training_leaves_out_the_most_recent_training_item(pantry_windows):  # noqa: F811
    windows, n_items = pantry_windows
    model = authors("bert4rec", n_items).train()
    other = windows.clone()
    other[:, -1] = (windows[:, -1] % n_items) + 1                   # another most recent item
    losses = []
    for w in (windows, other):
        torch.manual_seed(1)                                        # the same dropout draws
        losses.append(model.loss(w, torch.Generator().manual_seed(2)))
    assert losses[0] == losses[1]
    real = windows[:, :-1] != 0                                     # their masking: exactly
    masked = model.authors_cloze_mask(windows[:, :-1], torch.Generator().manual_seed(3))
    assert (masked.sum(1) == (real.sum(1) * 0.5).floor().clamp(min=1)).all() and not (masked & ~real).any()


def test_bert4rec_padding_slots_hold_the_branch_output(tables, pantry_windows):  # noqa: F811
    """Their second block attends to the padding slots, which hold the MoE output; ours zeroes it."""
    seqs = pantry_windows[0][1:9, 1:].clamp(max=49)                 # (8, 20), items of a 50-item model
    for protocol, zeroed in (("faithful", False), ("corrected", True)):
        model = mltfr_model(tables, "bert4rec", protocol).eval()
        with torch.no_grad():
            out = model.branch(model.embed(seqs), seqs)
        assert model.branch.cfg.zero_padding is zeroed
        assert bool((out[seqs == 0] == 0).all()) is zeroed and (out[seqs != 0] != 0).any()


def test_bert4rec_cross_entropy_runs_over_all_n_plus_2_rows():
    g = torch.Generator().manual_seed(0)
    h, table = torch.randn(7, 16, generator=g), torch.randn(12, 16, generator=g)   # n = 10: rows 0..11
    targets = torch.randint(1, 11, (7,), generator=g)
    assert torch.allclose(ce_over_rows(h, targets, table), F.cross_entropy(h @ table.T, targets), atol=1e-6)


# ---------------------------------------------------------------- FMLP-Rec
def test_fmlprec_faithful_tables_are_random_after_construction(tables, minilm_table):  # noqa: F811
    faithful, corrected = (mltfr_model(tables, "fmlprec", p).branch for p in ("faithful", "corrected"))
    assert faithful.cfg.reinitialise and not corrected.cfg.reinitialise
    assert torch.equal(corrected.table(0), minilm_table)
    table = faithful.table(0).detach()
    assert table.shape == minilm_table.shape and not torch.allclose(table, minilm_table)
    assert abs(float(table.std()) - 0.02) < 1e-3 and torch.equal(table, faithful.initial_table(0))
    # every branch weight redrawn N(0, 0.02), biases 0; round 1's consensus copy independently
    assert float(faithful.experts[0].key.weight.detach().std()) == pytest.approx(0.02, abs=2e-3)
    assert (faithful.experts[0].key.bias == 0).all() and (faithful.selectors[0].proj.bias == 0).all()
    assert not torch.equal(faithful.shared.key.weight, faithful.experts[0].key.weight)
    assert torch.equal(corrected.shared.key.weight, corrected.experts[0].key.weight)


def test_fmlprec_left_padded_rows_compute_the_authors_right_padded_ones(pantry_windows):  # noqa: F811
    """Their rows are right-padded; the filter is a circular convolution, so our left-padded rows
    give the same outputs at the real positions (padding zeroed, positions from the oldest item)."""
    windows, n_items = pantry_windows
    model = authors("fmlprec", n_items)
    left = windows[:, 1:]                                           # (64, 20)
    n = (left != 0).sum(1)
    right = torch.zeros_like(left)
    for r in range(len(left)):
        right[r, :n[r]] = left[r, MAX_LEN - n[r]:]
    with torch.no_grad():
        ours, theirs = model(left), model.authors_forward(right)
    for r in range(len(left)):
        assert torch.allclose(ours[r, MAX_LEN - n[r]:], theirs[r, :n[r]], atol=1e-5)


@pytest.mark.parametrize("backbone, train_mode", [("sasrec", False), ("bert4rec", True), ("fmlprec", True)])
def test_consensus_expert_train_mode_follows_the_authors_backbone(tables, backbone, train_mode):
    for protocol in ("faithful", "corrected"):
        model = mltfr_model(tables, backbone, protocol).train()
        faithful = protocol == "faithful"
        assert model.branch.shared.training == (train_mode and faithful)
        assert model.branch.shared.dropout.p == (0.0 if train_mode and faithful else 0.1)
        assert model.branch.experts[0].training and model.branch.experts[0].dropout.p == 0.1


# ---------------------------------------------------------------- training settings
def test_round1_trains_the_authors_length_under_faithful():
    round1 = lambda **kw: RunConfig(variant="mltfr", **kw).max_epochs  # noqa: E731
    assert [round1(protocol="faithful", backbone=b) for b in ("sasrec", "fmlprec", "bert4rec", "gru4rec")] == [
        20, 20, 100, 20]
    assert round1(protocol="faithful", consensus_file="c.safetensors") == 100      # round 2: the budget
    assert round1(protocol="faithful", epochs=5) == 5 and round1(protocol="corrected") == 200
    assert round1(protocol="faithful", round1_budget="full") == 100
    assert RunConfig(protocol="faithful", variant="base").max_epochs == 100
    assert AUTHORS_ROUND1_EPOCHS == {"sasrec": 20, "fmlprec": 20, "bert4rec": 100}


def test_faithful_windows_hold_the_authors_last_l_items():
    from mltfr.train.batching import train_windows

    offsets, items = np.array([0, 7]), np.arange(1, 8)
    faithful, corrected = (RunConfig(protocol=p, model={"max_len": 4}) for p in ("faithful", "corrected"))
    assert (faithful.window_items, corrected.window_items) == (4, 5)
    assert train_windows(offsets, items, 4, faithful.window_items).tolist() == [[0, 4, 5, 6, 7]]
    assert train_windows(offsets, items, 4).tolist() == [[3, 4, 5, 6, 7]]
