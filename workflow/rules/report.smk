"""Aggregation, statistics, figures and the HTML report (this slice: the run table only).

Later slices add the `tables`, `stats` and `figures` steps of `mltfr aggregate` as rules whose
outputs are listed by mltfr.analysis.outputs (table_outputs, stats_outputs, figure_outputs),
figures as `report(..., category=..., caption="../report/<name>.rst")` outputs.
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
    params:
        folders=input_folders,
    run:
        Path(output.manifest).write_text("".join(f"{d}\n" for d in params.folders))


rule aggregate:
    input:
        manifest=f"{TABLES}/runs.txt",
    output:
        runs=f"{TABLES}/runs.csv",
    log:
        "logs/report/aggregate.log",
    benchmark:
        "benchmarks/out/report/aggregate.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        config=cli_config(),
    shell:
        "mltfr aggregate --config {params.config} --runs {input.manifest}"
        " --only runs --out {output.runs} > {log} 2>&1"
