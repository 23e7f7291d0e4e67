"""One experiment: restore the golden state, run to the trigger, inject, verify, observe, classify.

An `Experimenter` boots the guest once, halts it exactly at the workload's start (the
agent's start hook), saves that state as the golden snapshot and runs the golden run from
it. Every experiment then restores the snapshot (no reboot, and no console input ever
follows a restore), so experiments are independent and cost restore + the run itself.

Guarantees: an injection is recorded with its value before, the value written and the
value read back; if the read-back differs or the fault could not be placed, the record
says `not-injected` and it is never counted as an outcome. The observation ends as soon
as the outcome is certain: the workload's exit hook, a guest panic, QEMU's death, or the
hang budget.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from elftools.elf.elffile import ELFFile

from vmfault.classify import (
    Activation,
    Classification,
    CrashTable,
    Latency,
    LatencyUnit,
    Observation,
    Outcome,
    Reference,
    activation_of,
    classify,
)
from vmfault.errors import ImageError, MachineError, UsageError, VmfaultError
from vmfault.faults.instructions import (
    Instruction,
    ValueFormat,
    choose_instances,
    choose_result_bits,
    decode_value,
    format_value,
    relocated,
)
from vmfault.faults.model import (
    Context,
    FaultSpec,
    InstructionFault,
    TargetKind,
    TriggerKind,
)
from vmfault.faults.schedule import RateModel, Schedule
from vmfault.faults.select import Plan, choose_in_ranges, plan, rng_for
from vmfault.guest.binary import WorkloadBinary
from vmfault.guest.elfsyms import lookup_symbol
from vmfault.guest.image import GuestImage
from vmfault.guest.protocol import FrameKind
from vmfault.guest.symbols import KERNEL_MAP_BASE, KernelSymbols
from vmfault.machine import Accel, Machine, Snapshot
from vmfault.machine.gdbproto import StopReason, WatchKind
from vmfault.machine.pagetable import PageMapping, translate, walk
from vmfault.opinject import (
    Counting,
    ResultLocation,
    RunEnd,
    count_instances,
    read_result,
    write_result,
)
from vmfault.profile.instructions import load_or_profile
from vmfault.profile.kernel import KernelProfile, load_or_profile_kernel
from vmfault.session import GuestSession, WorkloadResult, capture_kernel_symbols
from vmfault.session.process import EXEC_FUNCTION, run_to_exec

__all__ = [
    "DEFAULT_BUDGET_FACTOR",
    "ExperimentRecord",
    "Experimenter",
    "Flip",
    "Golden",
    "Injection",
    "StormRecord",
    "StormSummary",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

DEFAULT_BUDGET_FACTOR = 3.0
"""A run that takes longer than this many golden runs is a hang."""
BUDGET_SLACK_S = 0.2
CONTEXT_TRIES = 400
CONTEXT_SLICE_S = 0.0002
MAX_TRIGGER_STEPS = 200_000
EXIT_REPORT_TIMEOUT_S = 10.0
STORM_WARM_UP_S = 0.001
"""Guest time run after a restore before the first flip is scheduled (see _storm_warm_up)."""
STORM_CONTEXT_TRIES = 25
"""Slices of CONTEXT_SLICE_S a process-region flip waits for the workload to run."""
STORM_TOLERANCE_S = 0.0001
"""A storm flip is placed once guest time is within this of its target."""
STORM_APPROACH = 0.8
"""Deterministic storms: the fraction of the guest time left to a flip that one run aims at."""
STORM_APPROACH_MIN_S = 0.0005
"""Deterministic storms: below this much guest time left, a run aims at the flip itself."""
STORM_RETRY_ERROR_S = 0.001
"""A storm flip later or earlier than this restarts the storm from the snapshot (before its
outcome is known, so no outcome is favoured), up to STORM_ATTEMPTS times in all."""
STORM_ATTEMPTS = 3
STORM_SPIN_S = 0.002
"""The last this-many host seconds before a storm flip are waited for by polling."""
PERIOD_EPS_S = 0.0001
"""A fixed observation period is over once less than this much guest time of it is left."""
SYMPTOM_FUNCTIONS = ("force_sig_fault", "oops_begin", "panic")
"""Kernel functions whose first call after an injection is the fault's first symptom."""


@dataclass(frozen=True)
class Golden:
    """The golden run from the golden snapshot: what every experiment is compared with."""

    result: WorkloadResult
    wall_s: float
    """Host seconds from the start hook to the exit hook."""
    instructions: int | None
    """Guest instructions from start hook to exit hook (deterministic mode)."""

    @property
    def reference(self) -> Reference:
        """What classification compares with."""
        return Reference(self.result.stdout, self.result.exit_code, self.result.signal)


@dataclass(frozen=True)
class Injection:
    """What was done to the machine: where, which bits, the values, and whether it held."""

    target: str
    location: str
    width: int
    mask: int
    mode: str
    injected: bool
    reason: str = ""
    register: str | None = None
    address: int | None = None
    """Guest-physical address of the faulted word or byte (memory and kernel code)."""
    virtual: int | None = None
    before: int | None = None
    after: int | None = None
    readback: int | None = None
    trigger: str = ""
    time_s: float | None = None
    """Host seconds from the workload's start to the injection (TCG: about guest time)."""
    instructions: int | None = None
    """Guest instructions from the workload's start to the injection (deterministic mode)."""
    rip: int | None = None
    user_mode: bool | None = None
    op: str | None = None
    """Instruction faults: the class of the faulted instruction (F-SEFI's faulty op)."""
    function: str | None = None
    instance: int | None = None
    """Instruction faults: the dynamic instance, counted from 1 in the workload process."""
    instruction: int | None = None
    """Instruction faults: the instruction's link-time address."""
    disassembly: str | None = None
    value_format: str | None = None
    """Instruction faults: how the result's bits read (`f64`, `int`, ...)."""
    process: str | None = None
    pid: int | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data; addresses and values as hex strings."""
        data = dataclasses.asdict(self)
        for key in (
            "mask", "address", "virtual", "before", "after", "readback", "rip", "instruction"
        ):  # fmt: skip
            if data[key] is not None:
                data[key] = f"{data[key]:#x}"
        return data

    def fsefi_json(self) -> dict[str, Any]:
        """F-SEFI's injection log fields of an instruction fault, values decoded."""
        fmt = ValueFormat(self.value_format or "int")
        mask = self.mask

        def value(raw: int | None) -> int | float | list[float] | None:
            return None if raw is None else decode_value(raw, fmt)

        return {
            "time_s": self.time_s,
            "process": self.process,
            "pid": self.pid,
            "function": self.function,
            "op": self.op,
            "address": _hex(self.instruction),
            "disassembly": self.disassembly,
            "instance": self.instance,
            "destination": self.location.rpartition(" -> ")[2] if self.location else None,
            "bits": list(_positions(mask, self.width)),
            "mask": f"{mask:#0{2 + (self.width + 3) // 4}x}",
            "before": value(self.before),
            "after": value(self.after),
            "readback": value(self.readback),
            "before_hex": _hex(self.before),
            "after_hex": _hex(self.after),
            "format": fmt.value,
            "injected": self.injected,
            "log": self.fsefi_line(),
        }

    def fsefi_line(self) -> str:
        """F-SEFI's injection log line: process, function, op, address, values, instance."""
        fmt = ValueFormat(self.value_format or "int")

        def shown(raw: int | None) -> str:
            return "-" if raw is None else format_value(raw, fmt)

        time_text = "-" if self.time_s is None else f"{self.time_s:.6f}s"
        return (
            f"[INJECT] time={time_text} process={self.process} pid={self.pid} "
            f"function={self.function or '-'} op={self.op} addr={_hex(self.instruction)} "
            f'insn="{self.disassembly}" before={shown(self.before)} '
            f"mask={self.mask:#0{2 + (self.width + 3) // 4}x} after={shown(self.after)} "
            f"dic={self.instance}"
        )


