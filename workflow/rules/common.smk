"""Python helpers of the workflow: config validation, the run grid, input/params functions.

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

DAG speed (the paper grid has thousands of jobs): every job declares as few inputs as possible
(one marker file per dataset and per LLM: its meta.json, written last), each rule has at most
one params function, and everything derived from a variant name is cached.
"""

import copy
import functools
import itertools
import os
import re
import sys
from collections import namedtuple
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match
from referencing import Registry, Resource
from snakemake.exceptions import WorkflowError
from snakemake.io import report as report_item  # `report` alone is a directive keyword

from mltfr.analysis import outputs as aggregate_outputs

# ---------------------------------------------------------------- layout (docs/architecture.md)
DATA_DIR = "results/data/{dataset}"
LLM_DIR = "results/llm/{llm}"
RUN_DIR = "results/runs/{dataset}/{backbone}/{variant}/{protocol}/seed{seed}"
ROUND1_DIR = "results/runs/{dataset}/{backbone}/{variant}/{protocol}/seed{seed}/round1"
RUN_WILDCARDS = "{dataset}/{backbone}/{variant}/{protocol}/seed{seed}"
TABLES = "results/tables"
STATS = "results/stats"
FIGURES = "figures"
BENCHMARKS = "benchmarks/out"
# The marker of a finished dataset / token table: meta.json, written last (checksums inside).
DATA_MARKER = f"{DATA_DIR}/meta.json"
LLM_MARKER = f"{LLM_DIR}/meta.json"

# Jobs call the `mltfr` command: put the scripts folder of the Python running Snakemake first
# on PATH, so that jobs find it without an activated environment (`.venv/bin/snakemake ...`).
# A Slurm job reruns snakemake with that same interpreter, which parses this file again.
SCRIPTS = str(Path(sys.executable).parent)
if os.environ.get("PATH", "").split(os.pathsep)[0] != SCRIPTS:
    os.environ.update(PATH=os.pathsep.join([SCRIPTS, os.environ.get("PATH", "")]))

Run = namedtuple("Run", "dataset backbone variant protocol seed")

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


# ---------------------------------------------------------------- schema validation
CONFIG_SCHEMA = "workflow/schemas/config.schema.yaml"
# The registry entries' schemas, owned by mltfr.data and mltfr.llm ($ref'd by CONFIG_SCHEMA).
ENTRY_SCHEMAS = {
    "datasets": "src/mltfr/schemas/dataset.schema.yaml",
    "llms": "src/mltfr/schemas/llm.schema.yaml",
}


def schema_nodes(node):
    """Every dict inside a schema (to recognise the entry schemas' subschemas by identity)."""
    if isinstance(node, dict):
        yield node
        node = list(node.values())
    for child in node if isinstance(node, list) else []:
        yield from schema_nodes(child)


@functools.cache
def config_validator():
    """A Draft 2020-12 validator of the study config that fills in the schema's defaults.

    The entry schemas are loaded once and registered under the URIs the `$ref`s resolve to
    (snakemake.utils.validate re-reads them for every reference: ~0.3 s per call). Defaults are
    filled in outside the registries only: the CLI reads the entries from the file and applies
    their defaults itself, and the workflow compares these sections with the file (cli_config).
    """
    root = Path(workflow.basedir)

    def load(path):
        return yaml.safe_load((root / path).read_text())

    schema = load(CONFIG_SCHEMA) | {"$id": (root / CONFIG_SCHEMA).resolve().as_uri()}
    entries = {
        (root / path).resolve().as_uri(): load(path) for path in ENTRY_SCHEMAS.values()
    }
    registry = Registry().with_resources(
        (uri, Resource.from_contents(entry)) for uri, entry in entries.items()
    )
    in_entries = {
        id(node) for entry in entries.values() for node in schema_nodes(entry)
    }
    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def fill_defaults(validator, properties, instance, subschema):
        if isinstance(instance, dict) and id(subschema) not in in_entries:
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    extended = validators.extend(Draft202012Validator, {"properties": fill_defaults})
    return extended(schema, registry=registry)


def validate_config(data, source):
    """Validate `data` in place (defaults filled in), or fail naming the dotted key."""
    error = best_match(config_validator().iter_errors(data))
    if error is None:
        return
    path = [str(part) for part in error.absolute_path]
    in_entry = len(path) > 1 and path[0] in ENTRY_SCHEMAS
    schema = ENTRY_SCHEMAS[path[0]] if in_entry else CONFIG_SCHEMA
    raise WorkflowError(
        f"Error validating config file {source}: config key `{'.'.join(path) or '(top level)'}`: "
        f"{error.message}. Fix: see the key's description in {schema}."
    )


