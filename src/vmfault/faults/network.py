"""Network faults: what they are (`NetworkFault`) and what they do to each frame
(`NetworkFilter`), pure: no I/O, every random choice from the generator it is given.

A network fault (`target = "network:KIND"`) acts on frames between machines of a testbed,
on the directions of links it selects:

- `link = "a-b"`: frames from a to b (`direction = "out"`), from b to a (`"in"`), or both;
- `machine = "x"`: frames x's card sends (`"out"`), receives (`"in"`), or both;
- neither: every link, both directions.

Kinds, as NetEm, Toxiproxy and Jepsen name them:

- `loss`: each frame lost with `probability`, or in bursts (Gilbert-Elliott: with
  `burst`, the mean number of frames lost in a row, and `probability` the overall share);
- `corrupt`: `bits` bits (default 1) flipped in a frame, in `where` = any byte, the
  `headers` (Ethernet, IP, TCP/UDP/ICMP) or the `payload` after them;
- `delay`: each frame held `delay`, plus or minus a uniform `jitter`;
- `duplicate`: a frame delivered twice;
- `reorder`: a frame held back `delay` (default 10 ms) so the frames behind it overtake it;
- `rate`: a link of `bandwidth` (`1mbit`, `100kbit`, `5MB/s`): frames wait their turn,
  and with RATE_QUEUE_FRAMES waiting the next ones are dropped;
- `partition`: frames between machines of different `groups` dropped.

`corrupt`, `duplicate` and `reorder` act on each frame with `probability` (default 1).
A fault acts from its trigger for its `period` (None: to the end of the experiment).
"""

from __future__ import annotations

import enum
import random
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vmfault.errors import UsageError

__all__ = [
    "CORRUPTIONS_KEPT",
    "RATE_QUEUE_FRAMES",
    "REORDER_DELAY_S",
    "Corruption",
    "Direction",
    "FaultCounters",
    "FilterDelivery",
    "NetworkFault",
    "NetworkFilter",
    "NetworkKind",
    "Where",
    "header_bytes",
    "parse_bandwidth",
    "parse_link",
]

REORDER_DELAY_S = 0.010
"""How long a reordered frame is held back unless `delay` says otherwise."""
RATE_QUEUE_FRAMES = 1000
"""Frames a rate-limited link direction holds waiting at most (NetEm's default limit)."""
CORRUPTIONS_KEPT = 200
"""Corrupted frames a filter describes one by one (offset and bit); all are counted."""

_ETHERNET = 14
_VLAN = 0x8100
_IPV4 = 0x0800
_PROTOCOL_HEADERS = {1: 8, 17: 8}  # ICMP, UDP; TCP's length is in its header
_TCP = 6
_BANDWIDTH = re.compile(
    r"^(\d+(?:\.\d*)?)\s*(bit|kbit|mbit|gbit|bps|kbps|mbps|gbps|B/s|kB/s|MB/s)$"
)
_BANDWIDTH_SCALE = {
    "bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "bps": 1.0, "kbps": 1e3, "mbps": 1e6,
    "gbps": 1e9, "B/s": 8.0, "kB/s": 8e3, "MB/s": 8e6,
}  # fmt: skip


class NetworkKind(enum.StrEnum):
    """What a network fault does to the frames it selects."""

    LOSS = "loss"
    CORRUPT = "corrupt"
    DELAY = "delay"
    DUPLICATE = "duplicate"
    REORDER = "reorder"
    RATE = "rate"
    PARTITION = "partition"


class Direction(enum.StrEnum):
    """Which frames of a link or a card: `out` leaves the (first) machine named, `in`
    reaches it."""

    BOTH = "both"
    IN = "in"
    OUT = "out"


class Where(enum.StrEnum):
    """Which bytes of a frame a corruption may hit."""

    ANY = "any"
    HEADERS = "headers"
    PAYLOAD = "payload"


def parse_link(text: str) -> tuple[str, str]:
    """`a-b` as the pair of machine names; UsageError otherwise (names may hold `-`, so
    the link is split where both sides are names: give names without `-` to be safe)."""
    parts = [part.strip() for part in text.split("-")]
    if len(parts) == 2 and all(parts) and parts[0] != parts[1]:
        return parts[0], parts[1]
    raise UsageError(
        f"invalid link {text!r}",
        hint='name two different machines joined by "-", e.g. "client-server"',
    )


