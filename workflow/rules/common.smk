"""Snakemake's side of the study: the loaded study, input/params functions, targets, constraints.

The config is merged with its registries, validated and turned into the run grid by
mltfr.study.config.load_study (torch-free; the CLI reads its entries through the same loader),
before any job is built. Rules carry no logic: every input, params and target list comes from a
function here. DAG speed (the paper grid has thousands of jobs): every job declares as few inputs
as possible (one marker file per dataset and per LLM: its meta.json, written last) and each rule
has at most one params function (each costs every job a signature inspection).
"""

import json
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger
from snakemake.io import report as report_item  # `report` alone is a directive keyword
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from mltfr.spec import report_outputs as aggregate_outputs
from mltfr.errors import ConfigError
from mltfr.study import config as study_config
from mltfr.study.grid import alternatives, uses_consensus
from mltfr.spec.layout import RUN_WILDCARDS
from mltfr.spec.variants import PLANTED_PREFIX


def config_path():
    """The last --configfile (else config/config.yaml) relative to the working directory: the
    file the CLI reads (`--config`), with no machine path in params (a rerun trigger).
    """
    path = Path(workflow.configfiles[-1])
    if path.is_absolute() and path.is_relative_to(Path.cwd()):
        path = path.relative_to(Path.cwd())
    return path


def load_study():
    """The validated run grid; a config error stops the workflow before any job is built."""
    try:
        study_config.check_cli_sections(config, config_path())
        study = study_config.load_study(config, config_path())
    except ConfigError as exc:
        raise WorkflowError(str(exc)) from None
    return study


def mltfr_command():
    """Jobs run the library with the interpreter running Snakemake (no activated environment
    needed; a Slurm job reruns snakemake with that same interpreter), or with the job's own
    `python` when Snakemake deploys the rules' conda environments."""
    deployment = workflow.deployment_settings
    if (
        deployment is not None
        and DeploymentMethod.CONDA in deployment.deployment_method
    ):
        return "python -m mltfr"
    return f"{shlex.quote(sys.executable)} -m mltfr"


STUDY = load_study()
REBUILD_ONLY = STUDY.config["rebuild_only"]
# every output under results/<study.name>/, figures/<name>/, logs/<name>/
LAYOUT = STUDY.layout
CLI_CONFIG = str(config_path())
MLTFR = mltfr_command()
# a dataset's planted table (the positive control), built from its prepared data (rule plant_table)
PLANTED_DIR = LAYOUT.llm_dir.format(llm=f"{PLANTED_PREFIX}{{dataset}}")


# ---------------------------------------------------------------- targets
def run_results():
    """Every run's result.json; with rebuild_only, those on disk (the training rules are not
    loaded then, so these are source files and nothing is trained)."""
    results = [
        f"{LAYOUT.run_dir.format(**run._asdict())}/result.json" for run in STUDY.runs
    ]
    if not REBUILD_ONLY:
        return results
    present = [result for result in results if Path(result).is_file()]
    if not present:
        raise WorkflowError(
            f"rebuild_only: none of the {len(results)} runs of study '{LAYOUT.name}' has a "
            f"result.json under {LAYOUT.root}/runs; train them first (drop rebuild_only)"
        )
    if len(present) < len(results):
        logger.warning(
            f"rebuild_only: {len(present)} of {len(results)} runs of study "
            f"'{LAYOUT.name}' have results; the tables show those only"
        )
    return present


def study_inputs():
    """The markers of every dataset and LLM table the study's runs read (rule `inputs`)."""
    llms = [LAYOUT.llm_marker.format(llm=llm) for llm in STUDY.all_llms()]
    return dataset_markers() + ([] if REBUILD_ONLY else llms)


def dataset_markers():
    return [
        LAYOUT.data_marker.format(dataset=dataset) for dataset in STUDY.all_datasets()
    ]


# Report categories of the figures (mltfr.spec.report_outputs.FIGURES), in reading order.
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
    "null_gains": "7. Evaluation protocols",
}
# Tables also shown in the HTML report, captions in workflow/report/table_<name>.rst.
REPORT_TABLES = (
    "main.csv",
    "pvalues.csv",
    "diagnostics.csv",
    "ladder.csv",
    "optimism.csv",
    "tuning.csv",
    "protocol_factors.csv",
    "null_gains.csv",
)


