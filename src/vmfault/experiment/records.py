"""Experiment records: what golden runs and experiments produced, as pure data with JSON forms.

A leaf of the package: it imports classify's vocabulary (outcomes, latency, activation) and
nothing of the engine, so the store, the report and the campaign read and write records
without loading QEMU's machinery.

- `GoldenRun`: one machine's fault-free run, the reference of every experiment.
- `Injection` and one subclass per shape of fault: `RegisterInjection`, `MemoryInjection`
  (memory words and kernel code), `InstructionInjection` (F-SEFI's instruction results),
  `FlipInjection` (one flip of a storm), `DiskInjection` (a disk fault: the requests it
  failed, delayed, held, or the stored bytes it corrupted), `NetworkInjection` (a network
  fault, with what it did to frames per link direction) and `ControlInjection` (a control
  run, which injects nothing). `INJECTION_TYPES` finds a class by its `kind`.
- `MachineRun`: what one machine of the testbed did in an experiment.
- `StormSummary`: a storm's schedule and timing.
- `Traffic`: the frames that crossed a testbed's network in an experiment, per direction
  of each link (`LinkCounts`).
- `ExperimentRecord`: everything one experiment produced.

Values (addresses, masks, register contents) are ints here and hex strings in JSON, since
an xmm register's 128 bits fit no JSON number that every reader keeps exactly. Signals are
names (`SIGSEGV`) everywhere. Times carry their unit in their name.
"""

from __future__ import annotations

import dataclasses
import signal as signal_module
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vmfault.classify import Activation, Latency, Outcome
from vmfault.faults.values import ValueFormat, decode_value, format_value

__all__ = [
    "BASELINE_STRATUM",
    "CONTROL",
    "DEFAULT_MACHINE",
    "DISK_COLUMNS",
    "INJECTION_TYPES",
    "ControlInjection",
    "DeviceInjection",
    "DiskInjection",
    "DiskRequest",
    "ExperimentRecord",
    "FlipInjection",
    "GoldenRun",
    "Injection",
    "InstructionInjection",
    "IsolationRun",
    "LinkCounts",
    "MachineRun",
    "MemoryInjection",
    "NetworkInjection",
    "PageTableInjection",
    "RegisterInjection",
    "StormSummary",
    "Traffic",
    "TriggerPoint",
    "VmmInjection",
    "bit_positions",
    "disk_columns",
    "fsefi_json",
    "fsefi_line",
    "injection_from_fields",
]

BASELINE_STRATUM = "baseline"
"""The stratum of an isolation campaign's fault-free experiments (target none)."""
DEFAULT_MACHINE = "guest"
"""The name of the one machine of a campaign without named machines."""
CONTROL = "none"
"""The target, mode and trigger spec of a control run (the `none` target of faults.model)."""


