"""The machine layer: QEMU processes and everything that talks to them.

It knows nothing about faults, experiments or campaigns; those layers use it.
"""

from vmfault.machine.accel import kvm_blocker, probe_boot, resolve_accel
from vmfault.machine.channel import Channel, Frame, FrameParser
from vmfault.machine.config import Accel, MachineConfig, Nic, RamFile
from vmfault.machine.console import Console, ConsoleMatch
from vmfault.machine.gdbstub import GdbStub, StopReply
from vmfault.machine.machine import (
    Machine,
    QMPEvent,
    Runstate,
    Snapshot,
    SnapshotKind,
    Template,
)
from vmfault.machine.memmap import MemoryMap, MemoryRegion
from vmfault.machine.run import Run, RunEnd

__all__ = [
    "Accel",
    "Channel",
    "Console",
    "ConsoleMatch",
    "Frame",
    "FrameParser",
    "GdbStub",
    "Machine",
    "MachineConfig",
    "MemoryMap",
    "MemoryRegion",
    "Nic",
    "QMPEvent",
    "RamFile",
    "Run",
    "RunEnd",
    "Runstate",
    "Snapshot",
    "SnapshotKind",
    "StopReply",
    "Template",
    "kvm_blocker",
    "probe_boot",
    "resolve_accel",
]