# ---------------------------------------------------------------- the config the CLI reads
def config_path():
    """The last --configfile (else config/config.yaml), relative to the working directory."""
    path = Path(workflow.configfiles[-1])
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(
            Path.cwd()
        )  # no machine path in params (a rerun trigger)
    return path


@functools.cache
def cli_config():
    """The config file passed to the CLI (`--config`): the last --configfile, else config/config.yaml.

    The CLI reads `datasets`, `llms` and `train` from this file, so these sections must not be
    changed by `--config` on the command line: that would desynchronise the workflow and the CLI.
    """
    path = config_path()
    with open(path) as f:
        on_disk = yaml.safe_load(f) or {}
    validate_config(
        on_disk, path
    )  # the same defaults as `config`, so the two compare equal
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
    if study_block("mltfr")["llms"] is None:
        return "study.llms"
    return "study.blocks.mltfr.llms"


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


@functools.cache
def variant_llms(variant):
    """LLM names a variant's model uses (its `--llm` arguments), in order."""
    if variant == "base":
        return ()
    if variant.startswith(("direct-", "filter-")):
        return (variant.split("-", 1)[1],)
    key, value = parse_sensitivity(variant)
    if key == "n_llms":
        return tuple(mltfr_llms()[: int(value)])
    if variant == "mltfr-random":
        controls = study_block("ablations")["random_controls"]
        return tuple(controls[llm] for llm in mltfr_llms())
    return tuple(mltfr_llms())


def all_variants():
    """Every variant a job may carry: final runs plus the round-1 runs they start from."""
    finals = {run.variant for run in study_runs()}
    return sorted(finals | {round1_variant(v) for v in finals if uses_consensus(v)})


def like_llm(llm):
    """The LLM whose table a `random` entry copies the shape of (`like:`), or None."""
    entry = config["llms"][llm]
    return entry.get("like") if entry["source"] == "random" else None


def all_llms():
    """Every table the study extracts: the variants' LLMs and the tables random ones copy."""
    used = {llm for variant in all_variants() for llm in variant_llms(variant)}
    return sorted(used | {like_llm(llm) for llm in used} - {None})


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


def check_like_entries():
    """A random table's `like:` must name another registry entry (its shape comes from it)."""
    for llm in config["llms"]:
        like = like_llm(llm)
        if like is not None and (like == llm or like not in config["llms"]):
            raise config_error(
                f"llms.{llm}.like",
                f"names '{like}', which is not another entry of `llms`",
                "name the registry entry whose table shape, mean and std to copy",
            )


