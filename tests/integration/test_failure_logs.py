"""Machine logs outlive their machine in `$VMFAULT_LOG_DIR`, and a failed test keeps its
machines' logs (from its own process and from subprocesses) under the results folder."""

from __future__ import annotations

import os
import re
import signal
import stat
from pathlib import Path

import pytest

from tests.integration.conftest import IDLE_ARGV
from vmfault.guest.image import GuestImage
from vmfault.machine import Machine, Runstate
from vmfault.machine.config import LOG_DIR_ENV
from vmfault.session import machine_config

pytestmark = pytest.mark.vm

ROOT_CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"
KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d{6}\] ", re.MULTILINE)
"""A printk line with its timestamp: text from the booting kernel itself."""
SIGTERM_NOTE = f"terminating on signal {signal.SIGTERM.value}"
"""What QEMU writes to its stderr when it is sent SIGTERM."""
LOG_NAME = re.compile(r"(?P<machine>.+)-(?P<pid>\d+)-(?P<n>\d+)\.(?P<kind>console|qemu)\.log")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def log_name(path: Path) -> re.Match[str]:
    """The parts of a kept log file's name: machine, pid, n and kind."""
    name = LOG_NAME.fullmatch(path.name)
    assert name is not None, f"{path.name} is not named like a kept log"
    return name


def terminate_qemu(vm: Machine) -> None:
    """SIGTERM QEMU (which says so on its stderr) and wait until the machine sees it exit."""
    assert vm.pid is not None
    os.kill(vm.pid, signal.SIGTERM)
    assert vm.wait(lambda: vm.runstate is Runstate.DEAD, timeout_s=30)


