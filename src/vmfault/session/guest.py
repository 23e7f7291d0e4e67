"""A guest booted from a vmfault image, its agent running one workload.

The agent (the guest's /init) reports over the debugcon channel and calls two hook
functions that the host breaks on: `vmfault_hook_started` right after the workload is
forked and `vmfault_hook_exited` right after it is reaped. The first is the point where
snapshots are taken (the workload has started; no console input ever follows), and the
pair brackets the workload exactly, in guest instructions in deterministic mode.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from vmfault.arch import DISKS, MACHINES
from vmfault.classify import signal_name
from vmfault.errors import ImageError, MachineError, UsageError
from vmfault.guest.image import GuestImage
from vmfault.guest.protocol import HOOK_EXITED, HOOK_STARTED, AgentMode, FrameKind, agent_params
from vmfault.machine import Accel, Frame, Machine, MachineConfig, Nic, Template
from vmfault.machine.config import RamFile
from vmfault.machine.disks import GuestDisk

__all__ = [
    "EXIT_REPORT_TIMEOUT_S",
    "READY_TIMEOUT_S",
    "AgentHooks",
    "GuestSession",
    "WorkloadResult",
    "disk_devices",
    "machine_config",
]

READY_TIMEOUT_S = 60.0
"""Boot to the workload's start: generous, a loaded CI machine under TCG is slow."""
EXIT_REPORT_TIMEOUT_S = 10.0
"""From the exit hook to the agent's exit report on the channel."""


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
    signal: str | None
    """The name of the signal that killed it (`SIGSEGV`), if one did."""
    signal_number: int | None
    """That signal's number."""
    guest_duration_s: float
    """Guest CLOCK_MONOTONIC from fork to reap."""
    pid: int | None

    @property
    def exit_status(self) -> int:
        """Shell convention: the exit code, or 128 + the signal number."""
        if self.exit_code is not None:
            return self.exit_code
        return 128 + (self.signal_number or 0)

    @classmethod
    def running(cls, frames: Sequence[Frame], ran_s: float) -> WorkloadResult:
        """What a workload still running (a daemon, stopped by the host after `ran_s`
        seconds) reported so far: its output, no exit status."""
        start = next((f for f in frames if f.kind == FrameKind.START), None)
        return cls(
            stdout=b"".join(f.payload for f in frames if f.kind == FrameKind.OUT),
            stderr=b"".join(f.payload for f in frames if f.kind == FrameKind.ERR),
            exit_code=None, signal=None, signal_number=None, guest_duration_s=ran_s,
            pid=int(start.text) if start is not None else None,
        )  # fmt: skip

    @classmethod
    def from_frames(cls, frames: Sequence[Frame]) -> WorkloadResult | None:
        """Assemble the result from channel frames; None until an `exit` frame arrived."""
        exit_frame = next((f for f in frames if f.kind == FrameKind.EXIT), None)
        if exit_frame is None:
            return None
        parts = exit_frame.text.split()
        how, number, duration_ns = parts[0], int(parts[1]), int(parts[2])
        start = next((f for f in frames if f.kind == FrameKind.START), None)
        signaled = how == "signaled"
        return cls(
            stdout=b"".join(f.payload for f in frames if f.kind == FrameKind.OUT),
            stderr=b"".join(f.payload for f in frames if f.kind == FrameKind.ERR),
            exit_code=None if signaled else number,
            signal=signal_name(number) if signaled else None,
            signal_number=number if signaled else None,
            guest_duration_s=duration_ns / 1e9,
            pid=int(start.text) if start is not None else None,
        )


def disk_devices(frames: Sequence[Frame]) -> dict[str, str]:
    """The guest device (`vda`, ...) of each disk by name, from the agent's `disk` frames."""
    found: dict[str, str] = {}
    for frame in frames:
        if frame.kind == FrameKind.DISK:
            parts = frame.text.split()
            if len(parts) >= 2 and parts[0] != "-":
                found[parts[0]] = parts[1]
    return found


