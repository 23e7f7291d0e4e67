"""What a device fault can corrupt (pure, no I/O): the fields of a virtio request as the
guest hands it to its device, and the registers of the machine's devices.

A virtio request is a chain of descriptors in the queue's descriptor table (16 bytes
each, little-endian: `addr` u64, `len` u32, `flags` u16, `next` u16; virtio 1.2 section
2.7.5), named by an entry of the available ring that the device has not taken yet (from
its `last_avail_idx` up to the ring's `idx`). A descriptor with the INDIRECT flag points to
a table of its own that holds the chain. The first buffer of a request the device reads
starts with the request header: `virtio_blk_outhdr` (`type` u32, `ioprio` u32, `sector`
u64) for a disk, `virtio_net_hdr_v1` (12 bytes) for a network card.

Registers: a device is a named region of QEMU's memory tree, in the guest-physical
(`memory`) or the port (`io`) address space. Its registers are its aligned 32-bit words
in memory space (bytes in regions under 4 bytes) and its bytes in port space.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "BLK_HEADER_FIELDS",
    "DESCRIPTOR_BYTES",
    "DESCRIPTOR_FIELDS",
    "DEVICE_REGION_NAMES",
    "EXCLUDED_DEVICES",
    "NET_HEADER_FIELDS",
    "VIRTIO_DEVICE_IDS",
    "VIRTQUEUE_NAMES",
    "VRING_DESC_F_INDIRECT",
    "VRING_DESC_F_NEXT",
    "VRING_DESC_F_WRITE",
    "Descriptor",
    "DeviceRegion",
    "Field",
    "Register",
    "choose_register",
    "header_fields",
    "pending_heads",
    "queue_device",
    "region_names",
    "request_chain",
    "request_fields",
]

DESCRIPTOR_BYTES = 16
VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
MAX_CHAIN = 64
"""Descriptors followed in one chain at most (a corrupted or looping chain stops there)."""

DESCRIPTOR_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("addr", 0, 64),
    ("len", 8, 32),
    ("flags", 12, 16),
    ("next", 14, 16),
)
"""A descriptor's fields: name, byte offset, width in bits."""
BLK_HEADER_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("type", 0, 32),
    ("ioprio", 4, 32),
    ("sector", 8, 64),
)
"""`struct virtio_blk_outhdr`: name, byte offset, width in bits."""
NET_HEADER_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("flags", 0, 8),
    ("gso_type", 1, 8),
    ("hdr_len", 2, 16),
    ("gso_size", 4, 16),
    ("csum_start", 6, 16),
    ("csum_offset", 8, 16),
    ("num_buffers", 10, 16),
)
"""`struct virtio_net_hdr_v1`: name, byte offset, width in bits."""
VIRTIO_DEVICE_IDS = {"virtio-net": 1, "virtio-blk": 2}
"""Virtio device ids (virtio 1.2 section 5) of the devices `device:` targets name."""
VIRTQUEUE_NAMES: dict[str, tuple[str, ...]] = {
    "virtio-blk": ("req.",),
    "virtio-net": ("input.", "output.", "control"),
}
"""How Linux's drivers name their virtqueues (`struct virtqueue`'s `name`), per device:
which device a kick is for."""
EXCLUDED_DEVICES = frozenset({"isa-debugcon", "io"})
"""Regions that are no device to fault: vmfault's own result channel (the debug console)
and the I/O space's unassigned background."""
DEVICE_REGION_NAMES: Mapping[str, tuple[str, ...]] = {"serial": ("serial", "pl011")}
"""The names QEMU gives the regions of a device target on each machine: `device:serial`
is the 16550 on x86-64's microvm and the PL011 on aarch64's virt."""


def region_names(device: str) -> tuple[str, ...]:
    """The region names of device target `device` (`DEVICE_REGION_NAMES`, else itself)."""
    return DEVICE_REGION_NAMES.get(device, (device,))


@dataclass(frozen=True)
class Descriptor:
    """One descriptor of a virtqueue, at guest-physical `address`."""

    address: int
    addr: int
    length: int
    flags: int
    next: int

    @classmethod
    def parse(cls, address: int, data: bytes) -> Descriptor:
        """The descriptor whose 16 bytes at `address` are `data`."""
        addr, length, flags, following = struct.unpack("<QIHH", data[:DESCRIPTOR_BYTES])
        return cls(address, addr, length, flags, following)


@dataclass(frozen=True)
class Field:
    """A field a fault may flip: where (guest-physical), how wide, and what it is
    (`part` is `descriptor` or `header`; `name` such as `len` or `sector`)."""

    address: int
    width: int
    part: str
    name: str
    descriptor: int
    """The descriptor's position in the request's chain (0: the first)."""

    @property
    def size(self) -> int:
        """The field's size in bytes."""
        return self.width // 8


Reader = Callable[[int, int], bytes]
"""Reads `size` bytes of guest-physical memory at an address."""


