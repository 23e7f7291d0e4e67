"""Page-table faults (`memory:page-table`): bit flips in the page-table entries of the
target machine, as Gigan made them in its target VM (frame numbers and control bits).

The tables are those of the workload's address space, rooted where the workload's exec
left its CR3 (learnt at the exec in every experiment, as `memory:process` does), at a
uniform moment of the workload's life (or the trigger given). The entry is drawn uniformly
among the present entries of every level (PML4, PDPT, PD, PT) of the lower half of the
address space (the workload's own: `context = "user"`), of the upper half (the kernel's,
shared by every process: `context = "kernel"`), or of both (`any`, the default). Without
`bits`, one bit is drawn among the bits the MMU reads: the control bits 0-8 (present,
writable, user, write-through, cache-disable, accessed, dirty, page size or PAT, global),
the frame number 12-51 and no-execute 63; `bits` draws from the whole 64-bit entry as the
grammar says. The entry is written through the gdbstub and read back. No TLB is flushed: a
translation the vCPU already holds stays until the guest drops it, as with a fault in RAM.
The MMU's walks do not trip watchpoints, so activation is not observed.

x86-64 only (4-level paging); another architecture is a one-line UsageError.
"""

from __future__ import annotations

import random

from vmfault.errors import MachineError, UsageError
from vmfault.experiment.kinds.base import Injected
from vmfault.experiment.kinds.memory import MemoryKind, physical_reader
from vmfault.experiment.records import PageTableInjection, TriggerPoint
from vmfault.experiment.state import Experiment
from vmfault.experiment.triggers import reach_trigger, run_to_moment, trigger_text
from vmfault.faults.model import BitModel, Context, FaultSpec, TriggerKind
from vmfault.faults.select import BitChoice
from vmfault.machine.pagetable import TableEntry, table_entries

__all__ = ["ENTRY_BITS", "PageTableKind", "default_bit"]

ENTRY_BITS = (*range(9), *range(12, 52), 63)
"""The bits of an entry the MMU reads: control bits 0-8, the frame number 12-51, NX 63."""
_X86_64 = "x86-64"


def default_bit(rng: random.Random) -> int:
    """One bit of ENTRY_BITS, drawn with `rng`."""
    bit: int = rng.choice(ENTRY_BITS)
    return bit


class PageTableKind(MemoryKind):
    """Faults in a page-table entry of the target machine."""

    def prepare(self, spec: FaultSpec) -> None:
        """Nothing to learn ahead: `context` picks the half of the address space whose
        entries are drawn, not a moment of the execution."""
        del spec

    def _check_architecture(self) -> None:
        architecture = self.machine.vm.gdb.architecture or ""
        if _X86_64 not in architecture:
            raise UsageError(
                f"memory:page-table walks x86-64 page tables; machine {self.machine.name} is "
                f"{architecture or 'of an unknown architecture'}",
                hint="fault memory:process or memory:ram on this machine instead",
            )

    def trigger(self, experiment: Experiment) -> str:
        """Learn the workload's page-table root at its exec, then run to the trigger: a
        uniform moment of the workload's life, or the trigger given (then settled into the
        context, if one is given)."""
        self._check_architecture()
        self._root = None
        drawn = experiment.spec.trigger.kind is TriggerKind.TIME
        if not drawn or experiment.spec.trigger.time_s is not None:
            return self._learn(experiment) or reach_trigger(experiment)
        return run_to_moment(
            experiment, before=lambda: self._learn(experiment), alive=self._maps_pages
        )

    def _entries(self, context: Context) -> list[TableEntry]:
        if self._root is None:
            raise MachineError("the workload's page-table root is not known at the trigger")
        return table_entries(
            self._root, physical_reader(self.machine.vm.gdb),
            lower=context is not Context.KERNEL, upper=context is not Context.USER,
        )  # fmt: skip

    def inject(self, experiment: Experiment) -> Injected:
        """Flip the drawn entry's bits, read the entry back."""
        plan = experiment.plan
        gdb = experiment.vm.gdb
        point = experiment.trigger_point(trigger_text(plan))
        entries = self._entries(experiment.spec.context)
        if not entries:
            raise MachineError("no present page-table entry in that half of the address space")
        entry = experiment.rng("location").choice(entries)
        bits = plan.bits
        if experiment.spec.bits == BitModel():
            bit = default_bit(experiment.rng("bits"))
            bits = BitChoice(1 << bit, bits.mode, 64)
        before = int.from_bytes(gdb.read_memory(entry.address, 8, physical=True), "little")
        after = bits.apply(before)
        gdb.write_memory(entry.address, after.to_bytes(8, "little"), physical=True)
        experiment.mark_injected()
        readback = int.from_bytes(gdb.read_memory(entry.address, 8, physical=True), "little")
        held = readback == after
        space = "kernel" if entry.upper_half else "user"
        injection = PageTableInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            location=f"{entry.table} entry of {entry.virtual:#x} ({space})",
            address=entry.address, virtual=entry.virtual, width=64, mask=bits.mask,
            mode=bits.mode.value, before=before, after=after, readback=readback, injected=held,
            reason="" if held else f"read back {readback:#x}, wrote {after:#x}", trigger=point,
            level=entry.table, space=space, leaf=entry.leaf, entries=len(entries),
        )  # fmt: skip
        return Injected((injection,))

    def not_injected(self, experiment: Experiment, reason: str) -> PageTableInjection:
        """The page-table fault that was not made."""
        plan = experiment.plan
        return PageTableInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            width=64, mask=plan.bits.mask, mode=plan.bits.mode.value, reason=reason,
            trigger=TriggerPoint(spec=trigger_text(plan)),
        )  # fmt: skip
