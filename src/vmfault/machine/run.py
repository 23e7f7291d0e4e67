"""Run control: let a halted guest run to an address, for a time, or until a condition holds.

Every function here starts from a halted vCPU and leaves it halted (or QEMU gone), adds the
time the guest ran to `Machine.ran_s` (a clock that stands still while the debugger holds
the guest), and none raises for what the guest does: the `Run` it returns says how the run
ended (`RunEnd`), where the vCPU stands and how long the guest ran. A caller that needs the
run to have reached its goal calls `Run.require(what)`, the one place where an unreached
goal becomes an error: MachineTimeoutError when time ran out, MachineError when QEMU exited
or the guest stopped elsewhere. Errors of the control channels themselves (GdbError,
StateError) propagate as they are.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from vmfault.errors import MachineError, MachineTimeoutError
from vmfault.machine.console import Console
from vmfault.machine.gdbproto import StopReason, StopReply
from vmfault.machine.gdbstub import GdbStub

__all__ = [
    "PRECISE_SPIN_S",
    "Controllable",
    "Run",
    "RunEnd",
    "await_stop",
    "run_for",
    "run_to",
    "run_until",
    "step_until",
    "wait_gone",
]

PRECISE_SPIN_S = 0.002
"""A precise run waits out its last this-many host seconds by polling: a sleeping thread
can wake milliseconds late on a busy or virtualised host, a polling one is on time."""
_CONSOLE_TAIL_CHARS = 300


class Controllable(Protocol):
    """What run control drives (a `vmfault.machine.Machine` is one)."""

    stops: list[StopReply]
    exit_code: int | None
    ran_s: float
    """Host seconds the guest ran under run control so far (its clock without the time it
    sat halted by the debugger)."""

    @property
    def alive(self) -> bool:
        """Whether QEMU still runs."""
        ...

    @property
    def gdb(self) -> GdbStub:
        """The gdbstub client."""
        ...

    @property
    def console(self) -> Console:
        """The serial console."""
        ...

    def cont(self) -> None:
        """Let the guest run."""
        ...

    def halt(self) -> StopReply:
        """Stop the guest; its stop reply."""
        ...

    def wait_stop(self, *, timeout_s: float | None) -> StopReply | None:
        """Wait for the running guest to stop, reading its I/O meanwhile."""
        ...


class RunEnd(enum.StrEnum):
    """How a run ended."""

    REACHED = "reached"
    """The goal: the address of `run_to`, the condition of `run_until` or `step_until`."""
    TIME = "time"
    """The time (or the steps) ran out and the guest was halted: the normal end of
    `run_for`, the goal missed for the others."""
    BREAKPOINT = "breakpoint"
    """The guest stopped at a breakpoint that is not the goal (`Run.pc` says which)."""
    WATCHPOINT = "watchpoint"
    """A watchpoint fired (`Run.stop` names the address and the access)."""
    STOPPED = "stopped"
    """The guest stopped for another reason: a panic that pauses it, a QMP stop."""
    EXITED = "exited"
    """QEMU exited; nothing more can run."""


@dataclass(frozen=True)
class Run:
    """What one run did: how it ended, where the vCPU stands, how long the guest ran."""

    end: RunEnd
    pc: int | None
    """The vCPU's pc after the run (None once QEMU exited)."""
    stop: StopReply | None
    """The stop reply that ended the run; None when the run was halted by the caller's
    time limit or ended before starting (a condition already true)."""
    ran_s: float
    """Host seconds the guest ran (under plain TCG about the guest time that passed)."""

    @property
    def reached(self) -> bool:
        """Whether the run reached its goal."""
        return self.end is RunEnd.REACHED

    def require(self, what: str, machine: Controllable, *, timeout_s: float) -> Run:
        """This run if it reached its goal; else the error that says why `what` was not
        reached: MachineTimeoutError if time ran out, MachineError otherwise (with QEMU's
        exit status, or where the guest stopped and the console's tail)."""
        if self.end is RunEnd.REACHED:
            return self
        if self.end is RunEnd.TIME:
            raise MachineTimeoutError(
                f"guest did not reach {what} within {timeout_s:g} s", timeout_s=timeout_s
            )
        if self.end is RunEnd.EXITED:
            raise MachineError(f"QEMU exited (status {machine.exit_code}) before {what}")
        where = "?" if self.pc is None else f"{self.pc:#x}"
        reason = self.stop.reason.name if self.stop is not None else self.end.name
        tail = machine.console.transcript()[-_CONSOLE_TAIL_CHARS:]
        raise MachineError(
            f"guest stopped at {where} ({reason}) before {what}; console tail: {tail!r}"
        )


