"""A testbed: the named machines an experiment runs on, booted once and restored per experiment.

Each machine (`GuestMachine`) boots from the image, halts exactly at its workload's start
(the agent's start hook), and is snapshotted there: with several machines, all are halted
at their start hooks before any snapshot is taken, so the snapshots are one consistent
point. The golden runs then go on from the snapshots, all machines running at once, and
every experiment restores every machine (no reboot, and no console input follows a
restore).

Two ways to restore (`RestoreMethod`). `TEMPLATE`, the default: the snapshot is a
template (guest RAM in a file, device state in a qcow2 snapshot; `Machine.save_template`)
and every machine of the testbed is a clone of it, its RAM mapped copy-on-write: a
restore copies back the few pages the run wrote and loads the device state, in
milliseconds, and clones of one template (the workers of a campaign) share its unwritten
pages. A sample of restores, and every restore after a fault that wrote code, is verified
(registers and all of RAM against the template). `LOADVM`: an internal snapshot of the
whole machine, restored with `loadvm` (tens of milliseconds; the fallback).

A testbed can start from a `StartState` (the templates, timed golden runs and timelines
another testbed of the same machines made): its machines are then clones from the start,
each runs its golden run once to check it, and it is ready in a fraction of a second.

Machines of a testbed may be joined by a network vmfault owns (`Testbed(network=True)`: a
`vmfault.network.Switch`, each machine a virtio-net card on it, an address and /etc/hosts
naming every machine). A daemon machine (`MachineSpec.daemon`) serves the others: it runs
until they are done and is then stopped. A scripted machine (`MachineSpec.script`) runs a
shell on its serial console and a console script talks to it from outside; the script's end
is its workload's end. With several machines each one runs on a thread of its own
(`vmfault.experiment.crew`) whenever another is being driven. A restore puts back every
machine and resets the network: no frame and no console input of one run reaches the next.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import functools
import json
import logging
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from elftools.elf.elffile import ELFFile

from vmfault.arch import Arch
from vmfault.errors import MachineError, UsageError
from vmfault.experiment.crew import Crew, free_run
from vmfault.experiment.records import DEFAULT_MACHINE, GoldenRun
from vmfault.faults.model import Context
from vmfault.faults.timeline import Activity, Probes, Slice, Timeline
from vmfault.faults.units import DEFAULT_BUDGET_FACTOR, Budget
from vmfault.files import cache_path, cached_json, write_atomically
from vmfault.guest.binary import WorkloadBinary
from vmfault.guest.elfsyms import lookup_symbol
from vmfault.guest.image import GuestImage
from vmfault.guest.protocol import FrameKind
from vmfault.guest.symbols import KernelSymbols
from vmfault.machine import Accel, Machine, Nic, RamFile, RunEnd, Snapshot, Template
from vmfault.machine.dialogue import Dialogue, DialogueState, Step
from vmfault.machine.disks import GuestDisk
from vmfault.machine.rundir import RunDir, ram_root
from vmfault.network import Port, Switch, mac_text
from vmfault.session import Finished, GuestSession, WorkloadResult, capture_kernel_symbols
from vmfault.session.guest import EXIT_REPORT_TIMEOUT_S

__all__ = [
    "ARCH_SYMPTOM_FUNCTIONS",
    "BUDGET_SLACK_S",
    "DEFAULT_BUDGET_FACTOR",
    "HANG_WALL_CAP",
    "SCRIPT_ARGV",
    "SCRIPT_FINISH",
    "SYMPTOM_FUNCTIONS",
    "VERIFY_EVERY",
    "GuestMachine",
    "MachineSpec",
    "RestoreMethod",
    "StartState",
    "StartedOnEnter",
    "Testbed",
    "golden_run",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

BUDGET_SLACK_S = 0.2
"""Host seconds added to every hang budget (restores and debug stops are not free)."""
HANG_WALL_CAP = 10.0
"""A run is a hang once it took this many hang budgets of host time, even if its vCPU had
less CPU than the budget (see `GuestMachine.within_vcpu_budget`)."""
GOLDEN_TIMEOUT_S = 300.0
SYMPTOM_FUNCTIONS = ("force_sig_fault", "oops_begin", "panic")
"""Kernel functions whose first call after an injection is the fault's first symptom."""
ARCH_SYMPTOM_FUNCTIONS: Mapping[Arch, tuple[str, ...]] = {
    Arch.X86_64: SYMPTOM_FUNCTIONS,
    Arch.AARCH64: ("force_sig_fault", "die", "panic"),  # arm64 oopses through die()
}
_POLL_S = 0.01
"""How often a golden run of several machines looks whether the non-daemons are done."""
_SCRIPT_LOOK_S = 0.05
"""How often a machine's run looks at its console script and its crew's events."""
RESTORED_RUNS = 3
"""Fault-free runs restored from the snapshot that time the execution (triggers are drawn
over it, budgets counted in it)."""
RESTORED_KEPT = 5
"""The most recent restored runs' times a golden run keeps (see `Testbed.retime`)."""
TIMELINE_SLICE_S = 0.0005
"""Mean guest seconds between two samples of the timeline (each slice is jittered between
half and 1.5 times this, so samples do not alias with the kernel's timer tick)."""
PROBE_LOOKS_PER_RUN = 8
"""Looks at each probed run (as many halts as a fault with a context makes)."""
PROBE_HITS = 150
PROBE_LOOKS_MAX = 1200
"""Probing stops once a context has PROBE_HITS looks in it, or after PROBE_LOOKS_MAX."""
IDLE_FUNCTIONS = (
    "native_safe_halt", "pv_native_safe_halt", "default_idle", "arch_cpu_idle",
    "default_idle_call", "cpu_idle_poll", "acpi_idle_do_entry", "mwait_idle", "cpu_do_idle",
)  # fmt: skip
"""Kernel functions a vCPU with nothing runnable waits in."""
SCRIPT_ARGV = ("/bin/sh",)
"""The workload of a scripted machine: a shell on the serial console."""
SCRIPT_FINISH = "exit 0\n"
"""What a script types after its last step: the shell exits, which ends the workload."""