@dataclass(frozen=True)
class StormSummary:
    """What a storm adds to its experiment's record (its flips are the record's injections).

    Times are guest seconds (`guest_time`: `running-time` under TCG, `instructions` in
    deterministic mode, one instruction = 1 ns). Errors are |achieved - scheduled| over the
    gaps between flips; the first flip's error, from the workload's start, is apart.
    """

    region: str
    schedule: str
    flips: int
    """Flips made (each read back; see the injections for which held)."""
    guest_s: float
    """Guest seconds from the workload's start to the last flip."""
    real_world_s: float | None
    """Real-world seconds the storm stands for (rate-model storms), else None."""
    max_error_s: float
    mean_error_s: float
    first_flip_error_s: float
    guest_time: str

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ExperimentRecord:
    """Everything one experiment produced, ready to store or print."""

    index: int
    seed: int
    spec: dict[str, Any]
    injection: Injection
    outcome: Outcome
    reason: str
    cause: str | None
    evidence: str
    latency: Latency | None
    activation: Activation
    output: str
    stderr: str
    exit_status: int | None
    signal: str | None
    phases_s: dict[str, float] = field(default_factory=dict)
    extra_injections: tuple[Injection, ...] = ()
    """Further injections of the same run (several instruction faults per run, the flips
    of a storm after the first)."""
    storm: StormSummary | None = None
    """Storm experiments: the schedule and its timing."""

    def to_json(self) -> dict[str, Any]:
        """The `vmfault inject --json` object (instruction faults add `instruction`, F-SEFI's
        log fields, and `extra_injections`)."""
        data = self._base_json()
        if self.injection.op is not None:
            data["instruction"] = self.injection.fsefi_json()
            data["extra_injections"] = [i.fsefi_json() for i in self.extra_injections]
        if self.storm is not None:
            data["storm"] = self.storm.to_json()
            data["extra_injections"] = [i.to_json() for i in self.extra_injections]
        return data

    def _base_json(self) -> dict[str, Any]:
        injection = self.injection
        return {
            "outcome": self.outcome.value,
            "reason": self.reason,
            "cause": self.cause,
            "evidence": self.evidence,
            "fault": {
                "target": injection.target,
                "location": injection.location,
                "bits": list(_positions(injection.mask, injection.width)),
                "mask": f"{injection.mask:#x}",
                "mode": injection.mode,
                "width": injection.width,
                "before": _hex(injection.before),
                "after": _hex(injection.after),
                "readback": _hex(injection.readback),
                "address": _hex(injection.address),
                "virtual": _hex(injection.virtual),
                "injected": injection.injected,
            },
            "trigger": {
                "spec": injection.trigger,
                "time_s": injection.time_s,
                "instructions": injection.instructions,
                "rip": _hex(injection.rip),
                "user_mode": injection.user_mode,
            },
            "latency": None
            if self.latency is None
            else {"value": self.latency.value, "unit": self.latency.unit.value},
            "activation": self.activation.value,
            "output": self.output,
            "stderr": self.stderr,
            "exit_status": self.exit_status,
            "signal": self.signal,
            "seed": self.seed,
            "index": self.index,
            "spec": self.spec,
            "phases_s": self.phases_s,
        }


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def _positions(mask: int, width: int) -> tuple[int, ...]:
    return tuple(i for i in range(width) if mask >> i & 1)


def _executable_range(binary: Path) -> tuple[int, int]:
    with binary.open("rb") as stream:
        spans = [
            (seg["p_vaddr"], seg["p_vaddr"] + seg["p_memsz"])
            for seg in ELFFile(stream).iter_segments()
            if seg["p_type"] == "PT_LOAD" and seg["p_flags"] & 1
        ]
    return min(s for s, _ in spans), max(e for _, e in spans)


