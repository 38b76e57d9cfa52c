"""Python helpers of the workflow: config validation, the run grid, input/params functions.

The grid is computed from `config["study"]` only, so adding a dataset or an LLM to the
registries and to `study` adds its jobs and nothing else. Rules carry no logic; every input,
params and target list comes from a function here.

Variant names, their LLMs and rounds come from the one registry, `mltfr.study.variants`
(shared with `mltfr train --variant` and the analysis). Variants with a consensus expert take
three jobs: round 1 (`mltfr train`), the merge (`mltfr fisher`), round 2 (`mltfr train
--consensus FILE`). The mltfr LLM set and its consensus group may differ per backbone
(`study.blocks.mltfr.llms` and `.consensus_group`: one list, or a mapping backbone -> list).
The protocol ladder's rungs (`mltfr.study.ladder`) are values of the `protocol` wildcard: a
rung's jobs run `mltfr train --protocol <rung>` with the rung's settings as `--set` arguments.

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
from mltfr.errors import ConfigError
from mltfr.study import ladder
from mltfr.study import variants as registry

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

# Settings that only act in round 2 (the consensus expert's weight): such variants reuse the
# round 1 and merged expert of plain `mltfr` instead of retraining an identical round 1.
# (mltfr-meanconsensus cannot: `mltfr fisher` merges by the round-1 run's variant.)
ROUND2_ONLY = ("mltfr@branch.lambda_s=",)


# Backbones counted from the training split, not trained (mirrors mltfr.models.UNTRAINED_BACKBONES;
# kept literal so building the DAG does not import torch): they run variant `base` only.
UNTRAINED_BACKBONES = ("pop",)
# The CLI's name of an LLM's random control (mltfr.models.variants.RANDOM_PREFIX).
RANDOM_PREFIX = "random-"


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


def per_backbone(key, backbone):
    """A mltfr block setting: one value for every backbone, or a mapping backbone -> value."""
    value = study_block("mltfr")[key]
    if not isinstance(value, dict):
        return value
    if backbone not in value:
        raise config_error(
            f"study.blocks.mltfr.{key}",
            f"has no entry for backbone '{backbone}', which runs mltfr variants",
            f"add `{backbone}: [...]` under it, or give one list for every backbone",
        )
    return value[backbone]


def mltfr_llms(backbone):
    """The LLMs mltfr and its ablations combine on `backbone`, in order."""
    llms = per_backbone("llms", backbone)
    return config["study"]["llms"] if llms is None else llms


def mltfr_llms_key(backbone):
    llms = study_block("mltfr")["llms"]
    if llms is None:
        return "study.llms"
    return "study.blocks.mltfr.llms" + (
        f".{backbone}" if isinstance(llms, dict) else ""
    )


def consensus_group(backbone):
    """The configured consensus group (LLM names of the mltfr set) on `backbone`, or None
    (the CLI's default: the largest set of LLMs sharing a token dimension)."""
    return per_backbone("consensus_group", backbone)


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
        chosen = study_block(name)["variants"]
        return list(
            registry.ABLATIONS + registry.CONTROLS if chosen is None else chosen
        )
    return sensitivity_variants()


def block_runs(name):
    block = study_block(name)
    if not block["enabled"]:
        return []
    backbones = block_values(name, "backbones")
    if name == "baselines":
        backbones = list(dict.fromkeys(backbones + block["extra_backbones"]))
    seeds = block_values(name, "seeds")
    grid = itertools.product(
        block_values(name, "datasets"),
        backbones,
        block_variants(name),
        block_values(name, "protocols"),
        seeds,
    )
    # a counted backbone (pop) gives the same ranks under every seed: run the first one only
    return [
        Run(*cell)
        for cell in grid
        if cell[1] not in UNTRAINED_BACKBONES or cell[4] == seeds[0]
    ]


@functools.cache
def ladder_rungs():
    """The protocol ladder's rungs in the configured order (faithful first)."""
    block = study_block("protocol_ladder")
    try:
        return tuple(ladder.rungs(block["order"], block["alone"]))
    except ConfigError as exc:
        raise config_error(
            "study.blocks.protocol_ladder.order",
            exc,
            "order each factor after those it needs (mltfr.study.ladder.REQUIRES)",
        )


def ladder_runs():
    """Every variant on every rung; rung `faithful` is the ordinary faithful run."""
    block = study_block("protocol_ladder")
    if not block["enabled"]:
        return []
    grid = itertools.product(
        block_values("protocol_ladder", "datasets"),
        block_values("protocol_ladder", "backbones"),
        block["variants"],
        [rung.name for rung in ladder_rungs()],
        block_values("protocol_ladder", "seeds"),
    )
    return [Run(*cell) for cell in grid]


@functools.cache
def study_runs():
    """Every final run of the study (duplicates across blocks removed), in a stable order."""
    names = ("baselines", "single_llm", "mltfr", "ablations", "sensitivity")
    runs = itertools.chain.from_iterable(block_runs(name) for name in names)
    return tuple(dict.fromkeys(itertools.chain(runs, ladder_runs())))


def run_path(run, template=RUN_DIR):
    return template.format(**run._asdict())


# ---------------------------------------------------------------- variants
@functools.cache
def parsed_variant(variant):
    """The registry entry of a variant name (the config checks reject unknown names first)."""
    parsed = registry.parse(variant)
    if parsed is None:
        raise config_error(
            "study.blocks",
            f"runs variant '{variant}', which is not in mltfr.study.variants",
            f"use one of {', '.join(registry.names(['<llm>']))} or mltfr@<key>=<value>",
        )
    return parsed


def parse_sensitivity(variant):
    """`mltfr@key=value` -> (key, value); other variants -> (None, None)."""
    parsed = parsed_variant(variant)
    return parsed.key, parsed.value


def uses_consensus(variant):
    """Sensitivity runs are mltfr with a setting changed: two rounds, like mltfr."""
    return parsed_variant(variant).variant.rounds == 2


def round1_variant(variant):
    """The variant whose round 1 (and Fisher file) a consensus variant's round 2 starts from."""
    return "mltfr" if variant.startswith(ROUND2_ONLY) else variant


def cli_variant(variant):
    """The `--variant` the CLI gets: sensitivity runs are mltfr with a setting changed."""
    return "mltfr" if parse_sensitivity(variant)[0] else variant


@functools.cache
def mltfr_set(variant, backbone):
    """The mltfr LLMs a mltfr-family variant stands on (n_llms: the first n), in order."""
    key, value = parse_sensitivity(variant)
    llms = mltfr_llms(backbone)
    return tuple(llms[: int(value)] if key == "n_llms" else llms)


@functools.cache
def variant_llms(variant, backbone):
    """LLM names a variant's model uses on `backbone` (its `--llm` arguments), in order."""
    parsed = parsed_variant(variant)
    kind = parsed.variant.llms
    if kind == "none":
        return ()
    if kind == "one":
        return (parsed.llm,)
    if kind == "random":
        controls = study_block("ablations")["random_controls"]
        return tuple(controls[llm] for llm in mltfr_set(variant, backbone))
    return mltfr_set(variant, backbone)


@functools.cache
def variant_backbones():
    """Every (variant, backbone) a job may carry: final runs plus the round-1 runs they start from."""
    finals = {(run.variant, run.backbone) for run in study_runs()}
    return sorted(
        finals | {(round1_variant(v), b) for v, b in finals if uses_consensus(v)}
    )


def all_variants():
    return sorted({variant for variant, _ in variant_backbones()})


def like_llm(llm):
    """The LLM whose table a `random` entry copies the shape of (`like:`), or None."""
    entry = config["llms"][llm]
    return entry.get("like") if entry["source"] == "random" else None


def all_llms():
    """Every table the study extracts: the variants' LLMs and the tables random ones copy."""
    used = {
        llm
        for variant, backbone in variant_backbones()
        for llm in variant_llms(variant, backbone)
    }
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


def check_random_controls(backbones):
    controls = study_block("ablations")["random_controls"]
    for llm in {llm for backbone in backbones for llm in mltfr_llms(backbone)}:
        if llm not in controls:
            raise config_error(
                "study.blocks.ablations.random_controls",
                f"mltfr-random needs a random table for '{llm}'",
                f"add `{llm}: <name of a random-table entry in llms>` or drop mltfr-random",
            )
    key = "study.blocks.ablations.random_controls"
    check_names(key, controls.values(), config["llms"], "llms")
    for llm, control in controls.items():
        check_random_control(f"{key}.{llm}", llm, control)


def check_random_control(key, llm, control):
    """A control must be a `random` entry named random-<...> (the CLI's convention) copying `llm`."""
    entry = config["llms"][control]
    if entry["source"] != "random" or not control.startswith(RANDOM_PREFIX):
        raise config_error(
            key,
            f"names '{control}', which is not a `source: random` entry named {RANDOM_PREFIX}<...>",
            f"add an entry `{RANDOM_PREFIX}{llm}: {{source: random, like: {llm}, seed: <its own>}}` "
            "under `llms` and name it here",
        )
    if entry.get("like") not in (None, llm):
        raise config_error(
            key,
            f"names '{control}', which copies the shape of '{entry['like']}', not of '{llm}'",
            f"name the random entry with `like: {llm}`",
        )


def check_random_seeds():
    """Each random table must be its own Gaussian draw: no two random entries share a seed."""
    owner = {}
    for llm, entry in config["llms"].items():
        if entry["source"] != "random":
            continue
        seed = entry["seed"]
        if seed in owner:
            raise config_error(
                f"llms.{llm}.seed",
                f"{seed} is also the seed of the random entry '{owner[seed]}'; two controls of one "
                "seed would be the same Gaussian draw, rescaled",
                "give every `source: random` entry its own seed",
            )
        owner[seed] = llm


def check_untrained_backbones():
    """pop is counted, not trained: it has no hidden states, so no LLM block may run it."""
    for name in ("single_llm", "mltfr", "ablations", "sensitivity", "protocol_ladder"):
        block = study_block(name)
        wrong = [b for b in block_values(name, "backbones") if b in UNTRAINED_BACKBONES]
        if block["enabled"] and wrong:
            own = block["backbones"] is not None
            raise config_error(
                f"study.blocks.{name}.backbones" if own else "study.backbones",
                f"lists {wrong}, a popularity ranking that takes no LLM branch, so block `{name}` "
                "cannot run its LLM variants on it",
                "list it under `study.blocks.baselines.extra_backbones` (variant base) instead",
            )


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


def check_consensus_group(group, llms, backbone):
    """A configured group: >= 2 of the variant's mltfr LLMs, of one declared token dimension."""
    key = "study.blocks.mltfr.consensus_group" + (
        f".{backbone}"
        if isinstance(study_block("mltfr")["consensus_group"], dict)
        else ""
    )
    unknown = [llm for llm in group if llm not in mltfr_llms(backbone)]
    if unknown:
        raise config_error(
            key,
            f"names {unknown}, not in the mltfr LLMs {mltfr_llms(backbone)}",
            "name mltfr LLMs only",
        )
    present = [llm for llm in group if llm in llms]
    dims = {config["llms"][llm].get("dim") for llm in present}
    if len(present) < 2 or len(dims - {None}) > 1:
        raise config_error(
            key,
            f"leaves {present} of the LLMs {list(llms)} (dims {sorted(dims, key=str)}), so the Fisher "
            "consensus expert cannot be formed",
            "name at least two LLMs of one `dim`, among the first n of every sensitivity n_llms",
        )


def consensus_key(variant, backbone):
    """The config key that decides a consensus variant's LLM set (named in its error)."""
    if parsed_variant(variant).variant.llms == "random":
        return "study.blocks.ablations.random_controls"
    if variant.startswith("mltfr@n_llms="):
        return "study.blocks.sensitivity.n_llms"
    return mltfr_llms_key(backbone)


def check_n_llms():
    block = study_block("sensitivity")
    for backbone in (
        block_values("sensitivity", "backbones") if block["enabled"] else []
    ):
        n_max = len(mltfr_llms(backbone))
        for n in block["n_llms"]:
            if n > n_max:
                raise config_error(
                    "study.blocks.sensitivity.n_llms",
                    f"asks for {n} LLMs but the mltfr set of {backbone} has {n_max}",
                    f"use values from 2 to {n_max}",
                )


def check_ablation_names():
    known = registry.ABLATIONS + registry.CONTROLS
    for name in study_block("ablations")["variants"] or []:
        if name not in known:
            raise config_error(
                "study.blocks.ablations.variants",
                f"names '{name}', which is not an ablation or control variant",
                f"use names from {', '.join(known)} (mltfr.study.variants)",
            )


def check_ladder_variants():
    for name in study_block("protocol_ladder")["variants"]:
        if registry.parse(name) is None:
            raise config_error(
                "study.blocks.protocol_ladder.variants",
                f"names '{name}', which is not in mltfr.study.variants",
                f"use names from {', '.join(registry.names(['<llm>']))}",
            )


def check_variants():
    check_ablation_names()
    check_ladder_variants()
    ladder_rungs()
    pairs = {(run.variant, run.backbone) for run in study_runs()}
    check_n_llms()
    random_backbones = {
        b for v, b in pairs if parsed_variant(v).variant.llms == "random"
    }
    if random_backbones:
        check_random_controls(random_backbones)
    for variant, backbone in sorted(p for p in pairs if uses_consensus(p[0])):
        group = consensus_group(backbone)
        if group is None:
            check_consensus(
                variant_llms(variant, backbone), consensus_key(variant, backbone)
            )
        else:
            check_consensus_group(group, mltfr_set(variant, backbone), backbone)


def check_mltfr_llm_names():
    """Every LLM named by the mltfr block (one list, or one per backbone) is in `llms`."""
    llms = study_block("mltfr")["llms"]
    for backbone, names in llms.items() if isinstance(llms, dict) else [(None, llms)]:
        if names is not None:
            check_names(mltfr_llms_key(backbone), names, config["llms"], "llms")


def check_config():
    """Schema, names, consensus groups and the CLI's file: all before any job starts."""
    validate_config(config, config_path())
    study = config["study"]
    check_names("study.datasets", study["datasets"], config["datasets"], "datasets")
    check_names("study.llms", study["llms"], config["llms"], "llms")
    check_mltfr_llm_names()
    check_like_entries()
    check_random_seeds()
    check_block_subsets()
    check_untrained_backbones()
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
    "ladder": "7. Evaluation protocols",
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
REPORT_TABLES = (
    "main.csv",
    "pvalues.csv",
    "diagnostics.csv",
    "ladder.csv",
    "optimism.csv",
)


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
def llm_markers(variant, backbone):
    return [LLM_MARKER.format(llm=llm) for llm in variant_llms(variant, backbone)]


def train_inputs(wildcards):
    """Round 1 and single-round runs: the dataset's and the variant's LLMs' markers."""
    return [
        DATA_MARKER.format(dataset=wildcards.dataset),
        *llm_markers(wildcards.variant, wildcards.backbone),
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
def variant_args(variant, backbone):
    """`--variant V [--llm NAME=DIR ...] [--set key=value ...]` of a variant on `backbone`."""
    args = [f"--variant {cli_variant(variant)}"]
    args += [
        f"--llm {llm}={LLM_DIR.format(llm=llm)}"
        for llm in variant_llms(variant, backbone)
    ]
    key, value = parse_sensitivity(variant)
    if key not in (None, "n_llms"):  # n_llms acts through the LLM list instead
        args.append(f"--set {key}={value}")
    group = consensus_group(backbone) if uses_consensus(variant) else None
    # the CLI takes positions in its --llm list (the random controls keep the same order)
    if group is not None:
        llms = mltfr_set(variant, backbone)
        positions = ",".join(str(llms.index(llm)) for llm in group if llm in llms)
        args.append(f"--set 'branch.consensus_group=[{positions}]'")
    return " ".join(args)


@functools.cache
def rung_args(protocol):
    """A ladder rung's settings as `--set` arguments, trace_test and the order (else nothing)."""
    if not ladder.is_rung(protocol):
        return ""
    order = study_block("protocol_ladder")["order"]
    settings = ladder.overrides(protocol, order) | {"trace_test": True}
    sets = [f"--set {key}={cli_value(value)}" for key, value in settings.items()]
    return " ".join(["", *sets, f"--rung-order {','.join(order)}"])


def cli_value(value):
    """A setting as `--set` reads it (YAML): booleans lower case."""
    return str(value).lower() if isinstance(value, bool) else value


def run_args(wildcards, folder):
    """`--data D --out FOLDER --variant V ...` of a training job (FOLDER: a run template)."""
    data, out = DATA_DIR.format(**wildcards), folder.format(**wildcards)
    variant = variant_args(wildcards.variant, wildcards.backbone)
    return f"--data {data} --out {out} {variant}{rung_args(wildcards.protocol)}"


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
    protocol=alternatives(sorted({run.protocol for run in study_runs()})),
    seed=r"\d+",
