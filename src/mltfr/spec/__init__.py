"""The spec layer: every name and setting of a run, defined once. The ground floor of the package.

Torch-free and importing nothing of mltfr but mltfr.errors, so the workflow (while it builds its
DAG), the CLI's argument parsing, the models, the training loop and the analysis all read the
same definitions:

    protocol   the two protocols as one table: each setting that separates them, its value under
               each and what it does (the ladder's factors are its rows)
    rungs      the protocol ladder's rungs and the protocol-factor settings built from that table
    variants   every variant name, what it changes, its LLMs
    rounds     the round structure of a consensus variant (round 1 -> merge -> round 2), its files
    backbones  the backbone names and the settings the authors give each
    metrics    the reported metric names
    backbone   BackboneConfig, a backbone's hyper-parameters
    branch     BranchConfig, the LLM branch's settings
    run        RunConfig, every setting of one run (with the two configs above)
    layout     where the workflow writes
"""
