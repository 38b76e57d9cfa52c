"""The backbone's validation search (mltfr.study.tuning): the choice per (dataset, backbone) from its
search runs (rule train_tuning, with the training rules), and the tuning table.

Every corrected run of a tuned (dataset, backbone) reads the choice (`--tuned`; an ancient input,
like the datasets: a changed grid needs `--forcerun train train_round1`), so base and every
variant train with the settings base chose on validation.
"""


rule tuning_choice:
    input:
        tuning_results,
    output:
        choice=LAYOUT.tuning_choice,
    log:
        f"{LAYOUT.logs}/tuning/{{dataset}}/{{backbone}}.log",
    benchmark:
        f"{LAYOUT.benchmarks}/report/tuning/{{dataset}}/{{backbone}}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        search=tuning_search,
    shell:
        "{params.mltfr} tune choose --results {input} {params.search}"
        " --out {output.choice} > {log} 2>&1"


rule tuning_table:
    input:
        choices=tuning_choices(),
    output:
        report_tables(aggregate_outputs.tuning_outputs(LAYOUT.tables)),
    log:
        f"{LAYOUT.logs}/report/tuning.log",
    benchmark:
        f"{LAYOUT.benchmarks}/report/tuning.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
    shell:
        "{params.mltfr} tune table --choices {input.choices}"
        f" --tables {LAYOUT.tables} > {{log}} 2>&1"
