"""LLM token tables: each extracted once into results/llm/<llm>, shared by every run using it.

Downstream jobs depend on meta.json only (written last, it holds the table's checksum). A
random control with `like: OTHER` copies OTHER's shape, mean and std, so OTHER is extracted
first, by its own job (llm_inputs).
"""


rule extract_llm:
    input:
        llm_inputs,
    output:
        table="results/llm/{llm}/table.safetensors",
        meta=LLM_MARKER,
    log:
        "logs/llm/{llm}.log",
    benchmark:
        "benchmarks/out/llm/{llm}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        config=CLI_CONFIG,
        entry=llm_entry,
    shell:
        "{params.mltfr} extract-llm --config {params.config} --llm {wildcards.llm}"
        " --out results/llm/{wildcards.llm} > {log} 2>&1"