def _median(values: tuple[float, ...]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def bit_positions(mask: int, width: int) -> tuple[int, ...]:
    """The set bits of `mask` among the low `width`, lowest first."""
    return tuple(i for i in range(width) if mask >> i & 1)


@dataclass(frozen=True)
class GoldenRun:
    """One machine's fault-free run of its workload, from the golden snapshot.

    Every experiment is classified against it (it is the `vmfault.classify.Reference`).
    """

    machine: str
    argv: tuple[str, ...]
    stdout: bytes
    stderr: bytes
    exit_code: int | None
    """The exit code if the workload exited normally."""
    signal: str | None
    """The name of the signal that killed it (`SIGSEGV`), if one did."""
    guest_s: float
    """Guest CLOCK_MONOTONIC seconds from the workload's fork to its reaping."""
    host_s: float
    """Host seconds from the agent's start hook to its exit hook."""
    instructions: int | None = None
    """Guest instructions from the start hook to the exit hook (deterministic mode)."""
    pid: int | None = None
    boot_s: float | None = None
    """Host seconds from launching QEMU to the workload's start (None if not timed)."""
    accel: str = ""
    deterministic: bool = False
    console: str = ""
    recorded_at: str | None = None
    """When a store recorded it (UTC, ISO 8601), None until stored."""
    restored_s: tuple[float, ...] = ()
    """Host seconds from the start hook to the exit hook of fault-free runs restored from
    the snapshot, as experiments run (their spread is the timing noise of the host)."""
    restored_vcpu_s: tuple[float, ...] = ()
    """CPU seconds QEMU's vCPU threads had in those runs (the engine's, not stored: hang
    budgets count them, so a loaded host does not turn a slow run into a hang)."""
    disks: Mapping[str, str] = field(default_factory=dict, compare=False)
    """The guest device (`vda`, ...) of each of the machine's disks, by name, as the agent
    reported it (not stored)."""

    @property
    def span_s(self) -> float:
        """Host seconds of the execution a time trigger is drawn over: the longest run
        restored from the snapshot (a moment after a shorter run's end is drawn again), else
        the golden run's."""
        return max(self.restored_s) if self.restored_s else self.host_s

    @property
    def typical_vcpu_s(self) -> float | None:
        """vCPU CPU seconds a run restored from the snapshot takes (the median), if
        measured."""
        return _median(self.restored_vcpu_s) if self.restored_vcpu_s else None

    @property
    def typical_s(self) -> float:
        """Host seconds a run restored from the snapshot takes (the median), else the
        golden run's: what hang budgets are counted in."""
        return _median(self.restored_s) if self.restored_s else self.host_s

    @property
    def exit_status(self) -> int:
        """Shell convention: the exit code, or 128 + the signal number (unknown: 128)."""
        if self.exit_code is not None:
            return self.exit_code
        return 128 + _signal_number(self.signal)

    @property
    def output(self) -> str:
        """stdout, decoded (invalid bytes replaced)."""
        return self.stdout.decode("utf-8", errors="replace")

    def same_result(self, other: GoldenRun) -> bool:
        """Whether `other` produced the same output, errors, exit code and signal."""
        return (self.stdout, self.stderr, self.exit_code, self.signal) == (
            other.stdout,
            other.stderr,
            other.exit_code,
            other.signal,
        )

    def to_json(self) -> dict[str, Any]:
        """The `vmfault run --json` object (the console left out; text decoded)."""
        return {
            "machine": self.machine,
            "workload": self.argv[0] if self.argv else "",
            "argv": list(self.argv),
            "output": self.output,
            "stderr": self.stderr.decode("utf-8", errors="replace"),
            "exit_status": self.exit_status,
            "signal": self.signal,
            "guest_s": self.guest_s,
            "host_s": self.host_s,
            "restored_s": list(self.restored_s),
            "instructions": self.instructions,
            "boot_s": self.boot_s,
            "accel": self.accel,
            "deterministic": self.deterministic,
            "disks": dict(self.disks),
        }


def _signal_number(name: str | None) -> int:
    if name is None:
        return 0
    try:
        return int(signal_module.Signals[name])
    except KeyError:
        return int(name[3:]) if name[3:].isdigit() else 0


@dataclass(frozen=True)
class TriggerPoint:
    """When and where a fault fired, counted from the workload's start."""

    spec: str = ""
    """The trigger as fired: `time:0.012345s`, `exec:main#1`, `icount:1234`, `fadd#5`, ..."""
    time_s: float | None = None
    """Host seconds from the workload's start to the injection (TCG: about guest time)."""
    instructions: int | None = None
    """Guest instructions from the workload's start to the injection (deterministic mode)."""
    rip: int | None = None
    """The vCPU's instruction pointer at the injection."""
    user_mode: bool | None = None
    """Whether the vCPU ran in user mode at the injection."""
    progress: float | None = None
    """Where the fault landed as a fraction of the execution from the snapshot (0..1):
    instructions over the golden run's count in deterministic mode; else running time over
    the run's own, when the run reached the workload's exit, or over the longest restored
    golden run; for a fault drawn in a context, the share of the context's moments before
    it. None where the trigger is not a moment of the execution."""

    def describe(self) -> str:
        """One line for people: the trigger, then the pc and mode and the progress where
        known (`time:0.012345s, pc 0x401136 in user mode, 43% of the run`)."""
        parts = [self.spec or "no trigger"]
        if self.rip is not None:
            mode = {True: " in user mode", False: " in kernel mode", None: ""}[self.user_mode]
            parts.append(f"pc {self.rip:#x}{mode}")
        if self.progress is not None:
            parts.append(f"{self.progress:.0%} of the run")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        """The record's `trigger` object."""
        return {
            "spec": self.spec,
            "time_s": self.time_s,
            "instructions": self.instructions,
            "rip": _hex(self.rip),
            "user_mode": self.user_mode,
            "progress": self.progress,
        }


@dataclass(frozen=True, kw_only=True)
class Injection:
    """What one injection did: where, which bits, the values, and whether it held.

    `injected` is true only if the location read back as written (or the fault was held
    on purpose); otherwise `reason` says why, and the experiment is never counted.
    Subclasses add what their kind of location needs; `kind` names the class.
    """

    kind: ClassVar[str] = "fault"
    HEX_FIELDS: ClassVar[tuple[str, ...]] = ("mask", "before", "after", "readback")

    target: str
    machine: str = DEFAULT_MACHINE
    location: str = ""
    width: int = 0
    """Width of the faulted location in bits."""
    mask: int = 0
    mode: str = "flip"
    before: int | None = None
    after: int | None = None
    readback: int | None = None
    injected: bool = False
    reason: str = ""
    trigger: TriggerPoint = field(default_factory=TriggerPoint)

    @property
    def bits(self) -> tuple[int, ...]:
        """The bit positions the mask changes."""
        return bit_positions(self.mask, self.width)

    def fields(self) -> dict[str, Any]:
        """Every field by name (values as they are), `trigger` flattened to `trigger`
        (its spec), `time_s`, `instructions`, `rip`, `user_mode` and `progress`."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        point = data.pop("trigger")
        data.update(
            trigger=point.spec,
            time_s=point.time_s,
            instructions=point.instructions,
            rip=point.rip,
            user_mode=point.user_mode,
            progress=point.progress,
        )
        return data

    def to_json(self) -> dict[str, Any]:
        """Plain data: `fields()` and `kind`, values and addresses as hex strings."""
        data = self.fields()
        for name in (*self.HEX_FIELDS, "rip"):
            data[name] = _hex(data[name])
        return {"kind": self.kind, **data}

    def fault_json(self) -> dict[str, Any]:
        """The record's `fault` object: what was faulted, the bits and the values."""
        address = getattr(self, "address", None)
        virtual = getattr(self, "virtual", None)
        return {
            "target": self.target,
            "machine": self.machine,
            "location": self.location,
            "bits": list(self.bits),
            "mask": f"{self.mask:#x}",
            "mode": self.mode,
            "width": self.width,
            "before": _hex(self.before),
            "after": _hex(self.after),
            "readback": _hex(self.readback),
            "address": _hex(address if isinstance(address, int) else None),
            "virtual": _hex(virtual if isinstance(virtual, int) else None),
            "injected": self.injected,
        }


@dataclass(frozen=True, kw_only=True)
class RegisterInjection(Injection):
    """A fault in a vCPU register."""

    kind: ClassVar[str] = "register"

    register: str


@dataclass(frozen=True, kw_only=True)
class MemoryInjection(Injection):
    """A fault in guest memory: a word of RAM, of a process, or a byte of kernel code."""

    kind: ClassVar[str] = "memory"
    HEX_FIELDS: ClassVar[tuple[str, ...]] = (*Injection.HEX_FIELDS, "address", "virtual")

    address: int | None = None
    """Guest-physical address of the faulted word or byte."""
    virtual: int | None = None
    """Its virtual address, where the fault was aimed through page tables."""


@dataclass(frozen=True, kw_only=True)
class PageTableInjection(MemoryInjection):
    """A fault in a page-table entry of the target machine (`memory:page-table`):
    `address` is the entry's guest-physical address, `virtual` the first virtual address
    the entry maps, `level` its table (PML4, PDPT, PD or PT), `space` whose entry it is
    (`user`: the workload's half of the address space, `kernel`: the kernel's), `leaf`
    whether it maps a page (else it points to a table), `entries` how many present
    entries the fault was drawn among."""

    kind: ClassVar[str] = "page-table"

    level: str = ""
    space: str = ""
    leaf: bool = False
    entries: int = 0


@dataclass(frozen=True, kw_only=True)
class FlipInjection(MemoryInjection):
    """One flip of a storm: a byte, one bit, at a time in guest seconds."""

    kind: ClassVar[str] = "flip"

    scheduled_s: float = 0.0
    """Guest seconds from the workload's start at which the schedule placed the flip."""

    @property
    def time_s(self) -> float:
        """Guest seconds from the workload's start at which the flip was made."""
        return self.trigger.time_s or 0.0

    @property
    def bit(self) -> int:
        """The flipped bit of the byte (0 if none was)."""
        return self.bits[0] if self.bits else 0

    def flip_json(self) -> dict[str, Any]:
        """One entry of `vmfault storm --json`'s `flips`."""
        return {
            "time_s": self.time_s,
            "scheduled_s": self.scheduled_s,
            "address": _hex(self.address),
            "virtual": _hex(self.virtual),
            "bit": self.bit,
            "before": _hex(self.before),
            "after": _hex(self.after),
            "readback": _hex(self.readback),
            "injected": self.injected,
            "reason": self.reason,
        }


@dataclass(frozen=True, kw_only=True)
class InstructionInjection(MemoryInjection):
    """A fault in the result of one dynamic instance of an instruction (F-SEFI).

    `address`/`virtual` are set for a memory result, `register` for a register result.
    """

    kind: ClassVar[str] = "instruction"
    HEX_FIELDS: ClassVar[tuple[str, ...]] = (*MemoryInjection.HEX_FIELDS, "instruction")

    register: str | None = None
    op: str
    """The class of the faulted instruction (F-SEFI's faulty op)."""
    function: str | None = None
    instance: int | None = None
    """The dynamic instance, counted from 1 in the workload process."""
    instruction: int | None = None
    """The instruction's link-time address."""
    disassembly: str | None = None
    value_format: str = "int"
    """How the result's bits read (`f64`, `int`, ...; `vmfault.faults.instructions`)."""
    process: str | None = None
    pid: int | None = None


MAX_LISTED_REQUESTS = 64
"""Requests a disk injection lists one by one (its counts cover them all)."""


@dataclass(frozen=True)
class DiskRequest:
    """One request of the guest's disk that a disk fault reached, and what it did to it."""

    number: int
    """The request's number, counted from 1 at the fault's arming."""
    op: str
    """`read`, `write`, `flush`, `trim`, `write-zeroes`."""
    sector: int
    """Its first 512-byte sector."""
    sectors: int
    """How many sectors it spans (0 for a flush)."""
    action: str
    """`failed`, `delayed`, `held`, or for a corruption `corrupted` (a read that returned
    the corrupted bytes) and `overwrote` (a write over them: the corruption is gone)."""
    errno: str | None = None
    """The errno a failed request returned."""
    delay_s: float | None = None
    """Host seconds a delayed or held request waited before it went on."""
    after_s: float = 0.0
    """Host seconds from the fault's arming to the request's arrival."""

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)