VERIFY_EVERY = 200
"""A clone verifies its first restore and one in this many after it (registers and all of
RAM against the template: about 0.3 s for 128 MiB), besides every restore after a fault
that wrote code."""


class RestoreMethod(enum.StrEnum):
    """How a testbed's machines go back to their snapshot for each experiment."""

    TEMPLATE = "template"
    """Clones of a RAM template: the pages a run wrote are copied back and the device
    state loaded (milliseconds); clones share the template's other pages."""
    LOADVM = "loadvm"
    """An internal snapshot of the whole machine, loaded with `loadvm` (tens of
    milliseconds)."""


@dataclass(frozen=True)
class StartState:
    """What a testbed needs to start its machines without booting them: per machine, its
    template, its golden run (timed from restores) and its timeline. Picklable: a campaign
    makes it once and hands it to every worker."""

    templates: Mapping[str, Template]
    goldens: Mapping[str, GoldenRun]
    timelines: Mapping[str, Timeline | None]
    disk_devices: Mapping[str, Mapping[str, str]] = dataclasses.field(default_factory=dict)
    """Per machine, the guest device of each disk as the agent reported it at boot."""


@dataclass(frozen=True)
class MachineSpec:
    """One machine of a testbed: its name, the workload its agent runs, its disks.

    `daemon`: the machine serves the others; it runs until they are done, then is stopped
    (its workload never has to end). `script`: console steps a host script plays against
    a shell on the machine's serial console (`argv` is then SCRIPT_ARGV; see `scripted`).
    """

    name: str
    argv: tuple[str, ...]
    deterministic: bool = False
    accel: Accel = Accel.TCG
    ram_mib: int = 128
    console_log: Path | None = None
    disks: tuple[GuestDisk, ...] = ()
    tap_disks: bool = True
    """Serve the disks through taps, so that they take faults (see machine.disks)."""
    daemon: bool = False
    script: tuple[Step, ...] | None = None
    host_cpus: tuple[int, ...] = ()
    """Host cores the machine's QEMU is pinned to (`os.sched_setaffinity`); (): not pinned."""

    def __post_init__(self) -> None:
        if self.script is not None and self.daemon:
            raise UsageError(
                f"machine {self.name} has a script and is a daemon",
                hint="a script ends its machine's workload; a daemon is stopped by the others",
            )
        if self.script is not None and self.argv != SCRIPT_ARGV:
            raise UsageError(
                f"machine {self.name} has a script and a workload",
                hint="a scripted machine's workload is the shell its script talks to",
            )

    @classmethod
    def scripted(cls, name: str, steps: Sequence[Step], **options: Any) -> MachineSpec:
        """A machine whose workload is a shell on its console, driven by `steps`."""
        return cls(name, SCRIPT_ARGV, script=tuple(steps), **options)


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


class RunLengths:
    """How long the workload's runs from the snapshot lasted lately, in running seconds.

    A moment drawn over an execution must be drawn over a span as long as the run it
    lands in (a moment past the run's end is drawn again, on a fresh restore), or the
    run's last part is never hit. On a loaded host runs stretch past the golden runs, so
    the span follows the recent runs that reached their exit: the QUANTILE of the last
    `keep` (not their longest: one run stretched 3x by the host would make most draws
    miss), never less than the golden runs' span.
    """

    QUANTILE = 0.75
    LEAST = 5
    """Runs noted before they count (the golden runs' span alone until then)."""
    OUTLIER = 4.0
    """A run longer than this many golden spans is not noted (a stalled host, not a pace)."""

    def __init__(self, keep: int = 20) -> None:
        self._exits: collections.deque[float] = collections.deque(maxlen=keep)

    def note(self, exit_s: float, golden_span_s: float) -> None:
        """A run that reached the workload's exit `exit_s` seconds after the snapshot."""
        if exit_s <= self.OUTLIER * golden_span_s:
            self._exits.append(exit_s)

    def span_s(self, golden_span_s: float) -> float:
        """The span to draw moments of the whole execution over (seconds)."""
        if len(self._exits) < self.LEAST:
            return golden_span_s
        ordered = sorted(self._exits)
        return max(golden_span_s, ordered[round(self.QUANTILE * (len(ordered) - 1))])

    def window_s(self, start_s: float, golden_span_s: float) -> tuple[float, float]:
        """The window from `start_s` (the workload's exec) to the end of the span; a run
        that reached the exec only after the span ended (a run slowed by the host) gets a
        window as long as the span."""
        length = self.span_s(golden_span_s) - start_s
        if length <= 0.0:
            length = golden_span_s
        return start_s, start_s + length