def machine_config(
    image: GuestImage,
    argv: Sequence[str] = (),
    *,
    mode: AgentMode = AgentMode.RUN,
    deterministic: bool = False,
    accel: Accel = Accel.TCG,
    ram_mib: int = 128,
    console_log: Path | None = None,
    disks: Sequence[GuestDisk] = (),
    tap_disks: bool = True,
    ram_file: RamFile | None = None,
    on_console: bool = False,
    nic: Nic | None = None,
    address: str | None = None,
    hosts: Sequence[tuple[str, str]] = (),
    host_cpus: Sequence[int] = (),
) -> MachineConfig:
    """The machine that boots `image` with `disks` (tapped, so they take faults, unless
    `tap_disks` is false) and has its agent run `argv` (in `mode`); with `ram_file`, its
    RAM is that file (shared: to save a template of it).

    `on_console` runs the workload on the serial console; `nic` gives the machine a
    network card, which the agent configures at `address` with `hosts` in /etc/hosts
    (see `vmfault.guest.protocol.agent_params`). `host_cpus`: the host cores QEMU is
    pinned to (none: not pinned)."""
    if disks:
        image.arch.require(DISKS)
    if nic is not None or on_console:
        image.arch.require(MACHINES)
    params = agent_params(mode=mode, argv=argv, on_console=on_console, address=address, hosts=hosts)
    # cryptomgr.notests skips the crypto self-tests at boot: 12% of boot to ready under TCG
    # (median 2.08 -> 1.84 s, 8 boots each, interleaved), nothing a workload relies on.
    append = " ".join(("quiet", "cryptomgr.notests", *params))
    return MachineConfig(
        kernel=image.kernel,
        initrd=image.initrd,
        append=append,
        ram_mib=ram_mib,
        accel=accel,
        deterministic=deterministic,
        disk=image.disk,
        disks=tuple(disks),
        tap_disks=tap_disks,
        console_log=console_log,
        ram_file=ram_file,
        arch=image.arch,
        nic=nic,
        host_cpus=tuple(host_cpus),
    )


def clone_config(config: MachineConfig, template: Template) -> MachineConfig:
    """`config` turned into a clone of `template`: no kernel to boot, RAM mapped
    copy-on-write from the template's file, and the template's device state loaded at
    launch."""
    return dataclasses.replace(
        config,
        kernel=None,
        initrd=None,
        ram_file=RamFile(template.ram, shared=False),
        ram_mib=template.ram_mib,
        disks=template.disks,
        tap_disks=True,
        snapshot_drive=template.drive,
        loadvm=template.snapshot.name,
    )


@dataclass(frozen=True)
class Finished:
    """A workload run from its start hook to its exit: the agent's report and the timing."""

    result: WorkloadResult
    host_s: float
    """Host seconds between the start hook and the exit hook."""
    instructions: int | None
    """Guest instructions between them (deterministic mode)."""
    vcpu_s: float = 0.0
    """CPU seconds the vCPU threads had between them (`Machine.vcpu_s`)."""