def _requests_of(value: Any) -> tuple[DiskRequest, ...]:
    return tuple(r if isinstance(r, DiskRequest) else DiskRequest(**r) for r in value or ())


@dataclass(frozen=True, kw_only=True)
class DiskInjection(Injection):
    """A disk fault: where it went, what it does, and every request it reached.

    A fault in requests (bad-block, read-error, write-error, flush-error, latency, stall)
    counts the requests that reached it while it was armed (`requests_seen`) and the ones
    it failed, delayed or held (`requests_faulted`, by action in `counts`, the first
    MAX_LISTED_REQUESTS in `requests`). A corruption (`disk:corrupt`) flips `mask` in the
    64-bit word at byte `offset` of the disk, with `before`, `after` and `readback` that
    word's stored values (little-endian, read through QEMU), and counts the reads that
    returned it (`corrupted`) until a write overwrote it. `injected` says the fault was
    armed (or the corruption read back as written); a fault no request reached is not
    activated.
    """

    kind: ClassVar[str] = "disk"

    disk: str = ""
    device: str = ""
    """The guest's device of the disk (`vda`)."""
    fault: str = ""
    """`bad-block`, `read-error`, `write-error`, `flush-error`, `latency`, `stall`, `corrupt`."""
    first_sector: int | None = None
    last_sector: int | None = None
    """The sectors the fault applies to (inclusive); None: every sector."""
    errno: str | None = None
    delay_s: float | None = None
    jitter_s: float | None = None
    probability: float | None = None
    once: bool = False
    offset: int | None = None
    """A corruption's byte offset on the disk."""
    requests_seen: int = 0
    requests_faulted: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    requests: tuple[DiskRequest, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "requests", _requests_of(self.requests))
        object.__setattr__(self, "counts", dict(self.counts))

    @property
    def sectors_text(self) -> str:
        """`2048`, `2048-2055` or `any`."""
        if self.first_sector is None or self.last_sector is None:
            return "any"
        if self.first_sector == self.last_sector:
            return str(self.first_sector)
        return f"{self.first_sector}-{self.last_sector}"

    @property
    def reached(self) -> bool:
        """Whether any request reached the fault (for a corruption: read it)."""
        return self.requests_faulted > 0

    def fields(self) -> dict[str, Any]:
        """As `Injection.fields`, the requests and counts as plain data."""
        data = super().fields()
        data["requests"] = [r.to_json() for r in self.requests]
        data["counts"] = dict(self.counts)
        return data

    def disk_json(self) -> dict[str, Any]:
        """The record's `disk` object: the disk, the fault, what it reached."""
        return {
            "disk": self.disk, "device": self.device, "fault": self.fault,
            "sectors": self.sectors_text, "errno": self.errno, "delay_s": self.delay_s,
            "jitter_s": self.jitter_s, "probability": self.probability, "once": self.once,
            "offset": _hex(self.offset), "before": _hex(self.before), "after": _hex(self.after),
            "readback": _hex(self.readback), "requests_seen": self.requests_seen,
            "requests_faulted": self.requests_faulted, "counts": dict(self.counts),
            "requests": [r.to_json() for r in self.requests],
        }  # fmt: skip


