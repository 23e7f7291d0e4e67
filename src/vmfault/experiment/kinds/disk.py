"""Disk faults: bad blocks, I/O errors, latency, stalls and silent corruption of a guest's
disk, from the host through QEMU's block layer, with no help from the guest.

Every disk of a machine is served by a tap (`vmfault.machine.nbd`, `Machine.disk_tap`).
A fault in requests sets the tap's policy at the trigger, or at the snapshot for a
`request:N` trigger (then only the Nth request on is faulted); the policy, running in the
tap's thread, fails, delays or holds the requests that match the fault (operation,
sectors, probability, once) and notes each. A corruption flips bits of a 64-bit word of one
sector of the stored data, written and read back in the tap with the guest halted, and the
tap then watches for the reads that return it. After the run (`finish`) the tap serves
every request again and the injection records every request the fault reached; a fault
no request reached is not activated.

Stalls: QEMU drains every disk whenever it stops the guest (a debug halt included), and a
drain waits for held requests. So a stall is run by this kind itself, from the trigger to
its end (the end of the period, else of the hang budget) without halting the guest, and
its held requests go on before the guest is halted; a stop of the guest's own (the exit
hook, a kernel symptom) ends it early.

"Touched" sectors are learnt once per disk from a fault-free run restored from the
snapshot: every sector a read or a write of it reached, as the tap saw them.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

from vmfault.errors import MachineError, UsageError
from vmfault.experiment.kinds.base import FaultKind, Injected
from vmfault.experiment.records import (
    MAX_LISTED_REQUESTS,
    DiskInjection,
    DiskRequest,
    TriggerPoint,
)
from vmfault.experiment.state import Experiment, Symptom
from vmfault.experiment.testbed import GOLDEN_TIMEOUT_S, GuestMachine, run_to_exit
from vmfault.experiment.triggers import reach_trigger, trigger_text
from vmfault.faults.model import (
    SECTOR_BYTES,
    DiskFault,
    FaultSpec,
    SectorChoice,
    TriggerKind,
    errno_number,
)
from vmfault.machine.nbd import (
    PASS,
    BlockTap,
    TapAction,
    TapDecision,
    TapEvent,
    TapOp,
    TapRequest,
    serve_everything,
)

__all__ = ["DiskKind", "DiskPolicy", "merge_sectors"]

WORD_BYTES = 8
"""A corruption flips bits of one 64-bit word of a sector."""
_READS = frozenset({TapOp.READ})
_WRITES = frozenset({TapOp.WRITE, TapOp.WRITE_ZEROES})
_OPERATIONS: dict[str, frozenset[TapOp]] = {
    "bad-block": _READS | _WRITES,
    "read-error": _READS,
    "write-error": _WRITES,
    "flush-error": frozenset({TapOp.FLUSH}),
    "latency": _READS | _WRITES | {TapOp.FLUSH},
    "stall": _READS | _WRITES | {TapOp.FLUSH},
    "corrupt": _READS | _WRITES,
}
"""The operations each disk fault applies to."""
_ACTIONS = {TapAction.FAIL: "failed", TapAction.DELAY: "delayed", TapAction.HOLD: "held"}


def merge_sectors(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """(first, last) sector spans merged into sorted disjoint ones."""
    merged: list[tuple[int, int]] = []
    for first, last in sorted(spans):
        if merged and first <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], last))
        else:
            merged.append((first, last))
    return tuple(merged)


def _span(request: TapRequest) -> tuple[int, int] | None:
    """The sectors a request covers (first, last), or None for one that covers none."""
    if request.length <= 0:
        return None
    first = request.offset // SECTOR_BYTES
    return first, (request.offset + request.length - 1) // SECTOR_BYTES


class DiskPolicy:
    """Decides, in the tap's thread, what a disk fault does to each request, and notes it.

    `first`/`last` are the faulted sectors (None: all); `word` the byte range of a
    corrupted word; requests before number `from_request` pass untouched. `rng` draws the
    probability and the jitter, in the order requests arrive.
    """

    def __init__(
        self,
        fault: DiskFault,
        *,
        first: int | None,
        last: int | None,
        from_request: int = 1,
        rng: random.Random,
        word: tuple[int, int] | None = None,
    ) -> None:
        self.fault = fault
        self.first = first
        self.last = last
        self.from_request = from_request
        self.rng = rng
        self.word = word
        self.armed_s = time.monotonic()
        self.seen = 0
        self.faulted = 0
        self.counts: Counter[str] = Counter()
        self.requests: list[DiskRequest] = []
        self.first_faulted_s: float | None = None
        self.ended = False
        """Set once the fault is over (a stall's end): requests pass from then on."""
        self._spent = False
        self._operations = _OPERATIONS[fault.fault]

    def _matches(self, request: TapRequest) -> bool:
        if request.op not in self._operations:
            return False
        if self.word is not None:
            return request.offset < self.word[1] and self.word[0] < request.offset + request.length
        if self.first is None or self.last is None:
            return True
        span = _span(request)
        return span is not None and span[0] <= self.last and self.first <= span[1]

    def __call__(self, request: TapRequest) -> TapDecision:
        if self.ended or request.number < self.from_request or not self._matches(request):
            return PASS
        self.seen += 1
        if self.fault.corrupts:
            if self.word is None:
                return PASS
            if request.op in _WRITES:
                self._note(request, "overwrote", faulted=False)
                self.word = None  # the corruption is gone: nothing more to watch
            else:
                self._note(request, "corrupted")
            return PASS
        if self.fault.once and self._spent:
            return PASS
        probability = self.fault.probability
        if probability is not None and self.rng.random() >= probability:
            return PASS
        self._spent = True
        if self.fault.fails:
            self._note(request, "failed", errno=self.fault.errno)
            return TapDecision(TapAction.FAIL, errno_number(self.fault.errno))
        if self.fault.fault == "latency":
            jitter = self.fault.jitter_s
            delay = max(
                0.0, self.fault.delay_s + (self.rng.uniform(-jitter, jitter) if jitter else 0)
            )
            self._note(request, "delayed", delay_s=delay)
            return TapDecision(TapAction.DELAY, delay_s=delay)
        self._note(request, "held")
        return TapDecision(TapAction.HOLD)

    def _note(
        self,
        request: TapRequest,
        action: str,
        *,
        errno: str | None = None,
        delay_s: float | None = None,
        faulted: bool = True,
    ) -> None:
        if faulted:
            self.faulted += 1
            if self.first_faulted_s is None:
                self.first_faulted_s = request.at_s
        self.counts[action] += 1
        if len(self.requests) < MAX_LISTED_REQUESTS:
            span = _span(request)
            self.requests.append(
                DiskRequest(
                    number=request.number,
                    op=request.op.value,
                    sector=request.offset // SECTOR_BYTES,
                    sectors=0 if span is None else span[1] - span[0] + 1,
                    action=action,
                    errno=errno,
                    delay_s=delay_s,
                    after_s=max(0.0, request.at_s - self.armed_s),
                )
            )


@dataclass
class _Armed:
    """The fault armed in the current experiment."""

    disk: str
    tap: BlockTap
    policy: DiskPolicy


class DiskKind(FaultKind):
    """Faults in a guest disk's requests or stored data."""

    latency: ClassVar[bool] = True

    def __init__(self, machine: GuestMachine) -> None:
        self.machine = machine
        self._touched: dict[str, tuple[tuple[int, int], ...]] = {}
        self._armed: _Armed | None = None
        self._sector: int | None = None

    # ------------------------------------------------------------------ choices

    def _sizes(self) -> dict[str, int]:
        return {disk.name: disk.sectors for disk in self.machine.spec.disks}

    def disk_name(self, spec: FaultSpec) -> str:
        """The disk `spec` goes to on this machine (UsageError if it has none such)."""
        return _fault(spec).disk_of(self._sizes())

    def prepare(self, spec: FaultSpec) -> None:
        """Check the disk and the sectors; learn the touched sectors (once per disk)."""
        fault = _fault(spec)
        name = self.disk_name(spec)
        if fault.sectors.choice is SectorChoice.TOUCHED and name not in self._touched:
            self._touched[name] = self.learn_touched(name)

    def learn_touched(self, name: str) -> tuple[tuple[int, int], ...]:
        """The sectors of disk `name` a fault-free run from the snapshot reads or writes."""
        machine = self.machine
        machine.restore()
        tap = machine.vm.disk_tap(name)
        tap.set_policy(serve_everything)
        run_to_exit([machine], timeout_s=GOLDEN_TIMEOUT_S)
        machine.vm.halt()
        spans = [
            span
            for event in tap.call(lambda: list(tap.events))
            if event.request.op in _READS | _WRITES and (span := _span(event.request))
        ]
        return merge_sectors(spans)

    def _choose_sector(self, experiment: Experiment, name: str) -> int | None:
        """The sector drawn for this experiment (None: the fault covers a given range or
        every sector)."""
        fault = _fault(experiment.spec)
        rng = experiment.rng("disk/sector")
        if fault.sectors.choice is SectorChoice.TOUCHED:
            spans = self._touched.get(name, ())
            total = sum(last - first + 1 for first, last in spans)
            if not total:
                raise _NothingTouchedError(name)
            pick = rng.randrange(total)
            for first, last in spans:
                if pick <= last - first:
                    return first + pick
                pick -= last - first + 1
        if fault.sectors.choice is SectorChoice.ANY and fault.corrupts:
            return rng.randrange(self._sizes()[name])
        if fault.sectors.choice is SectorChoice.RANGE and fault.corrupts:
            return rng.randint(fault.sectors.first, fault.sectors.last)
        return None

    def _bounds(self, fault: DiskFault) -> tuple[int | None, int | None]:
        if self._sector is not None:
            return self._sector, self._sector
        if fault.sectors.choice is SectorChoice.RANGE:
            return fault.sectors.first, fault.sectors.last
        return None, None

    # ------------------------------------------------------------------ the experiment

    def trigger(self, experiment: Experiment) -> str:
        """Draw the sector; a request trigger arms the fault at the snapshot, any other
        trigger is reached as for other kinds (time, exec, icount)."""
        self._armed = None
        spec = experiment.spec
        name = self.disk_name(spec)
        try:
            self._sector = self._choose_sector(experiment, name)
        except _NothingTouchedError as exc:
            return str(exc)
        if spec.trigger.kind is TriggerKind.REQUEST:
            self._arm(experiment, name, from_request=spec.trigger.count)
            return ""
        return reach_trigger(experiment)

    def _arm(self, experiment: Experiment, name: str, *, from_request: int = 1,
             word: tuple[int, int] | None = None) -> _Armed:  # fmt: skip
        fault = _fault(experiment.spec)
        first, last = self._bounds(fault)
        policy = DiskPolicy(fault, first=first, last=last, from_request=from_request,
                            rng=experiment.rng("disk/requests"), word=word)  # fmt: skip
        tap = experiment.vm.disk_tap(name)
        tap.set_policy(policy)
        self._armed = _Armed(name, tap, policy)
        return self._armed

    def inject(self, experiment: Experiment) -> Injected:
        """Arm the fault (unless a request trigger did), or make the corruption."""
        spec = experiment.spec
        fault = _fault(spec)
        name = self.disk_name(spec)
        request_trigger = spec.trigger.kind is TriggerKind.REQUEST
        if request_trigger:
            point = TriggerPoint(spec=trigger_text(experiment.plan))
        else:
            point = experiment.trigger_point(trigger_text(experiment.plan))
        record = self._record(experiment, name, point)
        if fault.corrupts:
            return Injected((self._corrupt(experiment, name, record),))
        if self._armed is None:
            self._arm(experiment, name)
        experiment.mark_injected()
        if fault.fault in ("latency", "stall"):
            experiment.stall_rule = False
        if fault.fault == "stall":
            self._stall(experiment)
        return Injected((dataclasses.replace(record, injected=True),))

    def _record(self, experiment: Experiment, name: str, point: TriggerPoint) -> DiskInjection:
        fault = _fault(experiment.spec)
        first, last = self._bounds(fault)
        device = self.machine.session.disks.get(name, "")
        where = f"{name} ({device or '?'})"
        where += " any sector" if first is None else f" sector {first}"
        if last is not None and last != first:
            where = f"{where}-{last}"
        return DiskInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name, location=where,
            mode=fault.fault, disk=name, device=device, fault=fault.fault, first_sector=first,
            last_sector=last, errno=fault.errno if fault.fails else None,
            delay_s=fault.delay_s if fault.fault == "latency" else None,
            jitter_s=fault.jitter_s if fault.fault == "latency" else None,
            probability=fault.probability, once=fault.once, trigger=point,
        )  # fmt: skip

    def _corrupt(self, experiment: Experiment, name: str, record: DiskInjection) -> DiskInjection:
        """Flip the plan's bits in a word of the drawn sector of the stored data and read
        it back; then watch for the reads that return it."""
        assert self._sector is not None
        plan = experiment.plan
        offset = self._sector * SECTOR_BYTES
        offset += WORD_BYTES * experiment.rng("disk/word").randrange(SECTOR_BYTES // WORD_BYTES)
        armed = self._arm(experiment, name, word=(offset, offset + WORD_BYTES))
        tap = armed.tap
        before = int.from_bytes(tap.read(offset, WORD_BYTES), "little")
        after = plan.bits.apply(before)
        tap.write(offset, after.to_bytes(WORD_BYTES, "little"))
        experiment.mark_injected()
        readback = int.from_bytes(tap.read(offset, WORD_BYTES), "little")
        held = readback == after
        bit = f"byte {offset - self._sector * SECTOR_BYTES}"
        return dataclasses.replace(
            record, location=f"{record.location} {bit}", width=64, mask=plan.bits.mask,
            mode=plan.bits.mode.value, before=before, after=after, readback=readback,
            injected=held, offset=offset,
            reason="" if held else f"read back {readback:#x}, wrote {after:#x}",
        )  # fmt: skip

    def _stall(self, experiment: Experiment) -> None:
        """Run the guest from the trigger to the stall's end without halting it (a halt
        would wait for the held requests), then let them go on and halt; note where the run
        ended for the observation."""
        armed = self._armed
        assert armed is not None
        vm = experiment.vm
        here = experiment.here
        period_s = experiment.spec.period_s
        if period_s is not None:
            end = time.monotonic() + period_s * self.machine.host_per_guest_s()
        else:
            end = experiment.deadline()
        begun = time.perf_counter()
        vm.cont()
        stop = vm.wait_stop(timeout_s=max(0.0, end - time.monotonic()))
        armed.policy.ended = True
        armed.tap.release()
        run = vm.await_stop(0.0)
        vm.ran_s += time.perf_counter() - begun
        if run is None or not vm.alive:
            return
        if run.pc == self.machine.hooks.exited:
            here.at_exit = True
        elif run.pc in self.machine.sentinels:
            here.symptom = here.symptom or Symptom.now(vm)
        elif stop is None and period_s is None:
            here.timed_out = True

    def finish(self, experiment: Experiment, injected: Injected) -> Injected:
        """Take the tap out and record what the fault reached; a fault no request reached
        was not activated. Latency counts from the first request the fault reached."""
        armed, self._armed = self._armed, None
        if armed is None:
            return injected
        vm = experiment.vm
        events: list[TapEvent] = []
        if vm.alive:
            tap = armed.tap
            tap.release()
            events = tap.call(lambda: list(tap.events))
            tap.set_policy(serve_everything)
        policy = armed.policy
        waited = {e.request.number: e for e in events}
        requests = tuple(_waited(r, waited) for r in policy.requests)
        first = injected.injections[0]
        if not isinstance(first, DiskInjection) or not first.injected:
            return injected
        done = dataclasses.replace(
            first, requests_seen=policy.seen, requests_faulted=policy.faulted,
            counts=dict(policy.counts), requests=requests,
        )  # fmt: skip
        if policy.first_faulted_s is not None and not _fault(experiment.spec).corrupts:
            experiment.injected_at = Symptom(policy.first_faulted_s, None)
        return dataclasses.replace(
            injected, injections=(done, *injected.injections[1:]), activated=done.reached
        )

    def not_injected(self, experiment: Experiment, reason: str) -> DiskInjection:
        """The disk fault that was not placed."""
        fault = _fault(experiment.spec)
        return DiskInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            mode=fault.fault, disk=fault.disk or "", fault=fault.fault, reason=reason,
            trigger=TriggerPoint(spec=trigger_text(experiment.plan)),
        )  # fmt: skip


def _waited(request: DiskRequest, events: dict[int, TapEvent]) -> DiskRequest:
    """A held request with the time it waited."""
    event = events.get(request.number)
    if request.action != "held" or event is None:
        return request
    return dataclasses.replace(request, delay_s=max(0.0, event.done_s - event.request.at_s))


class _NothingTouchedError(MachineError):
    def __init__(self, name: str) -> None:
        super().__init__(f"the golden run read or wrote no sector of disk {name}")

    def __str__(self) -> str:
        return self.message


def _fault(spec: FaultSpec) -> DiskFault:
    if spec.disk is None:
        raise UsageError(f"{spec.target.spelling} is no disk fault")
    return spec.disk