class GuestMachine:
    """One machine of a testbed: its session, golden snapshot and golden run, and what
    experiments need to know of its workload and kernel."""

    def __init__(
        self,
        image: GuestImage,
        spec: MachineSpec,
        *,
        template: Template | None = None,
        ram_file: RamFile | None = None,
        disk_devices: Mapping[str, str] | None = None,
        port: Port | None = None,
        hosts: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.image = image
        self.spec = spec
        self.name = spec.name
        self.template = template
        """The template this machine is a clone of (None: it boots)."""
        self.port = port
        """The machine's port on the testbed's network (None: no network card)."""
        nic = None if port is None else Nic(mac_text(port.mac), port.guest_fd)
        self.session = GuestSession(
            image, spec.argv, deterministic=spec.deterministic, accel=spec.accel,
            ram_mib=spec.ram_mib, console_log=spec.console_log, name=spec.name,
            disks=spec.disks, tap_disks=spec.tap_disks, template=template, ram_file=ram_file,
            disk_devices=disk_devices, on_console=spec.script is not None, nic=nic,
            address=None if port is None else port.address, hosts=hosts,
            host_cpus=spec.host_cpus,
        )  # fmt: skip
        self.hooks = self.session.hooks
        self.dialogue = (
            None
            if spec.script is None
            else Dialogue(self.session.machine, spec.script, finish=SCRIPT_FINISH)
        )
        """The console script of a scripted machine, begun at every run from the snapshot."""
        self.testbed: Testbed | None = None
        """The testbed the machine belongs to, which restores it with the others."""
        self.snapshot: Snapshot | None = None if template is None else template.snapshot
        self.verify_next = False
        """Verify the next restore (set after a fault that wrote code)."""
        self.restores = 0
        self.golden: GoldenRun | None = None
        self.sentinels: tuple[int, ...] = ()
        self.timeline: Timeline | None = None
        """Where the vCPU is during a golden run from the snapshot (`sample_timeline`)."""
        self.probes: Probes | None = None
        """Looks at golden runs, for faults drawn in a context (`probe_contexts`)."""
        self.lengths = RunLengths()
        """How long runs from the snapshot lasted lately (spans moments are drawn over)."""

        self._symbols: KernelSymbols | None = None
        self._idle: tuple[tuple[int, int], ...] | None = None
        workload = image.workloads.get(spec.argv[0])
        self.code = WorkloadCode.read(workload.host_binary) if workload is not None else None

    @property
    def argv(self) -> tuple[str, ...]:
        """The workload's command line."""
        return self.spec.argv

    @property
    def daemon(self) -> bool:
        """Whether the machine serves the others until they are done (then is stopped)."""
        return self.spec.daemon

    def begin_script(self) -> None:
        """Begin the console script from the first step (a machine without one: nothing)."""
        if self.dialogue is not None:
            self.dialogue.start()

    def script_failure(self) -> str:
        """Why the console script failed (`script step 2 timed out`), or ""."""
        dialogue = self.dialogue
        if dialogue is None or dialogue.state is not DialogueState.FAILED:
            return ""
        return dialogue.failure

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

    def span_s(self) -> float:
        """Running seconds of the execution that moments are drawn over now (`RunLengths`)."""
        return self.lengths.span_s(self.require_golden().span_s)

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
        """Boot (or launch a clone of the template) and halt at the workload's start hook."""
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
            disks=dict(self.session.disks),
        )  # fmt: skip

    def activity(self) -> Activity:
        """What the halted vCPU runs: the workload's code, other user code, the kernel's
        idle loop or other kernel code."""
        if self.vm.user_mode():
            return Activity.WORKLOAD if self.in_context(Context.USER) else Activity.USER
        return Activity.IDLE if self.idle() else Activity.KERNEL

    def idle(self) -> bool:
        """Whether the halted vCPU waits in the kernel's idle loop (nothing is runnable)."""
        if self._idle is None:
            spans = []
            for name in IDLE_FUNCTIONS:
                symbol = self.symbols.get(name)
                if symbol is not None:
                    spans.append((symbol.address, symbol.address + self.symbols.size_of(symbol)))
            self._idle = tuple(spans)
        pc = self.vm.gdb.read_register(self.vm.gdb.pc_name)
        return any(start <= pc < end for start, end in self._idle)

    def sample_timeline(self, *, slice_s: float = TIMELINE_SLICE_S, seed: int = 0) -> Timeline:
        """Restore, and run the golden run to its exit in short slices, noting what ran at
        the end of each: the machine's `timeline`, scaled to the length of the golden runs
        restored without halts (`GoldenRun.typical_s`). The slices are waited for, not
        polled: a polling host process would starve QEMU on a loaded machine."""
        vm = self.vm
        rng = random.Random(seed)
        deadline = time.monotonic() + 20 * self.require_golden().host_s + 5.0
        others = self.from_snapshot()
        vm.gdb.set_breakpoint(self.hooks.exited)
        slices: list[Slice] = []
        at = 0.0
        try:
            while True:
                run = vm.run_for(slice_s * (0.5 + rng.random()))
                if run.end is RunEnd.EXITED:
                    raise MachineError(f"QEMU of machine {self.name} exited while sampling")
                start, at = at, at + run.ran_s
                if run.pc == self.hooks.exited:
                    break
                if time.monotonic() > deadline:
                    raise MachineError(
                        f"the golden run of {self.name} did not end while sampled "
                        f"({len(slices)} slices, {at:.3f} s run, last stop {run.end.value})"
                    )
                slices.append(Slice(start, at, self.activity()))
        finally:
            others.end()
            if vm.alive:
                vm.halt()
                vm.gdb.remove_breakpoint(self.hooks.exited)
        # Each halt adds its round trip to the measured running time: scale the timeline
        # to the length of runs made without halts.
        self.timeline = Timeline(tuple(slices)).scaled(self.require_golden().typical_s)
        return self.timeline

    def probe_contexts(self, context: Context) -> Probes:
        """Looks at golden runs from the snapshot, enough to know how `context`'s moments
        spread over the execution (PROBE_HITS of them, or PROBE_LOOKS_MAX looks in all):
        taken once per image and workload, kept beside the image and extended as needed."""
        key = [list(self.argv), self.spec.accel.value, self.deterministic]
        path = cache_path(self.image.root / "profiles", "probes", key)
        if self.probes is None:
            self.probes = cached_json(path, lambda: Probes(()), decode=Probes.from_json,
                                      encode=Probes.to_json)  # fmt: skip
        probes = self.probes
        if probes.hits(context) < PROBE_HITS and len(probes.looks) < PROBE_LOOKS_MAX:
            rng = random.Random(len(probes.looks))
            looks = list(probes.looks)
            while sum(a.matches(context) for _, a in looks) < PROBE_HITS and (
                len(looks) < PROBE_LOOKS_MAX
            ):  # fmt: skip
                looks.extend(self._look(rng))
            probes = self.probes = Probes(tuple(looks))
            write_atomically(path, (json.dumps(probes.to_json()) + "\n").encode("utf-8"))
        return probes

    def note_look(self, fraction: float, activity: Activity) -> None:
        """Add a look an experiment made (a uniform moment, in this run's host speed) to
        the probes, keeping the last PROBE_LOOKS_MAX: they follow the host's drift."""
        if self.probes is not None:
            self.probes = self.probes.with_look(fraction, activity, keep=PROBE_LOOKS_MAX)

    def _look(self, rng: random.Random) -> list[tuple[float, Activity]]:
        """One probed run: PROBE_LOOKS_PER_RUN looks at uniform moments of the execution."""
        span = self.require_golden().span_s
        vm = self.vm
        others = self.from_snapshot()
        start = vm.ran_s
        looks: list[tuple[float, Activity]] = []
        try:
            for at in sorted(rng.uniform(0.0, span) for _ in range(PROBE_LOOKS_PER_RUN)):
                run = vm.run_for(max(0.0, at - (vm.ran_s - start)))
                if run.end is not RunEnd.TIME:
                    break  # this run ended before the moment: its later moments are gone
                looks.append(((vm.ran_s - start) / span, self.activity()))  # where it halted
        finally:
            others.end()
        return looks

    def from_snapshot(self) -> Crew[bool]:
        """Restore this machine (its whole testbed, if it has one) and let the others run
        free on a crew; end the crew to halt them."""
        crew: Crew[bool] = Crew()
        if self.testbed is None:
            self.restore()
            return crew
        self.testbed.restore()
        for machine in self.testbed:
            if machine is not self:
                vm = machine.vm
                crew.run(machine.name, lambda vm=vm: free_run(vm, crew.abort))  # type: ignore[misc]
        return crew

    def arm(self) -> None:
        """Set the breakpoints every experiment relies on: the exit hook and the symptom
        sentinels. Breakpoints live in QEMU, outside the snapshot, and survive every
        restore; under TCG each insertion flushes all translated code, so they are set
        once here, not per experiment."""
        gdb = self.vm.gdb
        self.vm.halt()
        gdb.set_breakpoint(self.hooks.exited)
        addresses = []
        for name in ARCH_SYMPTOM_FUNCTIONS[self.image.arch]:
            symbol = self.symbols.get(name)
            if symbol is not None:
                gdb.set_breakpoint(symbol.address)
                addresses.append(symbol.address)
        self.sentinels = tuple(addresses)

    def restore(self, *, verify: bool = False) -> None:
        """Restore the golden snapshot; the machine is left halted at the start hook.

        A clone of a template verifies the restore when asked, when `verify_next` is set,
        and once in VERIFY_EVERY restores: SnapshotError if the state differs.
        """
        if self.snapshot is None:
            raise MachineError(f"machine {self.name} has no golden snapshot")
        self.restores += 1
        if self.template is not None and self.restores % VERIFY_EVERY == 1:
            verify = True
        self.vm.restore_snapshot(self.snapshot, verify=verify or self.verify_next)
        self.verify_next = False

    def close(self) -> None:
        """Destroy the machine (always safe)."""
        self.session.close()

    # ------------------------------------------------------------------ questions

    def budget_s(self, budget: Budget | float) -> float:
        """The hang budget in host seconds plus BUDGET_SLACK_S: a factor of the golden run
        (as restored runs take it), or guest seconds at this machine's pace."""
        if not isinstance(budget, Budget):
            budget = Budget(factor=budget)
        if budget.guest_s is not None:
            return budget.guest_s * self.host_per_guest_s() + BUDGET_SLACK_S
        return budget.factor * self.require_golden().typical_s + BUDGET_SLACK_S

    def within_vcpu_budget(self, start_vcpu_s: float, budget: Budget, elapsed_s: float) -> bool:
        """Whether a run that began at `start_vcpu_s` of vCPU time and has taken
        `elapsed_s` host seconds may go on past its host-time budget: its vCPU threads had
        less CPU than the budget's golden runs had (a loaded host slowed it, it did not
        hang), and it has not taken HANG_WALL_CAP budgets of host time (a guest that waits,
        using no CPU, is a hang however little CPU it had). A budget in guest seconds is
        not stretched: guest time under TCG runs with the host's clock."""
        golden = self.require_golden()
        typical = golden.typical_vcpu_s
        if typical is None or budget.guest_s is not None:
            return False
        if elapsed_s >= HANG_WALL_CAP * self.budget_s(budget):
            return False
        return self.vm.vcpu_s() - start_vcpu_s < budget.factor * typical + BUDGET_SLACK_S

    def within_instruction_budget(self, start: int | None, budget: Budget | float) -> bool:
        """In deterministic mode the budget counts guest instructions, not host time:
        whether fewer than the budget's instructions ran since `start` (a factor of the
        golden run's, or one per guest nanosecond)."""
        if not isinstance(budget, Budget):
            budget = Budget(factor=budget)
        golden = self.require_golden()
        if not self.deterministic or start is None or golden.instructions is None:
            return False
        now = self.vm.instruction_count() or start
        allowed = (
            budget.guest_s * 1e9
            if budget.guest_s is not None
            else budget.factor * golden.instructions
        )
        return now - start < allowed

    def host_per_guest_s(self) -> float:
        """Host seconds per guest second while the guest runs: 1 under plain TCG (guest
        time is the time it runs), the golden run's pace in deterministic mode."""
        golden = self.require_golden()
        if not self.deterministic or not golden.instructions:
            return 1.0
        return max(golden.typical_s, 1e-6) / (golden.instructions / 1e9)

    def in_context(self, context: Context) -> bool:
        """Whether the halted vCPU runs in `context`: the workload's own code in user mode
        (USER), the kernel (KERNEL), or anything (ANY)."""
        if context is Context.ANY:
            return True
        gdb = self.vm.gdb
        user = self.vm.user_mode()
        if context is Context.KERNEL:
            return not user
        low, high = self.code.text if self.code is not None else (0, 0)
        return user and low <= gdb.read_register(gdb.pc_name) < high

    def holds_code(self, physical: int | None, virtual: int | None) -> bool:
        """Whether a guest address lies in code: the kernel's text (physical) or the
        workload's executable span (virtual)."""
        if physical is not None:
            text = self.symbols.text()
            if text.physical_start <= physical < text.physical_start + text.size:
                return True
        if virtual is not None and self.code is not None:
            low, high = self.code.text
            return low <= virtual < high
        return False

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
    """The named machines of one experiment, booted once, restored each time.

    Use as a context manager, or call `start()` then `close()`. `judge` names the machine
    whose outcome is the experiment's; None judges by the worst outcome across machines.
    With `network`, the machines are joined by a switch of vmfault's (`switch`): machine
    i (in the order given) has the address 10.0.0.(i+1) and every machine's /etc/hosts
    names them all.
    """

    __test__ = False  # a testbed of machines, not a test class

    def __init__(
        self,
        image: GuestImage,
        machines: Sequence[MachineSpec],
        *,
        judge: str | None = None,
        restore: RestoreMethod = RestoreMethod.TEMPLATE,
        start_state: StartState | None = None,
        template_dir: Path | None = None,
        network: bool = False,
    ) -> None:
        names = [spec.name for spec in machines]
        if not names:
            raise UsageError("a testbed needs at least one machine")
        if len(set(names)) != len(names):
            raise UsageError(f"machine names must be unique, not {names}")
        if judge is not None and judge not in names:
            raise UsageError(f"no machine {judge!r} to judge by", hint=f"machines: {names}")
        if all(spec.daemon for spec in machines):
            raise UsageError(
                "every machine of the testbed is a daemon, so none of them ever ends",
                hint="make at least one machine run a workload that ends, or a script",
            )
        if start_state is not None and set(start_state.templates) != set(names):
            raise UsageError(f"the start state has no templates of machines {names}")
        self.image = image
        self.judge = judge
        untapped = [s.name for s in machines if s.disks and not s.tap_disks]
        if restore is RestoreMethod.TEMPLATE and untapped and start_state is None:
            # Disks QEMU serves itself (qcow2 overlays) live in one QEMU's files: clones
            # could not share them, so these machines restore with loadvm.
            logger.info("machines %s have untapped disks: restored with loadvm", untapped)
            restore = RestoreMethod.LOADVM
        self.restore_method = RestoreMethod.TEMPLATE if start_state is not None else restore
        self._given = start_state
        self.template_dir = template_dir
        """Where templates are made (None: a private directory removed on close)."""
        self._own_dir: RunDir | None = None
        self.switch = Switch(names) if network else None
        """The network joining the machines (None: they have no network cards)."""
        self._hosts: list[tuple[str, str]] = []
        if self.switch is not None:
            self._hosts = [(name, port.host) for name, port in self.switch.ports.items()]
        self.machines: dict[str, GuestMachine] = {}
        try:
            for spec in machines:
                template = None if start_state is None else start_state.templates[spec.name]
                devices = None if start_state is None else start_state.disk_devices.get(spec.name)
                self.machines[spec.name] = self._machine(
                    spec, template=template, disk_devices=devices
                )
        except BaseException:
            if self.switch is not None:
                self.switch.close()
            raise

    def _machine(
        self,
        spec: MachineSpec,
        *,
        template: Template | None = None,
        ram_file: RamFile | None = None,
        disk_devices: Mapping[str, str] | None = None,
    ) -> GuestMachine:
        """A machine of this testbed (on its network, if it has one)."""
        port = None if self.switch is None else self.switch.ports[spec.name]
        own = [(n, a) for n, a in self._hosts if n == spec.name]
        others = [(n, a) for n, a in self._hosts if n != spec.name]
        machine = GuestMachine(
            self.image, spec, port=port, hosts=own + others, template=template,
            ram_file=ram_file, disk_devices=disk_devices,
        )  # fmt: skip
        machine.testbed = self
        return machine

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
        restore: RestoreMethod = RestoreMethod.TEMPLATE,
        disks: Sequence[GuestDisk] = (),
    ) -> Testbed:
        """A testbed of one machine running `argv`, with `disks`."""
        spec = MachineSpec(name, tuple(argv), deterministic, accel, console_log=console_log,
                           disks=tuple(disks))  # fmt: skip
        return cls(image, [spec], restore=restore)

    def __iter__(self) -> Iterator[GuestMachine]:
        return iter(self.machines.values())

    @property
    def goldens(self) -> Mapping[str, GoldenRun]:
        """Every machine's golden run, by machine name."""
        return {m.name: m.require_golden() for m in self}

    @property
    def alive(self) -> bool:
        """Whether every machine's QEMU (and the network's switch) still runs."""
        switch_up = self.switch is None or self.switch.alive
        return switch_up and all(m.vm.alive for m in self)

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
        """Boot every machine (or launch clones of templates), snapshot all at their start
        hooks, run the golden runs (all machines at once) and arm the breakpoints
        experiments need. From a `StartState`, each machine's golden run is run once and
        checked against the state's (MachineError if it differs)."""
        if self.switch is not None:
            self.switch.start()
        if self.restore_method is RestoreMethod.TEMPLATE and self._given is None:
            templates, devices = self._make_templates()
            for machine in self:
                self.machines[machine.name] = self._machine(
                    machine.spec, template=templates[machine.name],
                    disk_devices=devices[machine.name],
                )  # fmt: skip
        for machine in self:
            machine.boot()
        if self.restore_method is RestoreMethod.LOADVM:
            for machine in self:
                machine.save_snapshot()
        if self.switch is not None:
            self._reset_network()  # frames of the boots stay out of the golden runs
        for machine in self:
            machine.begin_script()
        for name, finished in run_to_exit(list(self), timeout_s=timeout_s).items():
            machine = self.machines[name]
            machine.golden = machine.golden_of(finished)
        if self._given is not None:
            self._adopt(self._given)
            for machine in self:
                machine.arm()
            return self.goldens
        self._time_restored(timeout_s=timeout_s)
        for machine in self:
            if machine.daemon:
                continue  # no end to sample up to; daemons are never declared hung early
            try:
                machine.sample_timeline()
            except MachineError as exc:
                if not machine.vm.alive:
                    raise
                # The timeline only lets hangs be declared early; without it they wait
                # for the budget.
                logger.warning("no timeline of %s: %s", machine.name, exc.one_line())
        for machine in self:
            machine.arm()
        return self.goldens

    def _make_templates(self) -> tuple[dict[str, Template], dict[str, dict[str, str]]]:
        """Boot every machine with its RAM in a shared file, halt all at their start hooks
        (one consistent point), save a template of each, and shut them down; the templates
        and the guest devices of each machine's disks, by machine name."""
        if self.template_dir is None:
            self._own_dir = RunDir(ram_root())
            directory = self._own_dir.path
        else:
            directory = self.template_dir
        booted: list[GuestMachine] = []
        templates: dict[str, Template] = {}
        try:
            for spec in (m.spec for m in self):
                folder = directory / spec.name
                folder.mkdir(mode=0o700)
                live = RamFile(folder / "live", shared=True)
                machine = self._machine(spec, ram_file=live)
                booted.append(machine)
                machine.boot()
            for machine in booted:
                templates[machine.name] = machine.vm.save_template(directory / machine.name)
        finally:
            for machine in booted:
                machine.close()
                (directory / machine.name / "live").unlink(missing_ok=True)
        return templates, {m.name: dict(m.session.disks) for m in booted}

    def _adopt(self, state: StartState) -> None:
        """Check each machine's golden run against the state's and take the state's
        timings and timelines (they were measured on clones of the same templates)."""
        for machine in self:
            golden = machine.require_golden()
            expected = state.goldens[machine.name]
            if (golden.stdout, golden.exit_code, golden.signal) != (
                expected.stdout, expected.exit_code, expected.signal,
            ):  # fmt: skip
                raise MachineError(
                    f"the workload of {machine.name} gives another result in this worker "
                    "than in the campaign's golden run",
                    hint="the workload must be deterministic, or use `deterministic = true`",
                )
            machine.golden = dataclasses.replace(
                golden, restored_s=expected.restored_s, restored_vcpu_s=expected.restored_vcpu_s
            )
            machine.timeline = state.timelines.get(machine.name)

    def start_state(self) -> StartState:
        """What another testbed of the same machines needs to start from this one's
        templates (a started testbed restored by TEMPLATE); MachineError otherwise."""
        templates = {m.name: m.template for m in self if m.template is not None}
        if len(templates) != len(self.machines):
            raise MachineError("only a testbed of template clones has a start state")
        return StartState(
            templates=templates,
            goldens=self.goldens,
            timelines={m.name: m.timeline for m in self},
            disk_devices={m.name: dict(m.session.disks) for m in self},
        )

    def retime(self, *, runs: int = 1, timeout_s: float = GOLDEN_TIMEOUT_S) -> None:
        """Time `runs` more fault-free runs from the snapshot: the host's speed drifts (by
        half, within minutes, on a busy machine), so the span triggers are drawn over
        follows the last RESTORED_KEPT runs."""
        self._time_restored(timeout_s=timeout_s, runs=runs)

    def _time_restored(self, *, timeout_s: float, runs: int = RESTORED_RUNS) -> None:
        """Run the testbed `runs` times from the snapshot, as experiments do, and keep each
        machine's last RESTORED_KEPT times in its golden run; MachineError if a run's
        result differs (a daemon, stopped while it ran, has no result to differ)."""
        times: dict[str, list[float]] = {m.name: [] for m in self}
        vcpu: dict[str, list[float]] = {m.name: [] for m in self}
        for _ in range(runs):
            self.restore()
            for name, finished in run_to_exit(list(self), timeout_s=timeout_s).items():
                golden = self.machines[name].require_golden()
                result = finished.result
                if not self.machines[name].daemon and (
                    result.stdout, result.exit_code, result.signal
                ) != (golden.stdout, golden.exit_code, golden.signal):  # fmt: skip
                    raise MachineError(
                        f"the workload of {name} gives another result when run again from "
                        "its snapshot",
                        hint="the workload must be deterministic, or use `deterministic = true`",
                    )
                times[name].append(finished.host_s)
                vcpu[name].append(finished.vcpu_s)
        for name, measured in times.items():
            machine = self.machines[name]
            golden = machine.require_golden()
            kept = (*golden.restored_s, *measured)[-RESTORED_KEPT:]
            kept_vcpu = (*golden.restored_vcpu_s, *vcpu[name])[-RESTORED_KEPT:]
            machine.golden = dataclasses.replace(golden, restored_s=kept, restored_vcpu_s=kept_vcpu)

    def restore(self) -> None:
        """Restore every machine to the golden snapshot (all left halted), reset the
        network and begin the console scripts again.

        No frame and no console input of the run before reaches the restored machines:
        the switch stops and drops what it holds and what waits in its ports, each
        stopped QEMU is run an instant so that a frame it read while stopped goes into
        the old run (a guest that cannot run, such as a panicked one, is restored, run an
        instant and restored again), console input QEMU has not read is dropped, and the
        switch starts a new epoch.
        """
        for machine in self:
            if machine.dialogue is not None:
                machine.dialogue.cancel()
        again = self._quiesce_network() if self.switch is not None else []
        for machine in self:
            if machine.dialogue is not None and machine.vm.alive:
                machine.vm.drop_console_input()
            machine.restore()
        for machine in again:
            _flush_frames(machine.vm)
            machine.restore()
        if self.switch is not None:
            self.switch.resume()
        for machine in self:
            machine.begin_script()

    def _quiesce_network(self) -> list[GuestMachine]:
        """Stop the switch and push a frame each stopped QEMU may hold into the run that
        ends; the machines that cannot run now (to be flushed after their restore)."""
        assert self.switch is not None
        self.switch.check()
        self.switch.quiesce()
        later = []
        for machine in self:
            vm = machine.vm
            if not vm.alive:
                continue
            vm.halt()
            if vm.qmp("query-status")["status"] in _FLUSHABLE:
                _flush_frames(vm)
            else:
                later.append(machine)
        return later

    def _reset_network(self) -> None:
        """Quiesce the network and start a new epoch (the machines halted)."""
        assert self.switch is not None
        for machine in self._quiesce_network():
            logger.warning("machine %s cannot run to flush its card", machine.name)
        self.switch.resume()

    def close(self) -> None:
        """Destroy every machine, the network and the templates this testbed made itself
        (always safe)."""
        for machine in self:
            machine.close()
        if self.switch is not None:
            self.switch.close()
        if self._own_dir is not None:
            self._own_dir.close()
            self._own_dir = None