def figure_outputs():
    """Every figure: the PNG as a report item with its caption (workflow/report/<name>.rst),
    the PDF beside it as a plain output."""
    pngs = [
        report_item(
            f"{LAYOUT.figures}/{name}.png",
            category=FIGURE_CATEGORIES.get(name, "8. Other"),
            caption=f"../report/{name}.rst",
        )
        for name in aggregate_outputs.FIGURES
    ]
    return pngs + [f"{LAYOUT.figures}/{name}.pdf" for name in aggregate_outputs.FIGURES]


def report_tables(files):
    """The output list of an aggregate step, with the report's tables wrapped as report items."""
    table = lambda f: report_item(
        str(f), category="Tables", caption=f"../report/table_{f.stem}.rst"
    )
    return [table(f) if f.name in REPORT_TABLES else str(f) for f in files]


def get_final_output():
    """What `snakemake` builds by default: every table, statistic and figure of the study.
    The run results are inputs of the run manifest, so they are built too."""
    files = aggregate_outputs.table_outputs(LAYOUT.tables)
    files += aggregate_outputs.stats_outputs(LAYOUT.stats)
    files += aggregate_outputs.figure_outputs(LAYOUT.figures)
    files += aggregate_outputs.tuning_outputs(LAYOUT.tables)
    return [str(path) for path in files] + [LAYOUT.findings]


# ---------------------------------------------------------------- before any job runs
TRAINING_RULES = {"train_round1", "fisher", "train", "train_tuning"}


def runs_left_out(dag):
    """Training jobs the DAG holds but did not plan, although an output of theirs is missing.

    Snakemake 9 (dag.update_needrun) skips its missing-output check for every job below one it
    re-makes, then follows only the edges that are not ancient. A run that reads the re-made
    file as ancient (a dataset, a table, the tuning choice) is left out, its result missing,
    and the run ends as if complete.
    """
    return [
        job
        for job in dag.jobs
        if job.rule.name in TRAINING_RULES
        and not dag.needrun(job)
        and not all(Path(path).exists() for path in job.output)
    ]


def refuse_left_out_runs(dag):
    """Stop before any job when Snakemake's plan leaves out runs it should train (onstart)."""
    left_out = runs_left_out(dag)
    if not left_out:
        return
    upstream = dag.bfs(dag.dependencies, *left_out)
    remade = sorted({job.rule.name for job in upstream if dag.needrun(job)})
    raise WorkflowError(
        f"{len(left_out)} training job(s) with missing results are left out of this plan, for "
        f"example {left_out[0].output[0]}: Snakemake re-makes an input they read "
        f"({', '.join(remade)}) and then does not plan them. Nothing was run. Re-make the inputs "
        f"first (the same command with `--until {' '.join(remade)}`), then run it again without "
        "forcing them."
    )


# ---------------------------------------------------------------- input functions
def train_inputs(wildcards):
    """Round 1 and single-round runs: the dataset's and the variant's LLMs' markers.

    They are ancient: a run whose result.json exists is not retrained because its dataset or
    table was prepared again later. A study's runs committed to the repository (results/<name>/
    runs, without data or tables) thus resume on a fresh clone in two steps: `snakemake inputs`
    prepares them (Snakemake would otherwise rerun every job downstream of a job it runs), then
    `snakemake` trains only the runs still missing. A changed dataset or LLM entry therefore
    needs `--forcerun train_round1 train` (each result.json records the prepared data's sha256).
    """
    run = (wildcards.variant, wildcards.backbone, wildcards.dataset)
    llms = STUDY.variant_llms(*run)  # cached
    data = LAYOUT.data_marker.format(dataset=wildcards.dataset)
    markers = [data, *(LAYOUT.llm_marker.format(llm=llm) for llm in llms)]
    choice = STUDY.tuned_choice(
        wildcards.dataset, wildcards.backbone, wildcards.protocol
    )
    return [ancient(marker) for marker in markers + ([choice] if choice else [])]


def tuning_choices():
    """Every tuned cell's choice file; with rebuild_only, those of cells with a search run on disk
    (a search not trained yet is left out of the table, as runs are)."""
    choices = STUDY.tuning_choices()
    if not REBUILD_ONLY:
        return choices
    return [
        choice
        for choice, cell in zip(choices, STUDY.tuned_cells)
        if any(Path(result).is_file() for result in STUDY.tuning_results(*cell))
    ]


def tuning_inputs(wildcards):
    """A search run reads its dataset only (base, no LLM)."""
    return [ancient(LAYOUT.data_marker.format(dataset=wildcards.dataset))]


