"""Let dynamic instances of an instruction execute, then corrupt their results (halted vCPU).

The primitives behind instruction-result faults: the address of a memory result (taken
before the instruction runs, from its operand registers), executing exactly that
instruction by single-stepping it (and telling a completed instruction from one that
trapped into the kernel and will be retried), and reading and writing the result: the XMM
lane, the general-purpose register, x87 ST(i), the flags, memory or rip.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

from vmfault.arch import DEFAULT_ARCH, Platform
from vmfault.errors import MachineError
from vmfault.experiment.state import Symptom
from vmfault.faults.instructions import Destination, DestinationKind, Flow, Instruction
from vmfault.machine import Machine, RunEnd
from vmfault.machine.gdbstub import GdbStub
from vmfault.session.process import WorkloadProcess

__all__ = [
    "REPEAT_STEPS_MAX",
    "STOP_ALLOWANCE_S",
    "CountEnd",
    "Counting",
    "ResultLocation",
    "StepOutcome",
    "count_instances",
    "execute_instruction",
    "locate_result",
    "read_result",
    "write_result",
]

REPEAT_STEPS_MAX = 100_000
"""Single steps allowed to finish one rep-prefixed string instruction."""
STOP_ALLOWANCE_S = 0.01
"""Host seconds a breakpoint stop is allowed on top of the hang budget: the stop itself and
retranslating the code QEMU discards at every debug stop."""
_RUN_ON_S = 0.05
"""Host seconds a run past its deadline goes on before the next look at its vCPU time."""
_STUCK_STEPS_MAX = 8


class StepOutcome(enum.Enum):
    """What single-stepping one instruction did."""

    COMPLETED = "completed"
    """It executed; the vCPU is halted after it, in the same process."""
    TRAPPED = "trapped"
    """It raised an exception (a page fault): the kernel runs, the instruction will run again."""


@dataclass(frozen=True)
class ResultLocation:
    """Where one execution's result lives: the destination and, for memory, its address."""

    destination: Destination
    virtual: int | None = None


def locate_result(gdb: GdbStub, insn: Instruction) -> ResultLocation:
    """The result's location, read with the vCPU halted before `insn` executes."""
    destination = insn.destination
    memory = destination.memory
    if destination.kind is not DestinationKind.MEMORY or memory is None:
        return ResultLocation(destination)
    registers = gdb.read_registers(memory.registers) if memory.registers else {}
    return ResultLocation(destination, memory.address(registers, next_pc=insn.end))


def execute_instruction(
    gdb: GdbStub, insn: Instruction, platform: Platform = DEFAULT_ARCH.platform
) -> StepOutcome:
    """Execute `insn` (the vCPU halted at it) by single-stepping, with interrupts held off.

    A rep-prefixed string instruction is stepped to its end. A step that did not move the
    pc is repeated. Raises MachineError if the instruction does not finish.
    """
    stuck = 0
    steps = 0
    names = [platform.pc, platform.privilege]
    while True:
        gdb.step()
        steps += 1
        state = gdb.read_registers(names)
        if not platform.is_user(state[platform.privilege]):
            return StepOutcome.COMPLETED if insn.flow is Flow.TRAP else StepOutcome.TRAPPED
        if state[platform.pc] != insn.address or insn.targets == (insn.address,):
            return StepOutcome.COMPLETED
        if insn.flow is Flow.REPEAT:
            if steps >= REPEAT_STEPS_MAX:
                raise MachineError(
                    f"{insn.text} at {insn.address:#x} did not finish in {steps} steps"
                )
            continue
        stuck += 1
        if stuck >= _STUCK_STEPS_MAX:
            raise MachineError(f"single steps do not execute {insn.text} at {insn.address:#x}")


def _lane_mask(width: int) -> int:
    return (1 << width) - 1


def read_result(gdb: GdbStub, location: ResultLocation) -> int:
    """The result's bits (the low `width` bits of its register, or its memory bytes)."""
    destination = location.destination
    if destination.kind is DestinationKind.MEMORY:
        assert location.virtual is not None
        size = destination.width // 8
        return int.from_bytes(gdb.read_memory(location.virtual, size), "little")
    if destination.kind is DestinationKind.NONE or destination.register is None:
        raise MachineError("the instruction has no result")
    return gdb.read_register(destination.register) & _lane_mask(destination.width)