def pending_heads(ring: bytes, last_avail: int, avail_idx: int, num: int) -> list[int]:
    """The heads of the requests the device has not taken yet: the available ring's
    entries from `last_avail` (the device's index) up to `avail_idx` (the guest's), both
    free-running 16-bit counters; `ring` holds the ring's `num` u16 entries."""
    pending = (avail_idx - last_avail) & 0xFFFF
    pending = min(pending, num)
    heads = []
    for k in range(pending):
        slot = (last_avail + k) % num
        heads.append(int.from_bytes(ring[2 * slot : 2 * slot + 2], "little"))
    return heads


def queue_device(queue_name: str) -> str | None:
    """The virtio device whose driver names a virtqueue `queue_name` (`req.0`: virtio-blk)."""
    for device, prefixes in VIRTQUEUE_NAMES.items():
        if queue_name.startswith(prefixes):
            return device
    return None


def request_chain(read: Reader, table: int, num: int, head: int) -> list[Descriptor]:
    """The descriptors of the request whose head is `head` in the table at `table`
    (`num` entries): the head itself and, through `next` or an indirect table, the rest.
    Stops at MAX_CHAIN descriptors, at an index out of the table, or at a loop."""
    chain: list[Descriptor] = []
    seen: set[int] = set()
    index = head
    while len(chain) < MAX_CHAIN and 0 <= index < num and index not in seen:
        seen.add(index)
        address = table + DESCRIPTOR_BYTES * index
        descriptor = Descriptor.parse(address, read(address, DESCRIPTOR_BYTES))
        chain.append(descriptor)
        if descriptor.flags & VRING_DESC_F_INDIRECT:
            entries = descriptor.length // DESCRIPTOR_BYTES
            if entries:
                chain += request_chain(read, descriptor.addr, entries, 0)[: MAX_CHAIN - len(chain)]
            break
        if not descriptor.flags & VRING_DESC_F_NEXT:
            break
        index = descriptor.next
    return chain


def header_fields(device: str, chain: Sequence[Descriptor]) -> list[Field]:
    """The request header's fields, in the first buffer of the chain the device reads
    (none if that buffer is shorter than the header)."""
    layout = BLK_HEADER_FIELDS if device == "virtio-blk" else NET_HEADER_FIELDS
    size = max(offset + width // 8 for _, offset, width in layout)
    for position, descriptor in enumerate(chain):
        if descriptor.flags & VRING_DESC_F_INDIRECT:
            continue
        if descriptor.flags & VRING_DESC_F_WRITE or descriptor.length < size:
            return []
        return [
            Field(descriptor.addr + offset, width, "header", name, position)
            for name, offset, width in layout
        ]
    return []


def request_fields(device: str, chain: Sequence[Descriptor]) -> list[Field]:
    """Every field of a request a fault may flip: each descriptor's addr, len, flags and
    next, then the request header's fields (when the device reads one)."""
    fields = [
        Field(descriptor.address + offset, width, "descriptor", name, position)
        for position, descriptor in enumerate(chain)
        for name, offset, width in DESCRIPTOR_FIELDS
    ]
    return fields + header_fields(device, chain)


@dataclass(frozen=True)
class DeviceRegion:
    """A device's region in QEMU's memory tree: [start, end) in `space` (`memory` or
    `io`), named as QEMU names it (`serial`, `virtio-mmio`, `ioapic`)."""

    space: str
    start: int
    end: int
    name: str


@dataclass(frozen=True)
class Register:
    """A register of a device: `size` bytes at `address` in `space`."""

    space: str
    address: int
    size: int
    device: str
    offset: int
    """From the start of the device's region."""

    @property
    def location(self) -> str:
        """As records show it: `serial+0x3 (io 0x3fb)`."""
        where = f"{self.space} {self.address:#x}"
        return f"{self.device}+{self.offset:#x} ({where})"


def registers_of(region: DeviceRegion) -> list[Register]:
    """The registers of one region: aligned 32-bit words in memory space (bytes in a
    region under 4 bytes), bytes in port space."""
    size = 4 if region.space == "memory" and region.end - region.start >= 4 else 1
    return [
        Register(region.space, address, size, region.name, address - region.start)
        for address in range(region.start, region.end - size + 1, size)
    ]


def choose_register(
    regions: Iterable[DeviceRegion], rng: random.Random, *, device: str | None = None
) -> Register:
    """A register drawn with `rng`: a device uniformly among those named `device` (None:
    any device but EXCLUDED_DEVICES), then one of its regions and registers uniformly.
    ValueError if there is none."""
    by_device: dict[tuple[str, str], list[DeviceRegion]] = {}
    for region in regions:
        if region.name in EXCLUDED_DEVICES or region.end <= region.start:
            continue
        if device is not None and region.name not in region_names(device):
            continue
        by_device.setdefault((region.space, region.name), []).append(region)
    if not by_device:
        raise ValueError(f"the machine has no device {device or 'with registers'}")
    chosen = by_device[rng.choice(sorted(by_device))]
    region = rng.choice(sorted(chosen, key=lambda r: r.start))
    return rng.choice(registers_of(region))
