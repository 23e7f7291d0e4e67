"""Observe a machine after the injection until its outcome is certain.

The run ends at the workload's exit hook (then the agent's exit report is collected), a
guest panic, QEMU's death or the hang budget (in deterministic mode counted in guest
instructions). Stops at the symptom sentinels are noted as the first symptom and passed;
a watched word's first access is noted and the watch removed. With a fixed period (the
failure-rate mode), the run also ends once the guest has run that long after the fault,
unless a symptom was seen: then it runs on until the outcome is certain. A vCPU left idle
(nothing runnable) with the workload unfinished for longer than any idle stretch of the
golden run is a hang declared early (the stall rule, `_Stall`), not at the end of the budget.

On a testbed of several machines, the machines the fault does not go to are observed on a
crew of threads from the restore on (`release`), so they run while the target is driven.
There a daemon runs until every other machine's run has ended and is then stopped (no hang
budget: the machines it serves have theirs); a machine whose console script fails ends with
that failure; and no hang is declared early on a network (a machine waiting for frames
idles, and only its peers can end the wait).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

from vmfault.classify import Observation
from vmfault.errors import MachineError, VmfaultError
from vmfault.experiment.crew import LOOK_S, Crew
from vmfault.experiment.state import Experiment, Progress, Symptom, Watch
from vmfault.experiment.testbed import GuestMachine
from vmfault.machine import Machine, RunEnd
from vmfault.machine.run import wait_gone

__all__ = ["PERIOD_EPS_S", "Observed", "observe", "release"]

PERIOD_EPS_S = 0.0001
"""A fixed observation period is over once less than this much guest time of it is left."""
STALL_MIN_S = 0.02
"""The shortest idle stretch declared a stall, whatever the golden run idled."""
STALL_IDLE_FACTOR = 3.0
"""A stall is an idle stretch this many times longer than the golden run's longest."""
STALL_CHECKS = 5
"""Consecutive looks at an idle vCPU a stall needs at least."""
_LOOKS_PER_RUN = 10
"""How often per golden run's time the observation looks at the vCPU for a stall."""
_LOOK_MIN_S = 0.005
STALL_AFTER_RUNS = 1.2
"""Looks for a stall begin this many golden runs after the restore: each look halts the
guest (and costs it translated code), so a run that ends in time is never looked at."""


@dataclass(frozen=True)
class Observed:
    """What observing one machine gave: the observation, and for a watched word whether
    it was read before being overwritten (None: not watched)."""

    observation: Observation
    read_first: bool | None = None


@dataclass
class _Period:
    """A fixed period of guest time being run: guest seconds, counted as instructions in
    deterministic mode (from `start_instructions`), else as the time the guest ran."""

    period_s: float
    start_instructions: int | None
    ran_s: float = 0.0

    def left_s(self, vm: Machine) -> float:
        """Guest seconds of the period still to run (<= 0: over)."""
        now = vm.instruction_count() if self.start_instructions is not None else None
        if now is not None and self.start_instructions is not None:
            return self.period_s - (now - self.start_instructions) / 1e9
        return self.period_s - self.ran_s


def release(experiment: Experiment) -> None:
    """Observe every machine but the target on a crew of threads, each from the restore
    to its end (`experiment.crew`); a testbed of one machine needs none."""
    others = [m for m in experiment.testbed if m is not experiment.target]
    if not others:
        return
    crew: Crew[Observed] = Crew()
    experiment.crew = crew
    for machine in others:
        progress = experiment.progress[machine.name]
        crew.run(machine.name, lambda p=progress: observe(experiment, p, injected=True))  # type: ignore[misc]


def observe(experiment: Experiment, progress: Progress, *, injected: bool) -> Observed:
    """Run `progress`'s machine until its outcome is certain and describe what it did.

    The target machine is watched (`experiment.watch`) and held to the fault's period;
    the others only run to their ends. Nothing runs when the fault was not `injected`.
    """
    if not injected:
        return Observed(Observation(injected=False, finished=False))
    machine = progress.machine
    try:
        return _observe(experiment, progress)
    except MachineError:
        if not wait_gone(machine.vm):
            raise
        return _died(machine.vm, progress)  # QEMU died under the fault: it is judged so
    finally:
        progress.ended_at = time.monotonic()
        with contextlib.suppress(VmfaultError):  # QEMU gone: its run has no runtime
            if machine.vm.alive:
                progress.ended_vcpu_s = machine.vm.vcpu_s()
                progress.ended_instructions = machine.vm.instruction_count()
        experiment.ended.add(machine.name)


