"""The positive control's planted table (mltfr.llm.planted), built from the real Pantry files
through the CLI as the workflow builds it; and its variants' settings and branch."""
import json

import numpy as np
import pytest
import torch
import yaml

from mltfr.cli import main
from mltfr.data import load_prepared
from mltfr.data.split import without_last
from mltfr.errors import ConfigError, DataError
from mltfr.llm import load_table
from mltfr.llm.planted import check_planted_tables, item_codes, leak_ndcg_at_10, svd_codes
from mltfr.models.variant_branch import base_config, make_branch, variant_config
from mltfr.spec.variants import POSITIVE_CONTROLS, POSITIVE_LABEL, parse

D = 256   # the registry's default rank
N_USERS = 7123   # Pantry's users: one planted row each


@pytest.fixture(scope="module")
def pantry(repo, module_scratch):
    """Pantry prepared and its planted table extracted with the CLI (config/registry.yaml's entry)."""
    root = module_scratch("planted")
    config = root / "config.yaml"
    pantry = yaml.safe_load((repo / "config/registry.yaml").read_text())["datasets"]["pantry"]
    for source in pantry["source"]:
        source["path"] = str(repo / source["path"])
    config.write_text(yaml.safe_dump({"datasets": {"pantry": pantry}}))
    assert main(["prepare", "--config", str(config), "--dataset", "pantry", "--out", str(root / "data")]) == 0
    assert main(["extract-llm", "--config", str(config), "--llm", "planted-pantry", "--data", str(root / "data"),
                 "--out", str(root / "llm")]) == 0
    return root


def test_the_planted_row_ranks_the_test_item_and_the_leak_is_why(pantry):
    """The extracted table (one unit row per user, D = 256) hands the test item to a linear
    read-out, z_i . row: NDCG@10 0.49 on 2,000 users (SASRec: 0.012); the table built from the
    training part only: 0.004."""
    p = load_prepared(pantry / "data")
    table, meta = load_table(pantry / "llm")
    assert tuple(table.shape) == (p.n_users, D) and meta["origin"]["label"] == POSITIVE_LABEL
    assert torch.allclose(table.norm(dim=1), torch.ones(1), atol=1e-5)
    users = np.random.default_rng(0).choice(p.n_users, 2000, replace=False)
    codes, rows = item_codes(p, D), table.numpy()
    assert leak_ndcg_at_10(p, users, lambda u, seq: codes @ rows[u]) > 0.4
    blind_rows, blind_codes = svd_codes(without_last(p, 2), D)       # from the training part only
    assert leak_ndcg_at_10(p, users, lambda u, seq: blind_codes @ blind_rows[u]) < 0.02


def test_meta_labels_it_and_a_rebuild_is_a_cache_hit(pantry, capsys):
    meta = json.loads((pantry / "llm" / "meta.json").read_text())
    prepared_sha = json.loads((pantry / "data" / "meta.json").read_text())["prepared_sha256"]
    assert meta["source"] == "planted" and meta["description"].startswith(POSITIVE_LABEL)
    assert meta["source_identity"] == {"prepared_sha256": prepared_sha} and meta["tokenizer"] is None
    assert main(["extract-llm", "--config", str(pantry / "config.yaml"), "--llm", "planted-pantry", "--data",
                 str(pantry / "data"), "--out", str(pantry / "llm")]) == 0
    assert "up to date" in capsys.readouterr().err


def test_extraction_needs_the_prepared_data_of_its_own_dataset(pantry, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    cfg = yaml.safe_load((pantry / "config.yaml").read_text())
    config.write_text(yaml.safe_dump({**cfg, "datasets": {**cfg["datasets"], "other": cfg["datasets"]["pantry"]}}))
    assert main(["extract-llm", "--config", str(config), "--llm", "planted-pantry", "--out", str(tmp_path)]) == 2
    assert "pass its prepared folder, --data results/<study>/data/pantry" in capsys.readouterr().err
    assert main(["extract-llm", "--config", str(config), "--llm", "planted-other", "--data", str(pantry / "data"),
                 "--out", str(tmp_path)]) == 2
    assert "holds dataset 'pantry', but llms.planted-other is built from 'other'" in capsys.readouterr().err


def test_a_run_refuses_a_planted_table_of_other_data(pantry):
    meta = json.loads((pantry / "llm" / "meta.json").read_text())
    own_data = {"prepared_sha256": meta["origin"]["prepared_sha256"]}
    check_planted_tables({"planted-pantry": meta, "minilm": None}, own_data)     # no error
    with pytest.raises(DataError, match="built from prepared data .* not from this run's --data"):
        check_planted_tables({"planted-pantry": meta}, {"prepared_sha256": "0" * 64})


def test_positive_control_variants_resolve_to_the_planted_table(pantry):
    """Each reads planted-<dataset> only, frozen, one pick per window, one round; they differ by the pick."""
    assert POSITIVE_CONTROLS == ("mltfr-planted", "mltfr-planted-sharp", "mltfr-planted-lookup")
    base = base_config("corrected", "sasrec", 16, {})
    table, _ = load_table(pantry / "llm")
    settings = {}
    for variant in POSITIVE_CONTROLS:
        assert parse(variant).variant.rounds == 1 and parse(variant).variant.block == "positive"
        cfg, names = variant_config(variant, ["planted-pantry"], base)
        assert names == ["planted-pantry"] and not cfg.trainable_tables and cfg.user_vector == "window"
        settings[variant] = (cfg.selection, cfg.filter_grad, cfg.score_scale)
        branch = make_branch(variant, ["planted-pantry"], {"planted-pantry": table}, base)
        assert branch.table(0).shape == (N_USERS, D) and not branch.table(0).requires_grad
    assert settings == {"mltfr-planted": ("guided", "authors", 1.0),
                        "mltfr-planted-sharp": ("guided", "learn", 50.0),
                        "mltfr-planted-lookup": ("lookup", "authors", 1.0)}
    with pytest.raises(ConfigError, match="exactly one planted table"):
        variant_config("mltfr-planted", ["minilm"], base)


def test_a_planted_variant_trains_through_the_cli(pantry, tmp_path):
    """mltfr-planted-sharp, one epoch: the run records the planted table and the diagnostics of a
    scaled filter over its 7,123 rows (the pick's law softmax(50 cos) is far from uniform)."""
    out = tmp_path / "run"
    assert main(["train", "--data", str(pantry / "data"), "--out", str(out), "--backbone", "sasrec",
                 "--protocol", "corrected", "--seed", "0", "--variant", "mltfr-planted-sharp",
                 "--llm", f"planted-pantry={pantry / 'llm'}", "--threads", "1",
                 "--set", "epochs=1", "model.d=16", "model.max_len=10"]) == 0
    result = json.loads((out / "result.json").read_text())
    diagnostics = result["diagnostics"]["planted-pantry"]
    assert diagnostics["vocab"] == N_USERS and diagnostics["effective_tokens"] < 0.1 * N_USERS
    assert diagnostics["table_drift"] == 0 and diagnostics["projection_grad_norm"] > 0
