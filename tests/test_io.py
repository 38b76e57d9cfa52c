"""Atomic writes: a failed write is a one-line error naming the file, and the old file stays."""
import errno
from pathlib import Path

import pytest

from mltfr.errors import MltfrError
from mltfr.io import atomic_write_json, atomic_write_text


def test_full_disk_keeps_the_previous_file_and_names_it(tmp_path, monkeypatch):
    target = tmp_path / "tables" / "main.csv"
    atomic_write_text(target, "old\n")

    def full_disk(self, data):
        Path.write_text(self, "half")        # the temp file is half-written, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(MltfrError) as err:
        atomic_write_json(target, {"new": 1})
    message = str(err.value)
    assert message.startswith(f"cannot write {target} (No space left on device; ")
    assert "MB free there); free disk space or fix permissions, then rerun the same command" in message
    assert "\n" not in message
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["main.csv"]   # no temp file left


def test_other_errors_are_not_disguised_as_write_failures(tmp_path, monkeypatch):
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        atomic_write_text(tmp_path / "x.txt", "x")