@dataclass(frozen=True)
class Flip:
    """One flip of a storm: when (guest seconds since the workload's start), where, what."""

    time_s: float
    scheduled_s: float
    address: int | None
    virtual: int | None
    bit: int
    before: int | None
    after: int | None
    readback: int | None
    injected: bool
    reason: str = ""

    def injection(self, target: str, trigger: str) -> Injection:
        """The flip as one injection of a record: a byte, its bit, the values."""
        where = "" if self.address is None else f"{self.address:#x}"
        return Injection(
            target=target, location=where, width=8, mask=1 << self.bit, mode="flip",
            injected=self.injected, reason=self.reason, address=self.address,
            virtual=self.virtual, before=self.before, after=self.after, readback=self.readback,
            trigger=trigger, time_s=self.time_s,
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """Plain data; addresses as hex strings."""
        return {
            "time_s": self.time_s, "scheduled_s": self.scheduled_s,
            "address": _hex(self.address), "virtual": _hex(self.virtual), "bit": self.bit,
            "before": _hex(self.before), "after": _hex(self.after),
            "readback": _hex(self.readback), "injected": self.injected, "reason": self.reason,
        }  # fmt: skip


@dataclass(frozen=True)
class StormRecord:
    """A storm's flips, then its outcome. Errors are |achieved - scheduled| guest seconds of
    the gaps between flips; the first flip's error (from the workload's start) is apart."""

    seed: int
    index: int
    region: str
    schedule: str
    flips: tuple[Flip, ...]
    outcome: Outcome
    reason: str
    cause: str | None
    evidence: str
    output: str
    exit_status: int | None
    guest_time_unit: str
    max_error_s: float
    mean_error_s: float
    first_flip_error_s: float
    guest_s: float
    real_world_s: float | None
    phases_s: dict[str, float] = field(default_factory=dict)
    stderr: str = ""
    signal: str | None = None
    attempts: int = 1
    """Storm runs from the snapshot this record took: a flip off its time by more than
    STORM_RETRY_ERROR_S restarts the storm before its outcome is known."""

    def summary(self) -> StormSummary:
        """The storm's schedule and timing, as an experiment record keeps them."""
        last = self.flips[-1].time_s if self.flips else 0.0
        return StormSummary(
            region=self.region, schedule=self.schedule, flips=len(self.flips), guest_s=last,
            real_world_s=self.real_world_s, max_error_s=self.max_error_s,
            mean_error_s=self.mean_error_s, first_flip_error_s=self.first_flip_error_s,
            guest_time=self.guest_time_unit,
        )  # fmt: skip

    def experiment_record(self, spec: FaultSpec) -> ExperimentRecord:
        """The storm as a campaign's experiment record: the flips are its injections."""
        trigger = f"storm:{self.schedule}"
        injections = [flip.injection(spec.target.spelling, trigger) for flip in self.flips]
        first = injections[0] if injections else Injection(
            target=spec.target.spelling, location="", width=8, mask=0, mode="flip",
            injected=False, reason=self.reason or "no flip was made", trigger=trigger,
        )  # fmt: skip
        return ExperimentRecord(
            index=self.index, seed=self.seed, spec=spec.to_json(), injection=first,
            outcome=self.outcome, reason=self.reason, cause=self.cause, evidence=self.evidence,
            latency=None, activation=Activation.UNKNOWN, output=self.output,
            stderr=self.stderr, exit_status=self.exit_status, signal=self.signal,
            phases_s=self.phases_s, extra_injections=tuple(injections[1:]),
            storm=self.summary(),
        )  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The `vmfault storm --json` object: `flips` first, then the outcome."""
        return {
            "flips": [f.to_json() for f in self.flips],
            "outcome": self.outcome.value, "reason": self.reason, "cause": self.cause,
            "evidence": self.evidence, "output": self.output, "exit_status": self.exit_status,
            "region": self.region, "schedule": self.schedule, "seed": self.seed,
            "timing": {
                "guest_time": self.guest_time_unit, "max_error_s": self.max_error_s,
                "mean_error_s": self.mean_error_s,
                "first_flip_error_s": self.first_flip_error_s, "guest_s": self.guest_s,
                "real_world_s": self.real_world_s, "attempts": self.attempts,
            },
            "phases_s": self.phases_s,
        }  # fmt: skip


@dataclass(frozen=True)
class _Resume:
    """Where an observation picks up when the run went on after the injection: the console
    from the injection on, the symptom already seen, and whether the run already ended."""

    console_mark: int
    symptom: tuple[float, int | None] | None = None
    at_exit: bool = False
    timed_out: bool = False


@dataclass
class _Period:
    """A fixed period of guest time being run: guest seconds, counted as instructions in
    deterministic mode (from `start_instructions`), else as the time the guest ran."""

    period_s: float
    start_instructions: int | None
    ran_s: float = 0.0

    def left_s(self, machine: Machine) -> float:
        """Guest seconds of the period still to run (<= 0: over)."""
        now = machine.instruction_count() if self.start_instructions is not None else None
        if now is not None and self.start_instructions is not None:
            return self.period_s - (now - self.start_instructions) / 1e9
        return self.period_s - self.ran_s


class Experimenter:
    """Runs experiments against one workload in one long-lived machine.

    Use as a context manager; `start()` (called on entry) boots, takes the golden snapshot
    and runs the golden run. `run(spec, seed=, index=)` does one experiment.
    """

    def __init__(
        self,
        image: GuestImage,
        argv: Sequence[str],
        *,
        deterministic: bool = False,
        accel: Accel = Accel.TCG,
        budget_factor: float = DEFAULT_BUDGET_FACTOR,
        crash_table: CrashTable | None = None,
        console_log: Path | None = None,
    ) -> None:
        self.image = image
        self.argv = tuple(argv)
        self.deterministic = deterministic
        self.budget_factor = budget_factor
        self.crash_table = crash_table
        self.session = GuestSession(
            image, argv, deterministic=deterministic, accel=accel, console_log=console_log
        )
        self.golden: Golden | None = None
        self._snapshot: Snapshot | None = None
        self._symbols: KernelSymbols | None = None
        self._sentinels: tuple[int, ...] = ()
        self._workload_cr3: int | None = None
        self._entry_physical: int | None = None
        self._profile: KernelProfile | None = None
        self._code: WorkloadBinary | None = None
        self._sites: dict[tuple[str, str | None], tuple[Instruction, ...]] = {}
        workload = image.workloads.get(argv[0])
        self._binary = workload.host_binary if workload is not None else None
        self._text = _executable_range(self._binary) if self._binary is not None else (0, 0)
        self._entry = 0
        if self._binary is not None:
            with self._binary.open("rb") as stream:
                self._entry = int(ELFFile(stream).header["e_entry"])

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

    def close(self) -> None:
        """Destroy the machine."""
        self.session.close()

    @property
    def machine(self) -> Machine:
        """The machine experiments run in."""
        return self.session.machine

    @property
    def symbols(self) -> KernelSymbols:
        """The guest kernel's symbols (captured once per kernel)."""
        if self._symbols is None:
            self._symbols = capture_kernel_symbols(self.image)
        return self._symbols

    def kernel_profile(self) -> KernelProfile:
        """Where the kernel spends its time under this workload (profiled once, cached)."""
        if self._profile is None:
            self._profile = load_or_profile_kernel(self.image, self.argv, symbols=self.symbols)
        return self._profile

    def start(self) -> Golden:
        """Boot, save the golden snapshot at the workload's start, and do the golden run."""
        self.session.start()
        self._snapshot = self.machine.save_snapshot("golden")
        result, wall_s, instructions = self.session.finish(timeout_s=300.0)
        self.golden = Golden(result, wall_s, instructions)
        # Breakpoints live in QEMU, outside the snapshot, and survive every restore. Under
        # TCG each insertion or removal flushes all translated code, so the exit hook and
        # the symptom sentinels are set once here, not per experiment.
        self.machine.halt()
        self._workload_cr3 = self._find_workload_cr3()
        self.machine.gdb.set_breakpoint(self.session.hooks.exited)
        self._sentinels = self._set_symptom_breakpoints()
        return self.golden

    def _find_workload_cr3(self) -> int | None:
        """The page-table root of the workload process: its CR3 at its ELF entry point.

        The process keeps its page tables for life, so memory faults aimed at the process
        can be placed from any context, through this root. A PIE's entry point moves with
        its load base: it is found at its exec instead (`vmfault.session.process`).
        """
        if self._binary is None:
            return None
        entry = self._entry
        vm = self.machine
        assert self._snapshot is not None
        vm.restore_snapshot(self._snapshot)
        if self._workload_binary().pie:
            try:
                exec_address = self.symbols.address(EXEC_FUNCTION)
                return run_to_exec(vm, exec_address, entry, self._budget_s()).page_tables
            except (MachineError, ImageError):
                return None
        vm.gdb.set_breakpoint(entry)
        try:
            vm.cont()
            stop = vm.wait_stop(timeout_s=self._budget_s())
            if stop is None or vm.gdb.read_register("rip") != entry:
                return None
            root = vm.gdb.read_register("cr3") & ~0xFFF & ((1 << 52) - 1)
            self._entry_physical = translate(root, entry, _reader(vm.gdb))
            return root
        finally:
            if vm.alive:
                vm.halt()
                vm.gdb.remove_breakpoint(entry)

    # ------------------------------------------------------------------ one experiment

    def run(self, spec: FaultSpec, *, seed: int, index: int = 0) -> ExperimentRecord:
        """One experiment of `spec`: experiment `index` under `seed` makes the same choices
        every time. Raises MachineError only if the machine cannot be restored at all."""
        if spec.instruction is not None:
            return self._run_instruction(spec, seed=seed, index=index)
        if spec.storm is not None:
            return self._run_storm_spec(spec, seed=seed, index=index)
        golden = self._require_golden()
        vm = self.machine
        phases: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            phases[name] = now - clock
            clock = now

        assert self._snapshot is not None
        vm.restore_snapshot(self._snapshot)
        event_mark = len(vm.events)
        lap("restore")
        the_plan = plan(
            spec,
            seed=seed,
            index=index,
            golden_duration_s=golden.wall_s,
            golden_instructions=golden.instructions,
        )
        start_instructions = vm.instruction_count()
        started = time.monotonic()
        problem = self._reach_trigger(the_plan, started)
        lap("to_trigger")
        if problem:
            injection = self._not_injected(the_plan, problem)
        else:
            injection = self._inject(the_plan, started, start_instructions)
        injected_at = time.monotonic()
        injected_instructions = vm.instruction_count() if vm.alive else None
        watch = (
            self._watch(injection) if injection.injected and injection.register is None else None
        )
        lap("inject")
        observation, read_first, symptom = self._observe(
            injection, started, start_instructions, watch, event_mark, period_s=spec.period_s
        )
        lap("observe")
        verdict = classify(golden.reference, observation, table=self.crash_table)
        latency = self._latency(verdict, injected_at, injected_instructions, symptom)
        activation = (
            activation_of(verdict.outcome, read_before_overwrite=read_first)
            if watch
            else activation_of(verdict.outcome, read_before_overwrite=None)
        )
        lap("classify")
        result = WorkloadResult.from_frames(vm.channel.frames) if vm.alive else None
        return ExperimentRecord(
            index=index,
            seed=seed,
            spec=spec.to_json(),
            injection=injection,
            outcome=verdict.outcome,
            reason=verdict.reason if injection.injected else injection.reason,
            cause=verdict.cause,
            evidence=verdict.evidence,
            latency=latency,
            activation=activation,
            output=observation.stdout.decode("utf-8", errors="replace"),
            stderr=observation.stderr.decode("utf-8", errors="replace"),
            exit_status=None if result is None else result.exit_status,
            signal=None if result is None else result.signal_name,
            phases_s=phases,
        )

    def _require_golden(self) -> Golden:
        if self.golden is None:
            raise MachineError("the experimenter has not started", hint="use it in a with block")
        if not self.machine.alive:
            raise MachineError(
                f"QEMU exited (status {self.machine.exit_code}); start a new experimenter"
            )
        return self.golden

    # ------------------------------------------------------------------ trigger

    def _reach_trigger(self, the_plan: Plan, started: float) -> str:
        """Run to the trigger and halt there; an empty string, or why it was not reached."""
        trigger = the_plan.spec.trigger
        vm = self.machine
        if trigger.kind is TriggerKind.TIME:
            assert the_plan.trigger_time_s is not None
            vm.cont()
            stop = vm.wait_stop(
                timeout_s=max(0.0, started + the_plan.trigger_time_s - time.monotonic())
            )
            if stop is not None:
                return f"the workload ended before the trigger at {the_plan.trigger_time_s:.4f} s"
            vm.halt()
        elif trigger.kind is TriggerKind.EXECUTION:
            problem = self._run_to_execution(trigger.location, trigger.count)
            if problem:
                return problem
        else:
            problem = self._run_to_instruction(the_plan)
            if problem:
                return problem
        return self._settle_context(the_plan)

    def _resolve_code_address(self, location: str) -> int:
        try:
            return int(location, 0)
        except ValueError:
            pass
        if self._binary is not None:
            try:
                return lookup_symbol(self._binary, location).address
            except UsageError:
                pass
        symbol = self.symbols.get(location)
        if symbol is None:
            raise UsageError(
                f"no symbol {location!r} in the workload or the kernel",
                hint="give a function name or a 0x address",
            )
        return symbol.address

    def _run_to_execution(self, location: str, count: int) -> str:
        vm = self.machine
        address = self._resolve_code_address(location)
        vm.gdb.set_breakpoint(address)
        try:
            hits = 0
            while hits < count:
                vm.cont()
                stop = vm.wait_stop(timeout_s=self._budget_s())
                if stop is None:
                    vm.halt()
                    return f"{location} did not execute {count} times within the budget"
                if vm.gdb.read_register("rip") != address:
                    return f"the workload ended before {location} executed {count} times"
                hits += 1
        finally:
            if vm.alive:
                vm.gdb.remove_breakpoint(address)
        return ""

    def _run_to_instruction(self, the_plan: Plan) -> str:
        vm = self.machine
        golden = self._require_golden()
        if not self.deterministic or golden.instructions is None:
            raise UsageError(
                "an icount trigger needs deterministic mode",
                hint="add --deterministic, or use a time or exec trigger",
            )
        assert the_plan.trigger_instructions is not None and self._snapshot is not None
        start = vm.instruction_count() or 0
        target = start + the_plan.trigger_instructions
        rate = golden.instructions / max(golden.wall_s, 1e-6)  # instructions per host second
        margin = 20_000
        for _ in range(6):
            lead_s = max(0.0, (the_plan.trigger_instructions - margin) / rate)
            vm.cont()
            stop = vm.wait_stop(timeout_s=lead_s)
            if stop is None:
                vm.halt()
            now = vm.instruction_count() or 0
            if stop is not None and now < target:
                return "the workload ended before the trigger instruction"
            if now <= target:
                break
            margin *= 4  # overshot: go back and stop earlier
            vm.restore_snapshot(self._snapshot)
        else:
            return "could not stop before the trigger instruction"
        remaining = target - now
        if remaining > MAX_TRIGGER_STEPS:
            return f"trigger instruction too far to reach by stepping ({remaining})"
        for _ in range(remaining):
            vm.gdb.step()
        return ""

    def _in_context(self, context: Context) -> bool:
        gdb = self.machine.gdb
        user = gdb.read_register("cs") & 3 == 3
        if context is Context.KERNEL:
            return not user
        rip = gdb.read_register("rip")
        return user and self._text[0] <= rip < self._text[1]

    def _settle_context(self, the_plan: Plan) -> str:
        spec = the_plan.spec
        context = spec.context
        target = spec.target
        if target.kind is TargetKind.MEMORY and (
            target.name == "process" or target.name.startswith("@")
        ):
            context = Context.USER  # the process's page tables are read from the live CR3
        if context is Context.ANY or self._in_context(context):
            return ""
        vm = self.machine
        if self.deterministic:
            for _ in range(MAX_TRIGGER_STEPS // 10):
                vm.gdb.step()
                if self._in_context(context):
                    return ""
            return f"the {context.value} context was not reached by stepping"
        for _ in range(CONTEXT_TRIES):
            vm.cont()
            if vm.wait_stop(timeout_s=CONTEXT_SLICE_S) is not None:
                return f"the workload ended before reaching the {context.value} context"
            vm.halt()
            if self._in_context(context):
                return ""
        return f"the {context.value} context was not reached in {CONTEXT_TRIES} tries"

    # ------------------------------------------------------------------ injection

    def _not_injected(self, the_plan: Plan, reason: str) -> Injection:
        return Injection(
            target=the_plan.spec.target.spelling,
            location=the_plan.register or "",
            width=the_plan.width,
            mask=the_plan.bits.mask,
            mode=the_plan.bits.mode.value,
            injected=False,
            reason=reason,
            register=the_plan.register,
            trigger=_trigger_text(the_plan),
        )

    def _inject(self, the_plan: Plan, started: float, start_instructions: int | None) -> Injection:
        vm = self.machine
        gdb = vm.gdb
        now_instructions = vm.instruction_count()
        common: dict[str, Any] = {
            "target": the_plan.spec.target.spelling,
            "width": the_plan.width,
            "mask": the_plan.bits.mask,
            "mode": the_plan.bits.mode.value,
            "trigger": _trigger_text(the_plan),
            "time_s": time.monotonic() - started,
            "instructions": None
            if now_instructions is None or start_instructions is None
            else now_instructions - start_instructions,
            "rip": gdb.read_register("rip"),
            "user_mode": gdb.read_register("cs") & 3 == 3,
        }
        try:
            if the_plan.register is not None:
                return self._inject_register(the_plan, common)
            return self._inject_memory(the_plan, common)
        except VmfaultError as exc:
            if isinstance(exc, UsageError):
                raise
            return Injection(injected=False, reason=exc.one_line(), location="", **common)

    def _inject_register(self, the_plan: Plan, common: dict[str, Any]) -> Injection:
        gdb = self.machine.gdb
        register = the_plan.register
        assert register is not None
        before = gdb.read_register(register)
        after = the_plan.bits.apply(before)
        gdb.write_register(register, after)
        for _ in range(the_plan.spec.bits.hold_instructions):
            gdb.step()
            gdb.write_register(register, the_plan.bits.apply(gdb.read_register(register)))
        readback = gdb.read_register(register)
        held = readback == after or the_plan.spec.bits.hold_instructions > 0
        return Injection(
            location=register,
            register=register,
            before=before,
            after=after,
            readback=readback,
            injected=held,
            reason="" if held else f"read back {readback:#x}, wrote {after:#x}",
            **common,
        )

    def _choose_memory(self, the_plan: Plan) -> tuple[int, int | None, str, int]:
        """(physical address, virtual address or None, location text, size in bytes)."""
        target = the_plan.spec.target
        rng = rng_for(the_plan.seed, the_plan.index, "location")
        if target.kind is TargetKind.KERNEL_CODE:
            name = target.name
            if name == "hot":  # weighted by how often each function ran in the golden run
                names, weights = zip(*self.kernel_profile().weights(), strict=True)
                name = rng.choices(names, weights=weights)[0]
            symbol = self.symbols.get(name)
            if symbol is None or not symbol.is_function:
                raise UsageError(f"no kernel function {name!r}", hint="give a kernel function name")
            size = self.symbols.size_of(symbol)
            offset = rng.randrange(max(1, size))
            virtual = symbol.address + offset
            return virtual - KERNEL_MAP_BASE, virtual, f"{name}+{offset:#x}", 1
        explicit = target.address
        if explicit is not None:
            return explicit & ~7, None, f"{explicit & ~7:#x}", 8
        if target.ranges:
            physical = choose_in_ranges(list(target.ranges), rng, align=8)
            return physical, None, f"{physical:#x}", 8
        if target.name.startswith("@"):
            return self._symbol_word(target.name[1:], rng)
        if target.name == "ram":
            ranges = [(r.start, r.end) for r in self.machine.memory_map().ram()]
        elif target.name in ("kernel-text", "kernel-data"):
            span = self.symbols.text() if target.name == "kernel-text" else self.symbols.data()
            ranges = [(span.physical_start, span.physical_start + span.size)]
        else:  # process: the pages mapped by the workload process, from its page tables
            pages = self._process_pages()
            if not pages:
                raise MachineError("the workload process maps no user pages at the trigger")
            virtual = choose_in_ranges([(p.virtual, p.virtual_end) for p in pages], rng, align=8)
            page = next(p for p in pages if p.contains(virtual))
            physical = page.physical_of(virtual)
            return physical, virtual, f"{virtual:#x}", 8
        physical = choose_in_ranges(ranges, rng, align=8)
        return physical, None, f"{physical:#x}", 8

    def _page_root(self) -> int:
        """The workload's page-table root: CR3 while the workload itself runs in user mode.

        Its root page differs from run to run, and a stale root still decodes as page
        tables, so no remembered value is trusted.
        """
        if not self._in_context(Context.USER):
            raise MachineError("the workload is not running in user mode at the trigger")
        return int(self.machine.gdb.read_register("cr3"))

    def _process_pages(self) -> list[PageMapping]:
        gdb = self.machine.gdb
        return [p for p in walk(self._page_root(), _reader(gdb)) if p.user]

    def _symbol_word(self, text: str, rng: Any) -> tuple[int, int | None, str, int]:
        """A word of the workload symbol `NAME[+OFFSET]`: at the offset, or uniformly among
        the symbol's bytes that are mapped at the trigger."""
        name, _, offset_text = text.partition("+")
        if self._binary is None:
            raise UsageError("memory:@SYMBOL needs a workload with an ELF symbol table")
        symbol = lookup_symbol(self._binary, name)
        end = symbol.address + max(symbol.size, 1)
        pages = self._process_pages()
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
        if page is None:
            raise MachineError(f"{name}+{virtual - symbol.address:#x} is not mapped at the trigger")
        return page.physical_of(virtual), virtual, f"{name}+{virtual - symbol.address:#x}", 8

    def _inject_memory(self, the_plan: Plan, common: dict[str, Any]) -> Injection:
        gdb = self.machine.gdb
        physical, virtual, location, size = self._choose_memory(the_plan)
        bits = the_plan.bits
        if size != bits.width // 8:
            bits = dataclasses.replace(bits, width=size * 8, mask=bits.mask & ((1 << size * 8) - 1))
        before = int.from_bytes(gdb.read_memory(physical, size, physical=True), "little")
        after = bits.apply(before)
        gdb.write_memory(physical, after.to_bytes(size, "little"), physical=True)
        readback = int.from_bytes(gdb.read_memory(physical, size, physical=True), "little")
        held = readback == after
        common = common | {"width": size * 8, "mask": bits.mask}
        return Injection(
            location=location,
            address=physical,
            virtual=virtual,
            before=before,
            after=after,
            readback=readback,
            injected=held,
            reason="" if held else f"read back {readback:#x}, wrote {after:#x}",
            **common,
        )

    def _watch(self, injection: Injection) -> int | None:
        """Watch the faulted word for its first read or write (activation); its address."""
        if injection.virtual is None or injection.address is None or injection.mode == "value":
            return None
        gdb = self.machine.gdb
        address = injection.virtual
        try:
            gdb.set_watchpoint(address, 8, kind=WatchKind.READ)
            gdb.set_watchpoint(address, 8, kind=WatchKind.WRITE)
        except VmfaultError:
            return None
        return address

    # ------------------------------------------------------------------ observation

    def _budget_s(self) -> float:
        golden = self._require_golden()
        return self.budget_factor * golden.wall_s + BUDGET_SLACK_S

    def _observe(
        self,
        injection: Injection,
        started: float,
        start_instructions: int | None,
        watch: int | None,
        event_mark: int,
        resume: _Resume | None = None,
        *,
        period_s: float | None = None,
    ) -> tuple[Observation, bool | None, tuple[float, int | None] | None]:
        """Run until the outcome is certain. Returns the observation, whether the faulted
        word was read before being overwritten (None: not watched or never touched), and
        the symptom's host time and instruction count. `resume` carries on a run that
        went on after the injection (instruction faults count instances after it).

        With `period_s`, the run also ends once the guest has run that long after the
        injection (guest seconds; instructions in deterministic mode), unless a symptom
        was seen, in which case it runs on until its outcome is certain."""
        vm = self.machine
        golden = self._require_golden()
        read_first: bool | None = None
        symptom: tuple[float, int | None] | None = None
        console_mark = vm.console.mark()
        deadline = started + self._budget_s()
        timed_out = finished = period_over = False
        if not injection.injected:
            return Observation(injected=False, finished=False), None, None
        period = None if period_s is None else _Period(period_s, vm.instruction_count())
        if resume is not None:
            console_mark, symptom, timed_out = resume.console_mark, resume.symptom, resume.timed_out
            if resume.at_exit and vm.alive:
                vm.cont()
                finished = (
                    vm.channel.wait(FrameKind.EXIT, timeout_s=EXIT_REPORT_TIMEOUT_S) is not None
                )
        while resume is None or not (resume.at_exit or resume.timed_out):
            if not vm.alive:
                break
            limit = deadline - time.monotonic()
            if period is not None and symptom is None:
                limit = min(limit, period.left_s(vm) * self._host_per_guest_s())
            vm.cont()
            begun = time.monotonic()
            stop = vm.wait_stop(timeout_s=max(0.0, limit))
            if period is not None:
                period.ran_s += time.monotonic() - begun
            if stop is None:
                if not vm.alive:
                    break
                vm.halt()
                if period is not None and symptom is None and period.left_s(vm) <= PERIOD_EPS_S:
                    period_over = True
                    break
                if time.monotonic() < deadline:
                    continue  # stopped to look at the period, which runs on
                if self._within_instruction_budget(start_instructions, golden):
                    deadline = time.monotonic() + self._budget_s()
                    continue
                timed_out = True
                break
            if stop.reason is StopReason.WATCHPOINT and watch is not None:
                if read_first is None:
                    read_first = stop.watch_kind is WatchKind.READ
                vm.gdb.remove_watchpoint(watch, 8, kind=WatchKind.READ)
                vm.gdb.remove_watchpoint(watch, 8, kind=WatchKind.WRITE)
                watch = None
                continue
            if symptom is None:
                symptom = (time.monotonic(), vm.instruction_count())
            rip = vm.gdb.read_register("rip")
            if rip in self._sentinels:
                continue  # the kernel reacts; the outcome follows
            if rip == self.session.hooks.exited:
                vm.cont()
                finished = (
                    vm.channel.wait(FrameKind.EXIT, timeout_s=EXIT_REPORT_TIMEOUT_S) is not None
                )
            break
        if watch is not None and injection.injected:
            read_first = False  # never touched again: the fault was not activated
        if vm.alive and watch is not None:
            vm.halt()
            vm.gdb.remove_watchpoint(watch, 8, kind=WatchKind.READ)
            vm.gdb.remove_watchpoint(watch, 8, kind=WatchKind.WRITE)
        result = WorkloadResult.from_frames(vm.channel.frames) if finished else None
        events = tuple(e.name for e in vm.events[event_mark:])
        panicked = "GUEST_PANICKED" in events
        observation = Observation(
            injected=True,
            finished=result is not None,
            stdout=b"" if result is None else result.stdout,
            stderr=b"" if result is None else result.stderr,
            exit_code=None if result is None else result.exit_code,
            signal=None if result is None else result.signal,
            console=vm.console.transcript(console_mark),
            events=events,
            guest_panicked=panicked,
            qemu_alive=vm.alive,
            qemu_exit_code=vm.exit_code,
            timed_out=timed_out,
            period_s=period_s if period_over else None,
        )
        return observation, read_first, symptom

    def _host_per_guest_s(self) -> float:
        """Host seconds per guest second while the guest runs: 1 under plain TCG (guest time
        is the time it runs), the golden run's pace in deterministic mode."""
        golden = self._require_golden()
        if not self.deterministic or not golden.instructions:
            return 1.0
        return max(golden.wall_s, 1e-6) / (golden.instructions / 1e9)

    def _set_symptom_breakpoints(self) -> tuple[int, ...]:
        """Breakpoints on the kernel's first reactions to a fault (a fatal signal for a user
        task, an oops, a panic): crash latency is measured to the first one hit."""
        gdb = self.machine.gdb
        addresses = []
        for name in SYMPTOM_FUNCTIONS:
            symbol = self.symbols.get(name)
            if symbol is not None:
                gdb.set_breakpoint(symbol.address)
                addresses.append(symbol.address)
        return tuple(addresses)

    def _within_instruction_budget(self, start: int | None, golden: Golden) -> bool:
        """In deterministic mode the budget counts guest instructions, not host time."""
        if not self.deterministic or start is None or golden.instructions is None:
            return False
        now = self.machine.instruction_count() or start
        return now - start < self.budget_factor * golden.instructions

    def _latency(
        self,
        verdict: Classification,
        injected_at: float,
        injected_instructions: int | None,
        symptom: tuple[float, int | None] | None,
    ) -> Latency | None:
        if verdict.outcome not in (Outcome.CRASH, Outcome.DETECTED) or symptom is None:
            return None
        at, instructions = symptom
        if instructions is not None and injected_instructions is not None:
            return Latency(instructions - injected_instructions, LatencyUnit.INSTRUCTIONS)
        return Latency(round((at - injected_at) * 1e9), LatencyUnit.WALL_NS)

    # ------------------------------------------------------------------ instruction results

    def _workload_binary(self) -> WorkloadBinary:
        if self._binary is None:
            raise UsageError(
                f"{self.argv[0]} is not a workload of the image, so it has no symbol table",
                hint="give a built-in workload, a C file or a binary as the workload",
            )
        if self._code is None:
            self._code = WorkloadBinary(self._binary)
        return self._code

    def _op_sites(self, op: str, function: str | None) -> tuple[Instruction, ...]:
        """The static instructions of class `op` in `function` (link time; cached)."""
        key = (op, function)
        sites = self._sites.get(key)
        if sites is None:
            binary = self._workload_binary()
            decoded = binary.decode_range(binary.code_range(function))
            sites = tuple(insn for insn in decoded if op in insn.classes)
            self._sites[key] = sites
        return sites

    def executed_instances(self, op: str, function: str | None) -> int:
        """How many instances of `op` the golden run executes in `function` (None: the whole
        executable), from the workload's instruction profile (profiled once, cached)."""
        profile = load_or_profile(
            self.image, self.argv, function=function, deterministic=self.deterministic
        )
        return profile.count(op)

    def _run_instruction(self, spec: FaultSpec, *, seed: int, index: int) -> ExperimentRecord:
        """One instruction-result experiment: restore, run to the workload's exec, count the
        op's dynamic instances in the function with breakpoints on its static addresses
        (hits in the workload process only), let each chosen instance execute and corrupt
        its result, then observe and classify as any experiment."""
        fault = spec.instruction
        assert fault is not None and self._snapshot is not None
        golden = self._require_golden()
        vm = self.machine
        phases: dict[str, float] = {}
        clock = time.perf_counter()
        attempt = Injection(
            target=spec.target.spelling, location="", width=0, mask=0,
            mode=spec.bits.mode.value, injected=False, trigger=fault.spelling, op=fault.op,
            function=fault.function, process=self.argv[0], pid=golden.result.pid,
        )  # fmt: skip
        instances, problem = self._draw_instances(fault, seed=seed, index=index)
        vm.restore_snapshot(self._snapshot)
        event_mark = len(vm.events)
        phases["restore"] = time.perf_counter() - clock
        clock = time.perf_counter()
        started = time.monotonic()
        start_instructions = vm.instruction_count()
        console_mark = vm.console.mark()
        injections: list[Injection] = []
        counting = None
        if not problem:
            counting, problem = self._corrupt_instances(
                spec, attempt, instances, injections,
                started=started, start_instructions=start_instructions, seed=seed, index=index,
            )  # fmt: skip
        phases["inject"] = time.perf_counter() - clock
        clock = time.perf_counter()
        done = [i for i in injections if i.injected]
        first = done[0] if done else (injections[0] if injections else attempt)
        if not done:
            first = dataclasses.replace(first, reason=first.reason or problem)
        resume = None
        if counting is not None:
            resume = _Resume(
                console_mark=console_mark,
                symptom=counting.symptom,
                at_exit=counting.end is RunEnd.EXITED,
                timed_out=counting.end is RunEnd.TIMED_OUT,
            )
        observation, _, symptom = self._observe(
            first,
            started + (0.0 if counting is None else counting.allowance_s),
            start_instructions,
            None,
            event_mark,
            resume,
        )
        phases["observe"] = time.perf_counter() - clock
        verdict = classify(golden.reference, observation, table=self.crash_table)
        injected_instructions = None
        if first.instructions is not None and start_instructions is not None:
            injected_instructions = start_instructions + first.instructions
        latency = self._latency(
            verdict, started + (first.time_s or 0.0), injected_instructions, symptom
        )
        result = WorkloadResult.from_frames(vm.channel.frames) if vm.alive else None
        return ExperimentRecord(
            index=index, seed=seed, spec=spec.to_json(), injection=first,
            outcome=verdict.outcome,
            reason=verdict.reason if first.injected else first.reason,
            cause=verdict.cause, evidence=verdict.evidence, latency=latency,
            activation=activation_of(verdict.outcome, read_before_overwrite=None),
            output=observation.stdout.decode("utf-8", errors="replace"),
            stderr=observation.stderr.decode("utf-8", errors="replace"),
            exit_status=None if result is None else result.exit_status,
            signal=None if result is None else result.signal_name, phases_s=phases,
            extra_injections=tuple(i for i in injections if i is not first),
        )  # fmt: skip

    def _draw_instances(
        self, fault: InstructionFault, *, seed: int, index: int
    ) -> tuple[tuple[int, ...], str]:
        """The instances this experiment corrupts, or why there are none."""
        where = fault.function or self.argv[0]
        if not self._op_sites(fault.op, fault.function):
            return (), f"{where} has no {fault.op} instruction"
        executed = None
        if fault.instance is None:
            executed = self.executed_instances(fault.op, fault.function)
        try:
            instances = choose_instances(
                fault, executed=executed, rng=rng_for(seed, index, "instances")
            )
        except ValueError as exc:
            return (), str(exc)
        if not instances:
            return (), f"no {fault.op} instance was drawn (probability {fault.probability})"
        return instances, ""

    def _corrupt_instances(
        self,
        spec: FaultSpec,
        attempt: Injection,
        instances: tuple[int, ...],
        injections: list[Injection],
        *,
        started: float,
        start_instructions: int | None,
        seed: int,
        index: int,
    ) -> tuple[Counting | None, str]:
        """From the restored golden state: run to the workload's exec, then count and
        corrupt `instances`, appending to `injections`. Returns the counting (None if the
        exec was not reached) and why not every instance was corrupted."""
        fault = spec.instruction
        assert fault is not None
        vm = self.machine
        binary = self._workload_binary()
        try:
            exec_address = self.symbols.address(EXEC_FUNCTION)
            process = run_to_exec(vm, exec_address, binary.entry, self._budget_s())
        except (MachineError, ImageError) as exc:
            return None, exc.one_line()
        base = process.load_base
        sites = {
            insn.address + base: relocated(insn, base)
            for insn in self._op_sites(fault.op, fault.function)
        }

        def inject(insn: Instruction, instance: int, location: ResultLocation) -> None:
            injections.append(
                self._corrupt_result(
                    attempt, spec, insn, instance, location, base=base, started=started,
                    start_instructions=start_instructions, seed=seed, index=index,
                )
            )  # fmt: skip

        for address in sites:
            vm.gdb.set_breakpoint(address)
        try:
            counting = count_instances(
                vm, sites=sites, process=process, wanted=instances, on_instance=inject,
                deadline=started + self._budget_s(), exit_hook=self.session.hooks.exited,
                sentinels=self._sentinels,
            )  # fmt: skip
        finally:
            if vm.alive:
                vm.halt()
                for address in sites:
                    vm.gdb.remove_breakpoint(address)
        if len(injections) == len(instances):
            return counting, ""
        return counting, (
            f"{fault.function or self.argv[0]} executed {counting.counted} {fault.op} instances "
            f"in the workload process; instance {instances[len(injections)]} was not reached"
        )

    def _corrupt_result(
        self,
        attempt: Injection,
        spec: FaultSpec,
        insn: Instruction,
        instance: int,
        location: ResultLocation,
        *,
        base: int,
        started: float,
        start_instructions: int | None,
        seed: int,
        index: int,
    ) -> Injection:
        """Flip the chosen bits of the result `insn` just produced (vCPU halted after it)."""
        gdb = self.machine.gdb
        destination = location.destination
        now_instructions = self.machine.instruction_count()
        function = attempt.function or self._workload_binary().function_at(insn.address - base)
        symbol = lookup_symbol(self._binary, function) if function and self._binary else None
        offset = "" if symbol is None else f"+{insn.address - base - symbol.address:#x}"
        fields = dataclasses.replace(
            attempt,
            location=f"{function or '?'}{offset} {insn.text} -> {destination.text}",
            width=destination.width, register=destination.register,
            virtual=location.virtual, trigger=f"{attempt.op}#{instance}",
            time_s=time.monotonic() - started,
            instructions=None if now_instructions is None or start_instructions is None
            else now_instructions - start_instructions,
            rip=insn.address, user_mode=True, function=function, instance=instance,
            instruction=insn.address - base, disassembly=insn.text,
            value_format=destination.fmt.value,
        )  # fmt: skip
        rng = rng_for(seed, index, f"bits/{instance}")
        try:
            choice = choose_result_bits(spec.bits, destination, rng)
        except ValueError as exc:
            return dataclasses.replace(fields, reason=str(exc))
        before = read_result(gdb, location)
        after = choice.apply(before)
        write_result(gdb, location, after)
        readback = read_result(gdb, location)
        held = readback == after
        address = None
        if location.virtual is not None:
            cr3 = gdb.read_register("cr3")
            address = translate(cr3, location.virtual, _reader(gdb))
        return dataclasses.replace(
            fields, mask=choice.mask, before=before, after=after, readback=readback,
            injected=held, address=address,
            reason="" if held else f"read back {readback:#x}, wrote {after:#x}",
        )  # fmt: skip

    # ------------------------------------------------------------------ storms

    def run_storm(
        self,
        *,
        flips: int,
        schedule: Schedule,
        region: str,
        ranges: Sequence[tuple[int, int]] = (),
        seed: int,
        index: int = 0,
        rate_model: RateModel | None = None,
        period_s: float | None = None,
    ) -> StormRecord:
        """A storm: `flips` single-bit memory flips in `region`, spaced by `schedule` in
        guest time from the workload's start, then the outcome as for one experiment
        (observed for `period_s` guest seconds after the last flip, if given).

        Guest time is exact in deterministic mode (1 ns per instruction); otherwise it is
        the host time the guest actually ran (QEMU's virtual clock runs only while it
        does), measured around each run segment. Flips continue after the workload ends.
        """
        golden = self._require_golden()
        vm = self.machine
        phases: dict[str, float] = {"restore": 0.0}
        rng = rng_for(seed, index, "storm")
        gaps = schedule.gaps(flips, rng)
        storm_started = time.perf_counter()
        for attempt in range(1, STORM_ATTEMPTS + 1):
            clock = time.perf_counter()
            assert self._snapshot is not None
            vm.restore_snapshot(self._snapshot)
            event_mark = len(vm.events)
            phases["restore"] += time.perf_counter() - clock
            start_instructions, done, guest_s, exited, panicked = self._storm_flips(
                gaps, region, ranges, seed, index, last=attempt == STORM_ATTEMPTS
            )
            if done is not None:
                break
        assert done is not None
        phases["storm"] = time.perf_counter() - storm_started - phases["restore"]
        clock = time.perf_counter()
        injection = Injection(
            target=f"memory:{region}", location=f"{len(done)} flips", width=8, mask=0,
            mode="flip", injected=any(f.injected for f in done),
            reason="" if done else "no flip was made", trigger=schedule.describe(),
        )  # fmt: skip
        if exited or panicked:
            observation = self._finish_after_storm(event_mark, exited=exited)
        else:
            observation, _, _ = self._observe(
                injection, time.monotonic(), start_instructions, None, event_mark,
                period_s=period_s,
            )  # fmt: skip
        phases["observe"] = time.perf_counter() - clock
        verdict = classify(golden.reference, observation, table=self.crash_table)
        # Per gap between flips (see the loop); the first flip's own error is kept apart,
        # since the first run after a restore competes with QEMU rebuilding its code cache.
        errors = [abs(f.time_s - f.scheduled_s) for f in done[1:]]
        first_error = abs(done[0].time_s - done[0].scheduled_s) if done else 0.0
        real_world = None if rate_model is None else rate_model.real_world_s(guest_s)
        result = WorkloadResult.from_frames(vm.channel.frames) if observation.finished else None
        return StormRecord(
            seed=seed, index=index, region=region, schedule=schedule.describe(),
            flips=tuple(done), outcome=verdict.outcome, reason=verdict.reason,
            cause=verdict.cause, evidence=verdict.evidence,
            output=observation.stdout.decode("utf-8", errors="replace"),
            exit_status=None if result is None else result.exit_status,
            guest_time_unit="instructions" if start_instructions is not None else "running-time",
            max_error_s=max(errors, default=0.0), first_flip_error_s=first_error,
            mean_error_s=sum(errors) / len(errors) if errors else 0.0,
            guest_s=guest_s, real_world_s=real_world, phases_s=phases,
            stderr=observation.stderr.decode("utf-8", errors="replace"),
            signal=None if result is None else result.signal_name, attempts=attempt,
        )  # fmt: skip

    def _run_storm_spec(self, spec: FaultSpec, *, seed: int, index: int) -> ExperimentRecord:
        """A storm family's experiment (`spec.storm`) as an experiment record."""
        storm = spec.storm
        assert storm is not None
        ranges = spec.target.ranges
        region = "custom" if ranges else spec.target.name
        memory = 0
        if storm.rate is not None:
            memory = self.region_bytes(region, ranges)
        schedule, model = storm.resolve(memory)
        record = self.run_storm(
            flips=storm.flips, schedule=schedule, region=region, ranges=ranges, seed=seed,
            index=index, rate_model=model, period_s=spec.period_s,
        )  # fmt: skip
        return record.experiment_record(spec)

    def region_bytes(self, region: str, ranges: Sequence[tuple[int, int]] = ()) -> int:
        """The size in bytes of a storm region (what a physical upset rate applies to)."""
        if region == "process":
            raise UsageError(
                "a physical rate needs a region of fixed size, and memory:process changes "
                "as the workload runs",
                hint="use an interval with memory:process, or a rate with another region",
            )
        return sum(end - start for start, end in self._storm_ranges(region, ranges))

    def _storm_flips(
        self,
        gaps: Sequence[float],
        region: str,
        ranges: Sequence[tuple[int, int]],
        seed: int,
        index: int,
        *,
        last: bool,
    ) -> tuple[int | None, list[Flip] | None, float, bool, bool]:
        """The flips of one storm attempt from a just-restored snapshot: (instruction count
        at the start, the flips or None if one landed too late and this is not the `last`
        attempt, guest seconds run, whether the workload exited, whether the guest
        panicked)."""
        vm = self.machine
        gdb = vm.gdb
        start_instructions = vm.instruction_count()
        # Guest seconds per host second while running: 1 under plain TCG (the virtual
        # clock is the host clock). Under icount it is the instruction rate, which varies
        # (code being translated runs slower than code already translated): the fastest
        # rate seen so far converts, and long hops aim at most STORM_APPROACH of the way,
        # so the guest closes in on a flip from below instead of overshooting it.
        counted = start_instructions is not None
        speed = 1.0 / self._host_per_guest_s()
        guest_s = self._storm_warm_up(start_instructions)
        exited = panicked = False
        done: list[Flip] = []
        for number, gap in enumerate(gaps):
            # Each flip is placed `gap` after the previous one as it actually happened, so a
            # late halt delays the schedule but never distorts the spacing of the next gap.
            target_s = (done[-1].time_s if done else 0.0) + gap
            while target_s - guest_s > STORM_TOLERANCE_S and not panicked:
                left = target_s - guest_s
                if counted and left > STORM_APPROACH_MIN_S:
                    left *= STORM_APPROACH
                gdb.cont()
                begun = time.perf_counter()
                stop = _run_for(gdb, begun, left / speed)
                if stop is None:
                    gdb.halt()
                elapsed = time.perf_counter() - begun
                now = vm.instruction_count()
                if now is not None and start_instructions is not None:
                    before_s, guest_s = guest_s, (now - start_instructions) / 1e9
                    if stop is None and elapsed > 0:
                        speed = max(speed, (guest_s - before_s) / elapsed)
                else:
                    guest_s += elapsed
                if stop is not None:
                    rip = gdb.read_register("rip")
                    exited = exited or rip == self.session.hooks.exited
                    panicked = vm.qmp("query-status")["status"] == "guest-panicked"
            if panicked:
                break
            done.append(self._storm_flip(number, target_s, guest_s, region, ranges, seed, index))
            guest_s = max(guest_s, done[-1].time_s)
            # A process flip waits for the workload to run, so it may be late by design.
            late = abs(done[-1].time_s - target_s) > STORM_RETRY_ERROR_S
            if late and not last and region != "process":
                logger.info("storm flip %d late by %.3f ms: storm restarted", number,
                            (done[-1].time_s - target_s) * 1e3)  # fmt: skip
                return start_instructions, None, guest_s, exited, panicked
        return start_instructions, done, guest_s, exited, panicked

    def _storm_warm_up(self, start_instructions: int | None) -> float:
        """Run the restored guest for an instant; returns the guest seconds it ran.

        The first run after a restore also rebuilds QEMU's discarded translated code, during
        which a halt request waits; taking that here keeps it out of the first flip's gap.
        """
        gdb = self.machine.gdb
        gdb.cont()
        begun = time.perf_counter()
        if gdb.wait_stop(timeout_s=STORM_WARM_UP_S) is None:
            gdb.halt()
        now = self.machine.instruction_count()
        if now is not None and start_instructions is not None:
            return (now - start_instructions) / 1e9
        return time.perf_counter() - begun

    def _storm_ranges(
        self, region: str, ranges: Sequence[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        if region == "custom":
            return list(ranges)
        if region == "ram":
            return [(r.start, r.end) for r in self.machine.memory_map().ram()]
        if region in ("kernel-text", "kernel-data"):
            span = self.symbols.text() if region == "kernel-text" else self.symbols.data()
            return [(span.physical_start, span.physical_start + span.size)]
        raise UsageError(f"unknown storm region {region!r}")

    def _run_until_user_context(self) -> float:
        """Run in short slices until the workload runs in user mode; the host seconds run."""
        gdb = self.machine.gdb
        ran = 0.0
        for _ in range(STORM_CONTEXT_TRIES):
            if self._in_context(Context.USER):
                break
            gdb.cont()
            begun = time.perf_counter()
            if gdb.wait_stop(timeout_s=CONTEXT_SLICE_S) is None:
                gdb.halt()
            ran += time.perf_counter() - begun
        return ran

    def _storm_flip(
        self,
        number: int,
        scheduled_s: float,
        guest_s: float,
        region: str,
        ranges: Sequence[tuple[int, int]],
        seed: int,
        index: int,
    ) -> Flip:
        gdb = self.machine.gdb
        rng = rng_for(seed, index, f"flip-{number}")
        virtual = None
        try:
            if region == "process":
                guest_s += self._run_until_user_context()
                pages = self._process_pages()
                virtual = choose_in_ranges(
                    [(p.virtual, p.virtual_end) for p in pages], rng, align=1
                )
                page = next(p for p in pages if p.contains(virtual))
                address = page.physical_of(virtual)
            else:
                address = choose_in_ranges(self._storm_ranges(region, ranges), rng, align=1)
        except (VmfaultError, ValueError) as exc:
            reason = exc.one_line() if isinstance(exc, VmfaultError) else str(exc)
            return Flip(guest_s, scheduled_s, None, None, 0, None, None, None, False, reason)
        bit = rng.randrange(8)
        before = gdb.read_memory(address, 1, physical=True)[0]
        after = before ^ (1 << bit)
        gdb.write_memory(address, bytes([after]), physical=True)
        readback = gdb.read_memory(address, 1, physical=True)[0]
        held = readback == after
        return Flip(guest_s, scheduled_s, address, virtual, bit, before, after, readback, held,
                    "" if held else f"read back {readback:#x}")  # fmt: skip

    def _finish_after_storm(self, event_mark: int, *, exited: bool) -> Observation:
        """The observation when the workload ended (or the guest panicked) mid-storm."""
        vm = self.machine
        finished = False
        if exited and vm.alive:
            vm.cont()
            finished = vm.channel.wait(FrameKind.EXIT, timeout_s=EXIT_REPORT_TIMEOUT_S) is not None
        result = WorkloadResult.from_frames(vm.channel.frames) if finished else None
        events = tuple(e.name for e in vm.events[event_mark:])
        return Observation(
            injected=True, finished=result is not None,
            stdout=b"" if result is None else result.stdout,
            stderr=b"" if result is None else result.stderr,
            exit_code=None if result is None else result.exit_code,
            signal=None if result is None else result.signal,
            console=vm.console.transcript(), events=events,
            guest_panicked="GUEST_PANICKED" in events or not exited,
            qemu_alive=vm.alive, qemu_exit_code=vm.exit_code,
        )  # fmt: skip


def _run_for(gdb: Any, begun: float, seconds: float) -> Any:
    """Let the running guest run until `seconds` after `begun` (perf_counter) or until it
    stops; its stop reply, or None with the guest still running at the deadline.

    Sleeps until STORM_SPIN_S before the deadline, then polls: a sleeping thread can wake
    milliseconds late on a busy or virtualised host, a polling one is on time.
    """
    deadline = begun + seconds
    nap = deadline - STORM_SPIN_S - time.perf_counter()
    if nap > 0:
        stop = gdb.wait_stop(timeout_s=nap)
        if stop is not None:
            return stop
    while time.perf_counter() < deadline:
        stop = gdb.poll_stop()
        if stop is not None:
            return stop
    return None


def _reader(gdb: Any) -> Any:
    def read(address: int, size: int) -> bytes:
        return bytes(gdb.read_memory(address, size, physical=True))

    return read


def _trigger_text(the_plan: Plan) -> str:
    trigger = the_plan.spec.trigger
    if trigger.kind is TriggerKind.TIME:
        return f"time:{the_plan.trigger_time_s:.6f}s"
    if trigger.kind is TriggerKind.INSTRUCTIONS:
        return f"icount:{the_plan.trigger_instructions}"
    return f"exec:{trigger.location}#{trigger.count}"
