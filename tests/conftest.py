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


def _why_no_local_slurm() -> str | None:
    """Why the local Slurm cannot start here, or None when it can."""
    import os
    import shutil

    if shutil.which("slurmctld") is None:
        return "Slurm is not installed: run `bash scripts/slurm-local.sh install` (root)"
    if os.geteuid() != 0:
        return "the local Slurm's daemons run as root: run the Slurm tests as root"
    return None


@pytest.fixture(scope="session")
def local_slurm(tmp_path_factory):
    """A real single-node Slurm (Debian packages), started for the session and stopped after.

    CI installs the packages (`scripts/slurm-local.sh install` in .ci/run); on a developer
    machine without them the Slurm tests are skipped, in CI they fail.
    """
    import os
    import subprocess

    reason = _why_no_local_slurm()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    script = REPO / "scripts" / "slurm-local.sh"
    try:  # a failed start may have started some daemons: stop those too
        subprocess.run(["bash", str(script), "start", str(state)], check=True, timeout=120)
        yield state
    finally:
        subprocess.run(["bash", str(script), "stop", str(state)], check=False, timeout=60)
