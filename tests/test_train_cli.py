"""`mltfr train` / `mltfr evaluate`: argument checks, and one real run on Amazon Pantry."""
import json

import numpy as np
import pytest
import yaml

from mltfr.cli import main
from mltfr.models import BACKBONES
from mltfr.spec.backbones import BACKBONE_NAMES

ARGS = ["--out", "run", "--protocol", "corrected", "--seed", "0"]


def test_backbone_choices_mirror_the_registry():
    assert BACKBONE_NAMES == tuple(BACKBONES)


def test_unknown_backbone_refused(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--data", "d", "--backbone", "nope", *ARGS])
    assert exit_.value.code == 2
    assert "argument --backbone: invalid choice: 'nope'" in capsys.readouterr().err


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for option in ("--data", "--out", "--backbone", "--protocol", "--seed", "--variant", "--config",
                   "--set", "--device", "--llm", "--consensus", "--threads", "--no-resume"):
        assert option in text


@pytest.mark.parametrize("extra, message", [
    (["--set", "epochs=0"], "train.epochs=0 is invalid"),
    (["--set", "nope=1"], "unknown key 'nope'"),
    (["--variant", "no-such-variant"], "variant 'no-such-variant' is unknown"),
    (["--llm", "minilm"], "must look like NAME=DIR"),
])
def test_bad_settings_are_one_line_errors(tmp_path, capsys, pantry, extra, message):
    code = main(["train", "--data", str(pantry), "--backbone", "sasrec", *ARGS[:1], str(tmp_path / "r"),
                 *ARGS[2:], *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.fixture(scope="module")
def pantry(real_data, tmp_path_factory):
    """The MLTFR authors' Pantry files, prepared through `mltfr prepare`."""
    root = tmp_path_factory.mktemp("pantry")
    folder = real_data / "amazon-pantry"
    config = {"datasets": {"pantry": {"source": [{"path": str(folder / "train.txt")},
                                                 {"path": str(folder / "test.txt")}],
                                      "format": "mltfr-pair"}},
              "train": {"epochs": 1, "eval_batch_size": 2048}}
    (root / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["prepare", "--config", str(root / "config.yaml"), "--dataset", "pantry",
                 "--out", str(root / "data")]) == 0
    return root / "data"


def test_sasrec_one_epoch_on_pantry_via_cli(pantry, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--data", str(pantry), "--out", str(out), "--backbone", "sasrec",
                 "--protocol", "corrected", "--seed", "3", "--config", str(pantry.parent / "config.yaml"),
                 "--device", "cpu", "--threads", "1"])
    assert code == 0 and "test NDCG@10" in capsys.readouterr().out
    result = json.loads((out / "result.json").read_text())
    assert result["epochs_run"] == 1 and result["best_epoch"] == 1 and result["seed"] == 3
    assert result["n_users"] == {"valid": 7123, "test": 7123}            # every Pantry user has >= 3 items
    assert result["config"]["model"]["d"] == 64 and result["mask_history"] is True
    assert result["dataset"]["name"] == "pantry" and len(result["dataset"]["prepared_sha256"]) == 64
    assert result["n_parameters"] > 4885 * 64                                 # at least the item table
    test = result["metrics"]["test"]
    assert 0 < test["ndcg@10"] <= test["hr@10"] <= test["hr@20"] <= 1
    with np.load(out / "ranks.npz") as z:
        assert z["test_ranks"].max() <= 4884 and (z["test_ranks"] <= 10).mean() == pytest.approx(test["hr@10"])
    assert (out / "epochs.csv").read_text().startswith("epoch,train_loss,seconds,valid_hr@5")

    # `mltfr evaluate` re-evaluates the best state: the same full-ranking numbers, then sampled-100
    assert main(["evaluate", "--run", str(out), "--device", "cpu"]) == 0
    again = json.loads((out / "eval-full-ranking.json").read_text())
    assert again["metrics"] == result["metrics"]
    assert main(["evaluate", "--run", str(out), "--sampled", "100"]) == 0
    sampled = json.loads((out / "eval-sampled-100.json").read_text())
    assert sampled["eval_protocol"] == "sampled-100"
    assert sampled["metrics"]["test"]["hr@10"] > test["hr@10"]          # 101 candidates are easier

    # result.json echoes the run's spec; `mltfr train --spec` retrains the same run from it
    spec = result["spec"]
    assert (spec["data"], spec["seed"], spec["train"]) == (str(pantry), 3, {"epochs": 1, "eval_batch_size": 2048})
    (tmp_path / "run.json").write_text(json.dumps({**spec, "out": str(tmp_path / "again")}))
    assert main(["train", "--spec", str(tmp_path / "run.json"), "--threads", "1"]) == 0
    twin = json.loads((tmp_path / "again" / "result.json").read_text())
    assert twin["metrics"] == result["metrics"] and twin["config"] == result["config"]
    with np.load(out / "ranks.npz") as a, np.load(tmp_path / "again" / "ranks.npz") as b:
        assert np.array_equal(a["test_ranks"], b["test_ranks"])


@pytest.mark.parametrize("args, doc, message", [
    (["--data", "d"], {}, "holds the whole run; drop --data"),
    ([], None, "file not found; pass the run's run.json"),
    ([], {"data": "d", "out": "o", "backbone": "sasrec", "protocol": "corrected", "seed": 1, "nope": 1},
     "unknown key(s) ['nope']"),
    ([], {"data": "d", "out": "o", "backbone": "sasrec", "protocol": "corrected"}, "missing key(s) ['seed']"),
])
def test_a_bad_spec_is_a_one_line_error(tmp_path, capsys, args, doc, message):
    path = tmp_path / "run.json"
    if doc is not None:
        path.write_text(json.dumps(doc))
    assert main(["train", "--spec", str(path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_without_a_spec_the_identity_flags_are_required(capsys):
    assert main(["train", "--backbone", "sasrec", "--seed", "1"]) == 2
    assert "mltfr train needs --data, --out, --protocol (or --spec FILE" in capsys.readouterr().err


def popularity_test_ranks(data, protocol):
    """Each user's last item ranked by its count in the protocol's training split, with numpy
    (pessimistic ties; corrected also drops the user's other history items from the candidates;
    faithful numbers only the training items, so a target outside them is below all of them)."""
    from mltfr.data import load_prepared

    p = load_prepared(data)
    lengths, held = np.diff(p.offsets), 1 if protocol == "faithful" else 2
    in_train = np.arange(len(p.items)) - np.repeat(p.offsets[:-1], lengths) < np.repeat(lengths - held, lengths)
    counts = np.bincount(p.items[in_train], minlength=p.n_items + 1)
    targets = p.items[p.offsets[1:] - 1]
    ranks = (counts[1:][None, :] >= counts[targets][:, None]).sum(1)   # (U,): the target counts itself
    if protocol == "faithful":
        ranks = np.where(counts[targets] > 0, ranks, (counts[1:] > 0).sum() + 1)
    if protocol == "corrected":
        user = np.repeat(np.arange(len(lengths)), lengths)
        history = ~np.isin(np.arange(len(p.items)), p.offsets[1:] - 1)       # all but each last item
        keys = np.unique(user[history] * (p.n_items + 1) + p.items[history])  # distinct (user, item)
        u, item = keys // (p.n_items + 1), keys % (p.n_items + 1)
        above = (item != targets[u]) & (counts[item] >= counts[targets[u]])
        ranks -= np.bincount(u[above], minlength=len(lengths))
    return ranks


@pytest.mark.parametrize("protocol, ndcg10", [("faithful", 0.0136592), ("corrected", 0.0128055)])
def test_popularity_on_pantry_via_cli(pantry, tmp_path, capsys, protocol, ndcg10):
    out = tmp_path / protocol
    assert main(["train", "--data", str(pantry), "--out", str(out), "--backbone", "pop", "--variant", "base",
                 "--protocol", protocol, "--seed", "1", "--device", "cpu", "--threads", "1"]) == 0
    result = json.loads((out / "result.json").read_text())
    expected = popularity_test_ranks(pantry, protocol)
    with np.load(out / "ranks.npz") as z:
        np.testing.assert_array_equal(z["test_ranks"], expected)
    ndcg = float(np.where(expected <= 10, 1 / np.log2(expected + 1), 0).mean())
    assert result["metrics"]["test"]["ndcg@10"] == pytest.approx(ndcg, rel=1e-9)
    # measured; faithful = the known popularity reference under the authors' rules (no masking)
    assert ndcg == pytest.approx(ndcg10, abs=1e-7)
    assert (result["best_epoch"], result["epochs_run"], result["n_parameters"]) == (0, 0, 0)
    assert capsys.readouterr().out.count("best epoch 0, no-training-counts-evaluated-once") == 1
    assert main(["evaluate", "--run", str(out), "--device", "cpu"]) == 0   # the counts are in the checkpoint
    assert json.loads((out / "eval-full-ranking.json").read_text())["metrics"] == result["metrics"]
    with capsys.disabled():
        print(f"pop on Pantry ({protocol}): test NDCG@10 {result['metrics']['test']['ndcg@10']:.7f}")
