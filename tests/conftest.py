"""Shared fixtures: paths to the real data beside the repository."""
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHARED_DATA = SHARED / "data"


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"real test data missing: expected {SHARED_DATA} (the shared/ folder beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """A real single-node Slurm (Debian packages), started for the session and stopped after.

    CI installs the packages (`scripts/slurm-local.sh install` in .ci/run); on a developer
    machine without them the Slurm tests are skipped, in CI they fail.
    """
    import os
    import shutil
    import subprocess

    if shutil.which("slurmctld") is None:
        if os.environ.get("CI"):
            pytest.fail("Slurm is not installed: run `bash scripts/slurm-local.sh install` (root)")
        pytest.skip("Slurm not installed (bash scripts/slurm-local.sh install)")
    state = tmp_path_factory.mktemp("slurm")
    script = REPO / "scripts" / "slurm-local.sh"
    subprocess.run(["bash", str(script), "start", str(state)], check=True, timeout=120)
    try:
        yield state
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], check=False, timeout=60)
