"""Reaching a fault's trigger: a time, the Nth execution of an address, a guest instruction
count, then the CPU context the fault asks for. Shared by the register, memory and
kernel-code kinds.

Each function leaves the target halted at the trigger and returns an empty string, or says
why the trigger was not reached (the fault is then recorded as not injected, with that
reason). QEMU dying on the way is no reason of the fault's: it raises MachineError, which
the campaign records as a VMM failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vmfault.errors import MachineError, UsageError
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine
from vmfault.faults.model import Context, FaultSpec, TriggerKind
from vmfault.faults.select import Plan
from vmfault.machine import Run, RunEnd

__all__ = [
    "CONTEXT_DRAWS",
    "CONTEXT_SLICE_S",
    "CONTEXT_TRIES",
    "MAX_TRIGGER_STEPS",
    "TIME_DRAWS",
    "prepare_context",
    "reach_trigger",
    "run_to_moment",
    "settle_context",
    "trigger_text",
]

CONTEXT_TRIES = 400
CONTEXT_SLICE_S = 0.0002
CONTEXT_DRAWS = 64
"""Moments a fault with a context draws before it settles into the context instead."""
TIME_DRAWS = 16
"""Moments a time trigger draws before a run that ends before each is given up."""
MAX_TRIGGER_STEPS = 200_000
_ICOUNT_MARGIN = 20_000
"""Instructions short of an icount trigger that a coarse run aims at (then single steps)."""
_ICOUNT_TRIES = 6


def trigger_text(plan: Plan) -> str:
    """The trigger as fired: `time:0.012345s`, `icount:1234`, `exec:main#1` or `request:5`."""
    trigger = plan.spec.trigger
    if trigger.kind is TriggerKind.TIME:
        return f"time:{plan.trigger_time_s:.6f}s"
    if trigger.kind is TriggerKind.INSTRUCTIONS:
        return f"icount:{plan.trigger_instructions}"
    if trigger.kind is TriggerKind.REQUEST:
        return f"request:{trigger.count}"
    return f"exec:{trigger.location}#{trigger.count}"


def _alive(run: Run, experiment: Experiment, what: str) -> Run:
    if run.end is RunEnd.EXITED:
        raise MachineError(f"QEMU exited (status {experiment.vm.exit_code}) before {what}")
    return run


def reach_trigger(experiment: Experiment) -> str:
    """Run the restored target to its trigger, then to the fault's context."""
    plan = experiment.plan
    trigger = plan.spec.trigger
    if trigger.kind is TriggerKind.TIME:
        problem = _run_to_time(experiment)
    elif trigger.kind is TriggerKind.EXECUTION:
        problem = _run_to_execution(experiment, trigger.location, trigger.count)
    else:
        problem = _run_to_instruction(experiment)
    return problem or settle_context(experiment)


def _run_to_time(experiment: Experiment) -> str:
    at = experiment.plan.trigger_time_s
    assert at is not None
    if experiment.spec.trigger.time_s is None:  # a moment drawn by vmfault
        if experiment.spec.context is Context.ANY or experiment.target.deterministic:
            return run_to_moment(experiment)
        return _run_to_moment_in_context(experiment, at)
    run = experiment.vm.run_for(max(0.0, at - experiment.elapsed_s()))
    _alive(run, experiment, "the trigger")
    if run.end is not RunEnd.TIME:
        return f"the workload ended before the trigger at {at:.4f} s"
    return ""


def run_to_moment(
    experiment: Experiment,
    *,
    before: Callable[[], str] | None = None,
    alive: Callable[[], bool] | None = None,
) -> str:
    """A uniform moment of the execution, in `experiment.window_s` (default: all of it).

    The first moment is the plan's (a fraction of the longest golden run); a moment after
    this run's end (runs differ in length by the host's timing noise) is drawn again on a
    fresh restore, so every moment of the run's own execution is as likely as any other.
    `before` runs after each restore (learning what the fault needs, such as the workload's
    page tables at its exec, which may also set the window); it returns "" or why it
    failed. `alive` tells, at the moment, whether what the fault goes to still exists (a
    workload process that already exited does not): a moment past it is drawn again too.
    """
    plan = experiment.plan
    span = experiment.target.require_golden().span_s
    fraction = (plan.trigger_time_s or 0.0) / max(span, 1e-9)
    rng = experiment.rng("trigger/redraw")
    for _ in range(TIME_DRAWS):
        if before is not None:
            problem = before()
            if problem:
                return problem
        start, end = experiment.window_s or (0.0, experiment.target.span_s())
        at = start + fraction * max(0.0, end - start)
        run = experiment.vm.run_for(max(0.0, at - experiment.elapsed_s()))
        _alive(run, experiment, "the trigger")
        if run.end is RunEnd.TIME and (alive is None or alive()):
            experiment.drawn = True
            return ""
        experiment.restart()
        fraction = rng.random()
    return f"the workload ended before each of {TIME_DRAWS} moments drawn in its execution"


