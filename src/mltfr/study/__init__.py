"""The study's definitions shared by the workflow, the CLI, the models and the analysis.

Torch-free, so the workflow (while it builds the DAG) and the analysis can import it.

    config     the ONE loader of study configs (registries merged, random twins derived, schema,
               `train:` checked by RunConfig) for the workflow and the CLI's --config
    grid       the run grid of a loaded study, each variant's LLMs, each job's CLI arguments
    checks     the cross-key checks run before any job is built
    tuning     the backbone's validation search: its points and its choice

Names and settings (variants, protocols, rungs, the layout, the run configs) live one floor
below, in mltfr.spec.
"""
