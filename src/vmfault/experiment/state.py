"""The state of one experiment in progress, as the pipeline and the fault kinds share it.

`Experiment` is what a fault kind is given: the fault and its choices, the machine it goes
to, and per machine a `Progress` (where its run has got: its start, the first symptom, an
end already reached). A kind reads the clocks and the trigger point from it and records
what happened on the way (a symptom, the workload's exit, a watched word).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from vmfault.experiment.crew import Crew
from vmfault.experiment.records import TriggerPoint
from vmfault.experiment.testbed import HANG_WALL_CAP, GuestMachine, Testbed
from vmfault.faults.model import Context, FaultSpec
from vmfault.faults.select import Plan, rng_for
from vmfault.faults.units import Budget
from vmfault.machine import Machine
from vmfault.machine.gdbproto import StopReply, WatchKind

__all__ = ["Experiment", "Phases", "Progress", "Symptom", "Watch"]

WATCH_BYTES = 8


@dataclass(frozen=True)
class Symptom:
    """A moment of a run: host monotonic seconds and guest instructions (deterministic)."""

    at_s: float
    instructions: int | None

    @classmethod
    def now(cls, vm: Machine) -> Symptom:
        """This moment of `vm` (halted)."""
        return cls(time.monotonic(), vm.instruction_count())


@dataclass
class Progress:
    """How far one machine's run has got in the current experiment."""

    machine: GuestMachine
    started: float
    """Host monotonic seconds when it resumed from the snapshot."""
    start_ran_s: float
    """The machine's running clock (`Machine.ran_s`) when it resumed from the snapshot."""
    start_instructions: int | None
    start_vcpu_s: float
    """The machine's vCPU time (`Machine.vcpu_s`) when it resumed from the snapshot."""
    event_mark: int
    console_mark: int
    """Where the console evidence starts: the restore, then the first injection."""
    symptom: Symptom | None = None
    """The first stop after the injection (a symptom sentinel, the exit hook)."""
    at_exit: bool = False
    """The run already stands at the workload's exit hook."""
    exit_ran_s: float | None = None
    """Running seconds from the snapshot to the workload's exit hook, once it got there."""
    timed_out: bool = False
    """The hang budget already ran out."""
    panicked: bool = False
    """The guest already panicked."""
    allowance_s: float = 0.0
    """Host seconds added to the hang budget for debug stops the fault kind made."""
    stalled_s: float | None = None
    """Set when the run was declared a hang early: the seconds the vCPU sat idle."""
    stopped: bool = False
    """A daemon halted while it ran, once the machines it serves were done."""
    script_failure: str = ""
    """Why the machine's console script failed (`script step 2 timed out`)."""
    aborted: bool = False
    """The run was abandoned (the experiment starts again, or its fault was not placed)."""
    ended_at: float | None = None
    """Host monotonic seconds when its observation ended (None: not observed yet)."""
    ended_vcpu_s: float | None = None
    """The machine's vCPU time (`Machine.vcpu_s`) when its observation ended."""
    ended_instructions: int | None = None
    """Guest instructions executed when its observation ended (deterministic mode)."""

    @classmethod
    def begin(cls, machine: GuestMachine) -> Progress:
        """The progress of `machine` just restored."""
        vm = machine.vm
        return cls(machine, time.monotonic(), vm.ran_s, vm.instruction_count(), vm.vcpu_s(),
                   len(vm.events), vm.console.mark())  # fmt: skip

    @property
    def ended(self) -> bool:
        """Whether the run already ended (exit hook, hang budget, panic, a daemon stopped, a
        failed script)."""
        return (
            self.at_exit or self.timed_out or self.panicked or self.stopped
            or bool(self.script_failure) or self.aborted
        )  # fmt: skip


@dataclass
class Watch:
    """A word watched for its first read or write after the injection (activation)."""

    address: int
    read_first: bool | None = None
    """True: read before written (the fault was used); False: written first or never
    touched; None: not decided yet."""

    def arm(self, vm: Machine) -> None:
        """Insert the read and write watchpoints."""
        vm.gdb.set_watchpoint(self.address, WATCH_BYTES, kind=WatchKind.READ)
        vm.gdb.set_watchpoint(self.address, WATCH_BYTES, kind=WatchKind.WRITE)

    def disarm(self, vm: Machine) -> None:
        """Remove both watchpoints (the machine halted)."""
        vm.gdb.remove_watchpoint(self.address, WATCH_BYTES, kind=WatchKind.READ)
        vm.gdb.remove_watchpoint(self.address, WATCH_BYTES, kind=WatchKind.WRITE)

    def hit(self, vm: Machine, stop: StopReply | None) -> None:
        """The first access came: note which it was and stop watching."""
        if self.read_first is None:
            self.read_first = stop is not None and stop.watch_kind is WatchKind.READ
        self.disarm(vm)


