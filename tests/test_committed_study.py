"""The committed CPU study (config/cpu.yaml): its reports rebuild from the committed runs alone.

The README's rebuild command runs in a temporary working directory holding only what a fresh
clone has (the files git tracks under results/cpu, figures/cpu and docs/findings.md, the config
and the shipped data), then every table, statistic and the findings report it wrote must equal
the committed file byte for byte, and every committed figure must be written again.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures.slurm.workflow import env_with, scontrol_stub

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIG = yaml.safe_load((REPO / "config/cpu.yaml").read_text())
STUDY = CONFIG["study"]["name"]
FINDINGS = CONFIG["study"]["findings"]
COMPARED = (".csv", ".md", ".tex")   # text outputs; parquet, PNG and PDF embed library versions
CLONED_AT = 1_000_000_000             # the copies' mtime (2001): a rewritten file is newer

pytestmark = pytest.mark.slow


def readme_rebuild_args() -> list[str]:
    """The arguments of the README's rebuild command (`... .venv/bin/snakemake ARGS`)."""
    line = next(l for l in (REPO / "README.md").read_text().splitlines() if "rebuild_only" in l and
                l.startswith("    "))
    return shlex.split(line.split(".venv/bin/snakemake", 1)[1])


def tracked(*paths: str) -> list[str]:
    out = subprocess.run(["git", "ls-files", "--", *paths], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def copy_fresh_clone(dest: Path) -> list[str]:
    """The committed study files (as a fresh clone has them), its config and the data."""
    files = tracked(f"results/{STUDY}", f"figures/{STUDY}", FINDINGS)
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, dest / name)
        os.utime(dest / name, (CLONED_AT, CLONED_AT))
    (dest / "config").mkdir(exist_ok=True)
    for name in ("cpu.yaml", "registry.yaml"):
        shutil.copy(REPO / "config" / name, dest / "config" / name)
    (dest / "data").symlink_to(REPO / "data", target_is_directory=True)
    return files


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A failing `scontrol` first on PATH: the slurm plugin's import otherwise waits on it."""
    return env_with(scontrol_stub(tmp_path_factory.mktemp("stub")))


def snakemake(work: Path, env: dict, *args: str) -> str:
    args = args if "--configfile" in args else (*args, "--configfile", "config/cpu.yaml")  # it takes a list
    cmd = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), *args]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def rebuilt(tmp_path_factory, env) -> tuple[Path, list[str], dict, str]:
    """The README's rebuild command (its arguments, verbatim) run in a fresh clone's copy of the
    committed study."""
    work = tmp_path_factory.mktemp("rebuild")
    files = copy_fresh_clone(work)
    committed = {name: (REPO / name).read_bytes() for name in files}
    args = readme_rebuild_args()
    assert args[args.index("--configfile") + 1] == "config/cpu.yaml"
    log = snakemake(work, env, *args)
    return work, files, committed, log


def test_the_study_has_committed_runs_and_reports(rebuilt):
    _, files, _, _ = rebuilt
    runs = [f for f in files if f.startswith(f"results/{STUDY}/runs/") and f.endswith("/result.json")]
    assert len(runs) >= 10, "config/cpu.yaml's runs are committed (scripts/stage-study.sh cpu)"
    assert FINDINGS in files and f"results/{STUDY}/tables/main.md" in files


def test_rebuild_trains_nothing(rebuilt):
    work, files, _, log = rebuilt
    assert "rule train" not in log and "rule fisher" not in log
    assert not list((work / "results" / STUDY / "runs").rglob("checkpoint.pt"))


def is_search_run(name: str) -> bool:
    """A file of one of the backbone's search runs (results/<study>/tuning/<d>/<b>/<point>/...)."""
    return name.startswith(f"results/{STUDY}/tuning/") and name.count("/") > 5


def test_rebuilt_tables_statistics_and_findings_equal_the_committed_ones(rebuilt):
    work, files, committed, _ = rebuilt
    text = [f for f in files if f.endswith(COMPARED) and not f.startswith(f"results/{STUDY}/runs/")
            and "/benchmarks/" not in f and not is_search_run(f)]
    assert any(f.endswith("/tables/tuning.csv") for f in text)
    text += [f for f in files if f.endswith("/choice.json")]   # the search's choice, rebuilt too
    assert FINDINGS in text and any(f.endswith("/ladder.csv") for f in text)
    assert not [name for name in text if (work / name).stat().st_mtime <= CLONED_AT]   # all written again
    differ = [name for name in text if (work / name).read_bytes() != committed[name]]
    assert not differ, f"rebuilt files differ from the committed ones: {differ}"


def test_every_committed_figure_is_drawn_again(rebuilt):
    work, files, _, _ = rebuilt
    figures = [f for f in files if f.startswith(f"figures/{STUDY}/")]
    assert len(figures) >= 20                       # ten figures, PNG and PDF
    assert not [f for f in figures if (work / f).stat().st_mtime <= CLONED_AT]


def test_resuming_the_study_never_retrains_a_committed_run(rebuilt, env):
    # a later piece on a fresh clone (README): the data and tables first, then the study; the
    # training inputs are ancient, so the committed runs stay as they are
    work, files, _, _ = rebuilt
    snakemake(work, env, "inputs", "--cores", "2")
    outputs = set(re.findall(r"^\s+output: (.+)$", snakemake(work, env, "-n"), re.M))
    written = {path for line in outputs for path in line.split(", ")}
    committed_runs = [f for f in files if f.endswith("/result.json")]
    assert committed_runs and not written & set(committed_runs)
