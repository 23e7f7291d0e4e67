"""Kept machine logs: file creation in `$VMFAULT_LOG_DIR`, and the test session's choice of
which logs a failed test keeps."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path

import pytest

from tests.conftest import log_folder_name, logs_to_keep
from vmfault.errors import UsageError
from vmfault.machine import machine as machine_module
from vmfault.machine.config import LOG_DIR_ENV
from vmfault.machine.machine import KeptLogs, _keep_logs


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_no_log_directory_keeps_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOG_DIR_ENV, raising=False)
    assert _keep_logs("vm") is None
    monkeypatch.setenv(LOG_DIR_ENV, "")
    assert _keep_logs("vm") is None


def test_log_files_are_new_empty_owner_only_and_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_dir = tmp_path / "a" / "b"
    monkeypatch.setenv(LOG_DIR_ENV, str(log_dir))
    monkeypatch.setattr(machine_module, "_log_numbers", itertools.count(7))
    pid = os.getpid()
    log_dir.mkdir(parents=True, mode=0o700)
    taken = log_dir / f"worker_1-{pid}-7.qemu.log"  # left by an earlier process with this pid
    taken.write_text("old")
    logs = _keep_logs("worker/1")
    assert logs == KeptLogs(
        log_dir / f"worker_1-{pid}-8.console.log", log_dir / f"worker_1-{pid}-8.qemu.log"
    )
    assert sorted(log_dir.iterdir()) == sorted([taken, logs.console, logs.qemu])
    assert taken.read_text() == "old"
    for path in (logs.console, logs.qemu):
        assert path.read_bytes() == b"" and mode(path) == 0o600


def test_a_missing_log_directory_is_made_owner_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_dir = tmp_path / "new" / "logs"
    monkeypatch.setenv(LOG_DIR_ENV, str(log_dir))
    old_umask = os.umask(0)  # even a permissive umask gives an owner-only directory
    try:
        logs = _keep_logs("vm")
    finally:
        os.umask(old_umask)
    assert logs is not None and logs.console.parent == log_dir
    assert mode(log_dir) == 0o700


def test_an_unusable_log_directory_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(LOG_DIR_ENV, str(blocker / "logs"))
    with pytest.raises(UsageError, match="cannot create the log directory") as caught:
        _keep_logs("vm")
    assert LOG_DIR_ENV in caught.value.hint


@pytest.mark.parametrize(
    ("nodeid", "folder"),
    [
        ("tests/unit/test_x.py::test_y", "tests_unit_test_x.py--test_y"),
        ("t.py::C::test_z[a/b c-1]", "t.py--C--test_z_a_b_c-1"),
    ],
)
def test_folder_names_of_test_ids(nodeid: str, folder: str) -> None:
    assert log_folder_name(nodeid) == folder


def test_long_test_ids_get_short_distinct_folders() -> None:
    first, second = (f"t.py::test[{'x' * 300}{end}]" for end in "12")
    names = {log_folder_name(first), log_folder_name(second)}
    assert len(names) == 2
    assert all(len(name) == 150 and name.startswith("t.py--test_xxx") for name in names)


def test_kept_logs_are_the_changed_and_the_running_machines_both_files() -> None:
    logs = Path("/staging")

    def pair(machine: str) -> list[Path]:
        return [logs / f"{machine}.console.log", logs / f"{machine}.qemu.log"]

    before = {
        **dict.fromkeys(pair("old-1-0"), (1, 10)),
        **dict.fromkeys(pair("grew-1-1"), (1, 10)),
        **dict.fromkeys(pair("running-1-2"), (1, 10)),
    }
    after = {
        **before,
        logs / "grew-1-1.console.log": (2, 20),
        **dict.fromkeys(pair("new-2-0"), (3, 0)),
    }
    running = {logs / "running-1-2.qemu.log"}
    assert logs_to_keep(before, after, running) == sorted(
        pair("grew-1-1") + pair("new-2-0") + pair("running-1-2")
    )
    assert logs_to_keep(before, before, set()) == []
