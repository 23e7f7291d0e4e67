"""The x86-64 page-table walker against synthetic tables in a fake physical memory."""

from __future__ import annotations

import struct
from collections import Counter

import pytest

from vmfault.errors import MachineError
from vmfault.machine.pagetable import (
    PAGE_SIZE_1G,
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
    PageMapping,
    translate,
    walk,
)

P, RW, US, PS = 1 << 0, 1 << 1, 1 << 2, 1 << 7
NX = 1 << 63
PKEY_3 = 3 << 59
AVAILABLE = (1 << 9) | (1 << 52)
PAT_LARGE = 1 << 12

PML4 = 0x1000
PDPT_LOW = 0x2000
PD_LOW = 0x3000
PT_LOW = 0x4000
PDPT_HIGH = 0x5000
PD_SHARED = 0x6000
PDPT_STACK = 0x7000
PD_STACK = 0x8000
PT_STACK = 0x9000
CR3 = PML4 | 0x5  # PCID 5
CR3_PCID_MAX = PML4 | 0xFFF


class FakeMemory:
    """Guest-physical memory made of 4 KiB pages in a dict; counts reads per page."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.reads: Counter[int] = Counter()

    def set_entry(self, table: int, index: int, value: int) -> None:
        page = self.pages.setdefault(table, bytearray(PAGE_SIZE_4K))
        struct.pack_into("<Q", page, 8 * index, value)

    def read(self, address: int, size: int) -> bytes:
        base = address & ~(PAGE_SIZE_4K - 1)
        offset = address - base
        assert offset + size <= PAGE_SIZE_4K, "reads never cross a page"
        self.reads[base] += 1
        page = self.pages.get(base, bytearray(PAGE_SIZE_4K))
        return bytes(page[offset : offset + size])


@pytest.fixture
def memory() -> FakeMemory:
    """An address space with:

    - 0x10000000: 4 KiB code (user, read-only, executable)
    - 0x10001000: 4 KiB data (user, writable, NX, protection key 3, available bits)
    - 0x10002000: non-present PTE
    - 0x10200000: 2 MiB user page, writable, NX (PD entry 129)
    - 0x40000000: 1 GiB user page, read-only, executable (PDPT entry 1)
    - 0x7fff_ffff_e000: 4 KiB user stack page (writable, NX)
    - 0x7fff_ffff_f000: 4 KiB page whose leaf lacks U/S (supervisor-only)
    - 0xffff_8880_0000_0000: kernel direct map, 1 GiB supervisor page
    - 0xffff_ffff_8000_0000: kernel text, 2 MiB supervisor page; its PDPT page is
      reached from two PML4 entries and its PD page from two PDPT entries
    """
    mem = FakeMemory()
    # PML4
    mem.set_entry(PML4, 0, PDPT_LOW | P | RW | US | AVAILABLE)
    mem.set_entry(PML4, 254, PDPT_LOW | US | RW)  # not present
    mem.set_entry(PML4, 255, PDPT_STACK | P | RW | US)
    mem.set_entry(PML4, 273, PDPT_HIGH | P | RW)  # 0xffff888000000000
    mem.set_entry(PML4, 511, PDPT_HIGH | P | RW)  # 0xffffff8000000000, same PDPT page
    # lower-half PDPT
    mem.set_entry(PDPT_LOW, 0, PD_LOW | P | RW | US)
    mem.set_entry(PDPT_LOW, 1, 0x8000_0000 | P | US | PS | PAT_LARGE)  # 1 GiB at 0x40000000
    mem.set_entry(PDPT_LOW, 2, 0xC000_0000 | RW | US | PS)  # not present
    # lower-half PD
    mem.set_entry(PD_LOW, 128, PT_LOW | P | RW | US)  # 0x10000000
    mem.set_entry(PD_LOW, 129, 0x0060_0000 | P | RW | US | PS | NX | PAT_LARGE)  # 0x10200000
    # lower-half PT
    mem.set_entry(PT_LOW, 0, 0x0010_0000 | P | US)
    mem.set_entry(PT_LOW, 1, 0x0010_1000 | P | RW | US | NX | PKEY_3 | AVAILABLE)
    mem.set_entry(PT_LOW, 2, 0x0010_2000 | RW | US)  # not present
    # top of the lower half: a user stack page and a supervisor-only page
    mem.set_entry(PDPT_STACK, 511, PD_STACK | P | RW | US)
    mem.set_entry(PD_STACK, 511, PT_STACK | P | RW | US)
    mem.set_entry(PT_STACK, 510, 0x0020_0000 | P | RW | US | NX)
    mem.set_entry(PT_STACK, 511, 0x0020_1000 | P | RW)  # U/S clear at the leaf
    # upper half
    mem.set_entry(PDPT_HIGH, 0, 0x0000_0000 | P | RW | PS | NX)  # 1 GiB direct map
    mem.set_entry(PDPT_HIGH, 510, PD_SHARED | P | RW)
    mem.set_entry(PDPT_HIGH, 511, PD_SHARED | P | RW)  # same PD page
    mem.set_entry(PD_SHARED, 0, 0x0100_0000 | P | PS)  # kernel text, read-only, executable
    return mem


def by_virtual(mappings: list[PageMapping]) -> dict[int, PageMapping]:
    return {mapping.virtual: mapping for mapping in mappings}


def test_user_walk(memory: FakeMemory) -> None:
    pages = by_virtual(walk(CR3, memory.read))
    assert pages == {
        0x1000_0000: PageMapping(0x1000_0000, 0x0010_0000, PAGE_SIZE_4K, False, True, True),
        0x1000_1000: PageMapping(0x1000_1000, 0x0010_1000, PAGE_SIZE_4K, True, True, False),
        0x1020_0000: PageMapping(0x1020_0000, 0x0060_0000, PAGE_SIZE_2M, True, True, False),
        0x4000_0000: PageMapping(0x4000_0000, 0x8000_0000, PAGE_SIZE_1G, False, True, True),
        0x7FFF_FFFF_E000: PageMapping(
            0x7FFF_FFFF_E000, 0x0020_0000, PAGE_SIZE_4K, True, True, False
        ),
    }
    assert 0x7FFF_FFFF_F000 not in pages  # supervisor-only leaf


FULL_WALK = 12
"""Present leaves of the fixture's tables: 6 user-half pages, and 3 upper-half pages
reached through each of the two PML4 entries that share a PDPT page."""


def test_sorted_and_each_table_read_once(memory: FakeMemory) -> None:
    mappings = walk(CR3, memory.read, user_only=False)
    assert len(mappings) == FULL_WALK
    assert [m.virtual for m in mappings] == sorted(m.virtual for m in mappings)
    assert all(count == 1 for count in memory.reads.values()), memory.reads
    assert set(memory.reads) == {
        PML4,
        PDPT_LOW,
        PD_LOW,
        PT_LOW,
        PDPT_STACK,
        PD_STACK,
        PT_STACK,
        PDPT_HIGH,
        PD_SHARED,
    }


def test_full_walk_includes_supervisor_and_upper_half(memory: FakeMemory) -> None:
    pages = by_virtual(walk(CR3_PCID_MAX, memory.read, user_only=False))
    supervisor = pages[0x7FFF_FFFF_F000]
    assert (supervisor.user, supervisor.writable, supervisor.executable) == (False, True, True)
    assert supervisor.physical == 0x0020_1000
    direct = pages[0xFFFF_8880_0000_0000]
    assert (direct.size, direct.physical, direct.user, direct.executable) == (
        PAGE_SIZE_1G,
        0,
        False,
        False,
    )
    text = pages[0xFFFF_FFFF_8000_0000]
    assert (text.size, text.physical, text.writable, text.executable, text.user) == (
        PAGE_SIZE_2M,
        0x0100_0000,
        False,
        True,
        False,
    )
    assert pages[0xFFFF_FFFF_C000_0000].physical == 0x0100_0000  # PD page via PDPT entry 511
    assert pages[0xFFFF_FF80_0000_0000].size == PAGE_SIZE_1G  # PDPT page via PML4 entry 511
    assert all(m.virtual >> 47 in (0, 0x1FFFF) for m in pages.values())  # canonical


def test_translate(memory: FakeMemory) -> None:
    assert translate(CR3, 0x1000_0123, memory.read) == 0x0010_0123
    assert translate(CR3, 0x1000_1FFF, memory.read) == 0x0010_1FFF
    assert translate(CR3, 0x1020_0000 + 0x12_3456, memory.read) == 0x0060_0000 + 0x12_3456
    assert translate(CR3, 0x4000_0000 + 0x1234_5678, memory.read) == 0x8000_0000 + 0x1234_5678
    assert translate(CR3, 0xFFFF_FFFF_8000_1234, memory.read) == 0x0100_1234
    assert translate(CR3, 0x7FFF_FFFF_E008, memory.read) == 0x0020_0008
    assert translate(CR3, 0x7FFF_FFFF_F008, memory.read) == 0x0020_1008  # no permission check


@pytest.mark.parametrize(
    "virtual",
    [
        0x1000_2000,  # non-present PTE
        0x1040_0000,  # non-present PDE
        0x8000_0000,  # non-present 1 GiB PDPTE
        0x7F00_0000_0000,  # non-present PML4E (254)
        0x0000_8000_0000_0000,  # non-canonical
        0xFFFF_0000_0000_0000,  # non-present upper-half PML4E
    ],
)
def test_translate_unmapped(memory: FakeMemory, virtual: int) -> None:
    assert translate(CR3, virtual, memory.read) is None


def test_walk_agrees_with_translate(memory: FakeMemory) -> None:
    mappings = walk(CR3, memory.read, user_only=False)
    assert len(mappings) == FULL_WALK
    for mapping in mappings:
        for offset in (0, mapping.size - 1):
            virtual = mapping.virtual + offset
            assert translate(CR3, virtual, memory.read) == mapping.physical_of(virtual)


def test_empty_address_space() -> None:
    memory = FakeMemory()
    assert walk(PML4, memory.read) == []
    assert translate(PML4, 0x1000, memory.read) is None


def test_short_read_is_an_error(memory: FakeMemory) -> None:
    with pytest.raises(MachineError, match="returned 8 bytes"):
        walk(CR3, lambda address, size: memory.read(address, 8))


def test_mapping_helpers() -> None:
    page = PageMapping(0x2000, 0x9000, PAGE_SIZE_4K, True, True, False)
    assert page.contains(0x2FFF) and not page.contains(0x3000)
    assert page.virtual_end == 0x3000
    assert page.physical_of(0x2010) == 0x9010
    with pytest.raises(ValueError, match="not in the page"):
        page.physical_of(0x3000)
