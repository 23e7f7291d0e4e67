"""Parsing QEMU's `info mtree -f` into the guest RAM map."""

from __future__ import annotations

import pytest

from vmfault.machine.memmap import parse_mtree

MICROVM_MTREE = """FlatView #0
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-000000000000001f (prio 0, i/o): io

FlatView #1
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000effff (prio 0, ram): microvm.ram
  00000000000f0000-00000000000fffff (prio 0, ram): pc.bios
  0000000000100000-0000000007ffffff (prio 0, ram): microvm.ram @0000000000100000
  00000000fea00000-00000000fea00003 (prio 0, i/o): acpi-ged
  00000000ffff0000-00000000ffffffff (prio 0, ram): pc.bios
"""

PC_5G_MTREE = """FlatView #0
 AS "cpu-smm-0", root: memory
 Root memory region: memory
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-00000000bfffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000017fffffff (prio 0, ram): pc.ram @00000000c0000000

FlatView #1
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-0000000000000007 (prio 0, i/o): dma-chan
  0000000000000008-000000000000000f (prio 0, i/o): dma-cont
  000000000000b140-000000000000ffff (prio 0, i/o): io @000000000000b140

FlatView #2
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-00000000000bffff (prio 0, ram): pc.ram
  00000000000c0000-00000000000dffff (prio 1, rom): pc.rom
  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000
  0000000000100000-00000000bfffffff (prio 0, ram): pc.ram @0000000000100000
  00000000fec00000-00000000fec00fff (prio 0, i/o): ioapic
  00000000fed00000-00000000fed003ff (prio 0, i/o): hpet
  00000000fee00000-00000000feefffff (prio 4096, i/o): apic-msi
  00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios
  0000000100000000-000000017fffffff (prio 0, ram): pc.ram @00000000c0000000

FlatView #3
 AS "i440FX", root: bus master container
 AS "PIIX3", root: bus master container
 Root memory region: (none)
  No rendered FlatView
"""
"""QEMU 7.2's `info mtree -f` (abridged I/O view) for `-M pc -m 5G -nodefaults`."""


def test_ram_regions_exclude_firmware() -> None:
    memory = parse_mtree(MICROVM_MTREE)
    ram = memory.ram()
    assert [(r.start, r.end) for r in ram] == [(0, 0xF0000), (0x100000, 0x8000000)]
    assert memory.ram_bytes == 128 * 1024 * 1024 - 0x10000
    assert memory.region_of(0xF1234) is not None
    assert memory.region_of(0xF1234).kind == "rom"  # type: ignore[union-attr]
    assert memory.region_of(0xFEA00001).kind == "i/o"  # type: ignore[union-attr]
    assert memory.region_of(0x9000000) is None


def test_ram_offsets_map_uniformly_over_ram() -> None:
    memory = parse_mtree(MICROVM_MTREE)
    assert memory.ram_offset_to_address(0) == 0
    assert memory.ram_offset_to_address(0xEFFFF) == 0xEFFFF
    assert memory.ram_offset_to_address(0xF0000) == 0x100000
    assert memory.ram_offset_to_address(memory.ram_bytes - 1) == 0x7FFFFFF


def test_io_address_space_is_ignored() -> None:
    memory = parse_mtree(MICROVM_MTREE)
    assert [(r.start, r.end, r.kind, r.name) for r in memory] == [
        (0x0, 0xF0000, "ram", "microvm.ram"),
        (0xF0000, 0x100000, "rom", "pc.bios"),
        (0x100000, 0x8000000, "ram", "microvm.ram"),
        (0xFEA00000, 0xFEA00004, "i/o", "acpi-ged"),
        (0xFFFF0000, 0x100000000, "rom", "pc.bios"),
    ]
    port = memory.region_of(0x10)  # an I/O port number, but a RAM address
    assert port is not None and (port.kind, port.name) == ("ram", "microvm.ram")


def test_only_the_memory_address_space_counts() -> None:
    memory = parse_mtree(PC_5G_MTREE)
    assert [(r.start, r.end) for r in memory.ram()] == [
        (0x0, 0xC0000),
        (0x100000, 0xC0000000),
        (0x100000000, 0x180000000),
    ]
    # 5 GiB configured; the option ROM and BIOS shadow 256 KiB below 1 MiB. Counting the
    # SMM view too would double it.
    assert memory.ram_bytes == 5 * 2**30 - 256 * 2**10
    assert memory.ram_offset_to_address(0xC0000) == 0x100000
    assert memory.ram_offset_to_address(memory.ram_bytes - 1) == 0x17FFFFFFF
    assert [r.name for r in memory if r.kind == "rom"] == ["pc.rom", "pc.bios", "pc.bios"]
    assert len(memory.regions) == 9


def test_text_without_the_memory_address_space_is_an_empty_map() -> None:
    io_only, _, _ = MICROVM_MTREE.partition("FlatView #1")
    memory = parse_mtree(io_only)
    assert memory.regions == ()
    assert memory.ram_bytes == 0
    with pytest.raises(ValueError, match="beyond guest RAM"):
        memory.ram_offset_to_address(0)