class GuestSession:
    """A machine booted from `image` whose agent runs one workload.

    `start()` boots and halts the guest exactly at the workload's start (the start hook);
    `finish()` runs it to the exit hook and collects the agent's report. With `template`
    (saved at the start hook of the same image and workload), `start()` launches a clone
    of it instead of booting: halted at the start hook in milliseconds. With `ram_file`
    (shared), the booted machine's RAM is that file, so a template can be saved of it.
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
        name: str | None = None,
        disks: Sequence[GuestDisk] = (),
        tap_disks: bool = True,
        template: Template | None = None,
        ram_file: RamFile | None = None,
        disk_devices: Mapping[str, str] | None = None,
        on_console: bool = False,
        nic: Nic | None = None,
        address: str | None = None,
        hosts: Sequence[tuple[str, str]] = (),
        host_cpus: Sequence[int] = (),
    ) -> None:
        if not argv:
            raise UsageError("no workload given", hint="name a workload, e.g. `checksum`")
        if "/" not in argv[0]:
            image.workload(argv[0])  # UsageError naming the known workloads
        self.image = image
        self.argv = tuple(argv)
        self.hooks = AgentHooks.of(image)
        config = machine_config(
            image,
            argv,
            deterministic=deterministic,
            accel=accel,
            ram_mib=ram_mib,
            console_log=console_log,
            disks=disks,
            tap_disks=tap_disks,
            ram_file=ram_file,
            on_console=on_console,
            nic=nic,
            address=address,
            hosts=hosts,
            host_cpus=host_cpus,
        )
        if template is not None:
            config = clone_config(config, template)
        self.template = template
        self._disk_devices = disk_devices
        self.machine = Machine(config, name=name or argv[0])
        self.launched_at = 0.0
        self.started_at = 0.0
        self.start_instructions: int | None = None
        self._begun_vcpu_s = 0.0
        self.disks: dict[str, str] = {}
        """The guest device (`vda`, ...) of each disk by name, as the agent reported it."""

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

    @property
    def boot_s(self) -> float:
        """Host seconds from launching QEMU to the workload's start."""
        return self.started_at - self.launched_at

    def start(self, *, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Boot and halt at the workload's start hook (workload forked, not yet running)."""
        vm = self.machine
        self.launched_at = time.monotonic()
        vm.launch(start=False)
        if self.template is None:
            vm.run_to(self.hooks.started, timeout_s=timeout_s).require(
                "the workload's start", vm, timeout_s=timeout_s
            )
        self.started_at = time.monotonic()
        self.start_instructions = vm.instruction_count()
        if self.template is not None and self._disk_devices is not None:
            # The agent reported its disks at boot, before the template was saved.
            self.disks = dict(self._disk_devices)
        else:
            self.disks = disk_devices(vm.channel.frames)
        missing = [d.name for d in vm.disks if d.name not in self.disks]
        if missing:
            raise MachineError(
                f"the guest did not report disk {missing[0]}",
                hint="the image's kernel needs virtio_blk (vmfault's Debian kernel has it)",
            )

    def begin(self) -> float:
        """Let the guest, halted at its start hook, run on toward its exit hook (which gets
        a breakpoint); returns the host monotonic time it resumed. See `wait_exit`."""
        self.machine.gdb.set_breakpoint(self.hooks.exited)
        self._begun_vcpu_s = self.machine.vcpu_s()
        self.machine.cont()
        return time.monotonic()

    def wait_exit(
        self, begun: float, *, timeout_s: float, poll_s: float | None = None
    ) -> Finished | None:
        """Wait for a guest that `begin` resumed at `begun` to reach its exit hook, then for
        the agent's exit report.

        With `poll_s`, waits at most that long and returns None if the guest still runs
        (so several machines can be waited for in turn); otherwise up to `timeout_s` from
        `begun`. Raises MachineTimeoutError if the workload does not finish in `timeout_s`,
        MachineError if the guest stops elsewhere or QEMU exits.
        """
        vm = self.machine
        exited = self.hooks.exited
        left = max(0.0, begun + timeout_s - time.monotonic())
        run = vm.await_stop(left if poll_s is None else min(poll_s, left), goal=exited,
                            halt=poll_s is None or poll_s >= left)  # fmt: skip
        if run is None:
            return None
        run.require("the workload's exit", vm, timeout_s=timeout_s)
        host_s = time.monotonic() - begun
        vcpu_s = vm.vcpu_s() - self._begun_vcpu_s
        instructions = vm.instruction_count()
        vm.gdb.remove_breakpoint(exited)
        vm.cont()
        frame = vm.channel.wait(FrameKind.EXIT, timeout_s=EXIT_REPORT_TIMEOUT_S)
        result = WorkloadResult.from_frames(vm.channel.frames)
        if frame is None or result is None:
            raise MachineError("the agent did not report the workload's exit")
        counted = None
        if instructions is not None and self.start_instructions is not None:
            counted = instructions - self.start_instructions
        return Finished(result, host_s, counted, vcpu_s)

    def finish(self, *, timeout_s: float) -> Finished:
        """Run from the start hook to the exit hook and to the agent's exit report."""
        finished = self.wait_exit(self.begin(), timeout_s=timeout_s)
        assert finished is not None  # no poll: it finished or raised
        return finished