def check_consensus(llms, key):
    """A Fisher consensus needs two LLMs of equal token dimension (when dims are declared)."""
    dims = [config["llms"][llm].get("dim") for llm in llms]
    if None in dims or len(set(dims)) < len(dims):
        return  # undeclared dims are checked by the CLI once the tables exist
    raise config_error(
        key,
        f"no two of the LLMs {list(llms)} share a token dimension (dims {dims}), so the Fisher "
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
    """Schema, names, consensus groups and the CLI's file: all before any job starts."""
    validate_config(config, config_path())
    study = config["study"]
    check_names("study.datasets", study["datasets"], config["datasets"], "datasets")
    check_names("study.llms", study["llms"], config["llms"], "llms")
    check_names(mltfr_llms_key(), mltfr_llms(), config["llms"], "llms")
    check_like_entries()
    check_block_subsets()
    check_variants()
    cli_config()


# ---------------------------------------------------------------- targets
def run_results():
    return [f"{run_path(run)}/result.json" for run in study_runs()]


def dataset_markers():
    return [DATA_MARKER.format(dataset=dataset) for dataset in all_datasets()]


# Report categories of the figures (mltfr.analysis.outputs.FIGURES), in reading order.
FIGURE_CATEGORIES = {
    "single_llm_gains": "1. Single-LLM injection",
    "main_comparison": "2. Main results",
    "ablations": "3. Ablations",
    "sensitivity": "4. Sensitivity",
    "router_weights": "5. Interpretability",
    "top_tokens": "5. Interpretability",
    "diagnostics": "5. Interpretability",
    "training_curves": "6. Training",
    "protocols": "7. Evaluation protocols",
}


def figure_outputs():
    """Every figure: the PNG as a report item with its caption (workflow/report/<name>.rst),
    the PDF beside it as a plain output."""
    pngs = [
        report_item(
            f"{FIGURES}/{name}.png",
            category=FIGURE_CATEGORIES.get(name, "8. Other"),
            caption=f"../report/{name}.rst",
        )
        for name in aggregate_outputs.FIGURES
    ]
    return pngs + [f"{FIGURES}/{name}.pdf" for name in aggregate_outputs.FIGURES]


# Tables also shown in the HTML report, captions in workflow/report/table_<name>.rst.
REPORT_TABLES = ("main.csv", "pvalues.csv", "diagnostics.csv")


def report_tables(files):
    """The output list of an aggregate step, with the report's tables wrapped as report items."""
    return [
        (
            report_item(
                str(f), category="Tables", caption=f"../report/table_{f.stem}.rst"
            )
            if f.name in REPORT_TABLES
            else str(f)
        )
        for f in files
    ]


def get_final_output():
    """What `snakemake` builds by default: every table, statistic and figure of the study.

    The run results are inputs of the run manifest, so they are built too; listing them here
    again would only add thousands of inputs to this one job.
    """
    files = aggregate_outputs.table_outputs(TABLES) + aggregate_outputs.stats_outputs(
        STATS
    )
    files += aggregate_outputs.figure_outputs(FIGURES)
    return [str(path) for path in files]


# ---------------------------------------------------------------- input functions
@functools.cache
def llm_markers(variant):
    return [LLM_MARKER.format(llm=llm) for llm in variant_llms(variant)]


def train_inputs(wildcards):
    """Round 1 and single-round runs: the dataset's and the variant's LLMs' markers."""
    return [
        DATA_MARKER.format(dataset=wildcards.dataset),
        *llm_markers(wildcards.variant),
    ]


def round2_inputs(wildcards):
    """Final runs. A consensus variant needs only its merged expert: round 1 (which needed the
    dataset and the tables) comes before it, so a newer dataset or table reruns both rounds.
    """
    if not uses_consensus(wildcards.variant):
        return train_inputs(wildcards)
    variant = round1_variant(wildcards.variant)
    return [
        f"{ROUND1_DIR.format(**(dict(wildcards) | {'variant': variant}))}/consensus.safetensors"
    ]


def llm_inputs(wildcards):
    """A random table with `like:` reads that LLM's table: extract it first, in its own job."""
    like = like_llm(wildcards.llm)
    return [] if like is None else [LLM_MARKER.format(llm=like)]


# ---------------------------------------------------------------- params functions
# At most one params function per rule: each costs every job a signature inspection, which
# adds up over thousands of jobs.
def dataset_entry(wildcards):
    """The registry entry as a param: editing it reruns only this dataset's jobs."""
    return config["datasets"][wildcards.dataset]


def llm_entry(wildcards):
    return config["llms"][wildcards.llm]


@functools.cache
def variant_args(variant):
    """`--variant V [--llm NAME=DIR ...] [--set key=value]` of a variant."""
    args = [f"--variant {cli_variant(variant)}"]
    args += [f"--llm {llm}={LLM_DIR.format(llm=llm)}" for llm in variant_llms(variant)]
    key, value = parse_sensitivity(variant)
    if key not in (None, "n_llms"):  # n_llms acts through the LLM list instead
        args.append(f"--set {key}={value}")
    return " ".join(args)


def run_args(wildcards, folder):
    """`--data D --out FOLDER --variant V ...` of a training job (FOLDER: a run template)."""
    data, out = DATA_DIR.format(**wildcards), folder.format(**wildcards)
    return f"--data {data} --out {out} {variant_args(wildcards.variant)}"


def round1_args(wildcards):
    return run_args(wildcards, ROUND1_DIR)


def round2_args(wildcards):
    """Single-round and final runs; a consensus variant adds its merged expert (`--consensus`)."""
    args = run_args(wildcards, RUN_DIR)
    if uses_consensus(wildcards.variant):
        args += f" --consensus {round2_inputs(wildcards)[0]}"
    return args


def train_settings():
    """The shared `train:` section as a param: changing it reruns every training job."""
    return config["train"]


# ---------------------------------------------------------------- checks and constraints
check_config()


wildcard_constraints:
    dataset=alternatives(all_datasets()),
    llm=alternatives(all_llms()),
    backbone=alternatives(sorted({run.backbone for run in study_runs()})),
    variant=alternatives(all_variants()),
    protocol="faithful|corrected",
    seed=r"\d+",