def _pc(machine: Controllable) -> int | None:
    return machine.gdb.read_register(machine.gdb.pc_name) if machine.alive else None


def _ended(machine: Controllable, stop: StopReply | None, ran_s: float, goal: int | None) -> Run:
    """The Run of a guest that stopped (`stop`), was halted at its time limit (None), or
    whose QEMU exited."""
    if not machine.alive:
        return Run(RunEnd.EXITED, None, stop, ran_s)
    pc = _pc(machine)
    interrupted = stop is None or stop.reason is StopReason.INTERRUPT
    if interrupted and pc is not None and machine.gdb.has_breakpoint(pc):
        # Halted just as the vCPU reached a breakpoint: the instruction there has not run,
        # and continuing would step over it unseen, so this is that breakpoint's stop.
        end = RunEnd.REACHED if pc == goal else RunEnd.BREAKPOINT
        return Run(end, pc, stop, ran_s)
    if stop is None:
        return Run(RunEnd.TIME, pc, None, ran_s)
    if goal is not None and pc == goal:
        return Run(RunEnd.REACHED, pc, stop, ran_s)
    if stop.reason is StopReason.WATCHPOINT:
        return Run(RunEnd.WATCHPOINT, pc, stop, ran_s)
    if stop.reason in (StopReason.BREAKPOINT, StopReason.TRAP, StopReason.STEP):
        return Run(RunEnd.BREAKPOINT, pc, stop, ran_s)
    return Run(RunEnd.STOPPED, pc, stop, ran_s)


def _wait_precisely(machine: Controllable, deadline: float) -> StopReply | None:
    """Wait on the gdbstub alone until `deadline` (perf_counter) or a stop: sleep, then
    poll through the last PRECISE_SPIN_S."""
    gdb = machine.gdb
    nap = deadline - PRECISE_SPIN_S - time.perf_counter()
    if nap > 0:
        stop = gdb.wait_stop(timeout_s=nap)
        if stop is not None:
            return stop
    while time.perf_counter() < deadline:
        stop = gdb.poll_stop()
        if stop is not None:
            return stop
    return None


def await_stop(
    machine: Controllable,
    timeout_s: float | None,
    *,
    goal: int | None = None,
    halt: bool = True,
    precise: bool = False,
) -> Run | None:
    """Wait up to `timeout_s` (None: no limit) for the running guest to stop.

    A stop at `goal` ends REACHED. When the time runs out, the guest is halted (ends
    TIME) if `halt`, else left running and None returned, so a caller can poll several
    machines in turn. `precise` as for `run_for`. A halted guest returns at once.
    """
    begun = time.perf_counter()
    if not machine.alive:
        return Run(RunEnd.EXITED, None, None, 0.0)
    if not machine.gdb.running:  # stopped already (stepping off a breakpoint can stop)
        return _ended(machine, machine.gdb.last_stop, 0.0, goal)
    if precise and timeout_s is not None:
        stop = _wait_precisely(machine, begun + timeout_s)
        if stop is not None:
            machine.stops.append(stop)
    else:
        stop = machine.wait_stop(timeout_s=timeout_s)
    if stop is None and machine.alive:
        if not halt:
            return None
        halted = machine.halt()
        if halted.reason is not StopReason.INTERRUPT:
            stop = halted  # it stopped on its own just before the halt arrived
    return _ended(machine, stop, time.perf_counter() - begun, goal)


