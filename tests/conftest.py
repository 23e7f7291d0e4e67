"""Session-wide checks and aids.

No QEMU process and no run directory outlives the test session (other sessions' QEMU
processes under the same run root are told apart by `$VMFAULT_TEST_SESSION`). Every machine of the
session, in this process or in a subprocess, keeps its console and QEMU logs in a staging
directory (`$VMFAULT_LOG_DIR`); when a test fails in setup or call, the logs that changed
while it ran are copied to `results/test-logs/<test id>/` (ini option `machine_logs`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from vmfault.machine.config import LOG_DIR_ENV
from vmfault.machine.rundir import ram_root, run_root

pytest_plugins = ("pytester",)

SESSION_ENV = "VMFAULT_TEST_SESSION"
LOGS_INI = "machine_logs"
DEFAULT_LOGS = "results/test-logs"
_LOG_SUFFIXES = (".console.log", ".qemu.log")
_NAME_MAX = 150

FileState = tuple[int, int]
"""A log file's mtime (ns) and size."""

_OUTER_SESSION = pytest.StashKey[str | None]()
_STAGING = pytest.StashKey[Path]()
_BEFORE = pytest.StashKey[dict[Path, FileState]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        LOGS_INI,
        "where a failed test's machine logs are copied, relative to the rootdir",
        default=DEFAULT_LOGS,
    )


def leaked_qemu_processes() -> list[str]:
    """QEMU processes started by vmfault (their sockets live under the run root) in this
    test session, from this process or a subprocess, that are still running."""
    marker = str(run_root()).encode()
    session = f"{SESSION_ENV}={os.environ.get(SESSION_ENV, '')}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            if b"qemu-system" not in cmdline.split(b"\0", 1)[0] or marker not in cmdline:
                continue
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if session in environ:
            shown = cmdline.replace(b"\0", b" ")[:120].decode(errors="replace")
            found.append(f"{entry.name}: {shown}")
    return found


def pytest_sessionstart(session: pytest.Session) -> None:
    # QEMU inherits the environment: this tells this session's QEMU processes from those of
    # other sessions (other checkouts) that share the run root.
    session.stash[_OUTER_SESSION] = os.environ.get(SESSION_ENV)
    os.environ[SESSION_ENV] = f"{os.getpid()}-{secrets.token_hex(8)}"


def leaked_run_dirs() -> list[Path]:
    """Run directories and RAM template directories of this process that were not
    removed."""
    found = {*run_root().glob(f"m{os.getpid()}-*"), *ram_root().glob(f"m{os.getpid()}-*")}
    return sorted(found)


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
    outer = session.stash.get(_OUTER_SESSION, None)
    if outer is None:
        os.environ.pop(SESSION_ENV, None)
    else:
        os.environ[SESSION_ENV] = outer


# ---------------------------------------------------------------------------- machine logs


@pytest.fixture(scope="session", autouse=True)
def machine_log_staging(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[Path]:
    """`$VMFAULT_LOG_DIR` for the whole session, inherited by every subprocess."""
    staging = tmp_path_factory.mktemp("machine-logs")
    pytestconfig.stash[_STAGING] = staging
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(LOG_DIR_ENV, str(staging))
        yield staging


def logs_root(config: pytest.Config) -> Path:
    """The folder that receives one subfolder of logs per failed test."""
    return config.rootpath / str(config.getini(LOGS_INI))


def log_folder_name(nodeid: str) -> str:
    """A file name for a test id: safe characters only, bounded length, still unique."""
    name = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", nodeid.replace("::", "--")).strip("_")
    if len(name) > _NAME_MAX:
        digest = hashlib.sha256(nodeid.encode()).hexdigest()[:12]
        name = f"{name[: _NAME_MAX - 13]}-{digest}"
    return name


def _states(directory: Path | None) -> dict[Path, FileState]:
    if directory is None:
        return {}
    states: dict[Path, FileState] = {}
    for path in directory.glob("*.log"):
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        states[path] = (info.st_mtime_ns, info.st_size)
    return states


def _machine_stem(path: Path) -> str:
    for suffix in _LOG_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def held_open(directory: Path) -> set[Path]:
    """Files in `directory` that some process has open: the logs of running machines."""
    found: set[Path] = set()
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            targets = [fd.readlink() for fd in fd_dir.iterdir()]
        except OSError:  # gone, or not ours to look at
            continue
        found.update(target for target in targets if target.parent == directory)
    return found


def logs_to_keep(
    before: dict[Path, FileState], after: dict[Path, FileState], running: set[Path]
) -> list[Path]:
    """Log files created or changed between two states, and those of running machines
    (a module's machine may have been used without writing a byte), each with the other
    log of its machine."""
    wanted = {_machine_stem(path) for path, state in after.items() if before.get(path) != state}
    wanted |= {_machine_stem(path) for path in running}
    return sorted(path for path in after if _machine_stem(path) in wanted)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Sizes and mtimes, not a start time: file times tick coarser than the clock.
    item.stash[_BEFORE] = _states(item.config.stash.get(_STAGING, None))
    shutil.rmtree(logs_root(item.config) / log_folder_name(item.nodeid), ignore_errors=True)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    staging = item.config.stash.get(_STAGING, None)
    if report.failed and report.when in ("setup", "call") and staging is not None:
        logs = logs_to_keep(item.stash.get(_BEFORE, {}), _states(staging), held_open(staging))
        if logs:
            folder = logs_root(item.config) / log_folder_name(item.nodeid)
            folder.mkdir(parents=True, exist_ok=True)
            for path in logs:
                shutil.copy2(path, folder / path.name)
            report.sections.append(("machine logs", f"{len(logs)} log files kept in {folder}"))
    return report
