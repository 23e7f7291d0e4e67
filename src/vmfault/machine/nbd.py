"""A tap on a guest disk: the NBD server that holds the disk's contents and sees each request.

A tapped disk's virtio device sits on QEMU's NBD client node, whose server is a `BlockTap`
in vmfault's process. The tap keeps the disk's contents itself (`DiskStore`: a read-only
base, the user's raw image or zeros, under the blocks written since the machine started,
with named snapshots of those blocks), so nothing a run writes reaches the user's image or
the next restore. For every request the tap asks its `TapPolicy` what to do: serve it,
fail it with an errno, delay it, or hold it until released; and it logs what it did. It
knows nothing of faults: the policy decides.

Why not relay to QEMU's own NBD export of a qcow2 overlay: QEMU drains every disk whenever
it stops the guest (a debug halt included), and a drain quiesces its NBD exports, so a
request the relay forwards during a drain would never be answered and the drain would wait
for it forever. The tap depends on nothing in QEMU to answer.

Concurrency: the tap runs in a thread of its own (QEMU waits on it while the caller waits
on QMP or the gdbstub), with one selector loop over its sockets, a wake-up pipe and a heap
of timers. The caller's thread talks to it through `call`, which runs a function in the
tap's thread and waits for its result. The NBD protocol spoken is the fixed newstyle
handshake with simple replies (no structured replies), which QEMU's client accepts.
"""

from __future__ import annotations

import contextlib
import enum
import errno as errno_module
import functools
import heapq
import itertools
import logging
import os
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from vmfault.errors import MachineError

