#!/usr/bin/env bash
# Run by Snakemake (--software-deployment-method conda) inside the new environment, from the
# working directory (the repository root): install the `mltfr` CLI the rules call.
set -euo pipefail
pip install --no-deps -e .