def _run_to_moment_in_context(experiment: Experiment, first_s: float) -> str:
    """A uniform moment of the time the workload spends in the fault's context.

    Rejection sampling: run to a uniform moment of the execution (`first_s`, then new
    draws), keep it if the vCPU runs in the context there, else draw again; a later moment
    goes on from where the run stands, an earlier one (or one after the run's end) from a
    fresh restore. Every moment of the context is then as likely as any other. Each look
    also joins the machine's probes, which place the moment among the context's moments
    (its progress). After CONTEXT_DRAWS draws (a context the workload hardly enters) the
    run settles into the context from the last moment instead.
    """
    machine = experiment.target
    context = experiment.spec.context
    span_s = machine.require_golden().span_s
    rng = experiment.rng("trigger/context")
    at = first_s
    for _ in range(CONTEXT_DRAWS):
        if at < experiment.elapsed_s():
            experiment.restart()
        run = experiment.vm.run_for(max(0.0, at - experiment.elapsed_s()))
        _alive(run, experiment, "the trigger")
        if run.end is RunEnd.TIME:
            activity = machine.activity()
            machine.note_look(experiment.elapsed_s() / max(span_s, 1e-9), activity)
            if activity.matches(context):
                return ""
        else:
            experiment.restart()  # past this run's end, or a stop: draw on a clean run
        at = rng.uniform(0.0, span_s)
    return settle_context(experiment)


def _run_to_execution(experiment: Experiment, location: str, count: int) -> str:
    """Run to the `count`th execution of `location`. Each stop there and the step off it
    cost host time the guest does not progress in (about 0.1 s under TCG, measured on
    checksum's `fold`), so the hang budget counts from the trigger, not the restore."""
    vm = experiment.vm
    address = experiment.target.code_address(location)
    budget = experiment.reach_timeout_s()
    vm.gdb.set_breakpoint(address)  # held over every hit: each insertion flushes code
    try:
        for _ in range(count):
            run = _alive(vm.run_to(address, timeout_s=budget), experiment, location)
            if run.end is RunEnd.TIME:
                return f"{location} did not execute {count} times within the budget"
            if not run.reached:
                return f"the workload ended before {location} executed {count} times"
    finally:
        if vm.alive:
            vm.gdb.remove_breakpoint(address)
    here = experiment.here
    here.allowance_s = max(here.allowance_s, time.monotonic() - here.started)
    return ""


def _run_to_instruction(experiment: Experiment) -> str:
    target = experiment.target
    vm = experiment.vm
    golden = target.require_golden()
    if not target.deterministic or golden.instructions is None:
        raise UsageError(
            "an icount trigger needs deterministic mode",
            hint="add --deterministic, or use a time or exec trigger",
        )
    wanted = experiment.plan.trigger_instructions
    assert wanted is not None
    start = experiment.here.start_instructions or 0
    goal = start + wanted  # counted from the snapshot, whatever ran since
    rate = golden.instructions / max(golden.host_s, 1e-6)  # instructions per host second
    margin = _ICOUNT_MARGIN
    for _ in range(_ICOUNT_TRIES):
        left = goal - margin - (vm.instruction_count() or start)
        run = _alive(vm.run_for(max(0.0, left / rate)), experiment, "the trigger")
        now = vm.instruction_count() or 0
        if run.end is not RunEnd.TIME and now < goal:
            return "the workload ended before the trigger instruction"
        if now <= goal:
            break
        margin *= 4  # overshot: go back and stop earlier
        target.restore()
    else:
        return "could not stop before the trigger instruction"
    remaining = goal - now
    if remaining > MAX_TRIGGER_STEPS:
        return f"trigger instruction too far to reach by stepping ({remaining})"
    if remaining:
        vm.gdb.step(count=remaining)
    return ""


def prepare_context(machine: GuestMachine, spec: FaultSpec) -> None:
    """A time trigger drawn in a context needs how the context's moments spread over the
    execution (the machine's probes), so its progress is a fraction of them."""
    timed = spec.trigger.kind is TriggerKind.TIME and spec.trigger.time_s is None
    if timed and spec.context is not Context.ANY and not machine.deterministic:
        machine.probe_contexts(spec.context)


def settle_context(experiment: Experiment, context: Context | None = None) -> str:
    """Run on until the target runs in `context` (default: the fault's; user, kernel or
    any); a time trigger with a context was drawn among the moments of the context, so
    little or no running is left to do."""
    context = experiment.spec.context if context is None else context
    machine = experiment.target
    vm = experiment.vm
    if machine.in_context(context):
        return ""
    if machine.deterministic:
        run = vm.step_until(lambda: machine.in_context(context), steps=MAX_TRIGGER_STEPS // 10)
        return "" if run.reached else f"the {context.value} context was not reached by stepping"
    run = vm.run_until(
        lambda: machine.in_context(context),
        timeout_s=experiment.budget_s(),
        slice_s=CONTEXT_SLICE_S,
        slices=CONTEXT_TRIES,
    )
    _alive(run, experiment, f"the {context.value} context")
    if run.reached:
        return ""
    if run.end is RunEnd.TIME:
        return f"the {context.value} context was not reached in {CONTEXT_TRIES} tries"
    return f"the workload ended before reaching the {context.value} context"
