"""Time and peak memory of token-table extraction, one fresh process per LLM.

    python benchmarks/bench_llm_extract.py                 # packaged LLMs + synthetic Qwen3-size
    python benchmarks/bench_llm_extract.py --only minilm synthetic-qwen3

The synthetic checkpoint is a Qwen3-0.6B-shaped model (embed_tokens 151936 x 1024 in bf16, as
on the hub) in two safetensors shards with an index, laid out as a Hugging Face cache in a temp
folder and read with HF_HUB_OFFLINE=1: the `hf` code path without a network.

Peak RSS is measured inside the child after its imports: /proc/self/clear_refs resets the
high-water mark, so "extra peak" is what the extraction itself adds (the rule: <= ~1.5x table).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

PACKAGED = ["minilm", "paraphrase-minilm", "smollm2", "gemma3"]
QWEN_VOCAB, QWEN_DIM = 151936, 1024
COMMIT = "0" * 40


def make_synthetic_qwen3(home: Path) -> dict:
    """A Qwen3-shaped sharded checkpoint in HF cache layout under `home`; returns its entry."""
    import torch
    from safetensors.torch import save_file

    snapshot = home / "hub" / "models--synthetic--qwen3-size" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    config = {"model_type": "qwen3", "vocab_size": QWEN_VOCAB, "hidden_size": QWEN_DIM,
              "num_hidden_layers": 1, "intermediate_size": 64, "num_attention_heads": 8,
              "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True}
    (snapshot / "config.json").write_text(json.dumps(config))
    embed = torch.empty(QWEN_VOCAB, QWEN_DIM, dtype=torch.bfloat16)
    for start in range(0, QWEN_VOCAB, 16384):   # fill in chunks: no fp32 copy of the whole table
        embed[start:start + 16384] = torch.randn(min(16384, QWEN_VOCAB - start), QWEN_DIM) * 0.02
    shards = {"model-00001-of-00002.safetensors": {"model.norm.weight": torch.ones(QWEN_DIM)},
              "model-00002-of-00002.safetensors": {"model.embed_tokens.weight": embed}}
    for name, tensors in shards.items():
        save_file(tensors, str(snapshot / name))
    weight_map = {k: name for name, tensors in shards.items() for k in tensors}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return {"source": "hf", "repo": "synthetic/qwen3-size", "revision": COMMIT}


def child(name: str, config: str, out: str) -> None:
    """Run inside a fresh process: extract one LLM, print a JSON line of measurements."""
    import time

    import torch
    import transformers  # noqa: F401  (imported before the baseline, as extraction needs it)

    from mltfr.llm import extract, load_llm_entry

    torch.set_num_threads(1)
    entry = load_llm_entry(config, name)
    baseline = _status_kb("VmRSS")
    reset = _reset_peak()
    started = time.perf_counter()
    meta = extract(entry, out, force=True)
    seconds = time.perf_counter() - started
    print(json.dumps({"name": name, "shape": [meta["vocab_size"], meta["dim"]], "seconds": seconds,
                      "baseline_mb": baseline / 1024, "peak_mb": _status_kb("VmHWM") / 1024,
                      "peak_reset": reset, "table_mb": meta["vocab_size"] * meta["dim"] * 4 / 2**20}))


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")   # 5: reset the peak RSS (VmHWM)
        return True
    except OSError:
        return False


def run_all(names: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-llm-") as tmp:
        tmp = Path(tmp)
        llms = {n: {"source": "package", "package": n} for n in names if n in PACKAGED}
        env = dict(os.environ, HF_HOME=str(tmp / "hf-home"), HF_HUB_OFFLINE="1")
        if "synthetic-qwen3" in names:
            llms["synthetic-qwen3"] = make_synthetic_qwen3(tmp / "hf-home")
        config = tmp / "bench.yaml"
        config.write_text(json.dumps({"llms": llms}))
        rows = []
        for name in llms:
            cmd = [sys.executable, __file__, "--child", name, str(config), str(tmp / "out" / name)]
            result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print_row(rows[-1])
        return rows


def print_row(r: dict) -> None:
    extra = r["peak_mb"] - r["baseline_mb"] if r["peak_reset"] else float("nan")
    print(f"{r['name']:<18} {r['shape'][0]:>7} x {r['shape'][1]:<5} {r['seconds']:>8.1f} "
          f"{r['peak_mb']:>9.0f} {extra:>10.0f} {r['table_mb']:>9.0f} {extra / r['table_mb']:>12.2f}",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", default=PACKAGED + ["synthetic-qwen3"])
    parser.add_argument("--child", nargs=3, metavar=("NAME", "CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    print(f"{'LLM':<18} {'shape':>15} {'seconds':>8} {'peak MB':>9} {'extra MB':>10} "
          f"{'table MB':>9} {'extra/table':>12}")
    run_all(args.only)


if __name__ == "__main__":
    main()