DISK_COLUMNS: tuple[str, ...] = (
    "disk", "disk_fault", "sector_first", "sector_last", "errno", "requests_faulted",
)  # fmt: skip
"""The analysis columns of a disk fault, derived from its injection's fields."""


def disk_columns(detail: Mapping[str, Any] | None) -> dict[str, object]:
    """The DISK_COLUMNS of an injection from its kind's own fields (`detail_json`); all
    None for an injection that is no disk fault."""
    if not detail or "fault" not in detail or "disk" not in detail:
        return dict.fromkeys(DISK_COLUMNS)
    return {
        "disk": detail.get("disk"),
        "disk_fault": detail.get("fault"),
        "sector_first": detail.get("first_sector"),
        "sector_last": detail.get("last_sector"),
        "errno": detail.get("errno"),
        "requests_faulted": detail.get("requests_faulted"),
    }


def _control_point() -> TriggerPoint:
    return TriggerPoint(spec=CONTROL)


@dataclass(frozen=True, kw_only=True)
class ControlInjection(Injection):
    """The injection of a control run: nothing, at the golden snapshot itself.

    Target, mode and trigger spec are all `none`, and no location, bits, values or
    progress are recorded; `injected` is true once the run went ahead (there is nothing to
    read back), so the experiment counts and must come out benign.
    """

    kind: ClassVar[str] = "control"

    target: str = CONTROL
    mode: str = CONTROL
    trigger: TriggerPoint = field(default_factory=_control_point)


