"""A testbed: the named machines an experiment runs on, booted once and restored per experiment.

Each machine (`GuestMachine`) boots from the image, halts exactly at its workload's start
(the agent's start hook), and is snapshotted there: with several machines, all are halted
at their start hooks before any snapshot is taken, so the snapshots are one consistent
point. The golden runs then go on from the snapshots, all machines running at once, and
every experiment restores every machine (no reboot, and no console input follows a
restore). One machine today; networks of machines and isolation tests add more.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from elftools.elf.elffile import ELFFile

from vmfault.errors import MachineError, UsageError
from vmfault.experiment.records import DEFAULT_MACHINE, GoldenRun
from vmfault.faults.model import Context
from vmfault.guest.binary import WorkloadBinary
from vmfault.guest.elfsyms import lookup_symbol
from vmfault.guest.image import GuestImage
from vmfault.guest.protocol import FrameKind
from vmfault.guest.symbols import KernelSymbols
from vmfault.machine import Accel, Machine, Snapshot
from vmfault.session import Finished, GuestSession, WorkloadResult, capture_kernel_symbols
from vmfault.session.guest import EXIT_REPORT_TIMEOUT_S

__all__ = [
    "BUDGET_SLACK_S",
    "DEFAULT_BUDGET_FACTOR",
    "SYMPTOM_FUNCTIONS",
    "GuestMachine",
    "MachineSpec",
    "StartedOnEnter",
    "Testbed",
    "golden_run",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DEFAULT_BUDGET_FACTOR = 3.0
"""A run that takes longer than this many golden runs is a hang."""
BUDGET_SLACK_S = 0.2
"""Host seconds added to every hang budget (restores and debug stops are not free)."""
GOLDEN_TIMEOUT_S = 300.0
SYMPTOM_FUNCTIONS = ("force_sig_fault", "oops_begin", "panic")
"""Kernel functions whose first call after an injection is the fault's first symptom."""
_POLL_S = 0.002
"""How long one machine is waited for before the next, while several run at once."""


@dataclass(frozen=True)
class MachineSpec:
    """One machine of a testbed: its name and the workload its agent runs."""

    name: str
    argv: tuple[str, ...]
    deterministic: bool = False
    accel: Accel = Accel.TCG
    ram_mib: int = 128
    console_log: Path | None = None


@dataclass(frozen=True)
class WorkloadCode:
    """A workload's executable as the engine needs it: path, executable span, entry point
    (link-time addresses)."""

    path: Path
    text: tuple[int, int]
    entry: int

    @classmethod
    def read(cls, path: Path) -> WorkloadCode:
        """Read the executable's segments and entry point."""
        with path.open("rb") as stream:
            elf = ELFFile(stream)
            spans = [
                (int(seg["p_vaddr"]), int(seg["p_vaddr"] + seg["p_memsz"]))
                for seg in elf.iter_segments()
                if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 1
            ]
            entry = int(elf.header["e_entry"])
        return cls(path, (min(s for s, _ in spans), max(e for _, e in spans)), entry)

    @functools.cached_property
    def binary(self) -> WorkloadBinary:
        """The binary decoded (read once)."""
        return WorkloadBinary(self.path)


