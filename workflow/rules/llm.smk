"""LLM token tables: each extracted once into results/<study>/llm/<llm>, shared by its runs.

Downstream jobs depend on meta.json only (written last, it holds the table's checksum). A
random control with `like: OTHER` copies OTHER's shape, mean and std, so OTHER is extracted
first, by its own job (llm_inputs). A dataset's planted table (planted-<dataset>, the positive
control, leaky by construction) is built from its prepared data by its own rule.
"""


ruleorder: plant_table > extract_llm


rule extract_llm:
    input:
        llm_inputs,
    output:
        table=f"{LAYOUT.llm_dir}/table.safetensors",
        meta=LAYOUT.llm_marker,
    log:
        f"{LAYOUT.logs}/llm/{{llm}}.log",
    benchmark:
        f"{LAYOUT.benchmarks}/llm/{{llm}}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        config=CLI_CONFIG,
        entry=llm_entry,
    shell:
        "{params.mltfr} extract-llm --config {params.config} --llm {wildcards.llm}"
        " --out $(dirname {output.meta}) > {log} 2>&1"


rule plant_table:
    input:
        data=LAYOUT.data_marker,
    output:
        table=f"{PLANTED_DIR}/table.safetensors",
        meta=f"{PLANTED_DIR}/meta.json",
    log:
        f"{LAYOUT.logs}/llm/{PLANTED_PREFIX}{{dataset}}.log",
    benchmark:
        f"{LAYOUT.benchmarks}/llm/{PLANTED_PREFIX}{{dataset}}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        config=CLI_CONFIG,
        entry=planted_entry,
    shell:
        "{params.mltfr} extract-llm --config {params.config} --llm $(basename $(dirname {output.meta}))"
        " --data $(dirname {input.data}) --out $(dirname {output.meta}) > {log} 2>&1"
