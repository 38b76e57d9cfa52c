"""Python helpers of the workflow: the run grid, input/params functions, early config checks.

The grid is computed from `config["study"]` only, so adding a dataset or an LLM to the
registries and to `study` adds its jobs and nothing else. Rules carry no logic; every input,
params and target list comes from a function here.

Variant names (shared with `mltfr train --variant`):
    base, direct-<llm>, filter-<llm>, mltfr, mltfr-nofilter, mltfr-norouter,
    mltfr-noconsensus, mltfr-meanconsensus, mltfr-frozen, mltfr-random,
    mltfr@<key>=<value>   sensitivity: mltfr with a RunConfig key set (`--set key=value`),
    mltfr@n_llms=<n>      sensitivity: mltfr on the first n LLMs of the mltfr set.
Variants with a Fisher consensus expert take three jobs: round 1 (`mltfr train`), the merge
(`mltfr fisher`), round 2 (`mltfr train --consensus FILE`).
"""

import functools
import itertools
import re
from collections import namedtuple
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

# ---------------------------------------------------------------- layout (docs/architecture.md)
DATA_DIR = "results/data/{dataset}"
LLM_DIR = "results/llm/{llm}"
RUN_DIR = "results/runs/{dataset}/{backbone}/{variant}/{protocol}/seed{seed}"
ROUND1_DIR = "results/runs/{dataset}/{backbone}/{variant}/{protocol}/seed{seed}/round1"
RUN_WILDCARDS = "{dataset}/{backbone}/{variant}/{protocol}/seed{seed}"
TABLES = "results/tables"

Run = namedtuple("Run", "dataset backbone variant protocol seed")

ABLATIONS = (
    "mltfr-nofilter",
    "mltfr-norouter",
    "mltfr-noconsensus",
    "mltfr-meanconsensus",
    "mltfr-frozen",
    "mltfr-random",
)
# Variants trained in a single round (no consensus expert, so no Fisher step).
SINGLE_ROUND_PREFIXES = ("base", "direct-", "filter-", "mltfr-noconsensus")
# Settings that only act in round 2 (the consensus expert's weight): such variants reuse the
# round 1 and merged expert of plain `mltfr` instead of retraining an identical round 1.
# (mltfr-meanconsensus cannot: `mltfr fisher` merges by the round-1 run's variant.)
ROUND2_ONLY = ("mltfr@branch.lambda_s=",)
SENSITIVITY_RE = re.compile(
    r"^(?P<method>mltfr)@(?P<key>[A-Za-z_][A-Za-z0-9_.]*)=(?P<value>[^/@=]+)$"
)


def config_error(key, problem, fix):
    """A user-facing error raised while the DAG is built, naming the config key."""
    return WorkflowError(f"config key `{key}`: {problem}. Fix: {fix}.")


# ---------------------------------------------------------------- the config the CLI reads
@functools.cache
def cli_config():
    """The config file passed to the CLI (`--config`): the last --configfile, else config/config.yaml.

    The CLI reads `datasets`, `llms` and `train` from this file, so these sections must not be
    changed by `--config` on the command line: that would desynchronise the workflow and the CLI.
    """
    path = Path(workflow.configfiles[-1])
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(
            Path.cwd()
        )  # no machine path in params (a rerun trigger)
    with open(path) as f:
        on_disk = yaml.safe_load(f) or {}
    for section in ("datasets", "llms", "train"):
        if on_disk.get(section, {}) != config[section]:
            raise config_error(
                section,
                f"differs from {path}, the file the mltfr CLI reads",
                f"edit `{section}` in {path} rather than overriding it with --config",
            )
    return str(path)


# ---------------------------------------------------------------- study grid
def study_block(name):
    return config["study"]["blocks"][name]


def block_values(name, key):
    """A block's list for `key` (datasets, backbones, protocols, seeds); null inherits study's."""
    value = study_block(name)[key]
    return config["study"][key] if value is None else value


def mltfr_llms():
    """The LLMs mltfr and its ablations combine, in order."""
    llms = study_block("mltfr")["llms"]
    return config["study"]["llms"] if llms is None else llms


def mltfr_llms_key():
    return (
        "study.llms"
        if study_block("mltfr")["llms"] is None
        else "study.blocks.mltfr.llms"
    )


def sensitivity_variants():
    block = study_block("sensitivity")
    variants = [
        f"mltfr@{key}={value}"
        for key, values in block["grid"].items()
        for value in values
    ]
    return variants + [f"mltfr@n_llms={n}" for n in block["n_llms"]]


def block_variants(name):
    """Variant names of one study block, in a stable order."""
    if name == "baselines":
        return ["base"]
    if name == "single_llm":
        modes = study_block(name)["modes"]
        return [f"{mode}-{llm}" for llm in config["study"]["llms"] for mode in modes]
    if name == "mltfr":
        return ["mltfr"]
    if name == "ablations":
        return list(study_block(name)["variants"])
    return sensitivity_variants()


