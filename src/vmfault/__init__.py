"""vmfault: inject hardware faults into QEMU virtual machines and measure what they do.

The public API, most important first. The machine layer (`vmfault.machine`) is usable on
its own; `vmfault.guest` builds guest images; `vmfault.session` runs workloads in them.
"""

from vmfault._version import __version__
from vmfault.errors import (
    GdbError,
    ImageError,
    LaunchError,
    MachineError,
    MachineTimeoutError,
    QMPError,
    SnapshotError,
    StateError,
    UsageError,
    VmfaultError,
)
from vmfault.machine import Accel, Machine, MachineConfig, Snapshot

__all__ = [
    "Accel",
    "GdbError",
    "ImageError",
    "LaunchError",
    "Machine",
    "MachineConfig",
    "MachineError",
    "MachineTimeoutError",
    "QMPError",
    "Snapshot",
    "SnapshotError",
    "StateError",
    "UsageError",
    "VmfaultError",
    "__version__",
]