def _died(vm: Machine, progress: Progress) -> Observed:
    """The observation of a machine whose QEMU died while it was observed."""
    events = tuple(e.name for e in vm.events[progress.event_mark :])
    return Observed(
        Observation(
            injected=True, finished=False, console=vm.console.transcript(progress.console_mark),
            events=events, qemu_alive=False, qemu_exit_code=vm.exit_code,
            qemu_output=vm.qemu_output,
        )
    )  # fmt: skip


def _observe(experiment: Experiment, progress: Progress) -> Observed:
    machine = progress.machine
    vm = machine.vm
    is_target = machine is experiment.target
    watch = experiment.watch if is_target else None
    period_s = experiment.spec.period_s if is_target else None
    budget = machine.budget_s(experiment.budget)
    if not is_target:
        _settle(progress)
    finished = period_over = False
    if progress.at_exit:
        finished = machine.collect_exit()
    elif not progress.ended:
        finished, period_over = _run(experiment, progress, watch, period_s, budget)
    read_first = None
    if watch is not None:
        read_first = bool(watch.read_first)  # never touched again: not activated
        if watch.read_first is None and vm.alive:
            vm.halt()
            watch.disarm(vm)
    result = machine.result() if finished else None
    events = tuple(e.name for e in vm.events[progress.event_mark :])
    observation = Observation(
        injected=True,
        finished=result is not None,
        stdout=b"" if result is None else result.stdout,
        stderr=b"" if result is None else result.stderr,
        exit_code=None if result is None else result.exit_code,
        signal=None if result is None else result.signal,
        console=vm.console.transcript(progress.console_mark),
        events=events,
        guest_panicked="GUEST_PANICKED" in events or progress.panicked,
        qemu_alive=vm.alive,
        qemu_exit_code=vm.exit_code,
        qemu_output="" if vm.alive else vm.qemu_output,
        timed_out=progress.timed_out,
        period_s=period_s if period_over else None,
        stalled_s=progress.stalled_s,
        stopped=progress.stopped and result is None,
        script_failure=progress.script_failure,
        script_tail="" if machine.dialogue is None else machine.dialogue.tail,
    )
    return Observed(observation, read_first if watch is not None else None)


@dataclass
class _Stall:
    """The early hang rule: the vCPU seen idle (nothing runnable) at `checks` consecutive
    looks spanning `idle_s`, past `limit_s` (longer than any idle stretch of the golden
    run) with the workload unfinished, is a hang that no more running will end."""

    limit_s: float
    look_s: float
    first_look: float
    """Host monotonic seconds of the first look."""
    idle_s: float = 0.0
    checks: int = 0

    @classmethod
    def of(cls, progress: Progress) -> _Stall | None:
        """The rule for `progress`'s machine, or None without a timeline to compare with,
        for a daemon, on a network (a machine waiting for its peers idles) and with disks
        (a machine waiting for its disks idles as long as their taps, in vmfault's own
        process, take to answer: on a loaded host longer than any golden idle stretch)."""
        machine = progress.machine
        networked = machine.testbed is not None and machine.testbed.switch is not None
        if machine.timeline is None or machine.daemon or networked or machine.spec.disks:
            return None
        typical = machine.require_golden().typical_s
        limit = max(STALL_MIN_S, STALL_IDLE_FACTOR * machine.timeline.longest_idle_s())
        look = max(_LOOK_MIN_S, typical / _LOOKS_PER_RUN)
        return cls(limit, look, progress.started + STALL_AFTER_RUNS * typical)

    def next_look_s(self) -> float:
        """Host seconds until the next look."""
        return max(0.0, self.first_look - time.monotonic()) or self.look_s

    def stalled(self, machine: GuestMachine, ran_s: float) -> bool:
        """Look at the halted vCPU after it ran `ran_s`: whether it is stalled now."""
        if machine.idle():
            if self.checks:  # idle since the last look, which was idle too
                self.idle_s += ran_s
            self.checks += 1
        else:
            self.idle_s, self.checks = 0.0, 0
        return self.checks >= STALL_CHECKS and self.idle_s >= self.limit_s