def block_runs(name):
    block = study_block(name)
    if not block["enabled"]:
        return []
    backbones = block_values(name, "backbones")
    if name == "baselines":
        backbones = list(dict.fromkeys(backbones + block["extra_backbones"]))
    grid = itertools.product(
        block_values(name, "datasets"),
        backbones,
        block_variants(name),
        block_values(name, "protocols"),
        block_values(name, "seeds"),
    )
    return [Run(*cell) for cell in grid]


@functools.cache
def study_runs():
    """Every final run of the study (duplicates across blocks removed), in a stable order."""
    names = ("baselines", "single_llm", "mltfr", "ablations", "sensitivity")
    runs = itertools.chain.from_iterable(block_runs(name) for name in names)
    return tuple(dict.fromkeys(runs))


def run_path(run, template=RUN_DIR):
    return template.format(**run._asdict())


# ---------------------------------------------------------------- variants
def parse_sensitivity(variant):
    """`mltfr@key=value` -> (key, value); other variants -> (None, None)."""
    match = SENSITIVITY_RE.match(variant)
    return (match["key"], match["value"]) if match else (None, None)


def uses_consensus(variant):
    return variant.startswith("mltfr") and not variant.startswith(SINGLE_ROUND_PREFIXES)


def round1_variant(variant):
    """The variant whose round 1 (and Fisher file) a consensus variant's round 2 starts from."""
    return "mltfr" if variant.startswith(ROUND2_ONLY) else variant


def cli_variant(variant):
    """The `--variant` the CLI gets: sensitivity runs are mltfr with a setting changed."""
    return "mltfr" if parse_sensitivity(variant)[0] else variant


def variant_llms(variant):
    """LLM names a variant's model uses (its `--llm` arguments), in order."""
    if variant == "base":
        return []
    if variant.startswith(("direct-", "filter-")):
        return [variant.split("-", 1)[1]]
    key, value = parse_sensitivity(variant)
    if key == "n_llms":
        return mltfr_llms()[: int(value)]
    if variant == "mltfr-random":
        controls = study_block("ablations")["random_controls"]
        return [controls[llm] for llm in mltfr_llms()]
    return list(mltfr_llms())


def all_variants():
    """Every variant a job may carry: final runs plus the round-1 runs they start from."""
    finals = {run.variant for run in study_runs()}
    return sorted(finals | {round1_variant(v) for v in finals if uses_consensus(v)})


def all_llms():
    return sorted({llm for variant in all_variants() for llm in variant_llms(variant)})


def all_datasets():
    return sorted({run.dataset for run in study_runs()})


def alternatives(names):
    """A regex matching exactly one of the names (never matching when there are none)."""
    return "|".join(re.escape(str(name)) for name in names) or "(?!)"


# ---------------------------------------------------------------- early config checks
def check_names(key, names, known, registry):
    for name in names:
        if name not in known:
            raise config_error(
                key,
                f"names '{name}', which is not in `{registry}` (known: {', '.join(sorted(known)) or 'none'})",
                f"add an entry '{name}' under `{registry}` or remove it from `{key}`",
            )


def check_block_subsets():
    study = config["study"]
    for name, block in study["blocks"].items():
        for key in ("datasets", "backbones", "protocols", "seeds"):
            extra = [v for v in block.get(key) or [] if v not in study[key]]
            if extra:
                raise config_error(
                    f"study.blocks.{name}.{key}",
                    f"{extra} not in `study.{key}`",
                    f"add them to `study.{key}` or remove them from the block",
                )


def check_random_controls():
    controls = study_block("ablations")["random_controls"]
    for llm in mltfr_llms():
        if llm not in controls:
            raise config_error(
                "study.blocks.ablations.random_controls",
                f"mltfr-random needs a random table for '{llm}'",
                f"add `{llm}: <name of a random-table entry in llms>` or drop mltfr-random",
            )
    key = "study.blocks.ablations.random_controls"
    check_names(key, controls.values(), config["llms"], "llms")


def check_consensus(llms, key):
    """A Fisher consensus needs two LLMs of equal token dimension (when dims are declared)."""
    dims = [config["llms"][llm].get("dim") for llm in llms]
    if None in dims or len(set(dims)) < len(dims):
        return  # undeclared dims are checked by the CLI once the tables exist
    raise config_error(
        key,
        f"no two of the LLMs {llms} share a token dimension (dims {dims}), so the Fisher "
        "consensus expert cannot be formed",
        "add an LLM of the same `dim` as another one, or run only mltfr-noconsensus",
    )


def consensus_key(variant):
    """The config key that decides a consensus variant's LLM set (named in its error)."""
    if variant == "mltfr-random":
        return "study.blocks.ablations.random_controls"
    if variant.startswith("mltfr@n_llms="):
        return "study.blocks.sensitivity.n_llms"
    return mltfr_llms_key()