COUNTS = ("seen", "delivered", "dropped", "corrupted", "delayed", "duplicated", "reordered",
          "overflow")  # fmt: skip
"""The counters of a `LinkCounts`, in order."""
FAULT_COUNTS = ("seen", "dropped", "corrupted", "delayed", "duplicated", "reordered")
"""What a network fault counts (the switch counts the rest: delivered, overflow)."""


@dataclass(frozen=True)
class LinkCounts:
    """Frames on one direction of a link, from `source` to `destination`: `seen` entered
    it, `delivered` reached the destination's card, and a network fault `dropped`,
    `corrupted`, `delayed`, `duplicated` or `reordered` (overtaken by later frames) some of
    them; `overflow` were lost because the destination's guest did not read its card."""

    source: str
    destination: str
    seen: int = 0
    delivered: int = 0
    dropped: int = 0
    corrupted: int = 0
    delayed: int = 0
    duplicated: int = 0
    reordered: int = 0
    overflow: int = 0

    @property
    def direction(self) -> str:
        """`source>destination`."""
        return f"{self.source}>{self.destination}"

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> LinkCounts:
        """The inverse of `to_json` (unknown keys ignored)."""
        return cls(
            str(data["source"]), str(data["destination"]),
            **{name: int(data.get(name, 0)) for name in COUNTS},
        )  # fmt: skip


def _totals(links: tuple[LinkCounts, ...]) -> dict[str, int]:
    return {name: sum(getattr(link, name) for link in links) for name in COUNTS}