def _run(
    experiment: Experiment,
    progress: Progress,
    watch: Watch | None,
    period_s: float | None,
    budget_s: float,
) -> tuple[bool, bool]:
    """The observation loop; (whether the agent reported the exit, whether the period ran
    out). Sets `progress.symptom` and `progress.timed_out`."""
    machine = progress.machine
    vm = machine.vm
    deadline = progress.started + progress.allowance_s + budget_s
    if machine.daemon:
        deadline = float("inf")  # it runs until the machines it serves are done
    period = None if period_s is None else _Period(period_s, vm.instruction_count())
    slowed = machine is experiment.target and not experiment.stall_rule
    stall = None if slowed else _Stall.of(progress)
    abort = experiment.abort_event()
    looks = abort is not None or machine.daemon or machine.dialogue is not None
    while vm.alive:
        limit = deadline - time.monotonic()
        if period is not None and progress.symptom is None:
            limit = min(limit, period.left_s(vm) * machine.host_per_guest_s())
        if stall is not None:
            limit = min(limit, stall.next_look_s())
        if looks:
            limit = min(limit, LOOK_S)
        run = vm.run_for(max(0.0, limit))
        if period is not None:
            period.ran_s += run.ran_s
        if run.end is RunEnd.EXITED:
            break
        if run.end is RunEnd.TIME and looks:
            if abort is not None and abort.is_set():
                progress.aborted = True
                break
            if machine.daemon and experiment.served():
                progress.stopped = True
                break
            failure = machine.script_failure()
            if failure:
                progress.script_failure = failure
                break
        if run.end is RunEnd.TIME:
            if period is not None and progress.symptom is None and period.left_s(vm) <= (
                PERIOD_EPS_S
            ):  # fmt: skip
                return False, True
            if (
                stall is not None
                and time.monotonic() >= stall.first_look
                and stall.stalled(machine, run.ran_s)
            ):
                progress.stalled_s = stall.idle_s
                progress.timed_out = True
                break
            if time.monotonic() < deadline:
                continue  # stopped to look at the period or the vCPU; the run goes on
            if machine.within_instruction_budget(progress.start_instructions, experiment.budget):
                deadline = time.monotonic() + budget_s
                continue
            elapsed = time.monotonic() - progress.started - progress.allowance_s
            if machine.within_vcpu_budget(progress.start_vcpu_s, experiment.budget, elapsed):
                deadline = time.monotonic() + max(_LOOK_MIN_S, 0.25 * budget_s)
                continue
            progress.timed_out = True
            break
        if run.end is RunEnd.WATCHPOINT and watch is not None and watch.read_first is None:
            watch.hit(vm, run.stop)
            continue
        if progress.symptom is None:
            progress.symptom = Symptom.now(vm)
        if run.pc in machine.sentinels:
            continue  # the kernel reacts; the outcome follows
        if run.pc == machine.hooks.exited:
            progress.exit_ran_s = vm.ran_s - progress.start_ran_s
            return machine.collect_exit(), False
        break
    return False, False


def _settle(progress: Progress) -> None:
    """A machine that ran free while the target was faulted: halt it and note where it
    stands (at its exit hook, or at a symptom sentinel)."""
    machine = progress.machine
    vm = machine.vm
    if not vm.alive:
        return
    vm.halt()
    pc = vm.gdb.read_register(vm.gdb.pc_name)
    if pc == machine.hooks.exited:
        progress.at_exit = True
        progress.exit_ran_s = vm.ran_s - progress.start_ran_s
    elif pc in machine.sentinels and progress.symptom is None:
        progress.symptom = Symptom.now(vm)