def parse_bandwidth(text: str) -> float:
    """`1mbit`, `100kbit`, `5MB/s`, ... as bits per second (> 0); UsageError otherwise."""
    found = _BANDWIDTH.match(text.strip())
    if found is None or float(found.group(1)) <= 0:
        raise UsageError(
            f"invalid bandwidth {text!r}",
            hint="a positive number with a unit: 100kbit, 1mbit, 1gbit, 500kB/s, 5MB/s",
        )
    return float(found.group(1)) * _BANDWIDTH_SCALE[found.group(2)]


@dataclass(frozen=True)
class NetworkFault:
    """One network fault (see the module docstring). Names are machine names; `nic` is the
    machine whose card it acts on, `link` the pair whose frames, neither: every link.
    `duration_s` is how long it acts from its trigger (None: to the experiment's end).
    Checked when made: UsageError for options that do not fit together."""

    kind: NetworkKind
    link: tuple[str, str] | None = None
    nic: str | None = None
    direction: Direction = Direction.BOTH
    probability: float | None = None
    burst: float | None = None
    bits: int = 1
    where: Where = Where.ANY
    delay_s: float | None = None
    jitter_s: float = 0.0
    bandwidth_bps: float | None = None
    groups: tuple[tuple[str, ...], ...] = ()
    duration_s: float | None = None

    def __post_init__(self) -> None:
        if self.link is not None and self.nic is not None:
            raise UsageError("give a link or a machine, not both", hint="remove one of them")
        if self.probability is not None and not 0.0 <= self.probability <= 1.0:
            raise UsageError(
                f"probability {self.probability:g} is outside [0, 1]", hint="e.g. 0.1 for 10%"
            )
        if self.kind is NetworkKind.PARTITION:
            seen: set[str] = set()
            if len(self.groups) < 2 or any(not group for group in self.groups):
                raise UsageError(
                    "a partition needs at least two groups of machines",
                    hint='e.g. groups = [["client"], ["server"]]',
                )
            for group in self.groups:
                for name in group:
                    if name in seen:
                        raise UsageError(
                            f"the partition names machine {name!r} twice",
                            hint="put each machine in one group",
                        )
                    seen.add(name)
        if self.burst is not None and self.burst < 1:
            raise UsageError(f"a burst of {self.burst:g} frames", hint="give a mean of 1 or more")
        if self.bits < 1:
            raise UsageError(f"{self.bits} bits per corrupted frame", hint="give 1 or more")
        for name, value in (("delay", self.delay_s), ("jitter", self.jitter_s),
                            ("period", self.duration_s)):  # fmt: skip
            if value is not None and value < 0:
                raise UsageError(f"a negative {name}", hint="give a duration such as 10ms")

    @property
    def spelling(self) -> str:
        """Where it acts, as text: `client-server out`, `nic client`, `every link`,
        `client | server`."""
        if self.kind is NetworkKind.PARTITION:
            return " | ".join(",".join(group) for group in self.groups)
        where = (
            "-".join(self.link) if self.link else f"nic {self.nic}" if self.nic else "every link"
        )
        return where if self.direction is Direction.BOTH else f"{where} {self.direction.value}"

    def machines(self) -> tuple[str, ...]:
        """Every machine name the fault gives, in order (to check against a testbed)."""
        names = list(self.link or ()) + ([self.nic] if self.nic else [])
        names += [name for group in self.groups for name in group]
        return tuple(names)

    def check(self, names: Sequence[str]) -> None:
        """UsageError naming the first machine the fault gives that is not in `names`."""
        for name in self.machines():
            if name not in names:
                raise UsageError(
                    f"no machine {name!r} for the network fault",
                    hint="machines: " + ", ".join(names),
                )

    def applies(self, source: str, destination: str) -> bool:
        """Whether frames from `source` to `destination` are the fault's."""
        if self.kind is NetworkKind.PARTITION:
            home = self._group(source)
            away = self._group(destination)
            return home is not None and away is not None and home != away
        out = self.direction in (Direction.BOTH, Direction.OUT)
        back = self.direction in (Direction.BOTH, Direction.IN)
        if self.link is not None:
            first, second = self.link
            return (out and (source, destination) == (first, second)) or (
                back and (source, destination) == (second, first)
            )
        if self.nic is not None:
            return (out and source == self.nic) or (back and destination == self.nic)
        return True

    def _group(self, name: str) -> int | None:
        return next((i for i, group in enumerate(self.groups) if name in group), None)

    def to_json(self) -> dict[str, Any]:
        """Plain data (the fault spec's `network` object)."""
        return {
            "kind": self.kind.value,
            "link": None if self.link is None else "-".join(self.link),
            "nic": self.nic,
            "direction": self.direction.value,
            "probability": self.probability,
            "burst": self.burst,
            "bits": self.bits,
            "where": self.where.value,
            "delay_s": self.delay_s,
            "jitter_s": self.jitter_s,
            "bandwidth_bps": self.bandwidth_bps,
            "groups": [list(group) for group in self.groups],
            "duration_s": self.duration_s,
        }