class GuestMachine:
    """One machine of a testbed: its session, golden snapshot and golden run, and what
    experiments need to know of its workload and kernel."""

    def __init__(self, image: GuestImage, spec: MachineSpec) -> None:
        self.image = image
        self.spec = spec
        self.name = spec.name
        self.session = GuestSession(
            image, spec.argv, deterministic=spec.deterministic, accel=spec.accel,
            ram_mib=spec.ram_mib, console_log=spec.console_log, name=spec.name,
        )  # fmt: skip
        self.hooks = self.session.hooks
        self.snapshot: Snapshot | None = None
        self.golden: GoldenRun | None = None
        self.sentinels: tuple[int, ...] = ()
        self._symbols: KernelSymbols | None = None
        workload = image.workloads.get(spec.argv[0])
        self.code = WorkloadCode.read(workload.host_binary) if workload is not None else None

    @property
    def argv(self) -> tuple[str, ...]:
        """The workload's command line."""
        return self.spec.argv

    @property
    def vm(self) -> Machine:
        """The QEMU machine."""
        return self.session.machine

    @property
    def deterministic(self) -> bool:
        """Whether the machine runs in icount mode."""
        return self.spec.deterministic

    @property
    def symbols(self) -> KernelSymbols:
        """The guest kernel's symbols (captured once per kernel)."""
        if self._symbols is None:
            self._symbols = capture_kernel_symbols(self.image)
        return self._symbols

    def require_golden(self) -> GoldenRun:
        """The golden run; MachineError if there is none or QEMU is gone."""
        if self.golden is None:
            raise MachineError(
                f"machine {self.name} has no golden run yet", hint="start the testbed first"
            )
        if not self.vm.alive:
            raise MachineError(
                f"QEMU of machine {self.name} exited (status {self.vm.exit_code}); "
                "start a new testbed"
            )
        return self.golden

    def workload_code(self) -> WorkloadCode:
        """The workload's executable; UsageError if it is not a workload of the image."""
        if self.code is None:
            raise UsageError(
                f"{self.argv[0]} is not a workload of the image, so it has no symbol table",
                hint="give a built-in workload, a C file or a binary as the workload",
            )
        return self.code

    # ------------------------------------------------------------------ lifecycle

    def boot(self) -> None:
        """Boot and halt at the workload's start hook."""
        self.session.start()

    def save_snapshot(self) -> None:
        """Save the golden snapshot (the machine is halted at its start hook)."""
        self.snapshot = self.vm.save_snapshot("golden")

    def golden_of(self, finished: Finished) -> GoldenRun:
        """The golden run of this machine, from its finished run."""
        result = finished.result
        vm = self.vm
        return GoldenRun(
            machine=self.name, argv=self.argv, stdout=result.stdout, stderr=result.stderr,
            exit_code=result.exit_code, signal=result.signal, guest_s=result.guest_duration_s,
            host_s=finished.host_s, instructions=finished.instructions, pid=result.pid,
            boot_s=self.session.boot_s, accel=(vm.accel or self.spec.accel).value,
            deterministic=self.deterministic, console=vm.console.transcript(),
        )  # fmt: skip

    def arm(self) -> None:
        """Set the breakpoints every experiment relies on: the exit hook and the symptom
        sentinels. Breakpoints live in QEMU, outside the snapshot, and survive every
        restore; under TCG each insertion flushes all translated code, so they are set
        once here, not per experiment."""
        gdb = self.vm.gdb
        self.vm.halt()
        gdb.set_breakpoint(self.hooks.exited)
        addresses = []
        for name in SYMPTOM_FUNCTIONS:
            symbol = self.symbols.get(name)
            if symbol is not None:
                gdb.set_breakpoint(symbol.address)
                addresses.append(symbol.address)
        self.sentinels = tuple(addresses)

    def restore(self) -> None:
        """Restore the golden snapshot; the machine is left halted at the start hook."""
        if self.snapshot is None:
            raise MachineError(f"machine {self.name} has no golden snapshot")
        self.vm.restore_snapshot(self.snapshot)

    def close(self) -> None:
        """Destroy the machine (always safe)."""
        self.session.close()

    # ------------------------------------------------------------------ questions

    def budget_s(self, factor: float) -> float:
        """The hang budget in host seconds: `factor` golden runs plus BUDGET_SLACK_S."""
        return factor * self.require_golden().host_s + BUDGET_SLACK_S

    def within_instruction_budget(self, start: int | None, factor: float) -> bool:
        """In deterministic mode the budget counts guest instructions, not host time:
        whether fewer than `factor` golden runs of instructions ran since `start`."""
        golden = self.require_golden()
        if not self.deterministic or start is None or golden.instructions is None:
            return False
        now = self.vm.instruction_count() or start
        return now - start < factor * golden.instructions

    def host_per_guest_s(self) -> float:
        """Host seconds per guest second while the guest runs: 1 under plain TCG (guest
        time is the time it runs), the golden run's pace in deterministic mode."""
        golden = self.require_golden()
        if not self.deterministic or not golden.instructions:
            return 1.0
        return max(golden.host_s, 1e-6) / (golden.instructions / 1e9)

    def in_context(self, context: Context) -> bool:
        """Whether the halted vCPU runs in `context`: the workload's own code in user mode
        (USER), the kernel (KERNEL), or anything (ANY)."""
        if context is Context.ANY:
            return True
        gdb = self.vm.gdb
        user = gdb.read_register("cs") & 3 == 3
        if context is Context.KERNEL:
            return not user
        low, high = self.code.text if self.code is not None else (0, 0)
        return user and low <= gdb.read_register("rip") < high

    def code_address(self, location: str) -> int:
        """The address of `location`: a number, a workload symbol or a kernel symbol."""
        try:
            return int(location, 0)
        except ValueError:
            pass
        if self.code is not None:
            try:
                return lookup_symbol(self.code.path, location).address
            except UsageError:
                pass
        symbol = self.symbols.get(location)
        if symbol is None:
            raise UsageError(
                f"no symbol {location!r} in the workload or the kernel",
                hint="give a function name or a 0x address",
            )
        return symbol.address

    def result(self) -> WorkloadResult | None:
        """What the agent reported of the workload so far (None before its exit report)."""
        return WorkloadResult.from_frames(self.vm.channel.frames) if self.vm.alive else None

    def collect_exit(self) -> bool:
        """From the exit hook, let the agent report the workload's exit; whether it did."""
        vm = self.vm
        if not vm.alive:
            return False
        vm.cont()
        return vm.channel.wait(FrameKind.EXIT, timeout_s=EXIT_REPORT_TIMEOUT_S) is not None


