"""Reaching a fault's trigger: a time, the Nth execution of an address, a guest instruction
count, then the CPU context the fault asks for. Shared by the register, memory and
kernel-code kinds.

Each function leaves the target halted at the trigger and returns an empty string, or says
why the trigger was not reached (the fault is then recorded as not injected, with that
reason). QEMU dying on the way is no reason of the fault's: it raises MachineError, which
the campaign records as a VMM failure.
"""

from __future__ import annotations

from vmfault.errors import MachineError, UsageError
from vmfault.experiment.state import Experiment
from vmfault.faults.model import Context, TargetKind, TriggerKind
from vmfault.faults.select import Plan
from vmfault.machine import Run, RunEnd

__all__ = [
    "CONTEXT_SLICE_S",
    "CONTEXT_TRIES",
    "MAX_TRIGGER_STEPS",
    "reach_trigger",
    "settle_context",
    "trigger_text",
]

CONTEXT_TRIES = 400
CONTEXT_SLICE_S = 0.0002
MAX_TRIGGER_STEPS = 200_000
_ICOUNT_MARGIN = 20_000
"""Instructions short of an icount trigger that a coarse run aims at (then single steps)."""
_ICOUNT_TRIES = 6


def trigger_text(plan: Plan) -> str:
    """The trigger as fired: `time:0.012345s`, `icount:1234` or `exec:main#1`."""
    trigger = plan.spec.trigger
    if trigger.kind is TriggerKind.TIME:
        return f"time:{plan.trigger_time_s:.6f}s"
    if trigger.kind is TriggerKind.INSTRUCTIONS:
        return f"icount:{plan.trigger_instructions}"
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
    run = experiment.vm.run_for(max(0.0, at - experiment.elapsed_s()))
    _alive(run, experiment, "the trigger")
    if run.end is not RunEnd.TIME:
        return f"the workload ended before the trigger at {at:.4f} s"
    return ""


def _run_to_execution(experiment: Experiment, location: str, count: int) -> str:
    vm = experiment.vm
    address = experiment.target.code_address(location)
    budget = experiment.budget_s()
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
    start = vm.instruction_count() or 0
    goal = start + wanted
    rate = golden.instructions / max(golden.host_s, 1e-6)  # instructions per host second
    margin = _ICOUNT_MARGIN
    for _ in range(_ICOUNT_TRIES):
        run = _alive(vm.run_for(max(0.0, (wanted - margin) / rate)), experiment, "the trigger")
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


def settle_context(experiment: Experiment) -> str:
    """Run on until the target runs in the fault's context (user, kernel or any).

    Faults in the workload's memory by its page tables (memory:process, memory:@SYMBOL)
    need the workload itself running in user mode, whose CR3 names its address space.
    """
    spec = experiment.spec
    context = spec.context
    target = spec.target
    if target.kind is TargetKind.MEMORY and (
        target.name == "process" or target.name.startswith("@")
    ):
        context = Context.USER
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