def header_bytes(frame: bytes) -> int:
    """How many leading bytes of an Ethernet frame are headers: Ethernet (with a VLAN tag),
    then for IPv4 its header and that of TCP, UDP or ICMP; a frame of another protocol
    (ARP) is headers throughout. Never more than the frame."""
    size = len(frame)
    if size < _ETHERNET:
        return size
    offset = _ETHERNET
    ethertype = int.from_bytes(frame[12:14], "big")
    if ethertype == _VLAN and size >= _ETHERNET + 4:
        offset += 4
        ethertype = int.from_bytes(frame[16:18], "big")
    if ethertype != _IPV4 or size < offset + 20:
        return size
    ihl = (frame[offset] & 0x0F) * 4
    protocol = frame[offset + 9]
    offset += max(20, ihl)
    if protocol == _TCP and size >= offset + 13:
        return min(size, offset + max(20, (frame[offset + 12] >> 4) * 4))
    return min(size, offset + _PROTOCOL_HEADERS.get(protocol, 0))


@dataclass(frozen=True)
class Corruption:
    """One corrupted frame: its direction, its number on that direction (from 1, counted
    from the fault's start), and the byte offset and bit (0-7) of each flipped bit."""

    source: str
    destination: str
    frame: int
    flips: tuple[tuple[int, int], ...]


@dataclass
class FaultCounters:
    """What a network fault did on one direction of a link while it acted."""

    source: str
    destination: str
    seen: int = 0
    dropped: int = 0
    corrupted: int = 0
    delayed: int = 0
    duplicated: int = 0
    reordered: int = 0


@dataclass(frozen=True)
class FilterDelivery:
    """A frame the filter lets through, at host monotonic time `at` (the switch's
    `Delivery` has the same shape)."""

    at: float
    frame: bytes


@dataclass
class _Held:
    """A frame held back for reordering, and whether a later frame overtook it."""

    due: float
    overtaken: bool = False


@dataclass
class _Direction:
    """A filter's state on one direction of a link."""

    counters: FaultCounters
    bad: bool = False
    """Gilbert-Elliott: in the bad (losing) state."""
    busy_until: float = 0.0
    """Rate: when the link finishes sending the frames queued so far."""
    queue: deque[float] = field(default_factory=deque)
    """Rate: departure times of the frames queued."""
    held: list[_Held] = field(default_factory=list)


