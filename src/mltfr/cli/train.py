"""`mltfr train --data DIR --out RUN_DIR --backbone B --protocol P --seed S [...]`

Trains one run and evaluates it: writes checkpoint.pt and epochs.csv while training, then
ranks.npz and result.json into RUN_DIR. Rerunning the same command resumes from the checkpoint.
Settings, lowest precedence first: RunConfig defaults, the `train:` section of --config, the
flags below (a protocol-ladder rung as --protocol: faithful + the rung's settings; a
protocol-factor setting with-<factor>: corrected + that factor's faithful value), then
--set key=value.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mltfr.errors import ConfigError
from mltfr.study import ladder
from mltfr.study.tuning import read_choice

# Mirrors mltfr.models.BACKBONES (kept literal so `mltfr --help` does not import torch;
# tests/test_train_cli.py checks that the two agree).
BACKBONE_CHOICES = ("sasrec", "sasrec-ce", "bert4rec", "gru4rec", "fmlprec", "pop")
PROTOCOL_CHOICES = ("faithful", "corrected")
DEVICE_CHOICES = ("auto", "cpu", "cuda")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, type=Path, help="prepared dataset folder (mltfr prepare --out)")
    parser.add_argument("--out", required=True, type=Path, help="run folder for checkpoint, logs and results")
    parser.add_argument("--backbone", required=True, choices=BACKBONE_CHOICES, help="backbone model")
    parser.add_argument("--protocol", required=True, type=protocol_or_rung, metavar="PROTOCOL",
                        help="faithful: authors' protocol (best epoch on test, labelled); "
                             "corrected: early stopping on validation, test once; or a protocol-ladder "
                             "rung (rung-<factor>, alone-<factor>; mltfr.study.ladder): faithful with "
                             "the rung's factors set to their corrected values; or with-<factor>[+...]: "
                             "corrected with those factors set back to their faithful values")
    parser.add_argument("--rung-order", type=rung_order, metavar="F1,F2,...",
                        help=f"the ladder's factor order for rung-<factor> (default: "
                             f"{','.join(ladder.DEFAULT_ORDER)}), or the protocol-factor block's factors "
                             "for with-<factor> (default: its own)")
    parser.add_argument("--seed", required=True, type=int, help="random seed of the run")
    parser.add_argument("--variant", default="base", help="model variant; 'base' = ID-only (default)")
    parser.add_argument("--config", type=Path, help="study config YAML; its `train:` section overrides defaults")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE", help="override a RunConfig key, e.g. lr=5e-4 model.d=32 epochs=3")
    parser.add_argument("--device", choices=DEVICE_CHOICES, help="auto = CUDA when available (default: config's)")
    parser.add_argument("--llm", action="extend", nargs="+", default=[], metavar="NAME=DIR",
                        help="an LLM token table folder (mltfr extract-llm --out) for LLM variants")
    parser.add_argument("--consensus", type=Path, metavar="FILE",
                        help="round 2 of a consensus variant: the merged expert from `mltfr fisher`")
    parser.add_argument("--tuned", type=Path, metavar="FILE",
                        help="the backbone's chosen settings (choice.json of `mltfr tune choose`), applied "
                             "after the config's train: section and before the flags and --set")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="CPU threads for torch (default: torch's choice; set it to the job's cores)")
    parser.add_argument("--no-resume", action="store_true",
                        help="ignore an existing checkpoint and train from scratch")


def run(args: argparse.Namespace) -> int:
    from mltfr.data import load_prepared
    from mltfr.llm.cache import read_meta
    from mltfr.llm.planted import check_planted_tables
    from mltfr.train.run import split_for_run, train_and_evaluate

    cfg = build_config(args)
    set_threads(args.threads)
    llm_tables = parse_llm(args.llm)
    prepared = load_prepared(args.data)
    check_planted_tables({name: read_meta(folder) for name, folder in llm_tables.items()}, prepared.meta)
    split = split_for_run(prepared, cfg)
    inputs = {"data": str(args.data), "llm": {k: str(v) for k, v in llm_tables.items()}}
    if args.tuned:
        inputs["tuned"] = {"file": str(args.tuned), "settings": read_choice(args.tuned)}
    rung = ladder_rung(args)
    result = train_and_evaluate(split, cfg, args.out, prepared.meta, llm_tables=llm_tables,
                                resume=not args.no_resume, inputs=inputs,
                                rung=rung.record(args.rung_order or ladder.default_order(rung.name)) if rung else None)
    test = result["metrics"]["test"]
    print(f"{args.out}: test NDCG@10 {test['ndcg@10']:.4f} HR@10 {test['hr@10']:.4f} "
          f"({result['eval_protocol']}, best epoch {result['best_epoch']}, {result['selection']})")
    return 0


def build_config(args: argparse.Namespace):
    """RunConfig from defaults, the config's train: section, the flags (a rung: the protocol it
    starts from, faithful or corrected, + its settings), then --set, which must leave a rung's
    settings as the rung sets them."""
    from mltfr.train.config import RunConfig, apply_overrides, load_train_section

    section = load_train_section(args.config) if args.config else {}
    cfg = RunConfig.from_dict(section, where=f"{args.config}: train" if args.config else "train")
    if args.tuned:
        cfg = apply_overrides(cfg, read_choice(args.tuned))
    rung = ladder_rung(args)
    protocol = rung.start if rung else args.protocol
    flags = {"backbone": args.backbone, "protocol": protocol, "seed": args.seed, "variant": args.variant}
    if args.device:
        flags["device"] = args.device
    if args.consensus:
        flags["consensus_file"] = str(args.consensus)
    cfg = apply_overrides(apply_overrides(cfg, {**flags, **(rung.overrides if rung else {})}), args.overrides)
    if rung and apply_overrides(cfg, rung.overrides) != cfg:
        raise ConfigError(f"--set changes a setting of rung {rung.name} ({rung.overrides}); drop that "
                          f"--set or run another rung")
    return cfg


def ladder_rung(args: argparse.Namespace):
    """The protocol-ladder rung or protocol-factor setting --protocol names (mltfr.study.ladder.Rung),
    or None."""
    if not ladder.is_rung(args.protocol):
        if args.rung_order:
            raise ConfigError(f"--rung-order applies to protocol-ladder rungs only, not to --protocol "
                              f"{args.protocol}; drop it or give a rung (rung-<factor>)")
        return None
    return ladder.rung(args.protocol, args.rung_order or ladder.default_order(args.protocol))


def protocol_or_rung(text: str) -> str:
    """--protocol: faithful, corrected, a ladder rung name (rung-<factor>, alone-<factor>) or a
    protocol-factor setting (with-<factor>[+<factor>...])."""
    if text in PROTOCOL_CHOICES or ladder.is_rung(text):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(PROTOCOL_CHOICES)}, or a ladder rung "
        f"rung-<factor> / alone-<factor> with a factor of {', '.join(ladder.FACTORS)}, or "
        f"with-<factor>[+<factor>...] with factors of {', '.join(ladder.FAITHFUL_VALUES)})")


def rung_order(text: str) -> tuple:
    """--rung-order selection,eval_noise,...: the factors in ladder order (checked)."""
    try:
        return ladder.check_order(f.strip() for f in text.split(","))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def set_threads(n: int | None) -> None:
    if n is None:
        return
    if n < 1:
        raise ConfigError(f"--threads {n}: expected an integer >= 1")
    import torch

    torch.set_num_threads(n)


def parse_llm(pairs: list[str]) -> dict[str, Path]:
    """["minilm=results/llm/minilm", ...] -> {"minilm": Path(...)}."""
    out: dict[str, Path] = {}
    for pair in pairs:
        name, sep, folder = pair.partition("=")
        if not sep or not name or not folder:
            raise ConfigError(f"--llm '{pair}' must look like NAME=DIR (e.g. minilm=results/llm/minilm)")
        if name in out:
            raise ConfigError(f"--llm names '{name}' twice; give each LLM once")
        out[name] = Path(folder)
    return out
