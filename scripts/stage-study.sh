#!/usr/bin/env bash
# Stage a study's outputs for a commit: what .gitignore lets through (docs/architecture.md,
# "Layout of generated files") and its findings report, with finished runs only. Left out:
# the folder of a run still training (no result.json yet), and the round 1 of a run whose
# round 2 has not finished: round 1's checkpoint is not committed, so a fresh clone must train
# that round 1 again, and a committed round-1 result.json would make Snakemake skip it.
#
#   bash scripts/stage-study.sh cpu && git commit -m "CPU study: piece N"
set -euo pipefail
study=${1:?usage: scripts/stage-study.sh STUDY}
findings=$(.venv/bin/python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['study'].get('findings') or '')" \
  "config/$study.yaml")
git add -- "results/$study" "figures/$study" ${findings:+"$findings"}
finished() {  # a run folder with its result.json; a round 1 also needs its run's
  case $1 in */round1) [ -f "$1/result.json" ] && [ -f "${1%/round1}/result.json" ] ;; *) [ -f "$1/result.json" ] ;; esac
}
git diff --cached --name-only -- "results/$study/runs" | xargs -r -n1 dirname | sort -u | while read -r folder; do
  if ! finished "$folder"; then
    git reset -q -- "$folder"
    echo "left out $folder (not finished)"
  fi
done
git diff --cached --stat -- "results/$study" "figures/$study" | tail -1
