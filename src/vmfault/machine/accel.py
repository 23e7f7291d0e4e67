"""Choosing the accelerator: KVM only where a probe shows it really boots a guest.

Some hosts expose a `/dev/kvm` that cannot run a normal guest (a nested software
hypervisor such as the `kvm_pvm` module fails with "emulation failure" after a long
crawl). `Accel.AUTO` therefore rules out known-bad hosts at once and otherwise boots the
configured guest under KVM with a short timeout before trusting it.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

from vmfault.errors import MachineError, UsageError

if TYPE_CHECKING:
    from vmfault.machine.config import MachineConfig

from vmfault.machine.config import Accel

__all__ = ["kvm_blocker", "probe_boot", "resolve_accel"]

PROBE_TIMEOUT_S = 15.0
_probe_results: dict[tuple[str, str, str], str | None] = {}


def kvm_blocker(config: MachineConfig | None = None) -> str | None:
    """Why KVM cannot be used on this host (for `config`'s guest) without trying it, or
    None if it might work."""
    host = platform.machine()
    if config is not None and config.arch.value != host:
        return f"KVM runs only {host} guests here, not {config.arch.value}"
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        return "/dev/kvm does not exist"
    if not os.access(kvm, os.R_OK | os.W_OK):
        return "/dev/kvm is not readable and writable by this user"
    if Path("/sys/module/kvm_pvm").exists():
        return "/dev/kvm is the kvm_pvm nested software hypervisor, which cannot boot this guest"
    return None


def probe_boot(
    config: MachineConfig, accel: Accel, *, timeout_s: float = PROBE_TIMEOUT_S
) -> str | None:
    """Boot `config` under `accel` until the guest sends its first channel frame.

    Returns None if it did, else a one-line reason. The probe machine is always destroyed.
    """
    from vmfault.machine.machine import Machine  # noqa: PLC0415 (machine imports this module)

    probe_config = dataclasses.replace(
        config, accel=accel, incoming=None, console_log=None, deterministic=False
    )
    try:
        with Machine(probe_config, name=f"{accel.value}-probe") as vm:
            if vm.wait(lambda: bool(vm.channel.frames), timeout_s):
                return None
            if not vm.alive:
                return f"QEMU exited with status {vm.exit_code} while booting under {accel.value}"
            return f"no sign of life from the guest within {timeout_s:g} s under {accel.value}"
    except MachineError as exc:
        return exc.one_line()


def resolve_accel(config: MachineConfig) -> tuple[Accel, str]:
    """The accelerator to use for `config`, and a one-line reason when AUTO fell back to TCG.

    UsageError for KVM asked for a guest of another architecture than the host's.
    """
    if config.accel is Accel.KVM and config.arch.value != platform.machine():
        raise UsageError(
            f"KVM runs only {platform.machine()} guests on this host, not {config.arch.value}",
            hint="use accel tcg (or auto)",
        )
    if config.accel is not Accel.AUTO:
        return config.accel, ""
    blocker = kvm_blocker(config)
    if blocker is None:
        key = (config.qemu_binary, str(config.kernel), str(config.initrd))
        if key not in _probe_results:
            _probe_results[key] = probe_boot(config, Accel.KVM)
        blocker = _probe_results[key]
    if blocker is None:
        return Accel.KVM, ""
    return Accel.TCG, f"using TCG: KVM unusable ({blocker})"