def write_result(gdb: GdbStub, location: ResultLocation, value: int) -> None:
    """Write the result's bits, leaving the rest of a wider register as it is."""
    destination = location.destination
    if destination.kind is DestinationKind.MEMORY:
        assert location.virtual is not None
        size = destination.width // 8
        gdb.write_memory(location.virtual, value.to_bytes(size, "little"))
        return
    register = destination.register
    if destination.kind is DestinationKind.NONE or register is None:
        raise MachineError("the instruction has no result")
    mask = _lane_mask(destination.width)
    whole = gdb.read_register(register)
    gdb.write_register(register, (whole & ~mask) | (value & mask))


class CountEnd(enum.Enum):
    """Why counting instances stopped."""

    DONE = "done"
    """Every wanted instance was reached (the vCPU is halted after the last one)."""
    EXITED = "exited"
    """The workload ended first (halted at the agent's exit hook)."""
    TIMED_OUT = "timed-out"
    """The hang budget ran out (halted)."""
    GONE = "gone"
    """QEMU exited."""
    STOPPED = "stopped"
    """The guest stopped for another reason (a panic): observation takes over."""


@dataclass(frozen=True)
class Counting:
    """The outcome of counting: why it stopped, the instances counted, the extra host
    seconds the stops were allowed, and the first symptom after an injection if one was
    hit (monotonic host seconds, guest instructions in deterministic mode)."""

    end: CountEnd
    counted: int
    allowance_s: float
    symptom: Symptom | None = None


OnInstance = Callable[[Instruction, int, ResultLocation], None]
"""Called with the vCPU halted right after a wanted instance executed: the instruction,
the instance number and its result's location."""


def count_instances(
    vm: Machine,
    *,
    sites: Mapping[int, Instruction],
    process: WorkloadProcess,
    wanted: Sequence[int],
    on_instance: OnInstance,
    deadline: float,
    exit_hook: int,
    sentinels: Collection[int],
    may_run_on: Callable[[], bool] | None = None,
) -> Counting:
    """Count executions of `sites` (run-time address -> instruction, breakpoints already
    set) in `process`, from 1, until the last instance in `wanted` has executed.

    Hits in other processes or in kernel mode are passed over. An instance whose step
    trapped into the kernel (a page fault) is the same instance when it runs again. Stops
    at the agent's exit hook, at the hang `deadline` (monotonic seconds, extended by
    STOP_ALLOWANCE_S per stop, and while `may_run_on()` says a loaded host only slowed the
    run) or when QEMU exits; symptom sentinels are noted and passed.
    """
    gdb = vm.gdb
    platform = vm.platform
    names = [platform.pc, platform.privilege, platform.page_table_root]
    pending = sorted(set(wanted))
    counted = 0
    allowance = 0.0
    retries: dict[int, int] = {}
    symptom: Symptom | None = None
    injected = False
    at_site = False
    while pending:
        if not at_site:
            if not vm.alive:
                return Counting(CountEnd.GONE, counted, allowance, symptom)
            run = vm.run_for(max(0.0, deadline + allowance - time.monotonic()))
            if run.end is RunEnd.EXITED:
                return Counting(CountEnd.GONE, counted, allowance, symptom)
            if run.end is RunEnd.TIME:
                if may_run_on is not None and may_run_on():
                    deadline = time.monotonic() - allowance + _RUN_ON_S
                    continue
                return Counting(CountEnd.TIMED_OUT, counted, allowance, symptom)
            allowance += STOP_ALLOWANCE_S
            rip = run.pc
            if rip in sentinels:
                if symptom is None and injected:
                    symptom = Symptom.now(vm)
                continue
            if rip == exit_hook:
                return Counting(CountEnd.EXITED, counted, allowance, symptom)
            if rip not in sites:
                return Counting(CountEnd.STOPPED, counted, allowance, symptom)
        handled = time.monotonic()
        state = gdb.read_registers(names)
        insn = sites.get(state[platform.pc])
        user = platform.is_user(state[platform.privilege])
        if insn is None or not user or not process.owns(state[platform.page_table_root]):
            at_site = False  # another process (or the kernel) at the same address
            continue
        instance = retries.pop(insn.address, None)
        if instance is None:
            counted += 1
            instance = counted
        location = locate_result(gdb, insn) if instance == pending[0] else None
        if execute_instruction(gdb, insn, platform) is StepOutcome.TRAPPED:
            retries[insn.address] = instance
            at_site = False
            continue
        if location is not None:
            on_instance(insn, instance, location)
            pending.pop(0)
            injected = True
        at_site = gdb.read_register(platform.pc) in sites
        allowance += time.monotonic() - handled
    return Counting(CountEnd.DONE, counted, allowance, symptom)