def test_a_machine_keeps_its_logs_in_the_log_directory(
    image: GuestImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_dir = tmp_path / "not" / "yet"
    monkeypatch.setenv(LOG_DIR_ENV, str(log_dir))
    with Machine(machine_config(image, IDLE_ARGV), name="kept/one") as vm:
        assert vm.channel.wait("idle", timeout_s=60) is not None, vm.console.transcript()
        logs, run_dir = vm.kept_logs, vm.run_dir
        assert logs is not None
        assert (vm.console.log_path, vm.qemu_log) == (logs.console, logs.qemu)
        assert list(run_dir.glob("*.log")) == []
        terminate_qemu(vm)
        transcript = vm.console.transcript()
        assert SIGTERM_NOTE in vm.qemu_output
    assert not run_dir.exists()
    assert mode(log_dir) == 0o700
    assert sorted(log_dir.iterdir()) == sorted([logs.console, logs.qemu])
    assert all(mode(path) == 0o600 for path in (logs.console, logs.qemu))
    names = [log_name(path) for path in (logs.console, logs.qemu)]
    assert [(n["machine"], n["pid"], n["kind"]) for n in names] == [
        ("kept_one", str(os.getpid()), "console"),
        ("kept_one", str(os.getpid()), "qemu"),
    ]
    assert logs.console.read_bytes().decode(errors="replace") == transcript
    assert KERNEL_LINE.search(transcript) and "vmfault-agent: ready" in transcript
    assert SIGTERM_NOTE in logs.qemu.read_text()


def test_a_configured_console_log_is_copied_to_the_log_directory(
    image: GuestImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(LOG_DIR_ENV, str(tmp_path / "logs"))
    wanted = tmp_path / "console.txt"
    with Machine(machine_config(image, IDLE_ARGV, console_log=wanted), name="copied") as vm:
        assert vm.channel.wait("idle", timeout_s=60) is not None, vm.console.transcript()
        logs = vm.kept_logs
        assert vm.console.log_path == wanted
    assert logs is not None
    assert KERNEL_LINE.search(wanted.read_text(errors="replace"))
    assert logs.console.read_bytes() == wanted.read_bytes()


def test_without_a_log_directory_logs_live_and_die_with_the_run_directory(
    image: GuestImage, machine_log_staging: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(LOG_DIR_ENV)
    staged = sorted(machine_log_staging.iterdir())
    vm = Machine(machine_config(image, IDLE_ARGV), name="private")
    try:
        vm.launch(start=False)
        run_dir = vm.run_dir
        assert vm.kept_logs is None
        assert (vm.console.log_path, vm.qemu_log) == (run_dir / "console.log", run_dir / "qemu.log")
        assert vm.console.log_path.is_file() and run_dir.joinpath("qemu.log").is_file()
    finally:
        vm.close()
    assert not run_dir.exists()
    assert sorted(machine_log_staging.iterdir()) == staged


INNER_TESTS = '''
"""Tests that boot machines; three of them fail on purpose."""

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmfault.machine import Machine, Runstate
from vmfault.session import machine_config, prepare_image


@contextlib.contextmanager
def booted(name: str) -> Iterator[Machine]:
    with Machine(machine_config(prepare_image(), ["/bin/busybox", "true"]), name=name) as vm:
        assert vm.channel.wait("idle", timeout_s=60) is not None, vm.console.transcript()
        yield vm


@pytest.fixture(scope="module")
def shared() -> Iterator[Machine]:
    with booted("shared") as vm:
        yield vm


def test_passes(shared: Machine) -> None:
    with booted("passing"):
        assert shared.alive


def test_fails_on_a_quiet_machine(shared: Machine) -> None:
    shared.halt()
    assert not shared.alive, "on purpose"


def test_fails() -> None:
    child = "import test_inner\\nwith test_inner.booted('child'): pass"
    subprocess.run([sys.executable, "-c", child], cwd=Path(__file__).parent, check=True)
    with booted("failing") as vm:
        os.kill(vm.pid, signal.SIGTERM)
        vm.wait(lambda: vm.runstate is Runstate.DEAD, timeout_s=30)
        assert vm.alive, "QEMU died, on purpose"


@pytest.fixture
def broken() -> None:
    with booted("setup"):
        raise RuntimeError("the fixture fails on purpose")


def test_setup_fails(broken: None) -> None:
    pass
'''


def kept_files(folder: Path) -> dict[tuple[str, str], Path]:
    """(machine, kind) -> file, for every log file in `folder` (all must be named so)."""
    found: dict[tuple[str, str], Path] = {}
    for path in folder.iterdir():
        name = log_name(path)
        found[name["machine"], name["kind"]] = path
    return found


def test_a_failed_test_keeps_its_machine_logs(
    pytester: pytest.Pytester, image: GuestImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMFAULT_CACHE", str(image.root.parents[1]))  # pytester moves HOME
    pytester.makeconftest(ROOT_CONFTEST.read_text())
    pytester.makepyfile(test_inner=INNER_TESTS)
    kept = tmp_path / "kept"
    result = pytester.runpytest_subprocess("-o", f"machine_logs={kept}", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=2, errors=1)
    result.stdout.fnmatch_lines([f"*6 log files kept in {kept}/test_inner.py--test_fails"])

    def both(*machines: str) -> set[tuple[str, str]]:
        return {(machine, kind) for machine in machines for kind in ("console", "qemu")}

    # The passing test's machine is nowhere; the shared machine, still running, is
    # everywhere, even where it wrote nothing during the test.
    folders = {path.name: kept_files(path) for path in kept.iterdir()}
    assert {name: set(files) for name, files in folders.items()} == {
        "test_inner.py--test_fails_on_a_quiet_machine": both("shared"),
        "test_inner.py--test_fails": both("failing", "child", "shared"),
        "test_inner.py--test_setup_fails": both("setup", "shared"),
    }
    failed = folders["test_inner.py--test_fails"]
    for machine in ("failing", "child", "shared"):
        assert KERNEL_LINE.search(failed[machine, "console"].read_text(errors="replace"))
    assert SIGTERM_NOTE in failed["failing", "qemu"].read_text()
    child_pid = log_name(failed["child", "console"])["pid"]
    assert child_pid != log_name(failed["failing", "console"])["pid"]
    setup = folders["test_inner.py--test_setup_fails"]
    assert KERNEL_LINE.search(setup["setup", "console"].read_text(errors="replace"))
    assert not (pytester.path / "results").exists()
