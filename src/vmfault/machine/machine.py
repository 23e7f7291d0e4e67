"""One QEMU virtual machine: its process, QMP, gdbstub, console, guest channel and snapshots.

`Machine` is a context manager that always terminates and reaps QEMU and removes its run
directory, whatever happens inside the `with` block. All control channels are Unix sockets
in a private 0700 directory; vmfault listens and QEMU connects. The console log and QEMU's
own output live there too, unless `$VMFAULT_LOG_DIR` names a directory that keeps them.

Concurrency model: there are no background threads. QMP events, console bytes and channel
frames are read by an event loop that runs while the caller waits (`wait`, `expect`,
`Channel.wait`, `wait_event`, `wait_stop`, `qmp`). The gdbstub is used synchronously on its
own socket, because a register flip must cost well under a millisecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import functools
import hashlib
import itertools
import logging
import mmap
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import termios
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, Self

from qemu.qmp import EventListener, ExecuteError, QMPClient
from qemu.qmp import QMPError as _QMPLibError

from vmfault.arch import Platform
from vmfault.errors import (
    LaunchError,
    MachineError,
    MachineTimeoutError,
    QMPError,
    RestoreMismatchError,
    SnapshotError,
    StateError,
    UsageError,
)
from vmfault.machine import run
from vmfault.machine.accel import resolve_accel
from vmfault.machine.channel import Channel
from vmfault.machine.config import (
    LOG_DIR_ENV,
    SCRATCH_NODE,
    Accel,
    MachineConfig,
    SocketPaths,
    guest_tsc_khz,
    host_tsc_khz,
    qemu_argv,
)
from vmfault.machine.console import Console
from vmfault.machine.cowram import CowRam
from vmfault.machine.disks import GuestDisk, ImageFormat, prepare_disk_files, tap_socket
from vmfault.machine.gdbstub import GdbStub, StopReason, StopReply
from vmfault.machine.memmap import MemoryMap, parse_mtree
from vmfault.machine.nbd import BlockTap, DiskStore, serve_everything
from vmfault.machine.run import Run
from vmfault.machine.rundir import RunDir, owned_prefix, ram_root, sweep_stale
from vmfault.machine.spawn import spawn_tied

__all__ = [
    "HALT_TIMEOUT_S",
    "KeptLogs",
    "Machine",
    "QMPEvent",
    "Runstate",
    "Snapshot",
    "SnapshotKind",
    "Template",
    "pin_threads",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_RECV_SIZE = 1 << 16
_GDB_READ_CHUNK = 2048
_PMEMSAVE_MIN = 1 << 20
_log_numbers = itertools.count()
_JOB_TIMEOUT_S = 60.0
HALT_TIMEOUT_S = 2.0
"""Seconds a halt waits for the VM to stop."""
_HALT_AT_ONCE_S = 0.05
"""Seconds a halt waits on the gdbstub alone (it answers in ~0.03 ms) before it collects
the console and the channel as it waits."""


class Runstate(enum.Enum):
    """Lifecycle of a `Machine`."""

    IDLE = "idle"
    """Not launched yet."""
    RUNNING = "running"
    """QEMU is up and every channel is connected (the guest itself may be halted)."""
    DEAD = "dead"
    """QEMU exited on its own (or was killed); `exit_code` says how."""
    CLOSED = "closed"
    """`close()` ran: QEMU is reaped and the run directory removed."""


@dataclass(frozen=True)
class QMPEvent:
    """One QMP event. `guest_time_s` is QEMU's timestamp; `host_time_s` is monotonic."""

    name: str
    data: Mapping[str, Any]
    qemu_time_s: float
    host_time_s: float


class SnapshotKind(enum.Enum):
    """Where a snapshot lives."""

    INTERNAL = "internal"
    """Inside the scratch qcow2 drive of this QEMU process (HMP savevm/loadvm)."""
    TEMPLATE = "template"
    """A template's: device state in the snapshot drive, RAM in the template's RAM file
    (`Machine.save_template`), which this machine maps copy-on-write."""


@dataclass(frozen=True)
class Snapshot:
    """A saved machine state, with what is needed to verify a restore.

    `registers` are the vCPU registers at save time; `ram_digests` maps guest-physical
    (start, size) ranges to their SHA-256 at save time.
    """

    name: str
    kind: SnapshotKind
    registers: Mapping[str, int]
    ram_digests: Mapping[tuple[int, int], str] = field(default_factory=dict)
    instructions: int | None = None
    """The guest instruction count at save time (deterministic mode only)."""


@dataclass(frozen=True)
class Template:
    """A machine's state saved so that new machines start from it in milliseconds.

    `ram` is guest RAM as a file (guest-physical address = file offset) that clones map
    copy-on-write and never write; `drive` is a qcow2 file whose internal snapshot
    `snapshot.name` holds the device state only (`x-ignore-shared`).
    """

    ram: Path
    drive: Path
    snapshot: Snapshot
    ram_mib: int
    disks: tuple[GuestDisk, ...] = ()
    """The machine's disks as they were at the snapshot, each a raw image in the template's
    directory (clones serve them through taps of their own, never writing them)."""


