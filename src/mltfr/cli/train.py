"""`mltfr train --data DIR --out RUN_DIR --backbone B --protocol P --seed S [...]`, or
`mltfr train --spec RUN_DIR/run.json` (the workflow's: one resolved run, mltfr.spec.run_spec).

Trains one run and evaluates it: writes checkpoint.pt and epochs.csv while training, then
ranks.npz and result.json (which echoes the run's spec) into RUN_DIR. Rerunning the same command
resumes from the checkpoint. The flags build the same RunSpec a spec file holds; settings, lowest
precedence first: RunConfig defaults, the `train:` section of --config, --tuned, the flags below
(a protocol-ladder rung as --protocol: faithful + the rung's settings; a protocol-factor setting
with-<factor>: corrected + that factor's faithful value), then --set key=value.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from mltfr.errors import ConfigError
from mltfr.spec import rungs as ladder
from mltfr.spec.backbones import BACKBONE_NAMES
from mltfr.spec.protocol import PROTOCOLS
from mltfr.spec.run_config import DEVICES
from mltfr.spec.run_spec import RunSpec
from mltfr.study.tuning import read_choice

IDENTITY = ("data", "out", "backbone", "protocol", "seed")   # the flags a run needs without --spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--spec", type=Path, metavar="FILE",
                        help="a resolved run (run.json, mltfr.spec.run_spec.RunSpec), as the workflow writes "
                             "it; replaces every flag below but --device, --threads and --no-resume")
    parser.add_argument("--data", type=Path, help="prepared dataset folder (mltfr prepare --out)")
    parser.add_argument("--out", type=Path, help="run folder for checkpoint, logs and results")
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, help="backbone model")
    parser.add_argument("--protocol", type=protocol_or_rung, metavar="PROTOCOL",
                        help="faithful: authors' protocol (best epoch on test, labelled); "
                             "corrected: early stopping on validation, test once; or a protocol-ladder "
                             "rung (rung-<factor>, alone-<factor>; mltfr.spec.rungs): faithful with "
                             "the rung's factors set to their corrected values; or with-<factor>[+...]: "
                             "corrected with those factors set back to their faithful values")
    parser.add_argument("--rung-order", type=rung_order, metavar="F1,F2,...",
                        help=f"the ladder's factor order for rung-<factor> (default: "
                             f"{','.join(ladder.DEFAULT_ORDER)}), or the protocol-factor block's factors "
                             "for with-<factor> (default: its own)")
    parser.add_argument("--seed", type=int, help="random seed of the run")
    parser.add_argument("--variant", default="base", help="model variant; 'base' = ID-only (default)")
    parser.add_argument("--config", type=Path, help="study config YAML; its `train:` section overrides defaults")
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[],
                        metavar="KEY=VALUE", help="override a RunConfig key, e.g. lr=5e-4 model.d=32 epochs=3")
    parser.add_argument("--device", choices=DEVICES, help="auto = CUDA when available (default: config's)")
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
    from mltfr.train.run import train_files

    spec = run_spec(args)
    tuned = {"file": spec.tuned, "settings": read_choice(spec.tuned)} if spec.tuned else None
    cfg = spec.config(tuned["settings"] if tuned else None)
    set_threads(args.threads)
    result = train_files(spec.data, spec.out, cfg, {k: Path(v) for k, v in spec.llm.items()}, tuned=tuned,
                         resume=not args.no_resume, rung=spec.rung_record(), spec=spec.to_dict())
    test = result["metrics"]["test"]
    print(f"{spec.out}: test NDCG@10 {test['ndcg@10']:.4f} HR@10 {test['hr@10']:.4f} "
          f"({result['eval_protocol']}, best epoch {result['best_epoch']}, {result['selection']})")
    return 0


def run_spec(args: argparse.Namespace) -> RunSpec:
    """The run's spec: read from --spec, or built from the flags (--device overrides either)."""
    if args.spec:
        given = [f"--{k.replace('_', '-')}" for k in (*IDENTITY, "config", "consensus", "tuned", "rung_order")
                 if getattr(args, k) is not None] + (["--set"] if args.overrides else []) + (
                ["--llm"] if args.llm else []) + (["--variant"] if args.variant != "base" else [])
        if given:
            raise ConfigError(f"--spec {args.spec} holds the whole run; drop {', '.join(given)} (or drop --spec)")
        spec = read_spec(args.spec)
    else:
        spec = spec_from_flags(args)
    return dataclasses.replace(spec, device=args.device) if args.device else spec


def read_spec(path: Path) -> RunSpec:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--spec {path}: file not found; pass the run's run.json") from None
    except ValueError as exc:
        raise ConfigError(f"--spec {path}: not valid JSON ({exc}); rewrite it (the workflow's rule does)") from None
    return RunSpec.from_dict(doc, where=f"--spec {path}")


def spec_from_flags(args: argparse.Namespace) -> RunSpec:
    """The RunSpec the flags describe; the identity flags are required."""
    from mltfr.spec.run_config import parse_override
    from mltfr.study.config import load_train_section

    missing = [f"--{k}" for k in IDENTITY if getattr(args, k) is None]
    if missing:
        raise ConfigError(f"mltfr train needs {', '.join(missing)} (or --spec FILE with the whole run)")
    return RunSpec(data=str(args.data), out=str(args.out), backbone=args.backbone, protocol=args.protocol,
                   seed=args.seed, variant=args.variant, llm={k: str(v) for k, v in parse_llm(args.llm).items()},
                   consensus=str(args.consensus) if args.consensus else None,
                   tuned=str(args.tuned) if args.tuned else None, rung_order=args.rung_order,
                   train=load_train_section(args.config) if args.config else {},
                   sets=dict(map(parse_override, args.overrides)))


def protocol_or_rung(text: str) -> str:
    """--protocol: faithful, corrected, a ladder rung name (rung-<factor>, alone-<factor>) or a
    protocol-factor setting (with-<factor>[+<factor>...])."""
    if text in PROTOCOLS or ladder.is_rung(text):
        return text
    raise argparse.ArgumentTypeError(
        f"invalid choice: {text!r} (choose from {', '.join(PROTOCOLS)}, or a ladder rung "
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
