"""Training: one job per run; consensus variants as round 1 -> fisher -> round 2.

Single-round variants (base, direct-*, filter-*, mltfr-noconsensus) go straight to rule
`train`. Consensus variants train round 1 into <run>/round1, merge the experts there
(`mltfr fisher`: Fisher-weighted, or plain mean for mltfr-meanconsensus), then `train` runs
round 2 from scratch with the merged expert. Sensitivity runs train both rounds (lambda_s
also weights round 1's random frozen expert).

A run writes result.json, ranks.npz, epochs.csv and checkpoint.pt into its folder; only
result.json, written last, is declared: it marks the run complete. Snakemake deletes the
declared outputs of a failed job, so the checkpoint survives a preemption and a rerun resumes
from it (the CLI checks that the checkpoint's settings equal the run's before resuming).
"""


rule train_round1:
    input:
        train_inputs,
    output:
        result=f"{LAYOUT.round1_dir}/result.json",
    log:
        f"{LAYOUT.logs}/train_round1/{RUN_WILDCARDS}.log",
    benchmark:
        f"{LAYOUT.benchmarks}/train_round1/{RUN_WILDCARDS}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        spec=round1_spec,
    shell:
        TRAIN_FROM_SPEC


rule fisher:
    input:
        round1=f"{LAYOUT.round1_dir}/result.json",
    output:
        consensus=f"{LAYOUT.round1_dir}/consensus.safetensors",
    log:
        f"{LAYOUT.logs}/fisher/{RUN_WILDCARDS}.log",
    benchmark:
        f"{LAYOUT.benchmarks}/fisher/{RUN_WILDCARDS}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
    shell:
        "{params.mltfr} fisher --run $(dirname {input.round1}) --out {output.consensus}"
        " --threads {threads} --device auto > {log} 2>&1"


rule train:
    input:
        round2_inputs,
    output:
        result=f"{LAYOUT.run_dir}/result.json",
    log:
        f"{LAYOUT.logs}/train/{RUN_WILDCARDS}.log",
    benchmark:
        f"{LAYOUT.benchmarks}/train/{RUN_WILDCARDS}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        spec=round2_spec,
    shell:
        TRAIN_FROM_SPEC


rule train_tuning:
    input:
        tuning_inputs,
    output:
        result=f"{LAYOUT.tuning_run_dir}/result.json",
    log:
        f"{LAYOUT.logs}/train_tuning/{{dataset}}/{{backbone}}/{{point}}.log",
    benchmark:
        f"{LAYOUT.benchmarks}/train_tuning/{{dataset}}/{{backbone}}/{{point}}.tsv"
    conda:
        "../../envs/mltfr.yaml"
    threads: 1
    params:
        mltfr=MLTFR,
        spec=tuning_spec,
    shell:
        TRAIN_FROM_SPEC