@dataclass(frozen=True)
class Traffic:
    """The frames that crossed a testbed's network in one experiment, per link direction
    (sorted), as the switch counted them from the restore to the end."""

    links: tuple[LinkCounts, ...] = ()

    @property
    def frames(self) -> int:
        """Frames that entered a link (a broadcast counts once per machine it reaches)."""
        return sum(link.seen for link in self.links)

    @property
    def totals(self) -> dict[str, int]:
        """Every counter summed over the links."""
        return _totals(self.links)

    def to_json(self) -> dict[str, Any]:
        """Plain data: `frames` and `links`."""
        return {"frames": self.frames, "links": [link.to_json() for link in self.links]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Traffic:
        """The inverse of `to_json`."""
        return cls(tuple(LinkCounts.from_json(item) for item in data.get("links", ())))


@dataclass(frozen=True)
class CorruptedBit:
    """One bit a network fault flipped: in the `frame`th frame (from 1, from the fault's
    start) from `source` to `destination`, at byte `offset`, bit `bit` (0-7)."""

    source: str
    destination: str
    frame: int
    offset: int
    bit: int


@dataclass(frozen=True, kw_only=True)
class NetworkInjection(Injection):
    """A network fault: where it acted (`location`: the link, card or groups; `machine`:
    the machine whose clock triggered it, or whose card it acted on), for how long, and
    what it did to the frames, per link direction (`links`) and bit by bit for the
    corruptions (`corruptions`, the first ones). `mode` is the fault's kind (`loss`, ...)."""

    kind: ClassVar[str] = "network"

    link: str | None = None
    direction: str = "both"
    period_s: float | None = None
    """Guest seconds the fault acted (None: to the end of the experiment)."""
    links: tuple[LinkCounts, ...] = ()
    corruptions: tuple[CorruptedBit, ...] = ()

    @property
    def totals(self) -> dict[str, int]:
        """What the fault counted (FAULT_COUNTS), summed over the links."""
        summed = _totals(self.links)
        return {name: summed[name] for name in FAULT_COUNTS}

    def fields(self) -> dict[str, Any]:
        """As `Injection.fields`, the counts and corruptions as plain data, with the
        totals (`frames_seen`, `frames_dropped`, ...) beside them."""
        data = super().fields()
        data["links"] = [link.to_json() for link in self.links]
        data["corruptions"] = [dataclasses.astuple(bit) for bit in self.corruptions]
        data.update({f"frames_{name}": value for name, value in self.totals.items()})
        return data

    @classmethod
    def from_fields(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """`fields()`-shaped values turned back into constructor arguments."""
        return {
            **values,
            "links": tuple(LinkCounts.from_json(item) for item in values.get("links") or ()),
            "corruptions": tuple(
                CorruptedBit(str(a), str(b), int(c), int(d), int(e))
                for a, b, c, d, e in values.get("corruptions") or ()
            ),
        }


@dataclass(frozen=True, kw_only=True)
class DeviceInjection(MemoryInjection):
    """A fault in what the guest asks of a virtual device: a field of a virtio request
    (a descriptor's addr, len, flags or next, or the request header) in guest memory, or
    a stray write to a device register (`space` `memory`: MMIO, `io`: a port).

    `address` is the guest-physical address or the port. A register is an event, not a
    cell: `injected` says the write was made, and `readback` is what the register reads
    afterwards (None where reading it would take input from the device, or it is write-only).
    QEMU's reaction (`reaction`: the lines it logged, a device it marked broken) makes the
    outcome `vmm-error`; what the guest did is kept beside it (`guest_outcome`)."""

    kind: ClassVar[str] = "device"

    device: str = ""
    """The device as QEMU names it (`virtio-blk`, `serial`, `ioapic`, ...)."""
    space: str = "memory"
    part: str = ""
    """`descriptor`, `header` or `register`."""
    field: str = ""
    """The field (`addr`, `len`, `flags`, `next`, `type`, `sector`, ...) or register offset."""
    queue: int | None = None
    descriptor: int | None = None
    """The descriptor's position in the request's chain (0: its head)."""
    taken: bool | None = None
    """Whether QEMU had taken the request before the fault was made (then it had read it,
    and the fault is not activated); None for a register."""
    reaction: str = ""
    guest_outcome: str | None = None
    guest_reason: str = ""


@dataclass(frozen=True, kw_only=True)
class VmmInjection(Injection):
    """A fault in the QEMU process itself: a word of its writable memory (`mapping`,
    `host_address`; never guest RAM) or a register of one of its threads (`thread`,
    `tid`, `thread_register`). A QEMU that dies of it is `vmm-error` with its signal as the
    cause; what QEMU logged and the guest's outcome are kept as for device faults."""

    kind: ClassVar[str] = "vmm"
    HEX_FIELDS: ClassVar[tuple[str, ...]] = (*Injection.HEX_FIELDS, "host_address")

    region: str = ""
    """`heap`, `data` or `registers`."""
    mapping: str = ""
    """The mapping the word lies in: `[heap]`, `anon@0x7f...`, a library's file name."""
    host_address: int | None = None
    thread: str = ""
    """The thread's name (`CPU 0/TCG`, `qemu-system-x86`, `call_rcu`, ...)."""
    tid: int | None = None
    thread_register: str | None = None
    """The thread's register (`rsp`, `rip`, ...; not a vCPU register: kept apart from those)."""
    reaction: str = ""
    guest_outcome: str | None = None
    guest_reason: str = ""


INJECTION_TYPES: Mapping[str, type[Injection]] = {
    cls.kind: cls
    for cls in (
        Injection,
        RegisterInjection,
        MemoryInjection,
        PageTableInjection,
        FlipInjection,
        InstructionInjection,
        DiskInjection,
        ControlInjection,
        NetworkInjection,
        DeviceInjection,
        VmmInjection,
    )
}
"""Injection classes by `kind`, for readers that rebuild records."""


def injection_from_fields(kind: str, values: Mapping[str, Any]) -> Injection:
    """Rebuild an injection of `kind` from `fields()`-shaped values (extra keys ignored;
    an unknown kind gives a plain `Injection`)."""
    cls = INJECTION_TYPES.get(kind, Injection)
    if cls is NetworkInjection:
        values = NetworkInjection.from_fields(values)
    names = {f.name for f in dataclasses.fields(cls)}
    point = TriggerPoint(
        spec=str(values.get("trigger") or ""),
        time_s=values.get("time_s"),
        instructions=values.get("instructions"),
        rip=values.get("rip"),
        user_mode=values.get("user_mode"),
        progress=values.get("progress"),
    )
    chosen = {k: v for k, v in values.items() if k in names and k != "trigger"}
    return cls(**chosen, trigger=point)


@dataclass(frozen=True)
class MachineRun:
    """What one machine of the testbed did in an experiment, classified on its own."""

    machine: str
    outcome: Outcome
    reason: str
    cause: str | None = None
    evidence: str = ""
    output: str = ""
    stderr: str = ""
    exit_status: int | None = None
    signal: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "cause": self.cause,
            "evidence": self.evidence,
            "output": self.output,
            "stderr": self.stderr,
            "exit_status": self.exit_status,
            "signal": self.signal,
        }


@dataclass(frozen=True)
class IsolationRun:
    """What the control machine of an isolation campaign did in one experiment: its
    runtimes, measured from its restore to its exit, and whether it kept to its golden run.

    `vcpu_s` is the CPU time QEMU's vCPU threads had (the host scheduler's account),
    `guest_s` the guest's own CLOCK_MONOTONIC from the workload's fork to its reap,
    `host_s` host wall seconds, `instructions` guest instructions (deterministic mode only).
    `violation` is empty when the control's output, exit status and console matched its
    golden run, else what differed (its run is then a vmm-error, `evidence` the proof).
    `baseline`: the experiment injected nothing (an interleaved fault-free run).
    `load_1m` is the host's one-minute load average at the experiment's end; `host_cpus`
    the cores the control's QEMU was pinned to (() not pinned).
    """

    machine: str
    baseline: bool
    vcpu_s: float | None = None
    guest_s: float | None = None
    host_s: float | None = None
    instructions: int | None = None
    violation: str = ""
    evidence: str = ""
    load_1m: float | None = None
    host_cpus: tuple[int, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """Plain data (`from_json` reads it back)."""
        data = dataclasses.asdict(self)
        data["host_cpus"] = list(self.host_cpus)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IsolationRun:
        """The run from `to_json` data (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        values["host_cpus"] = tuple(values.get("host_cpus") or ())
        return cls(**values)


@dataclass(frozen=True)
class StormSummary:
    """What a storm adds to its experiment's record (its flips are the record's injections).

    Times are guest seconds (`guest_time`: `running-time` under TCG, `instructions` in
    deterministic mode, one instruction = 1 ns). Errors are |achieved - scheduled| over the
    gaps between flips; the first flip's error, from the workload's start, is apart.
    """

    region: str
    schedule: str
    flips: int
    """Flips made (each read back; see the injections for which held)."""
    guest_s: float
    """Guest seconds from the workload's start to the last flip."""
    real_world_s: float | None
    """Real-world seconds the storm stands for (rate-model storms), else None."""
    max_error_s: float
    mean_error_s: float
    first_flip_error_s: float
    guest_time: str
    attempts: int = 1
    """Storm runs from the snapshot it took: a flip too far off its time restarts the
    storm before its outcome is known."""

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExperimentRecord:
    """Everything one experiment produced, ready to store or print.

    The experiment's outcome is that of one machine of its testbed, the judged one
    (`judged`); `machines` holds what every machine did, one run per machine, ordered by
    name (whatever order they are given in). `injections` lists every
    injection in order (at least one: a fault that could not be placed is recorded as an
    injection that did not hold, with its reason).
    """

    index: int
    seed: int
    spec: Mapping[str, Any]
    injections: tuple[Injection, ...]
    machines: tuple[MachineRun, ...]
    judged: str = DEFAULT_MACHINE
    latency: Latency | None = None
    activation: Activation = Activation.UNKNOWN
    phases_s: Mapping[str, float] = field(default_factory=dict)
    storm: StormSummary | None = None
    """Storm experiments: the schedule and its timing."""
    traffic: Traffic | None = None
    """Experiments on a testbed with a network: the frames on each link direction."""
    isolation: IsolationRun | None = None
    """Isolation campaigns: what the control machine did."""

    def __post_init__(self) -> None:
        if not self.injections:
            raise ValueError("an experiment record needs at least one injection")
        names = [run.machine for run in self.machines]
        if len(set(names)) != len(names):
            raise ValueError(f"a machine has two runs in the record: {sorted(names)}")
        if self.judged not in names:
            raise ValueError(f"the judged machine {self.judged!r} has no run in the record")
        # One order whatever the testbed's, so that a stored record reloads equal.
        ordered = tuple(sorted(self.machines, key=lambda run: run.machine))
        object.__setattr__(self, "machines", ordered)

    @property
    def result(self) -> MachineRun:
        """The judged machine's run, which is the experiment's outcome."""
        return next(run for run in self.machines if run.machine == self.judged)

    @property
    def injection(self) -> Injection:
        """The first injection."""
        return self.injections[0]

    @property
    def extra_injections(self) -> tuple[Injection, ...]:
        """Every injection after the first (more instruction faults, a storm's flips)."""
        return self.injections[1:]

    @property
    def outcome(self) -> Outcome:
        """The experiment's outcome class."""
        return self.result.outcome

    @property
    def reason(self) -> str:
        """The one line behind the outcome."""
        return self.result.reason

    @property
    def cause(self) -> str | None:
        """The crash cause, if any."""
        return self.result.cause

    @property
    def evidence(self) -> str:
        """The console line, event or output line behind the outcome."""
        return self.result.evidence

    @property
    def output(self) -> str:
        """The judged machine's workload stdout."""
        return self.result.output

    @property
    def stderr(self) -> str:
        """The judged machine's workload stderr."""
        return self.result.stderr

    @property
    def exit_status(self) -> int | None:
        """The judged machine's workload exit status, if it reported one."""
        return self.result.exit_status

    @property
    def signal(self) -> str | None:
        """The signal that ended the judged machine's workload, if one did."""
        return self.result.signal

    def to_json(self) -> dict[str, Any]:
        """The `vmfault inject --json` object. Instruction faults add `instruction` (F-SEFI's
        log fields of the first) and storms `storm`; both list the other injections in
        `extra_injections`. Disk faults add `disk` (`DiskInjection.disk_json`)."""
        first = self.injection
        data: dict[str, Any] = {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "cause": self.cause,
            "evidence": self.evidence,
            "fault": first.fault_json(),
            "trigger": first.trigger.to_json(),
            "latency": None
            if self.latency is None
            else {"value": self.latency.value, "unit": self.latency.unit.value},
            "activation": self.activation.value,
            "output": self.output,
            "stderr": self.stderr,
            "exit_status": self.exit_status,
            "signal": self.signal,
            "seed": self.seed,
            "index": self.index,
            "spec": dict(self.spec),
            "phases_s": dict(self.phases_s),
            "judged": self.judged,
            "machines": {run.machine: run.to_json() for run in self.machines},
        }
        if isinstance(first, InstructionInjection):
            data["instruction"] = fsefi_json(first)
            data["extra_injections"] = [
                fsefi_json(i) if isinstance(i, InstructionInjection) else i.to_json()
                for i in self.extra_injections
            ]
        elif self.extra_injections:
            data["extra_injections"] = [i.to_json() for i in self.extra_injections]
        if isinstance(first, DiskInjection):
            data["disk"] = first.disk_json()
        if self.storm is not None:
            data["storm"] = self.storm.to_json()
        if isinstance(first, NetworkInjection):
            data["network"] = {
                "kind": first.mode, "where": first.location, "link": first.link,
                "direction": first.direction, "period_s": first.period_s, **first.totals,
                "links": [link.to_json() for link in first.links],
                "corruptions": [dataclasses.asdict(bit) for bit in first.corruptions],
            }  # fmt: skip
        if self.traffic is not None:
            data["traffic"] = self.traffic.to_json()
        if self.isolation is not None:
            data["isolation"] = self.isolation.to_json()
        return data

    def storm_json(self) -> dict[str, Any]:
        """The `vmfault storm --json` object: `flips` first, then the outcome and timing."""
        storm = self.storm
        flips = [i for i in self.injections if isinstance(i, FlipInjection)]
        return {
            "flips": [flip.flip_json() for flip in flips],
            "outcome": self.outcome.value,
            "reason": self.reason,
            "cause": self.cause,
            "evidence": self.evidence,
            "output": self.output,
            "exit_status": self.exit_status,
            "region": None if storm is None else storm.region,
            "schedule": None if storm is None else storm.schedule,
            "seed": self.seed,
            "timing": None
            if storm is None
            else {
                "guest_time": storm.guest_time,
                "max_error_s": storm.max_error_s,
                "mean_error_s": storm.mean_error_s,
                "first_flip_error_s": storm.first_flip_error_s,
                "guest_s": storm.guest_s,
                "real_world_s": storm.real_world_s,
                "attempts": storm.attempts,
            },
            "machine": self.injection.machine,
            "phases_s": dict(self.phases_s),
        }


def fsefi_json(injection: InstructionInjection) -> dict[str, Any]:
    """F-SEFI's injection log fields of an instruction fault, values decoded."""
    fmt = ValueFormat(injection.value_format)

    def value(raw: int | None) -> int | float | list[float] | None:
        return None if raw is None else decode_value(raw, fmt)

    return {
        "time_s": injection.trigger.time_s,
        "process": injection.process,
        "pid": injection.pid,
        "function": injection.function,
        "op": injection.op,
        "address": _hex(injection.instruction),
        "disassembly": injection.disassembly,
        "instance": injection.instance,
        "destination": injection.location.rpartition(" -> ")[2] if injection.location else None,
        "bits": list(injection.bits),
        "mask": _mask_text(injection),
        "before": value(injection.before),
        "after": value(injection.after),
        "readback": value(injection.readback),
        "before_hex": _hex(injection.before),
        "after_hex": _hex(injection.after),
        "format": fmt.value,
        "injected": injection.injected,
        "log": fsefi_line(injection),
    }


def _mask_text(injection: Injection) -> str:
    return f"{injection.mask:#0{2 + (injection.width + 3) // 4}x}"


def fsefi_line(injection: InstructionInjection) -> str:
    """F-SEFI's injection log line: process, function, op, address, values, instance."""
    fmt = ValueFormat(injection.value_format)

    def shown(raw: int | None) -> str:
        return "-" if raw is None else format_value(raw, fmt)

    time_s = injection.trigger.time_s
    time_text = "-" if time_s is None else f"{time_s:.6f}s"
    return (
        f"[INJECT] time={time_text} process={injection.process} pid={injection.pid} "
        f"function={injection.function or '-'} op={injection.op} "
        f"addr={_hex(injection.instruction)} "
        f'insn="{injection.disassembly}" before={shown(injection.before)} '
        f"mask={_mask_text(injection)} after={shown(injection.after)} "
        f"dic={injection.instance}"
    )
