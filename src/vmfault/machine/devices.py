"""The machine's virtual devices as QEMU reports them: the regions of its memory tree in
both address spaces, port reads and writes, its virtio devices and their queues, and the
host address of guest memory.

Ports are read and written with the monitor's `i` and `o` commands, which go through the
port address space as a vCPU's `in`/`out` would; memory-mapped registers are reached with
the gdbstub's physical-memory accesses (`Machine.gdb`, `physical=True`), which go through
the system address space and so through device regions, not only RAM. Virtio queues are
QEMU's own view (`x-query-virtio-queue-status`, QEMU 7.1+): where each ring lies in guest
memory and how far the device has taken requests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vmfault.errors import MachineError
from vmfault.machine.machine import Machine
from vmfault.machine.memmap import MemoryMap, parse_io_mtree, parse_mtree

__all__ = [
    "VirtioDevice",
    "VirtqueueStatus",
    "address_spaces",
    "guest_host_address",
    "read_port",
    "virtio_broken",
    "virtio_devices",
    "virtqueue",
    "virtqueue_count",
    "virtqueue_status",
    "write_port",
]

_PORT_SIZES = {1: "b", 2: "w", 4: "l"}
_PORT_VALUE = re.compile(r"port[bwl]\[0x[0-9a-f]+\] = (0x[0-9a-f]+)")
_HOST_ADDRESS = re.compile(r"is (0x[0-9a-f]+)")


def address_spaces(vm: Machine) -> tuple[MemoryMap, MemoryMap]:
    """The flat views of the system (guest-physical) and port address spaces."""
    text = vm.hmp("info mtree -f")
    return parse_mtree(text), parse_io_mtree(text)


def read_port(vm: Machine, port: int, size: int) -> int:
    """The value an `in` of `size` bytes (1, 2 or 4) at `port` reads now."""
    text = vm.hmp(f"i /{_PORT_SIZES[size]} {port:#x}")
    found = _PORT_VALUE.search(text)
    if found is None:
        raise MachineError(f"port {port:#x} could not be read: {text.strip()!r}")
    return int(found.group(1), 16)


def write_port(vm: Machine, port: int, value: int, size: int) -> None:
    """An `out` of `value` (`size` bytes: 1, 2 or 4) to `port`."""
    text = vm.hmp(f"o /{_PORT_SIZES[size]} {port:#x} {value:#x}")
    if text.strip():
        raise MachineError(f"port {port:#x} could not be written: {text.strip()!r}")


@dataclass(frozen=True)
class VirtioDevice:
    """A virtio device of the machine: its QOM path and QEMU's name for it (`virtio-blk`)."""

    path: str
    name: str


def virtio_devices(vm: Machine) -> list[VirtioDevice]:
    """The machine's virtio devices."""
    return [VirtioDevice(str(d["path"]), str(d["name"])) for d in vm.qmp("x-query-virtio")]


@dataclass(frozen=True)
class VirtqueueStatus:
    """Where one virtqueue lies in guest-physical memory and how far its device has taken
    requests from it (`last_avail_idx`, a free-running 16-bit counter)."""

    queue: int
    num: int
    desc: int
    avail: int
    used: int
    last_avail_idx: int

    @classmethod
    def from_qmp(cls, data: dict[str, Any]) -> VirtqueueStatus:
        """From `x-query-virtio-queue-status`'s answer."""
        return cls(
            int(data["queue-index"]), int(data["vring-num"]), int(data["vring-desc"]),
            int(data["vring-avail"]), int(data["vring-used"]), int(data["last-avail-idx"]),
        )  # fmt: skip


def virtqueue_count(vm: Machine, device: VirtioDevice) -> int:
    """How many virtqueues `device` has."""
    return int(vm.qmp("x-query-virtio-status", {"path": device.path})["num-vqs"])


def virtqueue(vm: Machine, device: VirtioDevice, queue: int) -> VirtqueueStatus | None:
    """Queue `queue` of `device`, or None if the guest has not set it up (no ring)."""
    data = vm.qmp("x-query-virtio-queue-status", {"path": device.path, "queue": queue})
    found = VirtqueueStatus.from_qmp(data)
    return found if found.desc and found.num else None


def virtqueue_status(vm: Machine, device: VirtioDevice) -> list[VirtqueueStatus]:
    """Every queue of `device` that the guest has set up (a ring address not zero)."""
    found = (virtqueue(vm, device, queue) for queue in range(virtqueue_count(vm, device)))
    return [queue for queue in found if queue is not None]


def virtio_broken(vm: Machine, device: VirtioDevice) -> bool:
    """Whether QEMU has marked `device` broken (after a virtio error it stops serving the
    guest until a reset)."""
    return bool(vm.qmp("x-query-virtio-status", {"path": device.path}).get("broken"))


def guest_host_address(vm: Machine, physical: int) -> int | None:
    """The host address in QEMU's process where guest-physical `physical` lives (RAM or
    firmware), or None if it is not memory."""
    text = vm.hmp(f"gpa2hva {physical:#x}")
    found = _HOST_ADDRESS.search(text)
    return None if found is None else int(found.group(1), 16)
