"""Aggregation, statistics, figures, the findings report and the HTML report
(`snakemake --report report.html`).

Every step runs `mltfr aggregate` on the run manifest (results/<study>/tables/runs.txt, one run
folder per line). The manifest depends on every run's result.json, so a changed or added run
reruns the manifest and the steps below, and nothing upstream. Output names are fixed by
mltfr.spec.report_outputs. The efficiency table reads the training jobs' benchmark files
(results/<study>/benchmarks), which exist once their result.json does. `mltfr findings` writes
the study's findings report from the tables and statistics (no number typed by hand). The
statistics test equivalence at the study's declared margin (study.equivalence.margin, a param:
changing it reruns them).
"""


# The run list goes through a file: tens of thousands of paths exceed one shell argument.
localrules:
    run_manifest,


rule run_manifest:
    input:
        results=run_results(),
    output:
        manifest=f"{LAYOUT.tables}/runs.txt",
    log:
        f"{LAYOUT.logs}/report/run_manifest.log",
    benchmark:
        f"{LAYOUT.benchmarks}/report/run_manifest.tsv"
    threads: 1
    run:
        folders = "".join(f"{Path(result).parent}\n" for result in input.results)
        Path(output.manifest).write_text(folders)


rule tables:
    input:
        manifest=f"{LAYOUT.tables}/runs.txt",
        datasets=dataset_markers(),
    output:
        report_tables(aggregate_outputs.table_outputs(LAYOUT.tables)),
    log:
        f"{LAYOUT.logs}/report/tables.log",
    benchmark:
        f"{LAYOUT.benchmarks}/report/tables.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
    shell:
        "{params.mltfr} aggregate --only tables --runs {input.manifest}"
        f" --data {LAYOUT.data_root} --tables {LAYOUT.tables}"
        f" --benchmarks {LAYOUT.benchmarks} > {{log}} 2>&1"


rule stats:
    input:
        manifest=f"{LAYOUT.tables}/runs.txt",
    output:
        report_tables(aggregate_outputs.stats_outputs(LAYOUT.stats)),
    log:
        f"{LAYOUT.logs}/report/stats.log",
    benchmark:
        f"{LAYOUT.benchmarks}/report/stats.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        margin=STUDY.study["equivalence"]["margin"],
    shell:
        "{params.mltfr} aggregate --only stats --runs {input.manifest} --margin {params.margin}"
        f" --stats {LAYOUT.stats} > {{log}} 2>&1"


rule figures:
    input:
        manifest=f"{LAYOUT.tables}/runs.txt",
    output:
        figure_outputs(),
    log:
        f"{LAYOUT.logs}/report/figures.log",
    benchmark:
        f"{LAYOUT.benchmarks}/report/figures.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
    shell:
        "{params.mltfr} aggregate --only figures --runs {input.manifest}"
        f" --figures {LAYOUT.figures} > {{log}} 2>&1"


rule findings:
    input:
        tables=aggregate_outputs.table_outputs(LAYOUT.tables),
        tuning=aggregate_outputs.tuning_outputs(LAYOUT.tables),
        stats=aggregate_outputs.stats_outputs(LAYOUT.stats),
        figures=aggregate_outputs.figure_outputs(LAYOUT.figures),
    output:
        LAYOUT.findings,
    log:
        f"{LAYOUT.logs}/report/findings.log",
    benchmark:
        f"{LAYOUT.benchmarks}/report/findings.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        references=json.dumps(STUDY.study["references"]),
    shell:
        f"{{params.mltfr}} findings --study {LAYOUT.name} --planned-runs {len(STUDY.runs)}"
        " --references {params.references:q}"
        f" --tables {LAYOUT.tables}"
        f" --stats {LAYOUT.stats} --figures {LAYOUT.figures} --out {{output}} > {{log}} 2>&1"
