"""The `hf` source, for real but offline: a fake hub on 127.0.0.1 and a pre-filled local cache."""
from __future__ import annotations

import shutil

import pytest
import torch
from fixtures.llm.fake_hub import FakeHub, FakeRepo, running_hub
from fixtures.llm.tiny_checkpoints import SHARD1, SHARD2, VOCAB, bert_sharded, t5_bin, word_embeddings

from mltfr.errors import ConfigError, DataError
from mltfr.llm import entry_from_registry, extract, load_table, token_strings

COMMIT = "a" * 40


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A running fake hub with a sharded BERT, a P5-like .bin, a BERT without embeddings, a gated
    repo; huggingface_hub pointed at it with an empty cache."""
    fake = FakeHub(repos={
        "acme/tiny-bert": FakeRepo(bert_sharded(), commit=COMMIT),
        "acme/tiny-p5": FakeRepo(t5_bin(), commit=COMMIT),
        "acme/no-embeddings": FakeRepo(bert_sharded(with_embeddings=False), commit=COMMIT),
        "acme/gated": FakeRepo(bert_sharded(), gated=True),
    })
    with running_hub(fake):
        monkeypatch.setenv("HF_ENDPOINT", fake.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        yield fake


def entry(repo: str, **extra):
    return entry_from_registry({"x": {"source": "hf", "repo": repo, "revision": COMMIT, **extra}}, "x")


def test_sharded_checkpoint_reads_only_the_embedding_shard(hub, tmp_path):
    meta = extract(entry("acme/tiny-bert"), tmp_path / "bert")
    weight, meta2 = load_table(tmp_path / "bert")
    # stored in bf16: values i + j/100 round to bf16, so compare with the same rounding
    assert torch.equal(weight, word_embeddings().to(torch.bfloat16).float())
    assert weight.shape == (16, 8) and weight[5, 3].item() == pytest.approx(5.03, abs=0.02)
    assert hub.fetched(SHARD2) and not hub.fetched(SHARD1)
    assert not any(SHARD1 in path for _, path in hub.requests)   # not even a HEAD
    assert meta["origin"] == {"repo": "acme/tiny-bert", "revision": COMMIT, "commit": COMMIT,
                              "file": SHARD2, "tensor": "bert.embeddings.word_embeddings.weight"}
    assert meta2["vocab_size"] == 16 and meta2["dim"] == 8


def test_the_offline_flag_is_read_when_downloading_not_when_huggingface_hub_was_imported(hub, tmp_path,
                                                                                       monkeypatch):
    """A process that imported huggingface_hub under HF_HUB_OFFLINE=1 (a cluster's environment, or an
    earlier test) keeps the library's flag set; with the variable now gone, the hub must be asked."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)   # as imported with HF_HUB_OFFLINE=1
    extract(entry("acme/tiny-bert"), tmp_path / "bert")
    assert hub.fetched(SHARD2) and constants.HF_HUB_OFFLINE is True   # restored after the call


def test_hub_tokenizer_shows_token_strings(hub, tmp_path):
    extract(entry("acme/tiny-bert"), tmp_path / "bert")
    assert token_strings(tmp_path / "bert", [5, 7, 14]) == ["movie", "coffee", "pantry"]
    assert token_strings(tmp_path / "bert", [99]) == ["<id 99>"]   # beyond the vocabulary


def test_p5_like_pytorch_bin_checkpoint(hub, tmp_path):
    meta = extract(entry("acme/tiny-p5"), tmp_path / "p5")
    weight, _ = load_table(tmp_path / "p5")
    assert torch.equal(weight, torch.arange(72).float().reshape(12, 6))
    assert meta["origin"]["tensor"] == "shared.weight" and meta["origin"]["file"] == "pytorch_model.bin"
    assert meta["tokenizer"] is None and token_strings(tmp_path / "p5", [3]) == ["<id 3>"]


def test_tensor_override_and_wrong_override(hub, tmp_path):
    meta = extract(entry("acme/tiny-bert", tensor="bert.embeddings.position_embeddings.weight"), tmp_path / "o")
    assert (meta["vocab_size"], meta["dim"]) == (16, 8) and meta["stats"]["std"] == 0.0
    with pytest.raises(DataError, match="`tensor: nope` is not a key"):
        extract(entry("acme/tiny-bert", tensor="nope"), tmp_path / "o2")


def test_checkpoint_without_embedding_tensor(hub, tmp_path):
    with pytest.raises(DataError, match=r"no input-embedding tensor.*set `tensor:`"):
        extract(entry("acme/no-embeddings"), tmp_path / "n")
    assert not (tmp_path / "n" / "meta.json").exists()


@pytest.mark.parametrize("repo, message", [
    ("acme/gated", r"'acme/gated' is gated; accept its licence on https://huggingface.co/acme/gated"),
    ("acme/missing", r"'acme/missing' not found .*fix `repo:`"),
])
def test_gated_or_missing_repo(hub, tmp_path, repo, message):
    with pytest.raises(ConfigError, match=message):
        extract(entry(repo), tmp_path / "g")


def test_unknown_revision(hub, tmp_path):
    with pytest.raises(ConfigError, match="revision 'b{40}' not found"):
        extract(entry("acme/tiny-bert", revision="b" * 40), tmp_path / "r")


def test_prefilled_cache_offline(monkeypatch, tmp_path):
    """A user's pre-filled HF_HOME (hub cache layout) with HF_HUB_OFFLINE=1: no server at all."""
    snapshot = tmp_path / "home" / "hub" / "models--acme--tiny-bert" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, data in bert_sharded().items():
        if name != SHARD1:   # a cache holding only what the table needs is enough
            (snapshot / name).write_bytes(data)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")   # would fail if contacted
    meta = extract(entry("acme/tiny-bert"), tmp_path / "out")
    assert meta["origin"]["commit"] == COMMIT and meta["origin"]["file"] == SHARD2
    assert token_strings(tmp_path / "out", [len(VOCAB) - 1]) == ["snack"]
    shutil.rmtree(snapshot)   # now a needed file is missing: a clear error, not a traceback
    with pytest.raises(DataError, match="not in the cache"):
        extract(entry("acme/tiny-bert"), tmp_path / "out2")
