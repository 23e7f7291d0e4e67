"""Parsing QEMU's `info mtree -f` into the guest RAM map."""

from __future__ import annotations

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
    assert all(r.name != "io" for r in memory)
