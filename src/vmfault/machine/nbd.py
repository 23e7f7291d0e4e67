"""A tap on a guest disk's requests: an NBD relay between QEMU's NBD client and its server.

QEMU's block layer puts the tap in a disk's path (`Machine.tap_disk`): the guest's virtio
device issues its requests to an NBD client node whose server is a `BlockTap`, which
relays each one to QEMU's own NBD export of the disk's image, so the data never leaves
QEMU's block layer. For every request the tap asks a `TapPolicy` what to do: pass it on,
fail it with an errno, delay it, or hold it until released; and it logs what it did.
The tap also reads and writes the stored data itself (through the export), with the
guest halted. It knows nothing of faults: the policy decides.

Concurrency: the tap runs in a thread of its own (QEMU blocks in its NBD client while the
caller waits on QMP), with one selector loop over its three sockets, a wake-up pipe and a
heap of timers. The caller's thread talks to it through `call`, which runs a function in
the tap's thread and waits for its result. The NBD protocol spoken is the fixed newstyle
handshake with simple replies (no structured replies, no metadata contexts), which QEMU's
client and server both accept.
"""

from __future__ import annotations

import contextlib
import enum
import errno as errno_module
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
    "NBD_ERRNOS",
    "BlockTap",
    "TapAction",
    "TapDecision",
    "TapEvent",
    "TapOp",
    "TapPolicy",
    "TapRequest",
    "nbd_error",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

T = TypeVar("T")

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
_REP_ERR_UNKNOWN = (1 << 31) + 6
_INFO_EXPORT = 0
_INFO_BLOCK_SIZE = 3

_TF_HAS_FLAGS = 1 << 0
_TF_READ_ONLY = 1 << 1
_TF_SEND_FLUSH = 1 << 2
_TF_SEND_FUA = 1 << 3
_TF_ROTATIONAL = 1 << 4
_TF_SEND_TRIM = 1 << 5
_TF_SEND_WRITE_ZEROES = 1 << 6
_TF_SEND_CACHE = 1 << 10
_TF_SEND_FAST_ZERO = 1 << 11
_RELAYED_FLAGS = (
    _TF_HAS_FLAGS | _TF_READ_ONLY | _TF_SEND_FLUSH | _TF_SEND_FUA | _TF_ROTATIONAL
    | _TF_SEND_TRIM | _TF_SEND_WRITE_ZEROES | _TF_SEND_CACHE | _TF_SEND_FAST_ZERO
)  # fmt: skip
"""Transmission flags passed on to the client: none that needs structured replies."""

_REQUEST = struct.Struct(">IHHQQI")
_REPLY = struct.Struct(">IIQ")
_OPTION = struct.Struct(">QII")
_OPTION_REPLY = struct.Struct(">QIII")
_CMD_DISC = 2
_INTERNAL_HANDLE = 1 << 63
"""Handles of the tap's own requests to the export (the client's never set this bit)."""

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
_SYSTEM_ERRNOS = {value: key for key, value in NBD_ERRNOS.items()}


def nbd_error(errno: int) -> int:
    """The NBD error value for `errno`; errnos NBD has no value for travel as EIO."""
    return NBD_ERRNOS.get(errno, NBD_ERRNOS[errno_module.EIO])


class TapOp(enum.StrEnum):
    """What a request asks of the disk."""

    READ = "read"
    WRITE = "write"
    FLUSH = "flush"
    TRIM = "trim"
    CACHE = "cache"
    WRITE_ZEROES = "write-zeroes"
    OTHER = "other"

    @classmethod
    def of(cls, command: int) -> TapOp:
        """The op of an NBD command number."""
        return _COMMANDS.get(command, cls.OTHER)

    @property
    def writes(self) -> bool:
        """Whether the op changes stored data (write, write-zeroes, trim)."""
        return self in (TapOp.WRITE, TapOp.WRITE_ZEROES, TapOp.TRIM)