__all__ = [
    "BLOCK_BYTES",
    "NBD_ERRNOS",
    "PASS",
    "BlockTap",
    "DiskStore",
    "TapAction",
    "TapDecision",
    "TapEvent",
    "TapOp",
    "TapPolicy",
    "TapRequest",
    "nbd_error",
    "serve_everything",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

T = TypeVar("T")

BLOCK_BYTES = 4096
"""The granularity of the blocks a store keeps (and the preferred request size)."""
_EXPORT_CHUNK = 1 << 20
MIN_REQUEST_BYTES = 512
MAX_REQUEST_BYTES = 32 << 20
"""Request sizes the tap asks its client for (it splits and aligns requests to them)."""

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x0003E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

_FLAG_FIXED_NEWSTYLE = 1
_FLAG_NO_ZEROES = 2
_OPT_EXPORT_NAME = 1
_OPT_ABORT = 2
_OPT_INFO = 6
_OPT_GO = 7
_REP_ACK = 1
_REP_INFO = 3
_REP_ERR_UNSUP = (1 << 31) + 1
_INFO_EXPORT = 0
_INFO_BLOCK_SIZE = 3
_TF_HAS_FLAGS = 1 << 0
_TF_SEND_FLUSH = 1 << 2
_TF_SEND_FUA = 1 << 3
_TF_SEND_WRITE_ZEROES = 1 << 6
_TRANSMISSION_FLAGS = _TF_HAS_FLAGS | _TF_SEND_FLUSH | _TF_SEND_FUA | _TF_SEND_WRITE_ZEROES
"""Flush, FUA and write-zeroes: the commands the tap serves besides read and write."""

_REQUEST = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")
_OPTION = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_CMD_READ = 0
_CMD_WRITE = 1
_CMD_DISC = 2
_CMD_FLUSH = 3
_CMD_WRITE_ZEROES = 6

NBD_ERRNOS: dict[int, int] = {
    errno_module.EPERM: 1,
    errno_module.EIO: 5,
    errno_module.ENOMEM: 12,
    errno_module.EINVAL: 22,
    errno_module.ENOSPC: 28,
    errno_module.EOVERFLOW: 75,
    errno_module.ENOTSUP: 95,
    errno_module.ESHUTDOWN: 108,
}
"""The errnos the NBD protocol carries (host errno -> NBD error value)."""


def nbd_error(errno: int) -> int:
    """The NBD error value for `errno`; errnos NBD has no value for travel as EIO."""
    return NBD_ERRNOS.get(errno, NBD_ERRNOS[errno_module.EIO])


class TapOp(enum.StrEnum):
    """What a request asks of the disk."""

    READ = "read"
    WRITE = "write"
    FLUSH = "flush"
    WRITE_ZEROES = "write-zeroes"
    OTHER = "other"

    @classmethod
    def of(cls, command: int) -> TapOp:
        """The op of an NBD command number."""
        return _COMMANDS.get(command, cls.OTHER)


_COMMANDS = {
    _CMD_READ: TapOp.READ,
    _CMD_WRITE: TapOp.WRITE,
    _CMD_FLUSH: TapOp.FLUSH,
    _CMD_WRITE_ZEROES: TapOp.WRITE_ZEROES,
}


class TapAction(enum.StrEnum):
    """What the tap does with a request."""

    PASS = "pass"  # noqa: S105 (a verb, not a password)
    FAIL = "fail"
    DELAY = "delay"
    HOLD = "hold"


@dataclass(frozen=True)
class TapRequest:
    """One request of the guest's disk as it reached the tap."""

    number: int
    """1 for the first request since the tap's policy was set, then 2, 3, ..."""
    op: TapOp
    offset: int
    """Bytes from the start of the disk."""
    length: int
    """Bytes (0 for a flush)."""
    at_s: float
    """Host monotonic seconds it arrived."""


@dataclass(frozen=True)
class TapDecision:
    """What to do with one request: serve it, fail it with `errno` (a failed write changes
    nothing), delay it by `delay_s` before serving it, or hold it until `BlockTap.release`."""

    action: TapAction = TapAction.PASS
    errno: int = 0
    delay_s: float = 0.0


PASS = TapDecision()
"""Serve the request."""


@dataclass(frozen=True)
class TapEvent:
    """A request, what was decided for it and how it ended."""

    request: TapRequest
    decision: TapDecision
    done_s: float
    """Host monotonic seconds its reply went to the client."""
    errno: int
    """The errno of its reply (0: success)."""


class TapPolicy(Protocol):
    """Decides, in the tap's thread, what happens to each request."""

    def __call__(self, request: TapRequest) -> TapDecision:
        """The decision for `request`."""
        ...


def serve_everything(request: TapRequest) -> TapDecision:
    """The policy of a tap without a fault: every request is served."""
    return PASS


class DiskStore:
    """A disk's contents: a read-only base (a raw image read in place, or zeros) under the
    blocks written since (BLOCK_BYTES each), with named snapshots of the written blocks.

    Not thread-safe: a tap uses it from its own thread only.
    """

    def __init__(self, size_bytes: int, base: Path | None = None) -> None:
        self.size_bytes = size_bytes
        self._base_fd = -1 if base is None else os.open(base, os.O_RDONLY | os.O_CLOEXEC)
        self._base_bytes = 0 if base is None else os.fstat(self._base_fd).st_size
        self._blocks: dict[int, bytes] = {}
        self._snapshots: dict[str, dict[int, bytes]] = {}

    def _base(self, offset: int, length: int) -> bytes:
        data = b""
        if self._base_fd >= 0 and offset < self._base_bytes:
            data = os.pread(self._base_fd, min(length, self._base_bytes - offset), offset)
        return data + bytes(length - len(data))

    def _block(self, index: int) -> bytes:
        found = self._blocks.get(index)
        return found if found is not None else self._base(index * BLOCK_BYTES, BLOCK_BYTES)

    def read(self, offset: int, length: int) -> bytes:
        """`length` bytes from `offset` (inside the disk)."""
        if not self._blocks:
            return self._base(offset, length)
        parts = []
        end = offset + length
        while offset < end:
            index, within = divmod(offset, BLOCK_BYTES)
            take = min(BLOCK_BYTES - within, end - offset)
            found = self._blocks.get(index)
            if found is None:
                parts.append(self._base(offset, take))
            else:
                parts.append(found[within : within + take])
            offset += take
        return b"".join(parts)

    def write(self, offset: int, data: bytes) -> None:
        """Store `data` at `offset` (inside the disk)."""
        view = memoryview(data)
        while view:
            index, within = divmod(offset, BLOCK_BYTES)
            take = min(BLOCK_BYTES - within, len(view))
            if take == BLOCK_BYTES:
                self._blocks[index] = bytes(view[:take])
            else:
                block = bytearray(self._block(index))
                block[within : within + take] = view[:take]
                self._blocks[index] = bytes(block)
            offset += take
            view = view[take:]

    def save(self, tag: str) -> None:
        """Keep the current contents as snapshot `tag` (replacing one of that name)."""
        self._snapshots[tag] = dict(self._blocks)

    def load(self, tag: str) -> None:
        """Bring back the contents of snapshot `tag`; MachineError if there is none."""
        if tag not in self._snapshots:
            raise MachineError(f"the disk has no snapshot {tag!r}")
        self._blocks = dict(self._snapshots[tag])

    def delete(self, tag: str) -> None:
        """Forget snapshot `tag` (a no-op without one)."""
        self._snapshots.pop(tag, None)

    def export(self, path: Path) -> None:
        """Write the disk's whole contents (base and written blocks) to `path`, a raw image
        (sparse where the base is a hole or zeros)."""
        with path.open("wb") as sink:
            sink.truncate(self.size_bytes)
            for offset in range(0, min(self._base_bytes, self.size_bytes), _EXPORT_CHUNK):
                chunk = self._base(offset, min(_EXPORT_CHUNK, self.size_bytes - offset))
                if chunk.count(0) != len(chunk):
                    sink.seek(offset)
                    sink.write(chunk)
            for index, block in sorted(self._blocks.items()):
                sink.seek(index * BLOCK_BYTES)
                sink.write(block)

    @property
    def written_bytes(self) -> int:
        """Bytes of blocks written over the base (and kept)."""
        return len(self._blocks) * BLOCK_BYTES

    def close(self) -> None:
        """Close the base image (always safe)."""
        if self._base_fd >= 0:
            os.close(self._base_fd)
            self._base_fd = -1


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise MachineError("the NBD client closed the connection during the handshake")
        data += chunk
    return bytes(data)


def server_handshake(sock: socket.socket, size_bytes: int) -> None:
    """Serve the fixed newstyle handshake of one client on `sock` for an export of
    `size_bytes`; returns when the client enters the transmission phase."""
    sock.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES))
    (client_flags,) = struct.unpack(">I", _recv_exact(sock, 4))

    def reply(option: int, kind: int, payload: bytes = b"") -> None:
        sock.sendall(_OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, kind, len(payload)) + payload)

    while True:
        magic, option, length = _OPTION.unpack(_recv_exact(sock, _OPTION.size))
        if magic != IHAVEOPT:
            raise MachineError("bad NBD option magic from the client")
        _recv_exact(sock, length)
        if option == _OPT_EXPORT_NAME:
            zeroes = b"" if client_flags & _FLAG_NO_ZEROES else bytes(124)
            sock.sendall(struct.pack(">QH", size_bytes, _TRANSMISSION_FLAGS) + zeroes)
            return
        if option in (_OPT_GO, _OPT_INFO):
            export = struct.pack(">HQH", _INFO_EXPORT, size_bytes, _TRANSMISSION_FLAGS)
            sizes = (MIN_REQUEST_BYTES, BLOCK_BYTES, MAX_REQUEST_BYTES)
            reply(option, _REP_INFO, export)
            reply(option, _REP_INFO, struct.pack(">HIII", _INFO_BLOCK_SIZE, *sizes))
            reply(option, _REP_ACK)
            if option == _OPT_GO:
                return
        elif option == _OPT_ABORT:
            reply(option, _REP_ACK)
            raise MachineError("the NBD client aborted the handshake")
        else:
            reply(option, _REP_ERR_UNSUP)