class StartedOnEnter:
    """A context manager that calls `start()` on entry and `close()` on exit (and on a
    failed start, before the error propagates)."""

    def start(self) -> object:
        """Start (subclasses)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release everything (subclasses; always safe)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Testbed(StartedOnEnter):
    """The named machines of one experiment (one today), booted once, restored each time.

    Use as a context manager, or call `start()` then `close()`. `judge` names the machine
    whose outcome is the experiment's; None judges by the worst outcome across machines.
    """

    __test__ = False  # a testbed of machines, not a test class

    def __init__(
        self, image: GuestImage, machines: Sequence[MachineSpec], *, judge: str | None = None
    ) -> None:
        names = [spec.name for spec in machines]
        if not names:
            raise UsageError("a testbed needs at least one machine")
        if len(set(names)) != len(names):
            raise UsageError(f"machine names must be unique, not {names}")
        if judge is not None and judge not in names:
            raise UsageError(f"no machine {judge!r} to judge by", hint=f"machines: {names}")
        self.image = image
        self.judge = judge
        self.machines: dict[str, GuestMachine] = {}
        for spec in machines:
            self.machines[spec.name] = GuestMachine(image, spec)

    @classmethod
    def single(
        cls,
        image: GuestImage,
        argv: Sequence[str],
        *,
        name: str = DEFAULT_MACHINE,
        deterministic: bool = False,
        accel: Accel = Accel.TCG,
        console_log: Path | None = None,
    ) -> Testbed:
        """A testbed of one machine running `argv`."""
        spec = MachineSpec(name, tuple(argv), deterministic, accel, console_log=console_log)
        return cls(image, [spec])

    def __iter__(self) -> Iterator[GuestMachine]:
        return iter(self.machines.values())

    @property
    def goldens(self) -> Mapping[str, GoldenRun]:
        """Every machine's golden run, by machine name."""
        return {m.name: m.require_golden() for m in self}

    @property
    def alive(self) -> bool:
        """Whether every machine's QEMU still runs."""
        return all(m.vm.alive for m in self)

    def machine(self, name: str | None = None) -> GuestMachine:
        """The machine `name`; None: the judged machine, else the first one."""
        if name is None:
            name = self.judge or next(iter(self.machines))
        try:
            return self.machines[name]
        except KeyError:
            raise UsageError(
                f"no machine {name!r} in the testbed",
                hint=f"machines: {', '.join(self.machines)}",
            ) from None

    def start(self, *, timeout_s: float = GOLDEN_TIMEOUT_S) -> Mapping[str, GoldenRun]:
        """Boot every machine, snapshot all at their start hooks, run the golden runs
        (all machines at once) and arm the breakpoints experiments need."""
        for machine in self:
            machine.boot()
        for machine in self:
            machine.save_snapshot()
        for name, finished in run_to_exit(list(self), timeout_s=timeout_s).items():
            machine = self.machines[name]
            machine.golden = machine.golden_of(finished)
        for machine in self:
            machine.arm()
        return self.goldens

    def restore(self) -> None:
        """Restore every machine to the golden snapshot (all left halted)."""
        for machine in self:
            machine.restore()

    def close(self) -> None:
        """Destroy every machine (always safe)."""
        for machine in self:
            machine.close()


def run_to_exit(machines: Sequence[GuestMachine], *, timeout_s: float) -> dict[str, Finished]:
    """Run machines halted at their start hooks to their exits, all at once; each one's
    finished run by name. Raises as `GuestSession.wait_exit` does."""
    begun = {m.name: m.session.begin() for m in machines}
    poll = None if len(machines) == 1 else _POLL_S
    finished: dict[str, Finished] = {}
    while len(finished) < len(machines):
        for machine in machines:
            if machine.name not in finished:
                done = machine.session.wait_exit(
                    begun[machine.name], timeout_s=timeout_s, poll_s=poll
                )
                if done is not None:
                    finished[machine.name] = done
    return finished


def golden_run(
    image: GuestImage,
    argv: Sequence[str],
    *,
    deterministic: bool = False,
    accel: Accel = Accel.TCG,
    timeout_s: float = GOLDEN_TIMEOUT_S,
    console_log: Path | None = None,
) -> GoldenRun:
    """Boot `image`, run `argv` fault-free to completion and return what it did (no
    snapshot is taken: `vmfault run`)."""
    spec = MachineSpec(DEFAULT_MACHINE, tuple(argv), deterministic, accel, console_log=console_log)
    machine = GuestMachine(image, spec)
    try:
        machine.boot()
        return machine.golden_of(run_to_exit([machine], timeout_s=timeout_s)[machine.name])
    finally:
        machine.close()