_COMMANDS = {
    0: TapOp.READ,
    1: TapOp.WRITE,
    3: TapOp.FLUSH,
    4: TapOp.TRIM,
    5: TapOp.CACHE,
    6: TapOp.WRITE_ZEROES,
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
    """1 for the first request since the tap was connected, then 2, 3, ..."""
    op: TapOp
    offset: int
    """Bytes from the start of the disk."""
    length: int
    """Bytes (0 for a flush)."""
    at_s: float
    """Host monotonic seconds it arrived."""


@dataclass(frozen=True)
class TapDecision:
    """What to do with one request: pass it on, fail it with `errno` (never sent on), delay
    it by `delay_s` before sending it on, or hold it until `BlockTap.release`."""

    action: TapAction = TapAction.PASS
    errno: int = 0
    delay_s: float = 0.0


PASS = TapDecision()


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


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise MachineError("the NBD peer closed the connection during the handshake")
        data += chunk
    return bytes(data)


@dataclass(frozen=True)
class ExportInfo:
    """What an NBD export offers: its size in bytes, transmission flags, block sizes."""

    size: int
    flags: int
    block_sizes: tuple[int, int, int] | None = None


def client_handshake(sock: socket.socket, export: str) -> ExportInfo:
    """Negotiate `export` with an NBD server on `sock` (fixed newstyle, NBD_OPT_GO)."""
    magic, option_magic, flags = struct.unpack(">QQH", _recv_exact(sock, 18))
    if magic != NBDMAGIC or option_magic != IHAVEOPT or not flags & _FLAG_FIXED_NEWSTYLE:
        raise MachineError("the NBD server does not speak the fixed newstyle handshake")
    sock.sendall(struct.pack(">I", _FLAG_FIXED_NEWSTYLE | (flags & _FLAG_NO_ZEROES)))
    name = export.encode()
    data = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, _INFO_BLOCK_SIZE)
    sock.sendall(_OPTION.pack(IHAVEOPT, _OPT_GO, len(data)) + data)
    size = tflags = None
    sizes = None
    while True:
        magic, _, kind, length = _OPTION_REPLY.unpack(_recv_exact(sock, _OPTION_REPLY.size))
        payload = _recv_exact(sock, length)
        if magic != OPT_REPLY_MAGIC:
            raise MachineError("bad NBD option reply magic")
        if kind == _REP_ACK:
            break
        if kind & (1 << 31):
            raise MachineError(f"the NBD server refused export {export!r} (reply {kind:#x})")
        if kind == _REP_INFO and len(payload) >= 2:
            (info,) = struct.unpack(">H", payload[:2])
            if info == _INFO_EXPORT:
                size, tflags = struct.unpack(">QH", payload[2:12])
            elif info == _INFO_BLOCK_SIZE:
                sizes = struct.unpack(">III", payload[2:14])
    if size is None or tflags is None:
        raise MachineError(f"the NBD server did not describe export {export!r}")
    return ExportInfo(size, tflags, sizes)


def server_handshake(sock: socket.socket, info: ExportInfo) -> None:
    """Serve the handshake of one client on `sock`, describing `info`; returns when the
    client enters the transmission phase."""
    sock.sendall(struct.pack(">QQH", NBDMAGIC, IHAVEOPT, _FLAG_FIXED_NEWSTYLE | _FLAG_NO_ZEROES))
    (client_flags,) = struct.unpack(">I", _recv_exact(sock, 4))
    flags = (info.flags & _RELAYED_FLAGS) | _TF_HAS_FLAGS

    def reply(option: int, kind: int, payload: bytes = b"") -> None:
        sock.sendall(_OPTION_REPLY.pack(OPT_REPLY_MAGIC, option, kind, len(payload)) + payload)

    while True:
        magic, option, length = _OPTION.unpack(_recv_exact(sock, _OPTION.size))
        if magic != IHAVEOPT:
            raise MachineError("bad NBD option magic from the client")
        _recv_exact(sock, length)
        if option == _OPT_EXPORT_NAME:
            zeroes = b"" if client_flags & _FLAG_NO_ZEROES else bytes(124)
            sock.sendall(struct.pack(">QH", info.size, flags) + zeroes)
            return
        if option in (_OPT_GO, _OPT_INFO):
            reply(option, _REP_INFO, struct.pack(">HQH", _INFO_EXPORT, info.size, flags))
            if info.block_sizes is not None:
                reply(option, _REP_INFO, struct.pack(">HIII", _INFO_BLOCK_SIZE, *info.block_sizes))
            reply(option, _REP_ACK)
            if option == _OPT_GO:
                return
        elif option == _OPT_ABORT:
            reply(option, _REP_ACK)
            raise MachineError("the NBD client aborted the handshake")
        else:
            reply(option, _REP_ERR_UNSUP)


class _Reader:
    """Bytes from a non-blocking socket, taken in exact amounts as they arrive."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.closed = False

    def fill(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.closed = True
        self.buffer += data

    def take(self, size: int) -> bytes | None:
        if len(self.buffer) < size:
            return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


@dataclass
class _Pending:
    """A request sent on to the export, waiting for its reply."""

    request: TapRequest
    decision: TapDecision
    handle: int
    done: Callable[[int, bytes], None] | None = None
    """For the tap's own requests: called with the errno and the data."""


@dataclass(order=True)
class _Timer:
    due_s: float
    number: int
    run: Callable[[], None] = field(compare=False)


