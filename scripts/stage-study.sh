#!/usr/bin/env bash
# Stage a study's outputs for a commit: what .gitignore lets through (docs/architecture.md,
# "Layout of generated files") and its findings report, leaving out the round-1 folders of runs
# whose round 2 has not finished: round 1's checkpoint is not committed, so a fresh clone must
# train that round 1 again, and a committed round-1 result.json would make Snakemake skip it.
#
#   bash scripts/stage-study.sh cpu && git commit -m "CPU study: piece N"
set -euo pipefail
study=${1:?usage: scripts/stage-study.sh STUDY}
findings=$(.venv/bin/python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['study'].get('findings') or '')" \
  "config/$study.yaml" 2>/dev/null || true)
git add -- "results/$study" "figures/$study" ${findings:+"$findings"}
git diff --cached --name-only -- "results/$study/runs" | grep '/round1/result.json$' | while read -r round1; do
  run=${round1%/round1/result.json}
  if [ ! -f "$run/result.json" ]; then
    git reset -q -- "$run/round1"
    echo "left out $run/round1 (round 2 not finished)"
  fi
done
git diff --cached --stat -- "results/$study" "figures/$study" | tail -1