def check_n_llms():
    block, n_max = study_block("sensitivity"), len(mltfr_llms())
    for n in block["n_llms"] if block["enabled"] else []:
        if n > n_max:
            raise config_error(
                "study.blocks.sensitivity.n_llms",
                f"asks for {n} LLMs but the mltfr set has {n_max}",
                f"use values from 2 to {n_max}",
            )


def check_variants():
    variants = {run.variant for run in study_runs()}
    check_n_llms()
    if "mltfr-random" in variants:
        check_random_controls()
    for variant in sorted(v for v in variants if uses_consensus(v)):
        check_consensus(variant_llms(variant), consensus_key(variant))


def check_config():
    """Every name resolvable and every consensus formable, before any job starts."""
    study = config["study"]
    check_names("study.datasets", study["datasets"], config["datasets"], "datasets")
    check_names("study.llms", study["llms"], config["llms"], "llms")
    check_names(mltfr_llms_key(), mltfr_llms(), config["llms"], "llms")
    check_block_subsets()
    check_variants()
    cli_config()


# ---------------------------------------------------------------- targets
def run_results():
    return [f"{run_path(run)}/result.json" for run in study_runs()]


def get_final_output():
    """Every result of the study: one result.json per run, the tables over them."""
    return run_results() + [f"{TABLES}/runs.csv"]


# ---------------------------------------------------------------- input functions
def data_inputs(wildcards):
    folder = DATA_DIR.format(dataset=wildcards.dataset)
    return {"prepared": f"{folder}/prepared.npz", "meta": f"{folder}/meta.json"}


def llm_tables(wildcards):
    return [
        f"{LLM_DIR.format(llm=llm)}/table.safetensors"
        for llm in variant_llms(wildcards.variant)
    ]


def train_inputs(wildcards):
    """Round 1 and single-round runs: the prepared dataset and the variant's token tables."""
    return data_inputs(wildcards) | {"llms": llm_tables(wildcards)}


def round2_inputs(wildcards):
    """Final runs; consensus variants also need the merged expert of their round 1."""
    inputs = train_inputs(wildcards)
    if uses_consensus(wildcards.variant):
        round1 = ROUND1_DIR.format(
            **(dict(wildcards) | {"variant": round1_variant(wildcards.variant)})
        )
        inputs["consensus"] = f"{round1}/consensus.safetensors"
    return inputs


def fisher_inputs(wildcards):
    """The round-1 run (its folder holds the checkpoint and the settings, data and LLM paths)."""
    return {"round1": f"{ROUND1_DIR.format(**wildcards)}/result.json"}


# ---------------------------------------------------------------- params functions
# One params function per rule: each function param costs every job a signature inspection,
# which dominates the DAG time of the paper-scale grid (~10k jobs).
def out_folder(wildcards, output):
    """The folder of a job's first output (the CLI's --out)."""
    return str(Path(output[0]).parent)


def dataset_entry(wildcards):
    """The registry entry as a param: editing it reruns only this dataset's jobs."""
    return config["datasets"][wildcards.dataset]


def llm_entry(wildcards):
    return config["llms"][wildcards.llm]


def llm_args(variant):
    """`--llm NAME=results/llm/NAME` for each LLM of the variant."""
    return [f"--llm {llm}={LLM_DIR.format(llm=llm)}" for llm in variant_llms(variant)]


def set_args(variant):
    """`--set key=value` of a sensitivity variant (n_llms acts through the LLM list instead)."""
    key, value = parse_sensitivity(variant)
    return [] if key in (None, "n_llms") else [f"--set {key}={value}"]


def train_args(wildcards, input, output):
    """The run-specific arguments of `mltfr train` (round 1, single round or round 2).

    --data results/data/D --out RUN_DIR --variant V [--llm NAME=DIR ...] [--set k=v]
    [--consensus ROUND1_DIR/consensus.safetensors]
    """
    variant = wildcards.variant
    args = [
        f"--data {DATA_DIR.format(dataset=wildcards.dataset)}",
        f"--out {Path(output[0]).parent}",
    ]
    args += [
        f"--variant {cli_variant(variant)}",
        *llm_args(variant),
        *set_args(variant),
    ]
    if "consensus" in input.keys():
        args.append(f"--consensus {input.consensus}")
    return " ".join(args)


def train_settings():
    """The shared `train:` section as a param: changing it reruns every training job."""
    return config["train"]


def input_folders(wildcards, input):
    """The folders of a job's inputs (run folders, dataset folders): the CLI takes folders."""
    return [str(Path(path).parent) for path in input]


# ---------------------------------------------------------------- checks and constraints
check_config()


wildcard_constraints:
    dataset=alternatives(all_datasets()),
    llm=alternatives(all_llms()),
    backbone=alternatives(["sasrec", "sasrec-ce", "bert4rec", "gru4rec", "fmlprec"]),
    variant=alternatives(all_variants()),
    protocol="faithful|corrected",
    seed=r"\d+",
