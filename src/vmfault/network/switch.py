"""A virtual Ethernet switch that vmfault runs for the machines of a testbed.

Each machine's network card is joined to one port: a Unix datagram socket pair, one end
inherited by QEMU (`vmfault.machine.Nic`), the other read by the switch, one Ethernet
frame per datagram. Nothing reaches the host's network. The switch forwards by
destination MAC address (broadcast, multicast and unknown addresses to every other port),
from one thread of its own.

Every copy of a frame on its way from one machine to another (a direction of a link) may
pass a `LinkFilter` first, which decides when it is delivered, how many times and with
what bytes: the hook fault injection uses. Frames a filter holds back are delivered at
their time from the switch's timer heap.

`quiesce()` stops all forwarding, drops every frame held and drains both ends of every
port; `resume()` starts a new epoch with fresh counters. Between them no frame moves, so
a testbed restoring its machines in between carries no frame of one experiment into the
next. Times are host monotonic seconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import heapq
import ipaddress
import itertools
import logging
import selectors
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from vmfault.errors import MachineError

__all__ = [
    "BROADCAST",
    "FRAME_MAX_BYTES",
    "Delivery",
    "LinkCounters",
    "LinkFilter",
    "Port",
    "Switch",
    "mac_text",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

FRAME_MAX_BYTES = 65550
"""The largest datagram read from a port (QEMU sends up to 64 KiB with offloads)."""
SOCKET_BUFFER_BYTES = 4 << 20
"""Send and receive buffers of every port's sockets: room for bursts while a guest is halted."""
BROADCAST = b"\xff" * 6
DEFAULT_SUBNET = "10.0.0.0/24"
_IDLE_WAIT_S = 0.5


def mac_text(mac: bytes) -> str:
    """`52:54:00:00:01:02` from six bytes."""
    return ":".join(f"{b:02x}" for b in mac)


@dataclass(frozen=True)
class Port:
    """One machine's place on the switch: its name, card address, IPv4 address and the
    file descriptor QEMU inherits (`guest_fd`, the machine's end of the socket pair)."""

    name: str
    mac: bytes
    address: str
    """`10.0.0.2/24`: the guest's address with the network's prefix length."""
    guest_fd: int

    @property
    def host(self) -> str:
        """The address without its prefix length (`10.0.0.2`)."""
        return self.address.split("/")[0]


class Delivery(Protocol):
    """One frame a filter lets through: when (host monotonic seconds) and which bytes."""

    @property
    def at(self) -> float:
        """Host monotonic seconds at which it is due."""
        ...

    @property
    def frame(self) -> bytes:
        """The frame's bytes."""
        ...


class LinkFilter(Protocol):
    """Decides what becomes of one copy of a frame going from `source` to `destination`.

    Called on the switch's thread only, once per copy, in arrival order. Returns the
    deliveries of the copy, in order (none: it is lost; two: duplicated; a later time:
    delayed); frames due now or earlier go out at once.
    """

    def process(
        self, source: str, destination: str, frame: bytes, now: float
    ) -> Sequence[Delivery]: ...


@dataclass
class LinkCounters:
    """Frames on one direction of a link (`source` to `destination`) in one epoch:
    `seen` entered it, `delivered` reached the destination's card, `overflow` were lost
    because the destination's socket was full (its guest not reading)."""

    source: str
    destination: str
    seen: int = 0
    delivered: int = 0
    overflow: int = 0


