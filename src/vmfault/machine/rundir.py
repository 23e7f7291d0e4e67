"""Private directories for sockets, scratch files and guest RAM files.

Every machine gets `<tmp>/vmfault-<uid>/m<pid>-<random>`, mode 0700, removed when the
machine closes. Guest RAM held in files (templates and the machines that make them) lives
in `/dev/shm/vmfault-<uid>/` when the host has it (memory, not disk), else beside the run
directories. A process killed with SIGKILL cannot clean up after itself, so each new
directory first sweeps the ones whose owning process no longer exists.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import stat
import tempfile
from pathlib import Path

from vmfault.errors import UsageError

__all__ = ["RunDir", "owned_prefix", "ram_root", "run_root", "sweep_stale"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_PREFIX = "m"
_SOCKET_PATH_MAX = 107  # sun_path is 108 bytes including the terminating NUL


_SHM = Path("/dev/shm")


def run_root() -> Path:
    """The directory that holds this user's run directories; created 0700 if missing.

    Raises UsageError if it exists but belongs to someone else or is open to others.
    """
    return _private_root(Path(tempfile.gettempdir()))


def ram_root() -> Path:
    """The directory that holds this user's guest RAM files: in /dev/shm (tmpfs) when the
    host has it writable, else the run root; created 0700 if missing."""
    if _SHM.is_dir() and os.access(_SHM, os.W_OK | os.X_OK):
        return _private_root(_SHM)
    return run_root()


def _private_root(parent: Path) -> Path:
    root = parent / f"vmfault-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        root.mkdir(mode=0o700)
    info = root.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise UsageError(
            f"{root} is not a directory owned by this user",
            hint=f"remove {root} or set TMPDIR to a private directory",
        )
    if info.st_mode & 0o077:
        root.chmod(0o700)
    return root


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def owned_prefix() -> str:
    """The name prefix of a file or directory this process owns in a run or RAM root:
    `sweep_stale` removes it once the process is gone (a SIGKILL leaves no cleanup)."""
    return f"{_PREFIX}{os.getpid()}-"


def sweep_stale(root: Path) -> list[Path]:
    """Remove run directories and files whose owning process is gone; returns what was
    removed."""
    removed: list[Path] = []
    for entry in root.iterdir():
        name = entry.name
        if not name.startswith(_PREFIX) or "-" not in name:
            continue
        pid_text = name[len(_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        logger.info("removed %d stale run directories", len(removed))
    return removed


class RunDir:
    """One machine's private directory; `close()` removes it and everything inside."""

    def __init__(self, root: Path | None = None) -> None:
        root = run_root() if root is None else root
        sweep_stale(root)
        self.path = Path(tempfile.mkdtemp(prefix=owned_prefix(), dir=root))
        longest = self.path / "console.sock"
        if len(os.fsencode(longest)) > _SOCKET_PATH_MAX:
            self.close()
            raise UsageError(
                f"temporary directory path too long for Unix sockets: {self.path}",
                hint="set TMPDIR to a shorter path such as /tmp",
            )

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the directory; safe to call more than once."""
        shutil.rmtree(self.path, ignore_errors=True)
