"""Observe a machine after the injection until its outcome is certain.

The run ends at the workload's exit hook (then the agent's exit report is collected), a
guest panic, QEMU's death or the hang budget (in deterministic mode counted in guest
instructions). Stops at the symptom sentinels are noted as the first symptom and passed;
a watched word's first access is noted and the watch removed. With a fixed period (the
failure-rate mode), the run also ends once the guest has run that long after the fault,
unless a symptom was seen: then it runs on until the outcome is certain.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vmfault.classify import Observation
from vmfault.experiment.state import Experiment, Progress, Symptom, Watch
from vmfault.machine import Machine, RunEnd

__all__ = ["PERIOD_EPS_S", "Observed", "observe"]

PERIOD_EPS_S = 0.0001
"""A fixed observation period is over once less than this much guest time of it is left."""


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


def observe(experiment: Experiment, progress: Progress, *, injected: bool) -> Observed:
    """Run `progress`'s machine until its outcome is certain and describe what it did.

    The target machine is watched (`experiment.watch`) and held to the fault's period;
    the others only run to their ends. Nothing runs when the fault was not `injected`.
    """
    if not injected:
        return Observed(Observation(injected=False, finished=False))
    machine = progress.machine
    vm = machine.vm
    is_target = machine is experiment.target
    watch = experiment.watch if is_target else None
    period_s = experiment.spec.period_s if is_target else None
    budget = machine.budget_s(experiment.budget_factor)
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
        timed_out=progress.timed_out,
        period_s=period_s if period_over else None,
    )
    return Observed(observation, read_first if watch is not None else None)


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
    period = None if period_s is None else _Period(period_s, vm.instruction_count())
    while vm.alive:
        limit = deadline - time.monotonic()
        if period is not None and progress.symptom is None:
            limit = min(limit, period.left_s(vm) * machine.host_per_guest_s())
        run = vm.run_for(max(0.0, limit))
        if period is not None:
            period.ran_s += run.ran_s
        if run.end is RunEnd.EXITED:
            break
        if run.end is RunEnd.TIME:
            if period is not None and progress.symptom is None and period.left_s(vm) <= (
                PERIOD_EPS_S
            ):  # fmt: skip
                return False, True
            if time.monotonic() < deadline:
                continue  # stopped to look at the period, which runs on
            if machine.within_instruction_budget(
                progress.start_instructions, experiment.budget_factor
            ):
                deadline = time.monotonic() + budget_s
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
    elif pc in machine.sentinels and progress.symptom is None:
        progress.symptom = Symptom.now(vm)
