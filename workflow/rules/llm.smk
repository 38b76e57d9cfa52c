"""LLM token tables: each extracted once into results/llm/<llm>, shared by every run using it."""


rule extract_llm:
    output:
        table="results/llm/{llm}/table.safetensors",
        meta="results/llm/{llm}/meta.json",
    log:
        "logs/llm/{llm}.log",
    benchmark:
        "benchmarks/out/llm/{llm}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        config=cli_config(),
        out=out_folder,
        entry=llm_entry,
    shell:
        "mltfr extract-llm --config {params.config} --llm {wildcards.llm}"
        " --out {params.out} > {log} 2>&1"