def _run(machine: Controllable, seconds: float | None, *, precise: bool, goal: int | None) -> Run:
    """Continue, wait up to `seconds` (None: no limit) for a stop, halt if still running."""
    if not machine.alive:
        return Run(RunEnd.EXITED, None, None, 0.0)
    try:
        machine.cont()
    except MachineError:
        if wait_gone(machine):  # QEMU died as the guest was let go (a fault in QEMU itself)
            return Run(RunEnd.EXITED, None, None, 0.0)
        raise
    run = await_stop(machine, seconds, goal=goal, precise=precise)
    assert run is not None  # halting at the time limit always gives a Run
    machine.ran_s += run.ran_s
    return run


GONE_WAIT_S = 2.0
"""How long a QEMU whose channels broke is given to be seen dead."""


def wait_gone(machine: Controllable, timeout_s: float = GONE_WAIT_S) -> bool:
    """Whether QEMU is gone, waiting up to `timeout_s` for the process to end (its
    sockets close a moment before it can be reaped)."""
    deadline = time.monotonic() + timeout_s
    while machine.alive:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def run_for(machine: Controllable, seconds: float, *, precise: bool = False) -> Run:
    """Let the guest run for `seconds` of host time, or until it stops on its own.

    Ends TIME when the time ran out (the guest halted), else with the stop. `precise`
    waits on the gdbstub alone, polling through the last PRECISE_SPIN_S, so the halt
    comes within about 0.1 ms of the time (console and QMP events are read later).
    """
    return _run(machine, max(0.0, seconds), precise=precise, goal=None)


def run_to(machine: Controllable, address: int, *, timeout_s: float | None) -> Run:
    """Run until the vCPU reaches `address` (a virtual address), at most `timeout_s`.

    Uses a breakpoint of its own unless one is set there already (breakpoints are counted,
    so one set by the caller stays). Ends REACHED at the address, or with whatever stopped
    the guest first (another breakpoint, a watchpoint, a panic, QEMU's exit, the time).
    """
    gdb = machine.gdb
    own = not gdb.has_breakpoint(address)
    if own:
        gdb.set_breakpoint(address)
    try:
        return _run(machine, timeout_s, precise=False, goal=address)
    finally:
        if own and machine.alive:
            machine.halt()
            gdb.remove_breakpoint(address)


def run_until(
    machine: Controllable,
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    slice_s: float,
    slices: int | None = None,
) -> Run:
    """Run in slices of `slice_s` host seconds until `condition()` (checked with the guest
    halted, before the first slice and after each) holds.

    Ends REACHED when it holds, TIME after `timeout_s` host seconds or `slices` slices,
    or with whatever stopped the guest inside a slice (the caller decides what that means).
    """
    ran = 0.0
    if condition():
        return Run(RunEnd.REACHED, _pc(machine), None, ran)
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline and (slices is None or count < slices):
        run = run_for(machine, slice_s)
        ran += run.ran_s
        count += 1
        if run.end is not RunEnd.TIME:
            return Run(run.end, run.pc, run.stop, ran)
        if condition():
            return Run(RunEnd.REACHED, run.pc, None, ran)
    return Run(RunEnd.TIME, _pc(machine), None, ran)


def step_until(machine: Controllable, condition: Callable[[], bool], *, steps: int) -> Run:
    """Single-step (interrupts and timers held off) until `condition()` holds, at most
    `steps` instructions. Ends REACHED, TIME when the steps ran out, or with a stop that
    is not a step (a watchpoint)."""
    gdb = machine.gdb
    begun = time.perf_counter()
    for _ in range(steps):
        if condition():
            return Run(RunEnd.REACHED, _pc(machine), None, time.perf_counter() - begun)
        stop = gdb.step()
        if stop.reason is not StopReason.STEP:
            return _ended(machine, stop, time.perf_counter() - begun, None)
    end = RunEnd.REACHED if condition() else RunEnd.TIME
    return Run(end, _pc(machine), None, time.perf_counter() - begun)
