"""Aggregation, statistics, figures and the HTML report (`snakemake --report report.html`).

Every step runs `mltfr aggregate` on the run manifest (results/tables/runs.txt, one run folder
per line). The manifest depends on every run's result.json, so a changed or added run reruns
the manifest and the three steps below, and nothing upstream. Output names are fixed by
mltfr.analysis.outputs. The efficiency table reads the training jobs' benchmark files
(benchmarks/out), which exist once their result.json does.
"""


# The run list goes through a file: tens of thousands of paths exceed one shell argument.
localrules:
    run_manifest,


rule run_manifest:
    input:
        results=run_results(),
    output:
        manifest=f"{TABLES}/runs.txt",
    log:
        "logs/report/run_manifest.log",
    benchmark:
        "benchmarks/out/report/run_manifest.tsv"
    threads: 1
    run:
        folders = "".join(f"{Path(result).parent}\n" for result in input.results)
        Path(output.manifest).write_text(folders)


rule tables:
    input:
        manifest=f"{TABLES}/runs.txt",
        datasets=dataset_markers(),
    output:
        report_tables(aggregate_outputs.table_outputs(TABLES)),
    log:
        "logs/report/tables.log",
    benchmark:
        "benchmarks/out/report/tables.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
    shell:
        "{params.mltfr} aggregate --only tables --runs {input.manifest} --data results/data"
        f" --tables {TABLES} --benchmarks {BENCHMARKS} > {{log}} 2>&1"


rule stats:
    input:
        manifest=f"{TABLES}/runs.txt",
    output:
        report_tables(aggregate_outputs.stats_outputs(STATS)),
    log:
        "logs/report/stats.log",
    benchmark:
        "benchmarks/out/report/stats.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
    shell:
        "{params.mltfr} aggregate --only stats --runs {input.manifest}"
        f" --stats {STATS} > {{log}} 2>&1"


rule figures:
    input:
        manifest=f"{TABLES}/runs.txt",
    output:
        figure_outputs(),
    log:
        "logs/report/figures.log",
    benchmark:
        "benchmarks/out/report/figures.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
    shell:
        "{params.mltfr} aggregate --only figures --runs {input.manifest}"
        f" --figures {FIGURES} > {{log}} 2>&1"
