"""A guest booted from a vmfault image, its agent running one workload: the golden run.

The agent (the guest's /init) reports over the debugcon channel and calls two hook
functions that the host breaks on: `vmfault_hook_started` right after the workload is
forked and `vmfault_hook_exited` right after it is reaped. The first is the point where
snapshots are taken (the workload has started; no console input ever follows), and the
pair brackets the workload exactly, in guest instructions in deterministic mode.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from vmfault.errors import ImageError, MachineError, MachineTimeoutError, UsageError
from vmfault.guest.image import GuestImage
from vmfault.guest.protocol import HOOK_EXITED, HOOK_STARTED, AgentMode, FrameKind, agent_params
from vmfault.machine import Accel, Frame, Machine, MachineConfig, StopReply

__all__ = [
    "AgentHooks",
    "GoldenRun",
    "GuestSession",
    "WorkloadResult",
    "golden_run",
    "machine_config",
]

READY_TIMEOUT_S = 60.0
"""Boot to the workload's start: generous, a loaded CI machine under TCG is slow."""


@dataclass(frozen=True)
class AgentHooks:
    """Virtual addresses of the agent's hook functions, where the host sets breakpoints."""

    started: int
    exited: int

    @classmethod
    def of(cls, image: GuestImage) -> AgentHooks:
        """The hooks recorded in `image`'s manifest; ImageError if it has none."""
        try:
            return cls(image.agent_hooks[HOOK_STARTED], image.agent_hooks[HOOK_EXITED])
        except KeyError as exc:
            raise ImageError(
                f"image {image.image_hash} does not record the agent's hooks",
                hint="rebuild it with `vmfault image build`",
            ) from exc


@dataclass(frozen=True)
class WorkloadResult:
    """What the agent reported about one workload run."""

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    """The exit code if the workload exited normally."""
    signal: int | None
    """The signal number if a signal killed it."""
    guest_duration_s: float
    """Guest CLOCK_MONOTONIC from fork to reap."""
    pid: int | None

    @property
    def exit_status(self) -> int:
        """Shell convention: the exit code, or 128 + the signal number."""
        if self.exit_code is not None:
            return self.exit_code
        return 128 + (self.signal or 0)

    @property
    def signal_name(self) -> str | None:
        """`SIGSEGV` and so on, if a signal ended the workload."""
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"

    @classmethod
    def from_frames(cls, frames: Sequence[Frame]) -> WorkloadResult | None:
        """Assemble the result from channel frames; None until an `exit` frame arrived."""
        exit_frame = next((f for f in frames if f.kind == FrameKind.EXIT), None)
        if exit_frame is None:
            return None
        parts = exit_frame.text.split()
        how, number, duration_ns = parts[0], int(parts[1]), int(parts[2])
        start = next((f for f in frames if f.kind == FrameKind.START), None)
        return cls(
            stdout=b"".join(f.payload for f in frames if f.kind == FrameKind.OUT),
            stderr=b"".join(f.payload for f in frames if f.kind == FrameKind.ERR),
            exit_code=number if how == "exited" else None,
            signal=number if how == "signaled" else None,
            guest_duration_s=duration_ns / 1e9,
            pid=int(start.text) if start is not None else None,
        )


def machine_config(
    image: GuestImage,
    argv: Sequence[str] = (),
    *,
    mode: AgentMode = AgentMode.RUN,
    deterministic: bool = False,
    accel: Accel = Accel.TCG,
    ram_mib: int = 128,
    console_log: Path | None = None,
) -> MachineConfig:
    """The machine that boots `image` and has its agent run `argv` (in `mode`)."""
    append = " ".join(("quiet", *agent_params(mode=mode, argv=argv)))
    return MachineConfig(
        kernel=image.kernel,
        initrd=image.initrd,
        append=append,
        ram_mib=ram_mib,
        accel=accel,
        deterministic=deterministic,
        disk=image.disk,
        console_log=console_log,
    )


