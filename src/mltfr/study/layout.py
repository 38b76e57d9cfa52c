"""Where the workflow writes (docs/architecture.md, "Layout of generated files"). Torch-free.

Templates take the workflow's wildcards; the markers are the files written last (meta.json holds
the checksums), so downstream jobs depend on one file per dataset and per LLM.
"""

DATA_DIR = "results/data/{dataset}"
LLM_DIR = "results/llm/{llm}"
RUN_WILDCARDS = "{dataset}/{backbone}/{variant}/{protocol}/seed{seed}"
RUN_DIR = f"results/runs/{RUN_WILDCARDS}"
ROUND1_DIR = f"{RUN_DIR}/round1"
TABLES = "results/tables"
STATS = "results/stats"
FIGURES = "figures"
BENCHMARKS = "benchmarks/out"
DATA_MARKER = f"{DATA_DIR}/meta.json"
LLM_MARKER = f"{LLM_DIR}/meta.json"
