"""The study's definitions shared by the workflow, the CLI, the models and the analysis.

Torch-free, so the workflow (while it builds the DAG) and the analysis can import it.

    variants   every variant name, what it changes, its LLMs and rounds
"""