class Switch:
    """The switch of a testbed's machines (see the module docstring). A context manager;
    `start()` launches its thread, `close()` stops it and closes every socket."""

    def __init__(self, names: Sequence[str], *, subnet: str = DEFAULT_SUBNET) -> None:
        network = ipaddress.IPv4Network(subnet)
        hosts = list(itertools.islice(network.hosts(), len(names)))
        if len(hosts) < len(names) or len(set(names)) != len(names):
            raise ValueError(f"cannot place machines {list(names)} on {subnet}")
        self.subnet = network
        self.ports: dict[str, Port] = {}
        self._ends: dict[str, socket.socket] = {}
        self._guest_ends: dict[str, socket.socket] = {}
        for index, (name, host) in enumerate(zip(names, hosts, strict=True)):
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
            for sock in (ours, theirs):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER_BYTES)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER_BYTES)
                sock.setblocking(False)
            theirs.set_inheritable(True)
            mac = bytes((0x52, 0x54, 0x00, 0x00, (index + 1) >> 8, (index + 1) & 0xFF))
            self.ports[name] = Port(name, mac, f"{host}/{network.prefixlen}", theirs.fileno())
            self._ends[name] = ours
            self._guest_ends[name] = theirs
        self._by_mac = {port.mac: name for name, port in self.ports.items()}
        self._lock = threading.Lock()
        self._filter: LinkFilter | None = None
        self._paused = True
        self._epoch = 0
        self._counters: dict[tuple[str, str], LinkCounters] = {}
        self._held: list[tuple[float, int, str, bytes]] = []
        self._order = itertools.count()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        self._thread: threading.Thread | None = None
        self._running = False
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Switch:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start forwarding (a new epoch)."""
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._serve, name="vmfault-switch", daemon=True)
        self._thread.start()
        self.resume()

    def close(self) -> None:
        """Stop the thread and close every socket (safe to call twice)."""
        self._running = False
        thread, self._thread = self._thread, None
        if thread is not None:
            self._wake()
            thread.join(timeout=5.0)
        for sock in (*self._ends.values(), *self._guest_ends.values()):
            sock.close()
        self._wake_read.close()
        self._wake_write.close()

    @property
    def alive(self) -> bool:
        """Whether the switch's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    # ------------------------------------------------------------------ control

    @property
    def epoch(self) -> int:
        """How many times forwarding resumed (one epoch per experiment)."""
        return self._epoch

    def install(self, link_filter: LinkFilter | None) -> None:
        """Pass every later copy of a frame through `link_filter` (None: none)."""
        with self._lock:
            self._filter = link_filter
        self._wake()

    def quiesce(self) -> None:
        """Stop forwarding: drop every frame held and every frame waiting in either end of
        a port, and the filter. Returns once nothing moves."""
        with self._lock:
            self._paused = True
            self._filter = None
            self._held.clear()
            self._drain()

    def resume(self) -> None:
        """Forward again, from a new epoch with zeroed counters; what the ports hold now
        (frames of guests that ran since `quiesce`) is dropped first."""
        with self._lock:
            self._drain()
            self._held.clear()
            self._counters = {}
            self._epoch += 1
            self._paused = False
        self._wake()

    def deliver(self, destination: str, frame: bytes) -> None:
        """Hand `frame` to `destination`'s card as if it came over the network (for tests
        and benchmarks; not counted)."""
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self._ends[destination].send(frame)

    def counters(self) -> Mapping[tuple[str, str], LinkCounters]:
        """This epoch's counters by (source, destination), copied."""
        with self._lock:
            return {key: dataclasses.replace(value) for key, value in self._counters.items()}

    def check(self) -> None:
        """MachineError if the switch's thread stopped on an error (the testbed is broken)."""
        if self._error is not None:
            raise MachineError(f"the network switch failed: {self._error}") from self._error

    # ------------------------------------------------------------------ the thread

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")

    def _drain(self) -> None:
        for sock in (*self._ends.values(), *self._guest_ends.values()):
            _discard(sock)

    def _serve(self) -> None:
        try:
            with selectors.DefaultSelector() as selector:
                for name, sock in self._ends.items():
                    selector.register(sock, selectors.EVENT_READ, name)
                selector.register(self._wake_read, selectors.EVENT_READ, None)
                while self._running:
                    with self._lock:
                        due = self._held[0][0] - time.monotonic() if self._held else _IDLE_WAIT_S
                    ready = selector.select(max(0.0, min(due, _IDLE_WAIT_S)))
                    with self._lock:
                        for key, _ in ready:
                            if key.data is None:
                                _discard(self._wake_read)
                            else:
                                self._receive(str(key.data))
                        self._release_due(time.monotonic())
        except BaseException as exc:  # reported by check(); the testbed stops then
            self._error = exc
            logger.exception("the network switch stopped")

    def _receive(self, source: str) -> None:
        sock = self._ends[source]
        while True:
            try:
                frame = sock.recv(FRAME_MAX_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            if not self._paused and len(frame) >= 14:
                self._forward(source, frame, time.monotonic())

    def _forward(self, source: str, frame: bytes, now: float) -> None:
        for destination in self._destinations(source, frame[:6]):
            counters = self._counter(source, destination)
            counters.seen += 1
            if self._filter is None:
                self._send(destination, frame, counters)
                continue
            for delivery in self._filter.process(source, destination, frame, now):
                if delivery.at <= now:
                    self._send(destination, delivery.frame, counters)
                else:
                    entry = (delivery.at, next(self._order), source + "\0" + destination,
                             delivery.frame)  # fmt: skip
                    heapq.heappush(self._held, entry)

    def _release_due(self, now: float) -> None:
        while self._held and self._held[0][0] <= now:
            _, _, link, frame = heapq.heappop(self._held)
            source, _, destination = link.partition("\0")
            self._send(destination, frame, self._counter(source, destination))

    def _destinations(self, source: str, mac: bytes) -> Iterable[str]:
        known = self._by_mac.get(mac)
        if known is not None and not mac[0] & 1:
            return () if known == source else (known,)
        return (name for name in self.ports if name != source)

    def _counter(self, source: str, destination: str) -> LinkCounters:
        key = (source, destination)
        counters = self._counters.get(key)
        if counters is None:
            counters = self._counters[key] = LinkCounters(source, destination)
        return counters

    def _send(self, destination: str, frame: bytes, counters: LinkCounters) -> None:
        try:
            self._ends[destination].send(frame)
        except (BlockingIOError, InterruptedError):
            counters.overflow += 1
            return
        except OSError as exc:  # the machine's QEMU is gone: its frames go nowhere
            logger.debug("port %s: %s", destination, exc)
            counters.overflow += 1
            return
        counters.delivered += 1


def _discard(sock: socket.socket) -> None:
    """Read and drop everything waiting on a non-blocking socket."""
    while True:
        try:
            sock.recv(FRAME_MAX_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return
