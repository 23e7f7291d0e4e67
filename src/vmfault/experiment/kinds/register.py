"""Register faults (`register:NAME` and groups): bits of one vCPU register, at the trigger.

A stuck-at fault with a hold (`stuck1:100i`) is forced again after each of that many single
steps; it then counts as injected whatever the last read-back shows.
"""

from __future__ import annotations

from vmfault.experiment.kinds.base import FaultKind, Injected
from vmfault.experiment.records import RegisterInjection, TriggerPoint
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine
from vmfault.experiment.triggers import prepare_context, reach_trigger, trigger_text
from vmfault.faults.model import REGISTER_SETS, FaultSpec

__all__ = ["RegisterKind"]


class RegisterKind(FaultKind):
    """Bit flips, stuck-at bits and written values in a register."""

    def __init__(self, machine: GuestMachine) -> None:
        self.machine = machine

    def prepare(self, spec: FaultSpec) -> None:
        """A fault drawn in a context needs how the context spreads over the execution."""
        prepare_context(self.machine, spec)

    def trigger(self, experiment: Experiment) -> str:
        """Time, exec or icount trigger, then the context."""
        return reach_trigger(experiment)

    def inject(self, experiment: Experiment) -> Injected:
        """Change the register, hold it if asked, read it back. A view of a register
        (aarch64's `nzcv`: bits 28-31 of `cpsr`) and a register narrower than its gdbstub
        value (aarch64's 56-bit `pc`) change those bits only."""
        plan = experiment.plan
        gdb = experiment.vm.gdb
        register = plan.register
        assert register is not None
        holder, shift = REGISTER_SETS[experiment.spec.target.arch].location(register)
        field = ((1 << plan.width) - 1) << shift

        def change() -> int:
            """Apply the bits to the field, keeping the register's other bits; the field's
            value before."""
            whole = gdb.read_register(holder)
            value = (whole & field) >> shift
            gdb.write_register(holder, (whole & ~field) | (plan.bits.apply(value) << shift))
            return value

        point = experiment.trigger_point(trigger_text(plan))
        before = change()
        after = plan.bits.apply(before)
        experiment.mark_injected()
        hold = experiment.spec.bits.hold_instructions
        for _ in range(hold):
            gdb.step()
            change()
        readback = (gdb.read_register(holder) & field) >> shift
        held = readback == after or hold > 0
        injection = RegisterInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            location=register, register=register, width=plan.width, mask=plan.bits.mask,
            mode=plan.bits.mode.value, before=before, after=after, readback=readback,
            injected=held, reason="" if held else f"read back {readback:#x}, wrote {after:#x}",
            trigger=point,
        )  # fmt: skip
        return Injected((injection,))

    def not_injected(self, experiment: Experiment, reason: str) -> RegisterInjection:
        """The register fault that was not made."""
        plan = experiment.plan
        return RegisterInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            location=plan.register or "", register=plan.register or "", width=plan.width,
            mask=plan.bits.mask, mode=plan.bits.mode.value, reason=reason,
            trigger=TriggerPoint(spec=trigger_text(plan)),
        )  # fmt: skip