class BlockTap:
    """An NBD relay with a policy, in a thread of its own (see the module docstring).

    Lifecycle: `BlockTap(listen, policy)` binds `listen` (mode 0600); `connect(socket,
    export)` opens the export and starts the thread, which then serves one client at a
    time: QEMU's NBD client node, added after it. `close()` ends everything.
    """

    def __init__(self, listen: Path, policy: TapPolicy = lambda _request: PASS) -> None:
        self.path = listen
        self.policy: TapPolicy = policy
        self.events: list[TapEvent] = []
        """Every request of the current client, in the order their replies went out."""
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            self._listener.bind(str(listen))
        finally:
            os.umask(old)
        self._listener.listen(1)
        self._upstream: socket.socket | None = None
        self._up_reader: _Reader | None = None
        self._client: socket.socket | None = None
        self._client_reader: _Reader | None = None
        self._info: ExportInfo | None = None
        self._pending: dict[int, _Pending] = {}
        self._write_payloads: dict[int, bytes] = {}
        self._held: list[tuple[TapRequest, TapDecision, bytes, bytes]] = []
        self._timers: list[_Timer] = []
        self._timer_numbers = itertools.count()
        self._internal = itertools.count()
        self._numbers = itertools.count(1)
        self._calls: list[tuple[Callable[[], Any], Future[Any]]] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    # ------------------------------------------------------------------ caller's side

    @property
    def size(self) -> int:
        """The export's size in bytes."""
        if self._info is None:
            raise MachineError("the tap is not connected to an export")
        return self._info.size

    def connect(self, upstream: Path, export: str, *, timeout_s: float = 10.0) -> None:
        """Open `export` on the NBD server at `upstream` and start serving clients."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(str(upstream))
            self._info = client_handshake(sock, export)
        except OSError as exc:
            sock.close()
            raise MachineError(f"cannot open NBD export {export!r}: {exc}") from exc
        sock.setblocking(False)
        self._upstream = sock
        self._up_reader = _Reader(sock)
        self._thread = threading.Thread(target=self._serve, name=f"tap-{export}", daemon=True)
        self._thread.start()

    def call(self, function: Callable[[], T], *, timeout_s: float = 10.0) -> T:
        """Run `function` in the tap's thread and return its result (or raise its error)."""
        if self._thread is None or not self._thread.is_alive():
            raise MachineError("the disk tap is not running", hint=str(self._failure or ""))
        future: Future[T] = Future()
        with self._lock:
            self._calls.append((function, future))
        os.write(self._wake_w, b"x")
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError as exc:
            raise MachineError(f"the disk tap did not answer within {timeout_s:g} s") from exc

    def reset(self, policy: TapPolicy) -> None:
        """A new policy and an empty log, for the next client (numbers start at 1 again)."""

        def swap() -> None:
            self.policy = policy
            self.events = []
            self._numbers = itertools.count(1)

        self.call(swap)

    def release(self) -> None:
        """Send every held request on now (in the order they came)."""
        self.call(self._release)

    def release_at(self, when_s: float) -> None:
        """Send every held request on at host monotonic time `when_s` (and any request
        held after that at once)."""
        self.call(lambda: self._at(when_s, self._release))

    def read(self, offset: int, length: int, *, timeout_s: float = 10.0) -> bytes:
        """Read stored data through the export (the guest should be halted)."""
        return self._own(0, offset, length, b"", timeout_s)

    def write(self, offset: int, data: bytes, *, timeout_s: float = 10.0) -> None:
        """Write stored data through the export (the guest should be halted)."""
        self._own(1, offset, len(data), data, timeout_s)

    def close(self) -> None:
        """Stop the thread and close every socket (always safe)."""
        self._stop = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        for sock in (self._client, self._upstream, self._listener):
            if sock is not None:
                sock.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.path.unlink(missing_ok=True)

    def _own(self, command: int, offset: int, length: int, data: bytes, timeout_s: float) -> bytes:
        result: Future[bytes] = Future()

        def done(error: int, payload: bytes) -> None:
            if error:
                errno = _SYSTEM_ERRNOS.get(error, errno_module.EIO)
                result.set_exception(
                    MachineError(f"the disk refused the tap's own request: {os.strerror(errno)}")
                )
            else:
                result.set_result(payload)

        def send() -> None:
            handle = _INTERNAL_HANDLE | next(self._internal)
            request = TapRequest(0, TapOp.of(command), offset, length, time.monotonic())
            self._pending[handle] = _Pending(request, PASS, handle, done)
            self._send_up(_REQUEST.pack(REQUEST_MAGIC, 0, command, handle, offset, length) + data)

        self.call(send)
        try:
            return result.result(timeout=timeout_s)
        except TimeoutError as exc:
            raise MachineError(f"the disk did not answer the tap within {timeout_s:g} s") from exc

    # ------------------------------------------------------------------ tap's thread

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "listen")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        assert self._upstream is not None
        selector.register(self._upstream, selectors.EVENT_READ, "up")
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
                    elif key.data == "up":
                        self._from_upstream()
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

    def _at(self, when_s: float, run: Callable[[], None]) -> None:
        heapq.heappush(self._timers, _Timer(when_s, next(self._timer_numbers), run))

    def _accept(self, selector: selectors.BaseSelector) -> None:
        conn, _ = self._listener.accept()
        if self._client is not None:  # one client at a time: the old one is gone
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(self._client)
            self._client.close()
        conn.settimeout(10.0)
        assert self._info is not None
        try:
            server_handshake(conn, self._info)
        except (OSError, MachineError) as exc:
            logger.info("disk tap %s: client handshake failed: %s", self.path.name, exc)
            conn.close()
            self._client = None
            return
        conn.setblocking(False)
        self._client = conn
        self._client_reader = _Reader(conn)
        selector.register(conn, selectors.EVENT_READ, "client")

    def _send(self, sock: socket.socket | None, data: bytes) -> None:
        if sock is None:
            return
        view = memoryview(data)
        while view:
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

    def _send_up(self, data: bytes) -> None:
        self._send(self._upstream, data)

    def _reply(self, request: TapRequest, decision: TapDecision, handle: int, errno: int,
               data: bytes = b"") -> None:  # fmt: skip
        error = nbd_error(errno) if errno else 0
        self._send(self._client, _REPLY.pack(SIMPLE_REPLY_MAGIC, error, handle) + data)
        self.events.append(TapEvent(request, decision, time.monotonic(), errno))

    def _from_client(self, selector: selectors.BaseSelector) -> None:
        reader = self._client_reader
        assert reader is not None
        reader.fill()
        while True:
            head = reader.buffer[: _REQUEST.size]
            if len(head) < _REQUEST.size:
                break
            magic, _, command, handle, offset, length = _REQUEST.unpack(bytes(head))
            payload_size = length if command == 1 else 0
            if len(reader.buffer) < _REQUEST.size + payload_size:
                break
            header = reader.take(_REQUEST.size) or b""
            payload = reader.take(payload_size) or b""
            if magic != REQUEST_MAGIC or command == _CMD_DISC:
                self._drop_client(selector)
                return
            op = TapOp.of(command)
            request = TapRequest(next(self._numbers), op, offset, length, time.monotonic())
            try:
                decision = self.policy(request)
            except Exception:
                logger.exception("disk tap policy failed; the request passes")
                decision = PASS
            self._decide(request, decision, handle, header, payload)
        if reader.closed:
            self._drop_client(selector)

    def _decide(self, request: TapRequest, decision: TapDecision, handle: int, header: bytes,
                payload: bytes) -> None:  # fmt: skip
        if decision.action is TapAction.FAIL:
            self._reply(request, decision, handle, decision.errno or errno_module.EIO)
        elif decision.action is TapAction.HOLD:
            self._held.append((request, decision, header, payload))
        elif decision.action is TapAction.DELAY and decision.delay_s > 0:
            self._at(
                time.monotonic() + decision.delay_s,
                lambda: self._forward(request, decision, handle, header, payload),
            )
        else:
            self._forward(request, decision, handle, header, payload)

    def _forward(self, request: TapRequest, decision: TapDecision, handle: int, header: bytes,
                 payload: bytes) -> None:  # fmt: skip
        self._pending[handle] = _Pending(request, decision, handle)
        self._send_up(header + payload)

    def _release(self) -> None:
        held, self._held = self._held, []
        for request, decision, header, payload in held:
            (handle,) = struct.unpack(">Q", header[8:16])
            self._forward(request, decision, handle, header, payload)

    def _from_upstream(self) -> None:
        reader = self._up_reader
        assert reader is not None
        reader.fill()
        while True:
            head = reader.buffer[: _REPLY.size]
            if len(head) < _REPLY.size:
                break
            magic, error, handle = _REPLY.unpack(bytes(head))
            pending = self._pending.get(handle)
            if magic != SIMPLE_REPLY_MAGIC or pending is None:
                raise MachineError(f"unexpected reply from the NBD export (handle {handle:#x})")
            size = pending.request.length if pending.request.op is TapOp.READ and not error else 0
            if len(reader.buffer) < _REPLY.size + size:
                break
            reader.take(_REPLY.size)
            data = reader.take(size) or b""
            del self._pending[handle]
            if pending.done is not None:
                pending.done(error, data)
                continue
            errno = _SYSTEM_ERRNOS.get(error, errno_module.EIO) if error else 0
            self._reply(pending.request, pending.decision, handle, errno, data)
        if reader.closed:
            raise MachineError("QEMU's NBD export closed the tap's connection")

    def _drop_client(self, selector: selectors.BaseSelector) -> None:
        if self._client is not None:
            with contextlib.suppress(KeyError, ValueError):
                selector.unregister(self._client)
            self._client.close()
        self._client = None
        self._client_reader = None
        self._release()  # nobody waits for held requests any more: let them land
