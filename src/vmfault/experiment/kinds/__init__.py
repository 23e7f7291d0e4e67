"""Fault kinds, found by the registry `KINDS`: the target's prefix (`register`, `memory`,
`kernel-code`, `instruction`, `disk`, `network`, `device`, `vmm`, `none` for control runs),
or `storm` for a memory family with a schedule of flips, `page-table` for
`memory:page-table`.

A new kind is a module implementing `FaultKind` plus one entry here.
"""

from collections.abc import Mapping

from vmfault.errors import UsageError
from vmfault.experiment.kinds.base import FaultKind, Injected, KindFactory
from vmfault.experiment.kinds.control import ControlKind
from vmfault.experiment.kinds.device import DeviceKind
from vmfault.experiment.kinds.disk import DiskKind
from vmfault.experiment.kinds.instruction import InstructionKind
from vmfault.experiment.kinds.kernel_code import KernelCodeKind
from vmfault.experiment.kinds.memory import MemoryKind
from vmfault.experiment.kinds.network import NetworkKind
from vmfault.experiment.kinds.pagetable import PageTableKind
from vmfault.experiment.kinds.register import RegisterKind
from vmfault.experiment.kinds.storm import StormKind
from vmfault.experiment.kinds.vmm import VmmKind
from vmfault.faults.model import PAGE_TABLE, FaultSpec, TargetKind

__all__ = ["KINDS", "FaultKind", "Injected", "KindFactory", "kind_name"]

KINDS: Mapping[str, KindFactory] = {
    "register": RegisterKind,
    "memory": MemoryKind,
    "page-table": PageTableKind,
    "kernel-code": KernelCodeKind,
    "instruction": InstructionKind,
    "storm": StormKind,
    "disk": DiskKind,
    "network": NetworkKind,
    "device": DeviceKind,
    "vmm": VmmKind,
    "none": ControlKind,
}
"""The fault kinds by name."""


def kind_name(spec: FaultSpec) -> str:
    """The registry key of `spec`'s kind; UsageError if no kind handles it."""
    name = "storm" if spec.storm is not None else spec.target.kind.value
    if spec.target.kind is TargetKind.MEMORY and spec.target.name == PAGE_TABLE:
        name = PAGE_TABLE
    if name not in KINDS:
        raise UsageError(f"no fault kind handles {spec.target.spelling}",
                         hint="known kinds: " + ", ".join(KINDS))  # fmt: skip
    return name
