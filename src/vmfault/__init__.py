"""vmfault: inject hardware faults into QEMU virtual machines and measure what they do.

The public API, most important first, resolved on first use so that importing a pure part
(`vmfault.faults`, `vmfault.classify`) loads nothing of QEMU's machinery. The machine layer
(`vmfault.machine`) is usable on its own; `vmfault.guest` builds guest images;
`vmfault.session` runs workloads in them; `vmfault.experiment` runs experiments.
"""

from typing import TYPE_CHECKING

from vmfault._lazy import lazy_attributes
from vmfault._version import __version__

if TYPE_CHECKING:
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

_MACHINE = ("Accel", "Machine", "MachineConfig", "Snapshot")
__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        name: "vmfault.machine" if name in _MACHINE else "vmfault.errors"
        for name in __all__
        if name != "__version__"
    },
)