def tuning_results(wildcards):
    """The search runs of one (dataset, backbone), in grid order; with rebuild_only, those on
    disk (no training rule is loaded then).

    Ancient, as the runs' inputs are: the choice and its search runs are committed together, and
    a fresh clone's checkout order can leave choice.json older than them. Re-made for that, the
    choice would drop every missing run that reads it from the plan (see runs_left_out).
    """
    results = STUDY.tuning_results(wildcards.dataset, wildcards.backbone)
    if not REBUILD_ONLY:
        return [ancient(result) for result in results]
    present = [ancient(result) for result in results if Path(result).is_file()]
    if not present:
        raise WorkflowError(
            f"rebuild_only: no tuning run of {wildcards.dataset}/{wildcards.backbone} has a "
            f"result.json under {LAYOUT.root}/tuning; train them first (drop rebuild_only)"
        )
    return present


def round2_inputs(wildcards):
    """Final runs. A consensus variant needs only its merged expert: round 1 (which needed the
    dataset and the tables) comes before it, so a newer dataset or table reruns both rounds.

    A finished run whose merged expert is not kept (a committed study keeps results, not the
    expert: .gitignore) reads its round 1's result instead, as ancient: asking for the expert
    would make Snakemake merge it again and retrain round 2 of every committed run. Unless the
    command forces training rules (`--forcerun train_round1 train`): the expert is merged then.
    """
    if not uses_consensus(wildcards.variant):
        return train_inputs(wildcards)
    consensus = STUDY.consensus_file(wildcards)
    finished = Path(LAYOUT.run_dir.format(**dict(wildcards)), "result.json").is_file()
    if finished and not Path(consensus).is_file() and not forcing_training():
        return [ancient(f"{LAYOUT.round1_dir.format(**dict(wildcards))}/result.json")]
    return [consensus]


def forcing_training():
    """Whether this command forces training jobs to run again (--forceall, -F, --forcerun RULE)."""
    force = workflow.dag_settings
    return (
        force.forceall
        or force.forcetargets
        or bool(TRAINING_RULES & set(force.forcerun))
    )


def llm_inputs(wildcards):
    """A random table with `like:` reads that LLM's table: extract it first, in its own job."""
    like = STUDY.like_llm(wildcards.llm)
    return [] if like is None else [LAYOUT.llm_marker.format(llm=like)]


# ---------------------------------------------------------------- params functions
def dataset_entry(wildcards):
    """The registry entry as a param: editing it reruns only this dataset's jobs."""
    return STUDY.config["datasets"][wildcards.dataset]


def llm_entry(wildcards):
    return STUDY.llms[wildcards.llm]


def planted_entry(wildcards):
    return STUDY.llms[PLANTED_PREFIX + wildcards.dataset]


def tuning_spec(wildcards):
    return spec_json(STUDY.tuning_spec(wildcards))


def tuning_search(wildcards):
    """`--keys K1,K2 --metric M --expected N` of a choice: the grid's keys and size."""
    block = STUDY.block("tuning")
    keys = ",".join(block["grid"])
    return f"--keys {keys} --metric {block['metric']} --expected {len(STUDY.tuning_points)}"


def spec_json(spec):
    """A run's RunSpec as the JSON its job writes to run.json (`mltfr train --spec`)."""
    return json.dumps(
        spec.to_dict()
    )  # key order kept: the LLM order gives the branch its positions


def round1_spec(wildcards):
    return spec_json(STUDY.run_spec(wildcards, LAYOUT.round1_dir))


def round2_spec(wildcards):
    """Single-round and final runs; a consensus variant adds its merged expert."""
    consensus = (
        STUDY.consensus_file(wildcards) if uses_consensus(wildcards.variant) else None
    )
    return spec_json(STUDY.run_spec(wildcards, LAYOUT.run_dir, consensus))


# A training job writes its run's spec beside its result, then trains from it (the spec is a
# param: a changed setting reruns the job).
TRAIN_FROM_SPEC = (
    "mkdir -p $(dirname {output.result})"
    " && printf '%s\\n' {params.spec:q} > $(dirname {output.result})/run.json"
    " && {params.mltfr} train --spec $(dirname {output.result})/run.json"
    " --threads {threads} --device auto > {log} 2>&1"
)


wildcard_constraints:
    dataset=alternatives(STUDY.all_datasets()),
    llm=alternatives(STUDY.all_llms()),
    backbone=alternatives(sorted({run.backbone for run in STUDY.runs})),
    variant=alternatives(STUDY.all_variants()),
    protocol=alternatives(sorted({run.protocol for run in STUDY.runs})),
    seed=r"\d+",
    point=alternatives(STUDY.tuning_points),
