"""The repository stands alone: a user's clone has nothing beside it, so no file may point there."""
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Built from pieces so this file does not match itself.
OUTSIDE = re.compile(re.escape("..") + r"/shared\b|\bshared/(data|docs|peers)/")
SKIP_DIRS = {".git", ".venv", ".snakemake", "results", "figures", "logs", "__pycache__"}


def repository_files() -> list[Path]:
    """The tracked files (git ls-files), or every file outside generated folders without git."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
        return [REPO / name for name in out.decode().split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        return [p for p in REPO.rglob("*") if p.is_file() and not SKIP_DIRS & set(p.relative_to(REPO).parts)]


def test_no_file_points_outside_the_repository():
    offenders = []
    for path in repository_files():
        if not path.is_file() or path.suffix in (".gz", ".npz", ".png", ".pdf", ".parquet", ".pt"):
            continue
        text = path.read_text(errors="replace")
        offenders += [f"{path.relative_to(REPO)}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                      for m in OUTSIDE.finditer(text)]
    assert not offenders, "files point outside the repository:\n" + "\n".join(offenders)


def test_the_guard_catches_a_pointer():
    assert OUTSIDE.search("see " + ".." + "/shared" + "/docs/method.md")
    assert OUTSIDE.search("data in " + "shared/" + "data/beauty.txt")
    assert not OUTSIDE.search("the shared expert; shared_state; results/shared_x")