_FLUSHABLE = frozenset({"debug", "paused", "running"})
"""Run states from which a QEMU may run an instant and stop again."""


def _flush_frames(vm: Machine) -> None:
    """Run the halted guest an instant: QEMU delivers a frame it queued while the guest
    was stopped (into the run that is ending), and purges its queues when it stops again."""
    vm.cont()
    vm.halt()


def run_to_exit(machines: Sequence[GuestMachine], *, timeout_s: float) -> dict[str, Finished]:
    """Run machines halted at their start hooks to their exits, all at once; each one's
    finished run by name. A daemon runs until the other machines are done, then is halted:
    its run is what it did until then. Several machines run on a crew of threads. Raises
    as `GuestSession.wait_exit` does; MachineError if a script fails or a daemon ends."""
    if len(machines) == 1 and not machines[0].daemon:
        machine = machines[0]
        poll = None if machine.dialogue is None else _SCRIPT_LOOK_S
        return {machine.name: _finish(machine, timeout_s, threading.Event(), poll_s=poll)}
    crew: Crew[Finished] = Crew()
    served = threading.Event()
    workers = [m for m in machines if not m.daemon]
    for machine in machines:
        if machine.daemon:
            crew.run(machine.name, lambda m=machine: _serve(m, served, crew.abort))  # type: ignore[misc]
        else:
            crew.run(
                machine.name,
                lambda m=machine: _finish(m, timeout_s, crew.abort, poll_s=_SCRIPT_LOOK_S),  # type: ignore[misc]
            )
    try:
        while not crew.abort.is_set() and not crew.abort.wait(_POLL_S):
            if not crew.running() & {m.name for m in workers}:
                break
        served.set()
        return dict(crew.join())
    except BaseException:
        crew.end()
        raise


