"""`mltfr extract-llm`: write one LLM's token table, meta.json and tokenizer to --out."""
from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="study config with an `llms:` section")
    parser.add_argument("--llm", required=True, help="entry name under `llms:`")
    parser.add_argument("--out", required=True, help="output folder, e.g. results/llm/NAME "
                        "(a random `like: OTHER` entry reads OTHER from the sibling folder)")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32",
                        help="storage dtype of table.safetensors (load_table always returns float32)")
    parser.add_argument("--force", action="store_true", help="re-extract even if the cache is valid")
    parser.add_argument("--data", help="prepared dataset folder (mltfr prepare --out) a `planted` entry, the "
                        "positive control, is built from, e.g. results/<study>/data/<dataset>")


def run(args: argparse.Namespace) -> int:
    from mltfr.llm import extract, load_llm_entry  # lazy: keeps `mltfr --help` free of torch

    _log_to_stderr()
    entry = load_llm_entry(args.config, args.llm)
    meta = extract(entry, args.out, dtype=args.dtype, force=args.force, data=args.data)
    print(f"{args.llm}: {meta['vocab_size']} x {meta['dim']} {meta['dtype']} "
          f"sha256 {meta['sha256'][:12]} -> {args.out}")
    return 0


class CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever sys.stderr is when a message is emitted (not when the handler
    was made): a second `main()` in one process (tests, notebooks) still shows its messages."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def _log_to_stderr() -> None:
    """Show the library's progress and cache messages (extracted / up to date / rebuilt)."""
    logger = logging.getLogger("mltfr.llm")
    if not logger.handlers:
        handler = CurrentStderr()
        handler.setFormatter(logging.Formatter("mltfr extract-llm: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
