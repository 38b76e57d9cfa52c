"""Datasets: each prepared once into results/data/<dataset>, shared by every run on it.

Downstream jobs depend on meta.json only (written last, it holds prepared.npz's checksum).
The dataset statistics table (results/tables/dataset_stats.*) is written by the tables step
of `mltfr aggregate` from these meta.json files (report.smk).
"""


rule prepare_dataset:
    output:
        prepared="results/data/{dataset}/prepared.npz",
        meta=DATA_MARKER,
    log:
        "logs/data/{dataset}.log",
    benchmark:
        "benchmarks/out/data/{dataset}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        config=CLI_CONFIG,
        entry=dataset_entry,
    shell:
        "{params.mltfr} prepare --config {params.config} --dataset {wildcards.dataset}"
        " --out results/data/{wildcards.dataset} > {log} 2>&1"
