"""The guest's physical memory map, as QEMU itself reports it (no help from the guest)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from vmfault.machine.config import RAM_BACKEND_ID

__all__ = ["MemoryMap", "MemoryRegion", "parse_io_mtree", "parse_mtree"]

_LINE = re.compile(
    r"^\s*([0-9a-f]{16})-([0-9a-f]{16}) \(prio -?\d+, ([a-z/_-]+)\): (\S+)(?: @([0-9a-f]+))?"
)


@dataclass(frozen=True, order=True)
class MemoryRegion:
    """Guest-physical bytes [start, end) of one kind (`ram`, `rom`, `i/o`, ...)."""

    start: int
    end: int
    kind: str
    name: str
    offset: int | None = None
    """Where the region starts in its memory block (`@offset` in QEMU's tree); None: at
    the block's start, or not a view into a larger block."""

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self.end - self.start

    def __contains__(self, address: object) -> bool:
        return isinstance(address, int) and self.start <= address < self.end


@dataclass(frozen=True)
class MemoryMap:
    """All regions of the guest's system address space, sorted by address."""

    regions: tuple[MemoryRegion, ...]

    def ram(self) -> tuple[MemoryRegion, ...]:
        """The regions that are guest RAM (not firmware, not devices)."""
        return tuple(r for r in self.regions if r.kind == "ram")

    @property
    def ram_bytes(self) -> int:
        """Total guest RAM in bytes."""
        return sum(r.size for r in self.ram())

    def ram_offset_to_address(self, offset: int) -> int:
        """Map an offset in [0, ram_bytes) onto a guest-physical RAM address, uniformly."""
        for region in self.ram():
            if offset < region.size:
                return region.start + offset
            offset -= region.size
        raise ValueError("offset beyond guest RAM")

    def region_of(self, address: int) -> MemoryRegion | None:
        """The region that holds `address`, if any."""
        for region in self.regions:
            if address in region:
                return region
        return None

    def __iter__(self) -> Iterator[MemoryRegion]:
        return iter(self.regions)


def _is_main_ram(name: str) -> bool:
    # Machine RAM is named "<machine>.ram" (pc.ram, microvm.ram) or after its memory
    # backend; firmware images such as pc.bios are RAM-backed too but are not guest RAM.
    return name.endswith(".ram") or name.startswith(("ram", "mem")) or name == RAM_BACKEND_ID


def parse_mtree(text: str) -> MemoryMap:
    """Parse HMP `info mtree -f` output: the flat view of the `memory` address space."""
    return _parse_view(text, 'AS "memory", root: system', main_ram=True)


def parse_io_mtree(text: str) -> MemoryMap:
    """Parse HMP `info mtree -f` output: the flat view of the port (`I/O`) address space,
    where ISA devices (serial, pvpanic, pit, ...) have their registers."""
    return _parse_view(text, 'AS "I/O", root: io', main_ram=False)


def _parse_view(text: str, header: str, *, main_ram: bool) -> MemoryMap:
    regions: list[MemoryRegion] = []
    in_memory_view = False
    for raw in text.splitlines():
        line = raw.rstrip()
        if line.startswith("FlatView"):
            in_memory_view = False
            continue
        if line.strip() == header:
            in_memory_view = True
            continue
        if not in_memory_view:
            continue
        found = _LINE.match(line)
        if found is None:
            continue
        start, last, kind, name = (
            int(found.group(1), 16),
            int(found.group(2), 16),
            found.group(3),
            found.group(4),
        )
        if main_ram and kind in ("ram", "rom") and not _is_main_ram(name):
            kind = "rom"
        offset = int(found.group(5), 16) if found.group(5) else None
        regions.append(MemoryRegion(start, last + 1, kind, name, offset))
    return MemoryMap(tuple(sorted(regions)))