@dataclass(order=True)
class _Timer:
    due_s: float
    number: int
    run: Callable[[], None] = field(compare=False)


@dataclass(frozen=True)
class _Parked:
    """A request waiting to be served (delayed or held)."""

    request: TapRequest
    decision: TapDecision
    handle: int
    payload: bytes


class BlockTap:
    """The NBD server of one guest disk, with a policy, in a thread of its own (see the
    module docstring). `start()` listens on `path` (mode 0600) and serves one client at a
    time: QEMU's NBD node of the disk. `close()` ends everything.
    """

    def __init__(self, path: Path, store: DiskStore) -> None:
        self.path = path
        self.store = store
        self.policy: TapPolicy = serve_everything
        self.events: list[TapEvent] = []
        """The requests since the policy was last set or the log cleared, in the order
        their replies went out."""
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._listener.bind(str(path))
        finally:
            os.umask(old)
        self._listener.listen(1)
        self._client: socket.socket | None = None
        self._buffer = bytearray()
        self._held: list[_Parked] = []
        self._timers: list[_Timer] = []
        self._timer_numbers = itertools.count()
        self._numbers = itertools.count(1)
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ caller's side

    def start(self) -> None:
        """Start serving (the thread); QEMU may connect from now on."""
        self._thread = threading.Thread(target=self._serve, name=self.path.name, daemon=True)
        self._thread.start()

    def call(self, function: Callable[[], T], *, timeout_s: float = 10.0) -> T:
        """Run `function` in the tap's thread and return its result (or raise its error)."""
        if self._thread is None or not self._thread.is_alive():
            why = "" if self._failure is None else f": {self._failure}"
            raise MachineError(f"the disk tap {self.path.name} is not running{why}")
        future: Future[T] = Future()
        with self._lock:
            self._calls.append((function, future))
        os.write(self._wake_w, b"x")
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError as exc:
            raise MachineError(f"the disk tap did not answer within {timeout_s:g} s") from exc

    def set_policy(self, policy: TapPolicy) -> None:
        """Decide with `policy` from the next request on, numbering requests from 1 again
        and starting an empty log."""

        def swap() -> None:
            self.policy = policy
            self.events = []
            self._numbers = itertools.count(1)

        self.call(swap)

    def release(self) -> None:
        """Serve every held request now (in the order they came)."""
        self.call(self._release)

    def read(self, offset: int, length: int) -> bytes:
        """Read the stored data (as the guest would, without a request of its own)."""
        return self.call(lambda: self.store.read(offset, length))

    def write(self, offset: int, data: bytes) -> None:
        """Write the stored data (without a request of the guest's)."""
        self.call(lambda: self.store.write(offset, data))

    def save(self, tag: str) -> None:
        """Keep the disk's contents as snapshot `tag`."""
        self.call(lambda: self.store.save(tag))

    def load(self, tag: str) -> None:
        """Bring back snapshot `tag` (nothing may be in flight: the guest drained)."""
        self.call(lambda: self.store.load(tag))

    def delete(self, tag: str) -> None:
        """Forget snapshot `tag`."""
        self.call(lambda: self.store.delete(tag))

    def export(self, path: Path) -> None:
        """Write the disk's whole contents to `path`, a raw image (`DiskStore.export`)."""
        self.call(lambda: self.store.export(path), timeout_s=120.0)

    def close(self) -> None:
        """Stop the thread and close every socket and the store (always safe)."""
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for sock in (self._client, self._listener):
            if sock is not None:
                sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.store.close()
        self.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ tap's thread

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "listen")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop:
                timeout = None
                if self._timers:
                    timeout = max(0.0, self._timers[0].due_s - time.monotonic())
                for key, _ in selector.select(timeout):
                    if key.data == "listen":
                        self._accept(selector)
                    elif key.data == "wake":
                        self._run_calls()
                    elif key.data == "client":
                        self._from_client(selector)
                now = time.monotonic()
                while self._timers and self._timers[0].due_s <= now:
                    heapq.heappop(self._timers).run()
        except BaseException as exc:  # the thread must say why it stopped
            self._failure = exc
            logger.exception("disk tap %s stopped", self.path.name)
        finally:
            selector.close()
            self._run_calls()

    def _run_calls(self) -> None:
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 4096):
                pass
        with self._lock:
            calls, self._calls = self._calls, []
        for function, future in calls:
            try:
                future.set_result(function())
            except BaseException as exc:
                future.set_exception(exc)

    def _accept(self, selector: selectors.BaseSelector) -> None:
        conn, _ = self._listener.accept()
        self._drop_client(selector)
        conn.settimeout(10.0)
        try:
            server_handshake(conn, self.store.size_bytes)
        except (OSError, MachineError) as exc:
            logger.info("disk tap %s: handshake failed: %s", self.path.name, exc)
            conn.close()
            return
        conn.setblocking(False)
        self._client = conn
        self._buffer = bytearray()
        selector.register(conn, selectors.EVENT_READ, "client")

    def _drop_client(self, selector: selectors.BaseSelector) -> None:
        if self._client is not None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(self._client)
            self._client.close()
            self._client = None

    def _send(self, data: bytes) -> None:
        sock = self._client
        view = memoryview(data)
        while view and sock is not None:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                with selectors.DefaultSelector() as waiter:
                    waiter.register(sock, selectors.EVENT_WRITE)
                    waiter.select(1.0)
                continue
            except OSError:
                return
            view = view[sent:]

    def _from_client(self, selector: selectors.BaseSelector) -> None:
        assert self._client is not None
        try:
            data = self._client.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client(selector)
            return
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _REQUEST.size:
            magic, _, command, handle, offset, length = _REQUEST.unpack_from(buffer)
            payload_size = length if command == _CMD_WRITE else 0
            if len(buffer) < _REQUEST.size + payload_size:
                break
            payload = bytes(buffer[_REQUEST.size : _REQUEST.size + payload_size])
            del buffer[: _REQUEST.size + payload_size]
            if magic != REQUEST_MAGIC or command == _CMD_DISC:
                self._drop_client(selector)
                return
            request = TapRequest(next(self._numbers), TapOp.of(command), offset, length,
                                 time.monotonic())  # fmt: skip
            try:
                decision = self.policy(request)
            except Exception:
                logger.exception("disk tap policy failed; the request is served")
                decision = PASS
            parked = _Parked(request, decision, handle, payload)
            if decision.action is TapAction.HOLD:
                self._held.append(parked)
            elif decision.action is TapAction.DELAY and decision.delay_s > 0:
                due = time.monotonic() + decision.delay_s
                answer = functools.partial(self._answer, parked)
                heapq.heappush(self._timers, _Timer(due, next(self._timer_numbers), answer))
            else:
                self._answer(parked)

    def _answer(self, parked: _Parked) -> None:
        """Serve (or fail) one request and send its reply."""
        request, decision = parked.request, parked.decision
        errno, data = 0, b""
        if decision.action is TapAction.FAIL:
            errno = decision.errno or errno_module.EIO
        elif request.offset + request.length > self.store.size_bytes:
            errno = errno_module.ENOSPC if request.op is not TapOp.READ else errno_module.EINVAL
        elif request.op is TapOp.READ:
            data = self.store.read(request.offset, request.length)
        elif request.op is TapOp.WRITE:
            self.store.write(request.offset, parked.payload)
        elif request.op is TapOp.WRITE_ZEROES:
            self.store.write(request.offset, bytes(request.length))
        elif request.op is not TapOp.FLUSH:
            errno = errno_module.EINVAL
        error = nbd_error(errno) if errno else 0
        self._send(_REPLY.pack(SIMPLE_REPLY_MAGIC, error, parked.handle) + data)
        self.events.append(TapEvent(request, decision, time.monotonic(), errno))

    def _release(self) -> None:
        held, self._held = self._held, []
        for parked in held:
            self._answer(parked)
