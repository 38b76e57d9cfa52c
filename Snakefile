"""The MLTFR study: datasets x LLMs x backbones x variants x protocols x seeds.

Embedded default: `snakemake --cores all`; full study on Slurm: `snakemake --cores all
--profile slurm` (config/paper.yaml); CI-sized: `--configfile config/test.yaml`.
The config (its registries merged: config/registry.yaml) is loaded and validated by the
torch-free mltfr.study.config (src/mltfr/schemas/study.schema.yaml, `train:` by RunConfig) in
common.smk, before any job is built.
"""

from snakemake.utils import min_version

min_version("9")


# The embedded default, only when no --configfile is given: a given file replaces it instead
# of being merged into it, so the CLI (which reads that file) sees the same registries.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"


# `--config rebuild_only=true --forcerun run_manifest`: the reports from the run results on
# disk, without the training rules.
if not REBUILD_ONLY:

    include: "workflow/rules/llm.smk"
    include: "workflow/rules/train.smk"


include: "workflow/rules/tuning.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        get_final_output(),


# Snakemake can leave runs out of its plan without an error (common.smk, runs_left_out): refuse.
onstart:
    refuse_left_out_runs(workflow.dag)


# Every dataset and token table of the study. Build them first to resume a study whose runs are
# committed without their data (config/cpu.yaml): the committed runs are then not retrained.
rule inputs:
    input:
        study_inputs(),
