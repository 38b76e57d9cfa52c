"""Datasets: each prepared once into results/<study>/data/<dataset>, shared by its runs.

Downstream jobs depend on meta.json only (written last, it holds prepared.npz's checksum).
The dataset statistics table (results/<study>/tables/dataset_stats.*) is written by the tables step
of `mltfr aggregate` from these meta.json files (report.smk).
"""


rule prepare_dataset:
    output:
        prepared=f"{LAYOUT.data_dir}/prepared.npz",
        meta=LAYOUT.data_marker,
    log:
        f"{LAYOUT.logs}/data/{{dataset}}.log",
    benchmark:
        f"{LAYOUT.benchmarks}/data/{{dataset}}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        config=CLI_CONFIG,
        entry=dataset_entry,
    shell:
        "{params.mltfr} prepare --config {params.config} --dataset {wildcards.dataset}"
        " --out $(dirname {output.meta}) > {log} 2>&1"