class NetworkFilter:
    """A network fault at work on a switch: it decides, frame by frame, what the fault does
    to the frames it selects while it acts (`start` <= now < `end`, host monotonic seconds;
    `end` None: for ever) and counts it; other frames pass unchanged.

    Every random choice comes from `rng`, in the order the frames come: the same frames in
    the same order give the same decisions. `scale` converts the fault's guest seconds
    (delays, jitter) to host seconds (1 under plain TCG).
    """

    def __init__(
        self,
        fault: NetworkFault,
        rng: random.Random,
        *,
        start: float,
        end: float | None,
        scale: float = 1.0,
    ) -> None:
        self.fault = fault
        self.rng = rng
        self.start = start
        self.end = end
        self.scale = scale
        self._directions: dict[tuple[str, str], _Direction] = {}
        self.corruptions: list[Corruption] = []

    def active(self, now: float) -> bool:
        """Whether the fault acts at `now`."""
        return self.start <= now and (self.end is None or now < self.end)

    def counters(self) -> tuple[FaultCounters, ...]:
        """The counters of every direction the fault saw frames on, sorted."""
        return tuple(self._directions[key].counters for key in sorted(self._directions))

    def process(
        self, source: str, destination: str, frame: bytes, now: float
    ) -> Sequence[FilterDelivery]:
        """The deliveries of one copy of a frame (see `vmfault.network.LinkFilter`)."""
        if not self.active(now) or not self.fault.applies(source, destination):
            self._overtake(source, destination, now)
            return (FilterDelivery(now, frame),)
        state = self._state(source, destination)
        state.counters.seen += 1
        kind = self.fault.kind
        if kind is NetworkKind.LOSS:
            deliveries = self._loss(state, frame, now)
        elif kind is NetworkKind.PARTITION:
            state.counters.dropped += 1
            deliveries = []
        elif kind is NetworkKind.CORRUPT:
            deliveries = [FilterDelivery(now, self._corrupt(state, frame))]
        elif kind is NetworkKind.DELAY:
            deliveries = [FilterDelivery(self._delayed(state, now), frame)]
        elif kind is NetworkKind.DUPLICATE:
            deliveries = [FilterDelivery(now, frame)]
            if self._chance():
                state.counters.duplicated += 1
                deliveries.append(FilterDelivery(now, frame))
        elif kind is NetworkKind.REORDER:
            deliveries = [FilterDelivery(self._reordered(state, now), frame)]
        else:
            deliveries = self._rate(state, frame, now)
        if any(d.at <= now for d in deliveries):
            self._overtake(source, destination, now)
        return deliveries

    # ------------------------------------------------------------------ kinds

    def _state(self, source: str, destination: str) -> _Direction:
        key = (source, destination)
        state = self._directions.get(key)
        if state is None:
            state = self._directions[key] = _Direction(FaultCounters(source, destination))
        return state

    def _chance(self) -> bool:
        probability = self.fault.probability
        return True if probability is None else self.rng.random() < probability

    def _loss(self, state: _Direction, frame: bytes, now: float) -> list[FilterDelivery]:
        fault = self.fault
        probability = fault.probability or 0.0
        if fault.burst is None:
            lost = self.rng.random() < probability
        else:
            # Gilbert-Elliott (the simple Gilbert model): every frame in the bad state is
            # lost; bursts last `burst` frames on average (leave with r = 1/burst) and the
            # bad state holds `probability` of the time (enter with p = r*pi/(1-pi)).
            leave = 1.0 / fault.burst
            enter = 1.0 if probability >= 1.0 else leave * probability / (1.0 - probability)
            lost = state.bad
            if self.rng.random() < (leave if state.bad else enter):
                state.bad = not state.bad
        if lost:
            state.counters.dropped += 1
            return []
        return [FilterDelivery(now, frame)]

    def _corrupt(self, state: _Direction, frame: bytes) -> bytes:
        if not self._chance():
            return frame
        split = header_bytes(frame)
        low, high = {
            Where.ANY: (0, len(frame)),
            Where.HEADERS: (0, split),
            Where.PAYLOAD: (split, len(frame)),
        }[self.fault.where]
        room = (high - low) * 8
        if room <= 0:
            return frame
        positions = sorted(self.rng.sample(range(room), min(self.fault.bits, room)))
        corrupted = bytearray(frame)
        flips = []
        for position in positions:
            offset, bit = low + position // 8, position % 8
            corrupted[offset] ^= 1 << bit
            flips.append((offset, bit))
        counters = state.counters
        counters.corrupted += 1
        if len(self.corruptions) < CORRUPTIONS_KEPT:
            self.corruptions.append(
                Corruption(counters.source, counters.destination, counters.seen, tuple(flips))
            )
        return bytes(corrupted)

    def _delayed(self, state: _Direction, now: float) -> float:
        delay = self.fault.delay_s or 0.0
        jitter = self.fault.jitter_s
        held = max(0.0, delay + (self.rng.uniform(-jitter, jitter) if jitter else 0.0))
        if held > 0:
            state.counters.delayed += 1
        return now + held * self.scale

    def _reordered(self, state: _Direction, now: float) -> float:
        if not self._chance():
            return now
        delay = REORDER_DELAY_S if self.fault.delay_s is None else self.fault.delay_s
        due = now + delay * self.scale
        state.held.append(_Held(due))
        state.counters.delayed += 1
        return due

    def _overtake(self, source: str, destination: str, now: float) -> None:
        """A frame goes out now on this direction: frames held back past now are overtaken
        (each counted reordered once); those already due are forgotten."""
        state = self._directions.get((source, destination))
        if state is None or not state.held:
            return
        kept = []
        for held in state.held:
            if held.due <= now:
                continue
            if not held.overtaken:
                held.overtaken = True
                state.counters.reordered += 1
            kept.append(held)
        state.held = kept

    def _rate(self, state: _Direction, frame: bytes, now: float) -> list[FilterDelivery]:
        bandwidth = self.fault.bandwidth_bps
        assert bandwidth is not None
        queue = state.queue
        while queue and queue[0] <= now:
            queue.popleft()
        if len(queue) >= RATE_QUEUE_FRAMES:
            state.counters.dropped += 1
            return []
        leaves = max(now, state.busy_until) + len(frame) * 8 / bandwidth * self.scale
        state.busy_until = leaves
        queue.append(leaves)
        if leaves > now:
            state.counters.delayed += 1
        return [FilterDelivery(leaves, frame)]