def _finish(
    machine: GuestMachine, timeout_s: float, abort: threading.Event, *, poll_s: float | None
) -> Finished:
    """Run one machine from its start hook to its exit (the golden run's way), looking at
    its script and `abort` every `poll_s` (None: no looks, one wait)."""
    session = machine.session
    begun = session.begin()
    while True:
        done = session.wait_exit(begun, timeout_s=timeout_s, poll_s=poll_s)
        if done is not None:
            return done
        failure = machine.script_failure()
        if failure:
            machine.vm.halt()
            tail = machine.dialogue.tail.splitlines() if machine.dialogue is not None else []
            raise MachineError(
                f"the script of {machine.name} failed in a fault-free run: {failure}; "
                f"console: {' | '.join(tail[-3:])}",
                hint="fix the script: its expected text, its timeouts",
            )
        if abort.is_set():
            machine.vm.halt()
            raise MachineError(f"the run of {machine.name} was abandoned")


def _serve(machine: GuestMachine, served: threading.Event, abort: threading.Event) -> Finished:
    """Run a daemon from its start hook until `served` is set, then halt it."""
    session = machine.session
    vm = machine.vm
    begun = session.begin()
    while not served.is_set() and not abort.is_set():
        run = vm.await_stop(_SCRIPT_LOOK_S, goal=machine.hooks.exited, halt=False)
        if run is not None:
            result = WorkloadResult.from_frames(vm.channel.frames)
            status = "" if result is None else f", exit status {result.exit_status}"
            raise MachineError(
                f"the daemon {machine.name} ended in a fault-free run ({run.end.value}{status})",
                hint="a daemon must run until the other machines are done",
            )
    host_s = time.monotonic() - begun
    vm.halt()
    vm.gdb.remove_breakpoint(machine.hooks.exited)
    instructions = vm.instruction_count()
    start = session.start_instructions
    counted = None if instructions is None or start is None else instructions - start
    return Finished(WorkloadResult.running(vm.channel.frames, host_s), host_s, counted)


def golden_run(
    image: GuestImage,
    argv: Sequence[str],
    *,
    deterministic: bool = False,
    accel: Accel = Accel.TCG,
    timeout_s: float = GOLDEN_TIMEOUT_S,
    console_log: Path | None = None,
    disks: Sequence[GuestDisk] = (),
) -> GoldenRun:
    """Boot `image` with `disks`, run `argv` fault-free to completion and return what it
    did (no snapshot is taken: `vmfault run`)."""
    spec = MachineSpec(DEFAULT_MACHINE, tuple(argv), deterministic, accel, console_log=console_log,
                       disks=tuple(disks))  # fmt: skip
    machine = GuestMachine(image, spec)
    try:
        machine.boot()
        return machine.golden_of(run_to_exit([machine], timeout_s=timeout_s)[machine.name])
    finally:
        machine.close()
