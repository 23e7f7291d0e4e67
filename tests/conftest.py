"""Session-wide checks: no QEMU process and no run directory outlives the test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vmfault.machine.rundir import run_root


def leaked_qemu_processes() -> list[str]:
    """QEMU processes started by vmfault (their sockets live under the run root) that were
    not already running when this test session started."""
    marker = str(run_root()).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if entry.name in _PREEXISTING:
            continue
        if b"qemu-system" in cmdline.split(b"\0", 1)[0] and marker in cmdline:
            shown = cmdline.replace(b"\0", b" ")[:120].decode(errors="replace")
            found.append(f"{entry.name}: {shown}")
    return found


def _qemu_pids() -> set[str]:
    marker = str(run_root()).encode()
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                pids.add(entry.name)
        except OSError:
            continue
    return pids


_PREEXISTING: set[str] = set()


def pytest_sessionstart(session: pytest.Session) -> None:
    _PREEXISTING.update(_qemu_pids())


def leaked_run_dirs() -> list[Path]:
    """Run directories of this process that were not removed."""
    return sorted(run_root().glob(f"m{os.getpid()}-*"))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    leaks = leaked_qemu_processes()
    dirs = leaked_run_dirs()
    if leaks or dirs:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"leaked QEMU process {p}" for p in leaks]
        lines += [f"leaked run directory {d}" for d in dirs]
        if reporter is not None:
            for line in lines:
                reporter.write_line(line, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
