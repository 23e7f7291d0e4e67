"""Memory faults: a 64-bit word of guest RAM, of a region, of the workload process or of one
of its symbols, at the trigger; and the regions and pages storms draw from.

Physical targets (`memory:ram`, `kernel-text`, `kernel-data`, `0xADDRESS`, ranges) are
chosen from QEMU's own memory map and the kernel's symbols. Process targets
(`memory:process`, `memory:@SYMBOL[+OFFSET]`) are chosen among the pages the workload maps
at the trigger, read from its page tables, whose root is learnt at the workload's exec in
every experiment (its page-table pages may differ from run to run), so the fault needs no
CPU context: any moment of the workload's life, from its exec on, will do. A word reached by
a virtual address is watched for its first access (activation).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass

from vmfault.errors import ImageError, MachineError, UsageError, VmfaultError
from vmfault.experiment.kinds.base import FaultKind, Injected
from vmfault.experiment.records import MemoryInjection, TriggerPoint
from vmfault.experiment.state import Experiment, Watch
from vmfault.experiment.testbed import GuestMachine
from vmfault.experiment.triggers import (
    prepare_context,
    reach_trigger,
    run_to_moment,
    trigger_text,
)
from vmfault.faults.model import BitMode, Context, FaultSpec, TriggerKind
from vmfault.faults.select import choose_in_ranges
from vmfault.guest.elfsyms import lookup_symbol
from vmfault.machine import Machine
from vmfault.machine.gdbstub import GdbStub
from vmfault.machine.pagetable import PageMapping, PhysicalReader, walk_address_space
from vmfault.session.process import WorkloadProcess, exec_address, run_to_exec

__all__ = [
    "Cell",
    "MemoryKind",
    "learn_process",
    "physical_reader",
    "process_pages",
    "region_ranges",
]


@dataclass(frozen=True)
class Cell:
    """The memory a fault goes to: guest-physical address, virtual address (None for a
    physical target), the location as text, its size in bytes."""

    physical: int
    virtual: int | None
    location: str
    size: int


def physical_reader(gdb: GdbStub) -> PhysicalReader:
    """Reads guest-physical memory of a halted vCPU (for page-table walks)."""

    def read(address: int, size: int) -> bytes:
        return bytes(gdb.read_memory(address, size, physical=True))

    return read


def process_pages(machine: GuestMachine, root: int | None = None) -> list[PageMapping]:
    """The user pages the workload maps now, from the page tables at `root` (learnt at
    its exec in this experiment), or from CR3 while the workload itself runs in user mode.

    A root is never remembered across experiments: its page differs from run to run, and
    a stale root still decodes as page tables. MachineError without a root if the workload
    is not running in user mode.
    """
    gdb = machine.vm.gdb
    if root is None:
        if not machine.in_context(Context.USER):
            raise MachineError("the workload is not running in user mode at the trigger")
        root = int(gdb.read_register(machine.vm.platform.page_table_root))
    arch = machine.vm.config.arch
    return [page for page in walk_address_space(arch, root, physical_reader(gdb)) if page.user]


def learn_process(experiment: Experiment, machine: GuestMachine) -> WorkloadProcess | str:
    """From the restored snapshot, run to the workload's exec and read its process (halted
    at its first instruction); or why that failed. QEMU dying raises."""
    code = machine.workload_code()
    try:
        entry = code.binary.entry
        caught_at = exec_address(machine.symbols, experiment.vm.platform, entry)
        return run_to_exec(experiment.vm, caught_at, entry, experiment.reach_timeout_s())
    except (MachineError, ImageError) as exc:
        if not experiment.vm.alive:
            raise
        return exc.one_line()


def region_ranges(
    machine: GuestMachine, region: str, ranges: Sequence[tuple[int, int]] = ()
) -> list[tuple[int, int]]:
    """The guest-physical [start, end) ranges of a fixed region: `ram` (QEMU's memory map),
    `kernel-text`, `kernel-data`, or `custom` (the given `ranges`)."""
    if region == "custom":
        return list(ranges)
    if region == "ram":
        return [(r.start, r.end) for r in machine.vm.memory_map().ram()]
    if region in ("kernel-text", "kernel-data"):
        symbols = machine.symbols
        span = symbols.text() if region == "kernel-text" else symbols.data()
        return [(span.physical_start, span.physical_start + span.size)]
    raise UsageError(f"unknown memory region {region!r}")


class MemoryKind(FaultKind):
    """Faults in a word of guest memory."""

    def __init__(self, machine: GuestMachine) -> None:
        self.machine = machine
        self._root: int | None = None

    def prepare(self, spec: FaultSpec) -> None:
        """A fault drawn in a context needs how the context spreads over the execution."""
        prepare_context(self.machine, spec)

    def trigger(self, experiment: Experiment) -> str:
        """Time, exec or icount trigger, then the context. A process target first learns
        the workload's page tables at its exec and needs no context; a time trigger left
        open is then a uniform moment of the workload's life, from its exec to its end."""
        self._root = None
        target = experiment.spec.target
        if not (target.name == "process" or target.name.startswith("@")):
            return reach_trigger(experiment)
        drawn = experiment.spec.trigger.kind is TriggerKind.TIME
        if not drawn or experiment.spec.trigger.time_s is not None:
            problem = self._learn(experiment)
            return problem or reach_trigger(experiment)
        return run_to_moment(
            experiment, before=lambda: self._learn(experiment), alive=self._maps_pages
        )

    def _maps_pages(self) -> bool:
        """Whether the workload process still maps user pages (it has not exited)."""
        try:
            return bool(process_pages(self.machine, self._root))
        except VmfaultError:
            return False

    def _learn(self, experiment: Experiment) -> str:
        """Run to the workload's exec and keep its page-table root; the workload's life,
        from there to the end of the execution, is the window its moments are drawn in."""
        process = learn_process(experiment, self.machine)
        if isinstance(process, str):
            return process
        self._root = process.page_tables
        span_s = experiment.target.require_golden().span_s
        experiment.window_s = experiment.target.lengths.window_s(experiment.elapsed_s(), span_s)
        return ""

    def choose(self, experiment: Experiment, rng: random.Random) -> Cell:
        """Where the fault goes, drawn with `rng` (the vCPU halted at the trigger)."""
        target = experiment.spec.target
        explicit = target.address
        if explicit is not None:
            return Cell(explicit & ~7, None, f"{explicit & ~7:#x}", 8)
        if target.name.startswith("@"):
            return self._symbol_word(target.name[1:], rng)
        if target.name == "process":
            pages = process_pages(self.machine, self._root)
            if not pages:
                raise MachineError("the workload process maps no user pages at the trigger")
            spans = [(p.virtual, p.virtual_end) for p in pages]
            virtual = choose_in_ranges(spans, rng, align=8)
            page = next(p for p in pages if p.contains(virtual))
            return Cell(page.physical_of(virtual), virtual, f"{virtual:#x}", 8)
        region = "custom" if target.ranges else target.name
        physical = choose_in_ranges(region_ranges(self.machine, region, target.ranges), rng,
                                    align=8)  # fmt: skip
        return Cell(physical, None, f"{physical:#x}", 8)

    def _symbol_word(self, text: str, rng: random.Random) -> Cell:
        """A word of the workload symbol `NAME[+OFFSET]`: at the offset, or uniformly among
        the symbol's bytes that are mapped at the trigger."""
        name, _, offset_text = text.partition("+")
        if self.machine.code is None:
            raise UsageError("memory:@SYMBOL needs a workload with an ELF symbol table")
        symbol = lookup_symbol(self.machine.code.path, name)
        end = symbol.address + max(symbol.size, 1)
        pages = process_pages(self.machine, self._root)
        if offset_text:
            virtual = (symbol.address + int(offset_text, 0)) & ~7
        else:
            spans = [
                (max(p.virtual, symbol.address), min(p.virtual_end, end))
                for p in pages
                if p.virtual < end and p.virtual_end > symbol.address
            ]
            if not spans:
                raise MachineError(f"no page of {name} is mapped at the trigger")
            virtual = choose_in_ranges(spans, rng, align=8)
        page = next((p for p in pages if p.contains(virtual)), None)
        where = f"{name}+{virtual - symbol.address:#x}"
        if page is None:
            raise MachineError(f"{where} is not mapped at the trigger")
        return Cell(page.physical_of(virtual), virtual, where, 8)

    def inject(self, experiment: Experiment) -> Injected:
        """Change the chosen word (or byte), read it back, watch it if it has a virtual
        address."""
        plan = experiment.plan
        vm = experiment.vm
        gdb = vm.gdb
        point = experiment.trigger_point(trigger_text(plan))
        cell = self.choose(experiment, experiment.rng("location"))
        bits = plan.bits
        if cell.size != bits.width // 8:
            width = cell.size * 8
            bits = dataclasses.replace(bits, width=width, mask=bits.mask & ((1 << width) - 1))
        before = int.from_bytes(gdb.read_memory(cell.physical, cell.size, physical=True), "little")
        after = bits.apply(before)
        gdb.write_memory(cell.physical, after.to_bytes(cell.size, "little"), physical=True)
        experiment.mark_injected()
        raw = gdb.read_memory(cell.physical, cell.size, physical=True)
        readback = int.from_bytes(raw, "little")
        held = readback == after
        if held and cell.virtual is not None and bits.mode is not BitMode.VALUE:
            experiment.watch = _watch(vm, cell.virtual)
        injection = MemoryInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            location=cell.location, address=cell.physical, virtual=cell.virtual,
            width=cell.size * 8, mask=bits.mask, mode=bits.mode.value, before=before,
            after=after, readback=readback, injected=held,
            reason="" if held else f"read back {readback:#x}, wrote {after:#x}", trigger=point,
        )  # fmt: skip
        return Injected((injection,))

    def not_injected(self, experiment: Experiment, reason: str) -> MemoryInjection:
        """The memory fault that was not made."""
        plan = experiment.plan
        return MemoryInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            width=plan.width, mask=plan.bits.mask, mode=plan.bits.mode.value, reason=reason,
            trigger=TriggerPoint(spec=trigger_text(plan)),
        )  # fmt: skip


def _watch(vm: Machine, virtual: int) -> Watch | None:
    """A watch on the faulted word, or None if the stub refuses watchpoints there."""
    watch = Watch(virtual)
    try:
        watch.arm(vm)
    except VmfaultError:
        return None
    return watch
