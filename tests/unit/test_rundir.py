"""Private run directories: permissions, removal, and sweeping those of dead processes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from vmfault.machine.rundir import RunDir, owned_prefix, run_root, sweep_stale


@pytest.fixture(autouse=True)
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)


def test_run_dir_is_private_and_removed() -> None:
    run_dir = RunDir()
    assert stat.S_IMODE(run_dir.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(run_root().stat().st_mode) == 0o700
    (run_dir / "file").write_text("x")
    run_dir.close()
    assert not run_dir.path.exists()
    run_dir.close()


def test_sweep_removes_only_dead_owners() -> None:
    root = run_root()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = root / f"m{dead.pid}-abc"
    stale.mkdir()
    live = root / f"m{os.getpid()}-def"
    live.mkdir()
    other = root / "unrelated"
    other.mkdir()
    assert sweep_stale(root) == [stale]
    assert live.exists() and other.exists()


def test_sweep_removes_files_of_dead_owners_too() -> None:
    # A RAM dump left by a process killed while it verified a restore.
    root = run_root()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = root / f"m{dead.pid}-dump-x1"
    stale.write_bytes(b"ram")
    mine = root / f"{owned_prefix()}dump-x2"
    mine.write_bytes(b"ram")
    assert sweep_stale(root) == [stale]
    assert not stale.exists() and mine.exists()