@dataclass
class Phases:
    """Host seconds per phase of an experiment, laps of one clock (repeated phases add)."""

    seconds: dict[str, float] = field(default_factory=dict)
    clock: float = field(default_factory=time.perf_counter)

    def lap(self, name: str) -> None:
        """End phase `name` now."""
        now = time.perf_counter()
        self.seconds[name] = self.seconds.get(name, 0.0) + now - self.clock
        self.clock = now


class Experiment:
    """One experiment in progress: its fault, its choices and its machines' progress."""

    def __init__(
        self,
        testbed: Testbed,
        target: GuestMachine,
        spec: FaultSpec,
        plan: Plan,
        *,
        budget: Budget | float,
        attempt: int = 1,
        release: Callable[[Experiment], None] | None = None,
    ) -> None:
        self.testbed = testbed
        self.target = target
        self.spec = spec
        self.plan = plan
        self.budget = budget if isinstance(budget, Budget) else Budget(factor=budget)
        self.attempt = attempt
        self.progress = {m.name: Progress.begin(m) for m in testbed}
        self.crew: Crew[Any] | None = None
        """The threads that observe the other machines while the target is driven."""
        self.ended: set[str] = set()
        """The machines whose runs ended (observed to their end), for daemons to know when
        the machines they serve are done."""
        self._release = release
        self.watch: Watch | None = None
        self.injected_at: Symptom | None = None
        self.window_s: tuple[float, float] | None = None
        self.drawn = False
        """The run reached a moment drawn over its execution (`triggers.run_to_moment`)."""
        """The part of the execution (running seconds from the snapshot, start and end)
        the fault's moments are drawn in and its progress counted over; None: all of it."""
        self.stall_rule = True
        """Whether the observation may declare the target hung early when its vCPU sits
        idle (`vmfault.experiment.observe`); a fault that slows the guest's devices turns it
        off, since an idle vCPU then waits for them."""

    @property
    def seed(self) -> int:
        """The seed of every choice."""
        return self.plan.seed

    @property
    def index(self) -> int:
        """The experiment's index under the seed."""
        return self.plan.index

    @property
    def vm(self) -> Machine:
        """The target machine's QEMU."""
        return self.target.vm

    @property
    def here(self) -> Progress:
        """The target machine's progress."""
        return self.progress[self.target.name]

    def rng(self, purpose: str) -> random.Random:
        """The generator of one choice of this experiment (`faults.select.rng_for`)."""
        return rng_for(self.seed, self.index, purpose)

    def budget_s(self) -> float:
        """The target's hang budget in host seconds."""
        return self.target.budget_s(self.budget)

    def release(self) -> None:
        """Let every machine but the target run on from the snapshot (observed on a crew of
        threads when the pipeline gave a way to; else running free)."""
        if self._release is not None:
            self._release(self)
            return
        for machine in self.testbed:
            if machine is not self.target and machine.vm.alive:
                machine.vm.cont()

    def end_crew(self) -> None:
        """Abandon the other machines' runs (the crew aborted and joined)."""
        if self.crew is not None:
            self.crew.end()
            self.crew = None

    def served(self) -> bool:
        """Whether every machine that is not a daemon has ended its run."""
        return all(m.name in self.ended for m in self.testbed if not m.daemon)

    def abort_event(self) -> threading.Event | None:
        """The event that abandons the crew's runs (None without a crew)."""
        return None if self.crew is None else self.crew.abort

    def reach_timeout_s(self) -> float:
        """Host seconds the fault-free part of a run (to the workload's exec, to a trigger)
        may take: the guest cannot hang there, only be slowed by a loaded host, so this is
        the host-time cap of a hang (HANG_WALL_CAP budgets), not the budget itself."""
        return HANG_WALL_CAP * self.budget_s()

    def may_run_on(self) -> bool:
        """Whether the target, past its host-time budget, may run on: it had less vCPU time
        than its budget (`GuestMachine.within_vcpu_budget`)."""
        here = self.here
        elapsed = time.monotonic() - here.started - here.allowance_s
        return self.target.within_vcpu_budget(here.start_vcpu_s, self.budget, elapsed)

    def deadline(self) -> float:
        """Host monotonic seconds at which the target's hang budget runs out."""
        here = self.here
        return here.started + here.allowance_s + self.budget_s()

    def elapsed_s(self) -> float:
        """Seconds the target ran since the snapshot (host seconds of running: time the
        debugger held it halted does not count, so triggers are moments of the workload's
        own execution)."""
        return self.vm.ran_s - self.here.start_ran_s

    def instructions(self) -> int | None:
        """Guest instructions the target ran since the snapshot (deterministic mode)."""
        now = self.vm.instruction_count()
        start = self.here.start_instructions
        return None if now is None or start is None else now - start

    def trigger_point(self, spec: str) -> TriggerPoint:
        """Where the halted target stands now, as the trigger point `spec`."""
        gdb = self.vm.gdb
        elapsed, instructions = self.elapsed_s(), self.instructions()
        return TriggerPoint(
            spec=spec,
            time_s=elapsed,
            instructions=instructions,
            rip=gdb.read_register(gdb.pc_name),
            user_mode=self.vm.user_mode(),
            progress=self.golden_fraction(elapsed, instructions),
        )

    def golden_fraction(self, elapsed_s: float, instructions: int | None) -> float:
        """How far into the golden execution a moment lies (0..1): its guest instructions
        over the golden run's (deterministic mode), else its running seconds over the span
        time triggers are drawn over; for a fault drawn in a context, the share of that
        context's moments before this one (from the machine's probes)."""
        golden = self.target.require_golden()
        if instructions is not None and golden.instructions:
            return min(1.0, instructions / golden.instructions)
        start, end = self.window_s or (0.0, self.target.span_s())
        fraction = min(1.0, max(0.0, elapsed_s - start) / max(end - start, 1e-9))
        probes = self.target.probes
        if probes is not None and self.spec.context is not Context.ANY:
            return probes.fraction_of(self.spec.context, fraction)
        return fraction

    def note_length(self) -> None:
        """Tell the target how long this run lasted, if it went to a drawn moment and on to
        the workload's exit unwatched (the spans later moments are drawn over follow it).
        Runs stopped at breakpoints on their way (exec triggers, virtio kicks) or watched
        (a watchpoint slows every access to its page under TCG) do not teach the
        workload's length: every stop and breakpoint flushes the translated code."""
        end = self.here.exit_ran_s
        if end is not None and self.watch is None and self.drawn:
            self.target.lengths.note(end, self.target.require_golden().span_s)

    def landed(self, point: TriggerPoint) -> TriggerPoint:
        """`point` with its progress measured against this run's own execution, once the
        run reached the workload's exit: a moment drawn uniformly over the run (a moment
        past its end is drawn again) is then uniform on [0, 1) however much the host's
        timing stretched the run, where a fraction of the longest golden run would crowd
        towards 0. Unchanged without a known exit, after a watched fault (the watchpoint
        slowed the rest of the run), in deterministic mode (instructions are exact) and
        for faults drawn in a context (placed among the probes' moments)."""
        end = self.here.exit_ran_s
        if end is None or self.watch is not None:
            return point
        if point.time_s is None or point.progress is None:
            return point
        if point.instructions is not None or self.spec.context is not Context.ANY:
            return point
        start = self.window_s[0] if self.window_s else 0.0
        if end - start <= 0.0:
            return point
        fraction = min(1.0, max(0.0, (point.time_s - start) / (end - start)))
        return replace(point, progress=fraction)

    def restart(self) -> None:
        """Restore the testbed and start this experiment's run again from the snapshot
        (before any fault is made: no outcome is favoured); the other machines run on."""
        self.end_crew()
        self.testbed.restore()
        self.progress = {m.name: Progress.begin(m) for m in self.testbed}
        self.ended = set()
        self.watch = None
        self.window_s = None
        self.drawn = False
        self.release()

    def mark_injected(self) -> None:
        """Note the moment the first fault was made: latency counts from it, and the
        console is evidence from it on."""
        if self.injected_at is None:
            self.injected_at = Symptom.now(self.vm)
            self.here.console_mark = self.vm.console.mark()