@dataclass(frozen=True)
class GoldenRun:
    """A fault-free run of a workload: the reference every experiment is compared with."""

    workload: str
    argv: tuple[str, ...]
    output: str
    stderr: str
    exit_status: int
    signal: str | None
    duration_s: float
    """Guest time from fork to reap, in seconds."""
    wall_s: float
    """Host time from the start hook to the exit hook, in seconds."""
    instructions: int | None
    """Guest instructions from start hook to exit hook (deterministic mode only)."""
    boot_s: float
    """Host time from launching QEMU to the workload's start, in seconds."""
    accel: str
    deterministic: bool
    console: str

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict (the `vmfault run --json` object)."""
        return dataclasses.asdict(self) | {"argv": list(self.argv)}


class GuestSession:
    """A machine booted from `image` whose agent runs one workload.

    `start()` boots and halts the guest exactly at the workload's start (the start hook);
    `finish()` runs it to the exit hook and collects the agent's report.
    """

    def __init__(
        self,
        image: GuestImage,
        argv: Sequence[str],
        *,
        deterministic: bool = False,
        accel: Accel = Accel.TCG,
        ram_mib: int = 128,
        console_log: Path | None = None,
    ) -> None:
        if not argv:
            raise UsageError("no workload given", hint="name a workload, e.g. `checksum`")
        if "/" not in argv[0]:
            image.workload(argv[0])  # UsageError naming the known workloads
        self.image = image
        self.argv = tuple(argv)
        self.hooks = AgentHooks.of(image)
        self.machine = Machine(
            machine_config(
                image,
                argv,
                deterministic=deterministic,
                accel=accel,
                ram_mib=ram_mib,
                console_log=console_log,
            ),
            name=argv[0],
        )
        self.launched_at = 0.0
        self.started_at = 0.0
        self.start_instructions: int | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Destroy the machine (always safe)."""
        self.machine.close()

    def _run_to(self, address: int, timeout_s: float, what: str) -> StopReply:
        vm = self.machine
        vm.cont()
        stop = vm.wait_stop(timeout_s=timeout_s)
        if stop is None:
            if not vm.alive:
                raise MachineError(f"QEMU exited (status {vm.exit_code}) before {what}")
            vm.halt()
            raise MachineTimeoutError(
                f"guest did not reach {what} within {timeout_s:g} s", timeout_s=timeout_s
            )
        rip = vm.gdb.read_register("rip")
        if rip != address:
            raise MachineError(
                f"guest stopped at {rip:#x} ({stop.reason.name}) before {what}; "
                f"console tail: {vm.console.transcript()[-300:]!r}"
            )
        return stop

    def start(self, *, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Boot and halt at the workload's start hook (workload forked, not yet running)."""
        vm = self.machine
        self.launched_at = time.monotonic()
        vm.launch(start=False)
        vm.gdb.set_breakpoint(self.hooks.started)
        self._run_to(self.hooks.started, timeout_s, "the workload's start")
        vm.gdb.remove_breakpoint(self.hooks.started)
        self.started_at = time.monotonic()
        self.start_instructions = vm.instruction_count()

    def finish(self, *, timeout_s: float) -> tuple[WorkloadResult, float, int | None]:
        """Run from the start hook to the exit hook and to the agent's exit report.

        Returns the result, host seconds between the hooks, and guest instructions between
        them (deterministic mode). Raises MachineTimeoutError if the workload does not finish.
        """
        vm = self.machine
        vm.gdb.set_breakpoint(self.hooks.exited)
        begun = time.monotonic()
        self._run_to(self.hooks.exited, timeout_s, "the workload's exit")
        wall_s = time.monotonic() - begun
        instructions = vm.instruction_count()
        vm.gdb.remove_breakpoint(self.hooks.exited)
        vm.cont()
        frame = vm.channel.wait(FrameKind.EXIT, timeout_s=timeout_s)
        result = WorkloadResult.from_frames(vm.channel.frames)
        if frame is None or result is None:
            raise MachineError("the agent did not report the workload's exit")
        counted = None
        if instructions is not None and self.start_instructions is not None:
            counted = instructions - self.start_instructions
        return result, wall_s, counted


def golden_run(
    image: GuestImage,
    argv: Sequence[str],
    *,
    deterministic: bool = False,
    accel: Accel = Accel.TCG,
    timeout_s: float = 300.0,
    console_log: Path | None = None,
) -> GoldenRun:
    """Boot `image`, run `argv` fault-free to completion and return what it did."""
    with GuestSession(
        image, argv, deterministic=deterministic, accel=accel, console_log=console_log
    ) as session:
        session.start()
        result, wall_s, instructions = session.finish(timeout_s=timeout_s)
        vm = session.machine
        return GoldenRun(
            workload=argv[0],
            argv=tuple(argv),
            output=result.stdout.decode("utf-8", errors="replace"),
            stderr=result.stderr.decode("utf-8", errors="replace"),
            exit_status=result.exit_status,
            signal=result.signal_name,
            duration_s=result.guest_duration_s,
            wall_s=wall_s,
            instructions=instructions,
            boot_s=session.started_at - session.launched_at,
            accel=(vm.accel or accel).value,
            deterministic=deterministic,
            console=vm.console.transcript(),
        )
