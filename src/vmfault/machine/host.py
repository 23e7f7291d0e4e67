"""The QEMU process as a host process: its mappings, its memory and its threads' registers.

Generic access for callers that study the VMM itself: `/proc/PID/maps` and `smaps`, which
pages are resident (`/proc/PID/pagemap`), reads and writes of its memory
(`/proc/PID/mem`), and the general registers of one of its threads through ptrace
(PTRACE_SEIZE, PTRACE_INTERRUPT, GETREGS/SETREGS, DETACH).

ptrace is called through ctypes: python-ptrace (the one library for it on PyPI) wraps the
same calls but attaches with PTRACE_ATTACH, which sends SIGSTOP to the tracee; SEIZE and
INTERRUPT stop one thread without a signal that QEMU could see, and the five calls needed
here fit in a page. The tracer is the calling thread: every call of one `thread_registers`
session happens on it, and the thread is detached before the call returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

from vmfault.errors import MachineError

__all__ = [
    "USER_REGS",
    "ProcessMemory",
    "ptrace_problem",
    "thread_names",
    "with_thread_registers",
]

USER_REGS: tuple[str, ...] = (
    "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
    "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss", "fs_base",
    "gs_base", "ds", "es", "fs", "gs",
)  # fmt: skip
"""`struct user_regs_struct` of x86-64 Linux, in order (each an unsigned 64-bit field)."""

_PTRACE_GETREGS = 12
_PTRACE_SETREGS = 13
_PTRACE_DETACH = 17
_PTRACE_SEIZE = 0x4206
_PTRACE_INTERRUPT = 0x4207
_PTRACE_EVENT_STOP = 128
_WALL = 0x40000000
_YAMA = Path("/proc/sys/kernel/yama/ptrace_scope")


class _UserRegs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_ulonglong) for name in USER_REGS]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.ptrace.restype = ctypes.c_long
_libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]


def _ptrace(request: int, tid: int, addr: int = 0, data: int | ctypes.c_void_p = 0) -> None:
    ctypes.set_errno(0)
    pointer = data if isinstance(data, ctypes.c_void_p) else ctypes.c_void_p(data)
    if _libc.ptrace(request, tid, ctypes.c_void_p(addr), pointer) == -1:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def ptrace_problem(scope_path: Path = _YAMA, *, euid: int | None = None) -> str:
    """Why this process may not ptrace its own child QEMU, or "" if it may (Yama's
    `ptrace_scope`: 0 and 1 allow a parent; 2 needs CAP_SYS_PTRACE, here root; 3 forbids
    every attach)."""
    try:
        scope = int(scope_path.read_text().strip())
    except (OSError, ValueError):
        return ""  # no Yama: classic ptrace rules, a parent may trace its child
    euid = os.geteuid() if euid is None else euid
    if scope >= 3:
        return f"ptrace is disabled on this host ({scope_path} is {scope}; only a reboot lowers it)"
    if scope == 2 and euid != 0:
        return f"ptrace needs root here ({scope_path} is 2): run as root, or write 1 to it"
    return ""


def thread_names(pid: int) -> dict[int, str]:
    """The threads of process `pid`: thread id -> its name (`comm`)."""
    names = {}
    for entry in Path(f"/proc/{pid}/task").iterdir():
        try:
            names[int(entry.name)] = (entry / "comm").read_text().strip()
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
    return names


def with_thread_registers(
    tid: int, change: Callable[[Mapping[str, int]], Mapping[str, int]]
) -> tuple[dict[str, int], dict[str, int]]:
    """Stop thread `tid`, read its registers, write the ones `change` returns, read them
    back, and let it go on. Returns (registers before, registers read back).

    MachineError if the thread cannot be stopped (it ended, or ptrace is not allowed:
    see `ptrace_problem`). A signal that arrived while the thread was stopped is handed
    back to it on detach."""
    try:
        _ptrace(_PTRACE_SEIZE, tid)
    except OSError as exc:
        why = ptrace_problem() or exc.strerror
        raise MachineError(f"cannot trace thread {tid} of QEMU: {why}") from None
    pending = 0
    try:
        _ptrace(_PTRACE_INTERRUPT, tid)
        _, status = os.waitpid(tid, _WALL)
        if not os.WIFSTOPPED(status):
            raise MachineError(f"thread {tid} of QEMU ended instead of stopping")
        if status >> 16 != _PTRACE_EVENT_STOP and os.WSTOPSIG(status) != signal.SIGTRAP:
            pending = os.WSTOPSIG(status)  # a signal-delivery stop: the signal goes on
        regs = _UserRegs()
        _ptrace(_PTRACE_GETREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(regs)))
        before = {name: int(getattr(regs, name)) for name in USER_REGS}
        for name, value in change(before).items():
            setattr(regs, name, value & (2**64 - 1))
        _ptrace(_PTRACE_SETREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(regs)))
        back = _UserRegs()
        _ptrace(_PTRACE_GETREGS, tid, 0, ctypes.c_void_p(ctypes.addressof(back)))
        return before, {name: int(getattr(back, name)) for name in USER_REGS}
    except OSError as exc:
        raise MachineError(f"ptrace of thread {tid} of QEMU failed: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):  # a thread that died has nothing to detach
            _ptrace(_PTRACE_DETACH, tid, 0, pending)


class ProcessMemory:
    """The address space of a running process (root, or its parent under Yama <= 1)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _text(self, name: str) -> str:
        try:
            return Path(f"/proc/{self.pid}/{name}").read_text()
        except OSError as exc:
            raise MachineError(f"cannot read /proc/{self.pid}/{name}: {exc.strerror}") from None

    def maps(self) -> str:
        """`/proc/PID/maps`."""
        return self._text("maps")

    def smaps(self) -> str:
        """`/proc/PID/smaps` (resident sizes per mapping)."""
        return self._text("smaps")

    def pagemap(self, start: int, end: int) -> bytes:
        """The pagemap entries (8 bytes per 4 KiB page) of host addresses [start, end)."""
        try:
            fd = os.open(f"/proc/{self.pid}/pagemap", os.O_RDONLY)
        except OSError as exc:
            raise MachineError(f"cannot read the pagemap of QEMU: {exc.strerror}") from None
        try:
            return os.pread(fd, (end - start) // 4096 * 8, start // 4096 * 8)
        finally:
            os.close(fd)

    def read(self, address: int, size: int) -> bytes:
        """`size` bytes at host address `address`."""
        return self._io(address, size, None)

    def write(self, address: int, data: bytes) -> None:
        """Write `data` at host address `address`."""
        self._io(address, len(data), data)

    def _io(self, address: int, size: int, data: bytes | None) -> bytes:
        flags = os.O_RDONLY if data is None else os.O_RDWR
        try:
            fd = os.open(f"/proc/{self.pid}/mem", flags)
        except OSError as exc:
            raise MachineError(f"cannot open the memory of QEMU: {exc.strerror}") from None
        try:
            if data is None:
                got = os.pread(fd, size, address)
            else:
                got = data[: os.pwrite(fd, data, address)]
        except OSError as exc:
            raise MachineError(f"QEMU memory at {address:#x}: {exc.strerror}") from None
        finally:
            os.close(fd)
        if len(got) != size:
            raise MachineError(f"QEMU memory at {address:#x}: {len(got)} of {size} bytes")
        return got