def _tail(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


@dataclass(frozen=True)
class KeptLogs:
    """A machine's log files in `$VMFAULT_LOG_DIR`, which outlive the machine."""

    console: Path
    """Every byte of the serial console."""
    qemu: Path
    """QEMU's own stdout and stderr."""


def _keep_logs(name: str) -> KeptLogs | None:
    """New, empty, owner-only log files for machine `name` in `$VMFAULT_LOG_DIR` (created
    0700 if missing), named after the machine, this process and a counter; None if unset."""
    value = os.environ.get(LOG_DIR_ENV, "")
    if not value:
        return None
    directory = Path(value)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(
            f"cannot create the log directory {directory}: {exc.strerror}",
            hint=f"set {LOG_DIR_ENV} to a writable directory, or unset it",
        ) from exc
    stem = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
    while True:
        base = f"{stem}-{os.getpid()}-{next(_log_numbers)}"
        logs = KeptLogs(directory / f"{base}.console.log", directory / f"{base}.qemu.log")
        created: list[Path] = []
        try:
            for path in (logs.console, logs.qemu):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
                created.append(path)
        except FileExistsError:
            # A process that had this pid before left its logs: take the next number.
            for path in created:
                path.unlink()
            continue
        except OSError as exc:
            for path in created:
                path.unlink()
            raise UsageError(
                f"cannot create log files in {directory}: {exc.strerror}",
                hint=f"set {LOG_DIR_ENV} to a writable directory, or unset it",
            ) from exc
        return logs


class Machine:
    """A QEMU guest under vmfault's control.

    Use as a context manager::

        with Machine(config) as vm:        # launched, guest running
            vm.console.expect("login:", timeout_s=10)
            vm.gdb.halt()
            vm.gdb.write_register("rax", 0)
    """

    def __init__(self, config: MachineConfig, *, name: str = "vm") -> None:
        self.config = config
        self.name = name
        self.runstate = Runstate.IDLE
        self.accel: Accel | None = None
        self.accel_reason = ""
        self.argv: list[str] = []
        self.exit_code: int | None = None
        self.events: list[QMPEvent] = []
        self.stops: list[StopReply] = []
        self.ran_s = 0.0
        """Host seconds the guest ran under run control (`run_for`, `run_to`, ...) so far:
        its running time, standing still while the debugger holds it."""
        self.qemu_output = ""
        """The end of QEMU's own stdout/stderr, read when it exits."""
        self.qemu_log: Path | None = None
        """The file QEMU's stdout/stderr go to (in the run directory or `kept_logs`)."""
        self.kept_logs: KeptLogs | None = None
        """The log files kept in `$VMFAULT_LOG_DIR`, if it was set at launch."""
        self._console_copy: BinaryIO | None = None
        self._run_dir: RunDir | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._pidfd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        self._qmp: QMPClient | None = None
        self._event_task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self._sockets: dict[str, socket.socket] = {}
        self._gdb: GdbStub | None = None
        self._console: Console | None = None
        self._channel: Channel | None = None
        self._memory_map: MemoryMap | None = None
        self._watching_gdb = False
        self._cow: CowRam | None = None
        self._vcpu_stats: tuple[Path, ...] | None = None
        self._loaded_at: int | None = None
        """`len(events)` at the last loadvm of a machine with pflash devices (-M virt),
        until it is known to have started since (see `_start_after_load`)."""
        self._taps: dict[str, BlockTap] = {}
        self._jobs = itertools.count()

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> Self:
        self.launch()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _require(self, *states: Runstate) -> None:
        if self.runstate not in states:
            required = " or ".join(s.value for s in states)
            raise StateError(
                f"machine {self.name} is {self.runstate.value}, needs {required}",
                state=self.runstate.value,
                required=required,
            )

    def launch(self, *, start: bool = True, timeout_s: float = 30.0) -> None:
        """Start QEMU and connect QMP, gdbstub, console and channel.

        With `start`, the guest then runs; otherwise it stays halted at its first
        instruction (or at the restored state of `config.incoming`). If this call fails,
        QEMU is killed and the run directory removed before the error propagates.
        Raises LaunchError (with the command line and QEMU's output) or UsageError.
        """
        self._require(Runstate.IDLE)
        try:
            self._launch(start=start, timeout_s=timeout_s)
        except BaseException:
            self.close()
            raise

    def _launch(self, *, start: bool, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self.accel, self.accel_reason = resolve_accel(self.config)
        if self.accel_reason:
            logger.info("%s", self.accel_reason)
        run_dir = self._run_dir = RunDir()
        kept = self.kept_logs = _keep_logs(self.name)
        paths = SocketPaths(
            qmp=run_dir / "qmp.sock",
            gdb=run_dir / "gdb.sock",
            console=run_dir / "console.sock",
            channel=run_dir / "channel.sock",
        )
        listeners = {
            key: _listen(getattr(paths, key)) for key in ("qmp", "gdb", "console", "channel")
        }
        scratch = run_dir / "scratch.qcow2"
        if self.config.snapshot_drive is not None:
            shutil.copyfile(self.config.snapshot_drive, scratch)
        else:
            _make_qcow2(scratch, self.config.snapshot_drive_mib)
        self._start_taps(run_dir.path)
        tsc_khz = guest_tsc_khz(self.config, self.accel, _host_tsc_khz())
        self.argv = qemu_argv(self.config, self.accel, paths, scratch, tsc_khz=tsc_khz)
        qemu_log = self.qemu_log = (run_dir / "qemu.log") if kept is None else kept.qemu
        try:
            fds = () if self.config.nic is None else (self.config.nic.fd,)
            self._process = spawn_tied(self.argv, output=qemu_log, pass_fds=fds)
        except OSError as exc:
            raise LaunchError(
                f"cannot run {self.argv[0]}: {exc.strerror}",
                argv=self.argv,
                exit_code=None,
                output="",
                hint="install QEMU with `make setup` (Debian package "
                f"{self.config.arch.platform.qemu_package})",
            ) from exc
        self._pidfd = os.pidfd_open(self._process.pid)
        pin_threads(self._process.pid, self.config.host_cpus)
        try:
            self._sockets = self._accept_all(listeners, deadline, qemu_log)
        finally:
            for listener in listeners.values():
                listener.close()
        self._loop = asyncio.new_event_loop()
        self._wakeup = asyncio.Event()
        if kept is None:
            console_log = self.config.console_log or (run_dir / "console.log")
        elif self.config.console_log is None:
            console_log = kept.console
        else:
            console_log = self.config.console_log
            self._console_copy = kept.console.open("ab", buffering=0)
        self._console = Console(console_log, self.wait)
        self._channel = Channel(self.wait)
        self._loop.add_reader(self._sockets["console"].fileno(), self._on_console)
        self._loop.add_reader(self._sockets["channel"].fileno(), self._on_channel)
        self._loop.add_reader(self._pidfd, self._on_process_exit)
        self._run(self._connect_qmp(self._sockets.pop("qmp")), deadline)
        self.runstate = Runstate.RUNNING
        pin_threads(self._process.pid, self.config.host_cpus)  # the vCPU threads exist now
        if self.config.incoming is not None:
            # Before the gdbstub handshake: a debug stop while QEMU is still in the
            # `inmigrate` state would be an invalid transition that aborts QEMU.
            self._incoming(self.config.incoming, deadline)
        ram_file = self.config.ram_file
        if ram_file is not None and not ram_file.shared:
            self._cow = CowRam(self._process.pid, ram_file.path)
        if self.config.loadvm is not None:
            self._ignore_shared_ram()
            for tap in self._taps.values():
                tap.save(self.config.loadvm)  # the template's contents: nothing written yet
            self._loadvm(self.config.loadvm)
            self._undo_rom_writes()
        self._gdb = GdbStub(self._sockets["gdb"])
        self._gdb.handshake(timeout_s=max(0.1, deadline - time.monotonic()))
        if start:
            self.cont()

    def _accept_all(
        self, listeners: dict[str, socket.socket], deadline: float, qemu_log: Path
    ) -> dict[str, socket.socket]:
        accepted: dict[str, socket.socket] = {}
        with selectors.DefaultSelector() as selector:
            for key, listener in listeners.items():
                selector.register(listener, selectors.EVENT_READ, key)
            selector.register(self._pidfd, selectors.EVENT_READ, "process")
            while len(accepted) < len(listeners):
                remaining = deadline - time.monotonic()
                ready = selector.select(max(0.0, remaining)) if remaining > 0 else []
                if not ready:
                    raise LaunchError(
                        "QEMU did not connect its control sockets in time",
                        argv=self.argv,
                        exit_code=None,
                        output=_tail(qemu_log),
                    )
                for ready_key, _ in ready:
                    if ready_key.data == "process":
                        assert self._process is not None
                        code = self._process.wait()
                        raise LaunchError(
                            f"QEMU exited with status {code} during start-up",
                            argv=self.argv,
                            exit_code=code,
                            output=_tail(qemu_log),
                            hint="see the QEMU output above",
                        )
                    conn, _ = listeners[ready_key.data].accept()
                    accepted[ready_key.data] = conn
                    selector.unregister(listeners[ready_key.data])
        for conn in accepted.values():
            conn.setblocking(True)
        for key in ("console", "channel"):
            accepted[key].setblocking(False)
        return accepted

    async def _connect_qmp(self, sock: socket.socket) -> None:
        client = QMPClient(self.name)
        listener = EventListener()
        client.register_listener(listener)
        await client.connect(sock)
        self._qmp = client
        self._event_task = asyncio.get_running_loop().create_task(self._pump_events(listener))

    async def _pump_events(self, listener: EventListener) -> None:
        while True:
            message = await listener.get()
            stamp: dict[str, Any] = message.get("timestamp", {})  # type: ignore[assignment]
            data: dict[str, Any] = message.get("data", {})  # type: ignore[assignment]
            event = QMPEvent(
                name=str(message["event"]),
                data=dict(data),
                qemu_time_s=float(stamp.get("seconds", 0))
                + float(stamp.get("microseconds", 0)) / 1e6,
                host_time_s=time.monotonic(),
            )
            self.events.append(event)
            logger.debug("%s: event %s %s", self.name, event.name, event.data)
            self._wake()

    def close(self) -> None:
        """Terminate and reap QEMU, close every socket and remove the run directory
        (`kept_logs` stay).

        Safe to call in any state and more than once; never raises for a dead QEMU.
        """
        if self.runstate is Runstate.CLOSED:
            return
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
            self.exit_code = process.wait()
        if self._gdb is not None:
            self._gdb.close()
        for tap in self._taps.values():
            tap.close()
        self._taps.clear()
        loop, self._loop = self._loop, None
        if loop is not None:
            self._close_loop(loop)
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        if self._cow is not None:
            self._cow.close()
            self._cow = None
        if self._console is not None:
            self._console.close()
        if self._console_copy is not None:
            self._console_copy.close()
            self._console_copy = None
        if self._run_dir is not None:
            self._run_dir.close()
        self.runstate = Runstate.CLOSED

    def _close_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(Exception):
            for fd in (self._pidfd, *(s.fileno() for s in self._sockets.values())):
                if fd >= 0:
                    loop.remove_reader(fd)
        if self._qmp is not None:
            with contextlib.suppress(Exception):
                loop.run_until_complete(asyncio.wait_for(self._qmp.disconnect(), 1.0))
        with contextlib.suppress(Exception):
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    # ----------------------------------------------------------------- accessors

    @property
    def platform(self) -> Platform:
        """The guest architecture's facts (register names, address layout)."""
        return self.config.arch.platform

    def user_mode(self) -> bool:
        """Whether the halted vCPU runs user code (CPL 3 on x86-64, EL0 on aarch64)."""
        platform = self.platform
        return platform.is_user(self.gdb.read_register(platform.privilege))

    @property
    def gdb(self) -> GdbStub:
        """The gdbstub client (halt, continue, registers, memory, breakpoints)."""
        if self._gdb is None:
            raise StateError("machine not launched", state=self.runstate.value, required="running")
        return self._gdb

    @property
    def console(self) -> Console:
        """The serial console: transcript, log file, expect."""
        if self._console is None:
            raise StateError("machine not launched", state=self.runstate.value, required="running")
        return self._console

    @property
    def channel(self) -> Channel:
        """Frames the guest sent over the debugcon channel."""
        if self._channel is None:
            raise StateError("machine not launched", state=self.runstate.value, required="running")
        return self._channel

    @property
    def pid(self) -> int | None:
        """QEMU's process id while it runs."""
        return None if self._process is None else self._process.pid

    @property
    def alive(self) -> bool:
        """True while the QEMU process exists. Once it is seen gone, `exit_code` and
        `qemu_output` tell how it ended, even before the event loop has noticed."""
        if self._process is None:
            return False
        code = self._process.poll()
        if code is None:
            return True
        if self.exit_code is None:
            self.exit_code = code
            self.qemu_output = self.qemu_output or _tail(self.qemu_log)
        return False

    @property
    def run_dir(self) -> Path:
        """The private directory of this machine (removed on close)."""
        if self._run_dir is None:
            raise StateError("machine not launched", state=self.runstate.value, required="running")
        return self._run_dir.path

    # ----------------------------------------------------------------- event loop

    def _wake(self) -> None:
        if self._wakeup is not None:
            self._wakeup.set()

    def _drain(self, key: str, sink: Callable[[bytes], None]) -> None:
        sock = self._sockets.get(key)
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                if self._loop is not None:
                    self._loop.remove_reader(sock.fileno())
                return
            sink(data)
            self._wake()

    def _feed_console(self, data: bytes) -> None:
        self.console.feed(data)
        if self._console_copy is not None:
            self._console_copy.write(data)

    def _on_console(self) -> None:
        self._drain("console", self._feed_console)

    def _on_channel(self) -> None:
        self._drain("channel", self.channel.feed)

    def _on_process_exit(self) -> None:
        if self._loop is not None and self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
        self._flush_io()  # what QEMU wrote before it died is still in the sockets
        if self._process is not None:
            self.exit_code = self._process.wait()
        self.runstate = Runstate.DEAD
        self.qemu_output = _tail(self.qemu_log)
        logger.info("%s: QEMU exited with status %s", self.name, self.exit_code)
        self._wake()

    def _on_gdb_readable(self) -> None:
        try:
            stop = self.gdb.poll_stop()
        except MachineError:  # the stub's connection ended: QEMU is going away
            self._unwatch_gdb()
            self._wake()
            return
        if stop is not None:
            self.stops.append(stop)
            self._unwatch_gdb()
            self._wake()

    def _watch_gdb(self) -> None:
        gdb = self._gdb
        if not self._watching_gdb and self._loop is not None and gdb is not None and gdb.running:
            self._loop.add_reader(gdb.fileno(), self._on_gdb_readable)
            self._watching_gdb = True

    def _unwatch_gdb(self) -> None:
        if self._watching_gdb and self._loop is not None:
            self._loop.remove_reader(self.gdb.fileno())
            self._watching_gdb = False

    def _run(self, coro: Any, deadline: float | None = None) -> Any:
        loop = self._loop
        if loop is None:
            raise StateError("machine not launched", state=self.runstate.value, required="running")
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def wait(self, done: Callable[[], bool], timeout_s: float | None) -> bool:
        """Run the machine's I/O until `done()` is true; False if `timeout_s` passes first.

        While waiting, console bytes, channel frames, QMP events, gdbstub stop replies and
        QEMU's exit are all collected. `done` is checked after each of them.
        """
        if done():
            return True
        if self._loop is None or self._wakeup is None:
            raise StateError("machine not launched", state=self.runstate.value, required="running")
        wakeup = self._wakeup

        async def until_done() -> bool:
            while True:
                wakeup.clear()
                if done():
                    return True
                if self.runstate is Runstate.DEAD:
                    return False
                await wakeup.wait()

        self._watch_gdb()
        try:
            return bool(self._loop.run_until_complete(asyncio.wait_for(until_done(), timeout_s)))
        except TimeoutError:
            return done()
        finally:
            self._unwatch_gdb()

    def wait_event(
        self, names: str | Iterable[str], *, timeout_s: float | None, since: int = 0
    ) -> QMPEvent | None:
        """The first QMP event named in `names` at index >= `since`; None on timeout."""
        wanted = {names} if isinstance(names, str) else set(names)
        found: list[QMPEvent] = []

        def done() -> bool:
            for event in self.events[since:]:
                if event.name in wanted:
                    found.append(event)
                    return True
            return False

        self.wait(done, timeout_s)
        return found[0] if found else None

    def wait_stop(self, *, timeout_s: float | None) -> StopReply | None:
        """Wait until the running guest stops (breakpoint, watchpoint, panic, ...), collecting
        console, channel and events meanwhile. Returns None on timeout (guest still running)."""
        before = len(self.stops)
        if not self.gdb.running:
            return self.stops[-1] if self.stops else None
        self.wait(lambda: len(self.stops) > before or self.runstate is Runstate.DEAD, timeout_s)
        return self.stops[-1] if len(self.stops) > before else None

    # ----------------------------------------------------------------- control

    def cont(self) -> None:
        """Let the guest run (through the gdbstub, which owns the run state)."""
        self._require(Runstate.RUNNING)
        self.gdb.cont()

    def halt(self) -> StopReply:
        """Stop the guest; returns the stop reply (a no-op if already halted).

        MachineTimeoutError if the VM does not stop within HALT_TIMEOUT_S. A vCPU blocked
        writing to the console socket does not stop it for good: aarch64's PL011 writes
        each byte with a blocking write that holds QEMU's global lock, so while the socket
        is full (a guest flooding its console) QEMU cannot take the interrupt; a halt that
        is not answered at once collects console, channel and events while it waits.
        """
        self._require(Runstate.RUNNING)
        gdb = self.gdb
        if not gdb.running:
            return gdb.halt()
        # An unsolicited stop reply may already be queued on the socket.
        stop = gdb.poll_stop()
        if stop is not None:
            self.stops.append(stop)
            return stop
        try:
            return gdb.halt(timeout_s=_HALT_AT_ONCE_S)
        except MachineTimeoutError:
            pass  # the interrupt is sent: its stop reply comes once QEMU's main loop runs
        before = len(self.stops)
        self.wait(lambda: len(self.stops) > before or self.runstate is Runstate.DEAD,
                  HALT_TIMEOUT_S)  # fmt: skip
        if len(self.stops) == before:
            if self.runstate is Runstate.DEAD:
                raise MachineError(f"QEMU exited (status {self.exit_code}) while halting")
            raise MachineTimeoutError("the VM did not halt", timeout_s=HALT_TIMEOUT_S)
        stop = self.stops[-1]
        if stop.reason is StopReason.INTERRUPT:
            self.stops.pop()  # the halt's own stop, not one the guest made
        return stop

    def run_for(self, seconds: float, *, precise: bool = False) -> Run:
        """Let the guest run `seconds` of host time or until it stops (`run.run_for`)."""
        self._require(Runstate.RUNNING, Runstate.DEAD)
        return run.run_for(self, seconds, precise=precise)

    def await_stop(
        self, timeout_s: float | None, *, goal: int | None = None, halt: bool = True
    ) -> Run | None:
        """Wait for the running guest to stop (`run.await_stop`)."""
        self._require(Runstate.RUNNING, Runstate.DEAD)
        return run.await_stop(self, timeout_s, goal=goal, halt=halt)

    def run_to(self, address: int, *, timeout_s: float | None) -> Run:
        """Run until the vCPU reaches virtual `address`, at most `timeout_s` (`run.run_to`)."""
        self._require(Runstate.RUNNING, Runstate.DEAD)
        return run.run_to(self, address, timeout_s=timeout_s)

    def run_until(
        self,
        condition: Callable[[], bool],
        *,
        timeout_s: float,
        slice_s: float,
        slices: int | None = None,
    ) -> Run:
        """Run in slices until `condition()` holds (`run.run_until`)."""
        self._require(Runstate.RUNNING, Runstate.DEAD)
        return run.run_until(self, condition, timeout_s=timeout_s, slice_s=slice_s, slices=slices)

    def step_until(self, condition: Callable[[], bool], *, steps: int) -> Run:
        """Single-step until `condition()` holds, at most `steps` (`run.step_until`)."""
        self._require(Runstate.RUNNING)
        return run.step_until(self, condition, steps=steps)

    def send_console(self, data: bytes, *, timeout_s: float = 5.0) -> None:
        """Type `data` on the serial console: the guest reads it as input. Bytes the guest
        has not read yet wait in the console's socket (see `unread_console_input`).
        MachineTimeoutError if QEMU takes none of it for `timeout_s`."""
        self._require(Runstate.RUNNING)
        sock = self._sockets["console"]
        view = memoryview(data)
        deadline = time.monotonic() + timeout_s
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE)
            while view:
                try:
                    view = view[sock.send(view) :]
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0 or not selector.select(left):
                        raise MachineTimeoutError(
                            f"the console of {self.name} took no input for {timeout_s:g} s",
                            timeout_s=timeout_s,
                        ) from None

    def drop_console_input(self, *, timeout_s: float = 5.0) -> None:
        """Drop console input QEMU has not read yet: its console is given a fresh socket
        (QMP `chardev-change`). With the guest halted and then restored, no byte typed
        before the restore reaches the restored guest (bytes QEMU already read are in the
        device's state, which the restore replaces). Console output is kept."""
        self._require(Runstate.RUNNING)
        if self.unread_console_input() <= 0:
            return
        self.halt()
        self._flush_io()
        path = self.run_dir / f"console-{next(_log_numbers)}.sock"
        listener = _listen(path)
        try:
            address = {"type": "unix", "data": {"path": str(path)}}
            backend = {"type": "socket", "data": {"addr": address, "server": False}}
            self.qmp("chardev-change", {"id": "vmf-con", "backend": backend})
            with selectors.DefaultSelector() as selector:
                selector.register(listener, selectors.EVENT_READ)
                if not selector.select(timeout_s):
                    raise MachineTimeoutError(
                        f"QEMU did not connect the new console of {self.name}",
                        timeout_s=timeout_s,
                    )
            conn, _ = listener.accept()
        finally:
            listener.close()
            path.unlink(missing_ok=True)
        conn.setblocking(False)
        old = self._sockets["console"]
        if self._loop is not None:
            with contextlib.suppress(ValueError, KeyError):
                self._loop.remove_reader(old.fileno())
            self._loop.add_reader(conn.fileno(), self._on_console)
        old.close()
        self._sockets["console"] = conn

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Schedule `coroutine` on the machine's event loop. It runs whenever the machine's
        I/O is pumped (any wait on it, from whichever thread waits) and is cancelled when
        the machine closes. Call it while no other thread pumps the machine."""
        if self._loop is None:
            raise StateError("machine not launched", state=self.runstate.value, required="running")
        return self._loop.create_task(coroutine)

    def unread_console_input(self) -> int:
        """Bytes typed on the console (`send_console`) that QEMU has not read yet."""
        sock = self._sockets.get("console")
        if sock is None:
            return 0
        buffer = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        return int.from_bytes(buffer, "little", signed=True)

    def qmp(
        self,
        command: str,
        arguments: Mapping[str, object] | None = None,
        *,
        timeout_s: float = 30.0,
    ) -> Any:
        """Execute one QMP command and return its result; raises QMPError if it fails."""
        self._require(Runstate.RUNNING)
        assert self._qmp is not None
        try:
            return self._run(self._qmp.execute(command, arguments), time.monotonic() + timeout_s)
        except ExecuteError as exc:
            raise QMPError(
                f"QMP {command} failed: {exc.error.error.desc}", command=command
            ) from exc
        except (_QMPLibError, OSError, EOFError) as exc:
            raise QMPError(f"QMP {command} failed: {exc}", command=command) from exc
        except TimeoutError as exc:
            raise MachineTimeoutError(
                f"QMP {command} took over {timeout_s} s", timeout_s=timeout_s
            ) from exc

    def hmp(self, command_line: str, *, timeout_s: float = 30.0) -> str:
        """Run a human monitor command through QMP and return its text output."""
        return str(
            self.qmp("human-monitor-command", {"command-line": command_line}, timeout_s=timeout_s)
        )

    def vcpu_s(self) -> float:
        """CPU seconds QEMU's vCPU threads have had so far, as the host's scheduler counts
        them: how much the guest could run. A loaded host stretches the wall time a run
        takes far more than this (measured on checksum at a load of 8 on 2 cores: runs
        spread 2.0x in wall time, 0.6x in vCPU time). 0.0 when QEMU is gone."""
        if self._vcpu_stats is None:
            pid = self.pid
            if pid is None:
                return 0.0
            threads = [int(cpu["thread-id"]) for cpu in self.qmp("query-cpus-fast")]
            self._vcpu_stats = tuple(Path(f"/proc/{pid}/task/{t}/schedstat") for t in threads)
        try:
            return sum(int(path.read_text().split()[0]) for path in self._vcpu_stats) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0

    def instruction_count(self) -> int | None:
        """Guest instructions executed so far (deterministic mode); None otherwise."""
        if not self.config.deterministic:
            return None
        return int(self.qmp("query-replay")["icount"])

    # ----------------------------------------------------------------- memory

    def memory_map(self) -> MemoryMap:
        """The guest-physical memory map from QEMU's own memory tree (cached)."""
        if self._memory_map is None:
            self._memory_map = parse_mtree(self.hmp("info mtree -f"))
        return self._memory_map

    def read_physical(self, address: int, size: int) -> bytes:
        """Read guest-physical memory; large reads go through a QMP dump (the guest halts)."""
        if size < _PMEMSAVE_MIN:
            self.halt()
            return self.gdb.read_memory(address, size, physical=True)
        path = self.run_dir / "pmem.bin"
        try:
            self.qmp("pmemsave", {"val": address, "size": size, "filename": str(path)})
            return path.read_bytes()
        finally:
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _dump_physical(self, address: int, size: int) -> Iterator[mmap.mmap]:
        """Guest-physical memory dumped by QEMU (pmemsave) into a file in the RAM root,
        mapped read-only; the file is removed on exit (or by the next sweep of the RAM root,
        if this process is killed meanwhile)."""
        root = ram_root()
        sweep_stale(root)
        with tempfile.NamedTemporaryFile(dir=root, prefix=owned_prefix() + "dump-") as dump:
            self.qmp("pmemsave", {"val": address, "size": size, "filename": dump.name})
            with mmap.mmap(dump.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                yield mapped

    def ram_digest(self, address: int, size: int) -> str:
        """SHA-256 (hex) of a guest-physical range."""
        return hashlib.sha256(self.read_physical(address, size)).hexdigest()

    # ----------------------------------------------------------------- snapshots

    def _flush_io(self) -> None:
        # With the guest halted QEMU writes nothing more, and every byte it wrote so far
        # is already in our socket buffers: read them now so they belong to the old timeline.
        self._drain("console", self._feed_console)
        self._drain("channel", self.channel.feed)

    def save_snapshot(
        self, name: str, *, verify_ranges: Sequence[tuple[int, int]] = ()
    ) -> Snapshot:
        """Save the whole machine state internally (qcow2) under `name`, the disks'
        contents with it (each in its overlay).

        Halts the guest and leaves it halted. Records the registers and the SHA-256 of each
        guest-physical (start, size) range in `verify_ranges`, for `restore_snapshot(verify=True)`.
        """
        self.halt()
        registers = self.gdb.read_registers()
        digests = {(start, size): self.ram_digest(start, size) for start, size in verify_ranges}
        instructions = self.instruction_count()
        self._quiet_taps()
        self._savevm(_snapshot_name(name))
        return Snapshot(name, SnapshotKind.INTERNAL, registers, digests, instructions)

    def restore_snapshot(self, snapshot: Snapshot, *, verify: bool = False) -> None:
        """Restore `snapshot`; the guest is left halted at the saved state.

        Console and channel output from before the restore is read first (it stays in the
        transcript; the channel's frames are cleared). Every disk gets the contents it had
        when the snapshot was saved: its tap lets held requests go on and serves every
        request again (`disk_tap`), then loads the snapshot with the machine state. With `verify`,
        the registers and the recorded RAM digests are compared to the saved ones and
        SnapshotError names every difference.
        """
        self.halt()
        self._flush_io()
        self._leave_shutdown()
        self._quiet_taps()
        if snapshot.kind is SnapshotKind.TEMPLATE:
            if self._cow is None:
                raise SnapshotError(
                    f"snapshot {snapshot.name} is a template's, and this machine's RAM "
                    "is not a clone of it"
                )
            # RAM first, then loadvm: its post-load drops every translated block, so no
            # code translated from the pages written back survives (and devices that read
            # guest RAM as they load, virtio queues, read the template's).
            self._cow.reset()
        self._loadvm(_snapshot_name(snapshot.name))
        if snapshot.kind is SnapshotKind.TEMPLATE:
            self._undo_rom_writes()
        self.channel.clear()
        self.console.skip()
        if verify:
            self.verify_snapshot(snapshot)

    def _undo_rom_writes(self) -> None:
        # loadvm begins with a machine reset, which writes the ROM images QEMU placed in RAM
        # back into it: on -M virt without -kernel, the device tree at the base of RAM
        # (measured: 8 pages and more differ from the template after a clone's loadvm). The
        # vCPU has not run since loadvm's post-load queued its flush of translated code, so
        # copying those pages back now is as safe as before it. x86 microvm's reset writes
        # no RAM (a verified restore compares all of it), and a second pass would copy every
        # page the clone ever wrote once more (~4 ms of a 10 ms restore, measured).
        if self._cow is not None and self.config.arch.platform.reset_writes_ram:
            self._cow.reset()

    def _leave_shutdown(self) -> None:
        # A machine paused at a guest reset (an aarch64 panic) has QEMU's status
        # `shutdown`, from which the VM cannot run again without a reset: loadvm leaves the
        # status alone, so the reset comes first (shutdown -> prelaunch; it writes QEMU's
        # ROM images into RAM, which the restore then puts back). Under the action
        # reboot=shutdown a reset request is a shutdown again, so the action is reset for it.
        if not self.config.pauses_on_reset or self.qmp("query-status")["status"] != "shutdown":
            return
        since = len(self.events)
        self.qmp("set-action", {"reboot": "reset"})
        try:
            self.qmp("system_reset")
            reset = self.wait_event("RESET", timeout_s=10.0, since=since)
        finally:
            self.qmp("set-action", {"reboot": "shutdown"})
        if reset is None:
            raise SnapshotError("the machine paused at a guest reset did not reset")

    def _start_after_load(self) -> None:
        # QEMU 7.2's pflash devices (two on -M virt) register, in each loadvm's post-load,
        # a run-state handler that removes itself when the VM next starts. A second loadvm
        # before that start registers another in its place, and the start then calls a
        # freed handler: QEMU segfaults (measured: loadvm twice, then `c`). So a machine
        # loaded and not started since (no RESUME event) runs an instant before it loads
        # again; the load that follows puts back whatever that instant changed.
        if self._loaded_at is None:
            return
        self.qmp("query-status")  # every event QEMU sent before this answer is read now
        if not any(e.name == "RESUME" for e in self.events[self._loaded_at :]):
            self.gdb.cont()
            self.halt()
            self._flush_io()
        self._loaded_at = None

    def _ignore_shared_ram(self) -> None:
        # RAM in a shared file is left out of snapshots (the file holds it); a clone
        # needs the capability too, to load a snapshot that has no RAM in it.
        self.qmp(
            "migrate-set-capabilities",
            {"capabilities": [{"capability": "x-ignore-shared", "state": True}]},
        )

    @property
    def ram_written_bytes(self) -> int | None:
        """For a clone of a template: the bytes of RAM it wrote since it started, as of its
        last restore (they are copied back at every restore). None for other machines."""
        return None if self._cow is None else self._cow.written_bytes

    def save_template(self, directory: Path, *, name: str = "template") -> Template:
        """Save this machine as a template in `directory` (a private directory the caller
        owns and removes): device state in a copy of the snapshot drive, RAM in a copy of
        the RAM file. Needs `config.ram_file` shared. Halts the guest and leaves it halted.
        """
        ram_file = self.config.ram_file
        if ram_file is None or not ram_file.shared:
            raise SnapshotError("a template needs guest RAM in a shared file (RamFile shared)")
        if self.config.disks and not self._taps:
            raise SnapshotError(
                "a template needs tapped disks (tap_disks = True): the overlays QEMU serves "
                "itself cannot be shared by clones"
            )
        self.halt()
        registers = self.gdb.read_registers()
        instructions = self.instruction_count()
        self._ignore_shared_ram()
        self._quiet_taps()
        self._savevm(_snapshot_name(name))
        ram = directory / "ram"
        drive = directory / "state.qcow2"
        shutil.copyfile(ram_file.path, ram)
        shutil.copyfile(self.run_dir / "scratch.qcow2", drive)
        ram.chmod(0o400)
        disks = []
        for disk in self.config.disks:
            image = directory / f"disk-{disk.name}.raw"
            self._taps[disk.name].export(image)
            image.chmod(0o400)
            disks.append(GuestDisk(disk.name, disk.size_bytes, image, ImageFormat.RAW))
        snapshot = Snapshot(name, SnapshotKind.TEMPLATE, registers, {}, instructions)
        return Template(ram, drive, snapshot, self.config.ram_mib, tuple(disks))

    def verify_snapshot(self, snapshot: Snapshot) -> None:
        """Compare the current (halted) state with `snapshot`; raise SnapshotError if different."""
        self.halt()
        now = self.gdb.read_registers(snapshot.registers.keys())
        problems = [
            f"{reg}={now.get(reg, -1):#x} (saved {value:#x})"
            for reg, value in snapshot.registers.items()
            if now.get(reg) != value
        ]
        for (start, size), digest in snapshot.ram_digests.items():
            if self.ram_digest(start, size) != digest:
                problems.append(f"RAM {start:#x}+{size:#x} differs")
        if snapshot.kind is SnapshotKind.TEMPLATE and self._cow is not None:
            # Guest RAM, region by region, as QEMU itself reads it (all of it, not just the
            # pages the page map says were written), against the template's file.
            for region in self.memory_map().ram():
                offset = region.offset or 0  # where the region starts in the RAM file
                with self._dump_physical(region.start, region.size) as data:
                    pages = self._cow.differing_pages(offset, data)
                problems += [f"RAM page {region.start + page:#x} differs" for page in pages]
        if problems:
            raise RestoreMismatchError(
                f"restored state differs from snapshot {snapshot.name}: " + ", ".join(problems[:8]),
                hint='restore with loadvm instead (campaign key restore = "loadvm")',
            )

    # ----------------------------------------------------------------- internal snapshots

    def _savevm(self, tag: str) -> None:
        """Save an internal snapshot `tag`: HMP `savevm`, or with tapped disks the
        `snapshot-save` job on the scratch drive and each tap saving its contents."""
        if not self._taps:
            output = self.hmp(f"savevm {tag}").strip()
            if output:
                raise SnapshotError(f"savevm {tag} failed: {output}")
            return
        self._job("snapshot-save", {"tag": tag, "vmstate": SCRATCH_NODE,
                                    "devices": [SCRATCH_NODE]})  # fmt: skip
        for tap in self._taps.values():
            tap.save(tag)

    def _loadvm(self, tag: str) -> None:
        """Load the internal snapshot `tag` (as `_savevm` saved it)."""
        self._start_after_load()
        if not self._taps:
            output = self.hmp(f"loadvm {tag}").strip()
            if output:
                raise SnapshotError(f"loadvm {tag} failed: {output}")
        else:
            self._job("snapshot-load", {"tag": tag, "vmstate": SCRATCH_NODE,
                                        "devices": [SCRATCH_NODE]})  # fmt: skip
            for tap in self._taps.values():
                tap.load(tag)
        if self.config.machine_type == "virt":
            self._loaded_at = len(self.events)

    def _delvm(self, tag: str) -> None:
        """Delete the internal snapshot `tag` everywhere `_savevm` put it."""
        if not self._taps:
            output = self.hmp(f"delvm {tag}").strip()
            if output:
                raise SnapshotError(f"delvm {tag} failed: {output}")
            return
        self._job("snapshot-delete", {"tag": tag, "devices": [SCRATCH_NODE]})
        for tap in self._taps.values():
            tap.delete(tag)

    def _job(self, command: str, arguments: Mapping[str, object]) -> None:
        """Run one QMP job to its end and dismiss it; SnapshotError with the job's error."""
        job = f"vmf-job-{next(self._jobs)}"
        since = len(self.events)
        self.qmp(command, {"job-id": job, **arguments})

        def concluded() -> bool:
            return any(
                e.name == "JOB_STATUS_CHANGE"
                and e.data.get("id") == job
                and e.data.get("status") == "concluded"
                for e in self.events[since:]
            )

        if not self.wait(concluded, _JOB_TIMEOUT_S):
            raise MachineTimeoutError(f"{command} did not finish", timeout_s=_JOB_TIMEOUT_S)
        error = next((j.get("error") for j in self.qmp("query-jobs") if j.get("id") == job), None)
        self.qmp("job-dismiss", {"id": job})
        if error:
            raise SnapshotError(f"{command} {arguments.get('tag')} failed: {error}")

    # ----------------------------------------------------------------- disks

    @property
    def disks(self) -> tuple[GuestDisk, ...]:
        """The machine's virtio disks, in order (vda, vdb, ...)."""
        return self.config.disks

    def _start_taps(self, run_dir: Path) -> None:
        """Make the disks' files and start their taps (before QEMU, which connects to them)."""
        bases = prepare_disk_files(run_dir, self.config.disks, tapped=self.config.tap_disks)
        if not self.config.tap_disks:
            return
        for index, (disk, base) in enumerate(zip(self.config.disks, bases, strict=True)):
            tap = BlockTap(tap_socket(run_dir, index), DiskStore(disk.size_bytes, base))
            self._taps[disk.name] = tap
            tap.start()

    def disk_tap(self, name: str) -> BlockTap:
        """The tap that serves disk `name`: set its policy to fault requests, read and write
        its stored data. A snapshot restore sets it back to serving every request.
        UsageError if the machine has no such disk or its disks are not tapped."""
        tap = self._taps.get(name)
        if tap is None:
            known = ", ".join(d.name for d in self.config.disks) or "none"
            if any(d.name == name for d in self.config.disks):
                raise UsageError(
                    f"disk {name} of machine {self.name} is not tapped, so it takes no faults",
                    hint="start the machine with tap_disks = True",
                )
            raise UsageError(
                f"machine {self.name} has no disk {name!r}", hint=f"its disks: {known}"
            )
        return tap

    def _quiet_taps(self) -> None:
        """Every tap serves every request again, its held requests first."""
        for tap in self._taps.values():
            tap.release()
            tap.set_policy(serve_everything)

    def save_state_file(self, path: Path, *, timeout_s: float = 60.0) -> None:
        """Write the whole machine state to `path` (a migration stream) for a new process
        to start from (`MachineConfig.incoming`). Halts the guest and leaves it halted.
        MachineError for a machine with tapped disks: the file would not carry their
        contents, which live in the taps."""
        if self._taps:
            raise MachineError(
                "a state file cannot carry the contents of tapped disks",
                hint="use snapshots (save_snapshot) with disks",
            )
        self.halt()
        if self.qmp("query-status")["status"] != "paused":
            self._settle_to_paused()
        self.qmp(
            "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
        )
        self.qmp("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        since = len(self.events)
        with path.open("wb") as sink:
            self._pass_fd(sink.fileno(), "vmf-migrate-out")
            self.qmp("migrate", {"uri": "fd:vmf-migrate-out"})
            self._await_migration(since, timeout_s)

    def _settle_to_paused(self) -> None:
        # A state file records QEMU's run state, and an incoming QEMU aborts on any but
        # running/paused ("inmigrate -> debug" after a breakpoint). Only running changes the
        # run state, so: save, run an instant, halt (now "paused"), and load the exact state
        # back; loadvm leaves the run state alone.
        self._savevm("vmf-settle")
        self.gdb.cont()
        self.gdb.halt()
        self._loadvm("vmf-settle")
        self._delvm("vmf-settle")

    def _incoming(self, path: Path, deadline: float) -> None:
        self.qmp(
            "migrate-set-capabilities", {"capabilities": [{"capability": "events", "state": True}]}
        )
        since = len(self.events)
        with path.open("rb") as source:
            self._pass_fd(source.fileno(), "vmf-migrate-in")
            self.qmp("migrate-incoming", {"uri": "fd:vmf-migrate-in"})
            self._await_migration(since, max(0.1, deadline - time.monotonic()))

    def _pass_fd(self, fd: int, name: str) -> None:
        assert self._qmp is not None
        self._qmp.send_fd_scm(fd)
        self.qmp("getfd", {"fdname": name})

    def _await_migration(self, since: int, timeout_s: float) -> None:
        def finished() -> bool:
            return (
                any(
                    e.name == "MIGRATION"
                    and e.data.get("status") in ("completed", "failed", "cancelled")
                    for e in self.events[since:]
                )
                or self.runstate is Runstate.DEAD
            )

        if not self.wait(finished, timeout_s):
            raise MachineTimeoutError(
                f"migration did not finish within {timeout_s} s", timeout_s=timeout_s
            )
        statuses = [e.data.get("status") for e in self.events[since:] if e.name == "MIGRATION"]
        if "completed" not in statuses:
            why = self.qemu_output.strip().splitlines()[-1:] or ["QEMU said nothing"]
            raise SnapshotError(
                f"migration failed (states: {', '.join(map(str, statuses))}): {why[0]}"
            )


@functools.cache
def _host_tsc_khz() -> int | None:
    try:
        return host_tsc_khz(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None


def _snapshot_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name):
        raise SnapshotError(f"invalid snapshot name {name!r}: use letters, digits, - _ .")
    return name


def _listen(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(1)
    sock.setblocking(False)
    return sock


def _make_qcow2(path: Path, size_mib: int) -> None:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", str(path), f"{size_mib}M"]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise MachineError("qemu-img is not installed", hint="run `make setup`") from exc
    if result.returncode != 0:
        raise MachineError(
            f"qemu-img could not create the snapshot drive: {result.stderr.strip()}",
            hint="install qemu-utils with `make setup`",
        )


def pin_threads(pid: int, cpus: Sequence[int]) -> None:
    """Pin every thread of process `pid` to the host cores `cpus` (threads it makes later
    inherit the pinning of the thread that makes them); nothing for no cores. A thread that
    ended meanwhile is skipped; UsageError for a core this host does not offer."""
    if not cpus:
        return
    wanted = set(cpus)
    try:
        threads = [int(path.name) for path in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return  # the process is gone: its launch fails on its own
    for thread in threads:
        try:
            os.sched_setaffinity(thread, wanted)
        except ProcessLookupError:
            continue
        except OSError as exc:
            raise UsageError(
                f"cannot pin QEMU to host cores {sorted(wanted)}: {exc.strerror}",
                hint=f"this host offers cores {sorted(os.sched_getaffinity(0))}",
            ) from None
