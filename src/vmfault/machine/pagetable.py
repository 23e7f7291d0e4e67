"""Page tables: walk a process's address space, translate one address (x86-64 4-level
tables, and aarch64 translation tables with a 4 KiB granule and 48-bit addresses).

The walker is pure: it reads guest-physical memory through an injected
``read_physical(address, size) -> bytes`` callable, so it runs against a halted vCPU
(`process_pages`) as well as against synthetic tables in tests. It knows nothing of faults.

x86-64 entry bits used: P (0), R/W (1), U/S (2), PS (7, at the PDPT and PD levels) and XD (63).
Physical addresses are bits 12..51 of an entry (21..51 of a 2 MiB and 30..51 of a 1 GiB
leaf, whose bit 12 is PAT); the protection-key bits 59..62, the available bits and the
PCID or PWT/PCD bits of CR3 are ignored. Effective permissions combine every level, as
the CPU does: writable and user only if set at every level, executable unless XD is set
at any level.

aarch64 (TTBR0_EL1, the lower half): descriptors valid in bit 0, a table (bit 1 set) or a
block (1 GiB at level 1, 2 MiB at level 2) above level 3, pages at level 3; output
address bits 12..47; AP[1] (bit 6) grants EL0 access, AP[2] (bit 7) makes it read-only,
UXN (bit 54) forbids execution at EL0; table descriptors' APTable (bits 61-62) and
UXNTable (bit 60) restrict every level below, as the CPU applies them. The ASID (bits
48-63) and CnP (bit 0) of the TTBR are ignored. Other granules and address sizes (from
TCR_EL1) are refused with an error naming them.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass

from vmfault.arch import DEFAULT_ARCH, Arch
from vmfault.errors import MachineError
from vmfault.machine.gdbstub import GdbStub

__all__ = [
    "CR3_MASK",
    "LEVEL_NAMES",
    "PAGE_SIZE_1G",
    "PAGE_SIZE_2M",
    "PAGE_SIZE_4K",
    "PageMapping",
    "PhysicalReader",
    "TableEntry",
    "page_table_key",
    "process_pages",
    "table_entries",
    "translate",
    "translate_address",
    "walk",
    "walk_address_space",
    "walk_arm64",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

CR3_MASK = ((1 << 52) - 1) & ~0xFFF
"""CR3 bits that name an address space: the page-table base, without the PCID bits.

Under KPTI a process has two roots (kernel and user, bit 12 apart); code at user addresses
runs on the user one, which is what a process is compared by. Bit 12 is kept: without
KPTI two processes' roots may be neighbouring pages."""


def page_table_key(cr3: int) -> int:
    """The address space CR3 names (see CR3_MASK)."""
    return cr3 & CR3_MASK


PhysicalReader = Callable[[int, int], bytes]
"""Reads `size` bytes of guest-physical memory at `address`."""

PAGE_SIZE_4K = 1 << 12
PAGE_SIZE_2M = 1 << 21
PAGE_SIZE_1G = 1 << 30

_ENTRIES = 512
_TABLE_BYTES = _ENTRIES * 8
_TABLE = struct.Struct(f"<{_ENTRIES}Q")

_PRESENT = 1 << 0
_WRITABLE = 1 << 1
_USER = 1 << 2
_LARGE = 1 << 7
_NO_EXECUTE = 1 << 63
_ADDRESS_MASK = ((1 << 52) - 1) & ~(PAGE_SIZE_4K - 1)
"""Bits 12..51: the physical address of a table or of a 4 KiB page."""

_LEAF_SHIFTS = (39, 30, 21, 12)
"""Virtual address bits each level indexes with: PML4, PDPT, PD, PT."""

_LOWER_HALF_ENTRIES = 256
_CANONICAL_BIT = 1 << 47
_SIGN_EXTENSION = ~((1 << 48) - 1) & ((1 << 64) - 1)

_CR0_PG = 1 << 31
_CR4_PAE = 1 << 5
_CR4_LA57 = 1 << 12
_EFER_LMA = 1 << 10


@dataclass(frozen=True)
class PageMapping:
    """One present leaf of a page table: `size` bytes (4 KiB, 2 MiB or 1 GiB) mapped from
    the virtual address `virtual` (canonical, sign-extended) to the physical address
    `physical`, with the effective permissions of the whole walk."""

    virtual: int
    physical: int
    size: int
    writable: bool
    user: bool
    executable: bool

    @property
    def virtual_end(self) -> int:
        """The first virtual address after the page."""
        return self.virtual + self.size

    def contains(self, virtual: int) -> bool:
        """True if `virtual` lies in this page."""
        return self.virtual <= virtual < self.virtual + self.size

    def physical_of(self, virtual: int) -> int:
        """The physical address of `virtual`, which must lie in this page."""
        if not self.contains(virtual):
            raise ValueError(f"{virtual:#x} is not in the page at {self.virtual:#x}")
        return self.physical + (virtual - self.virtual)


def _canonical(address: int) -> int:
    return address | _SIGN_EXTENSION if address & _CANONICAL_BIT else address


def _frame_mask(shift: int) -> int:
    return _ADDRESS_MASK & ~((1 << shift) - 1)


def walk(cr3: int, read_physical: PhysicalReader, *, user_only: bool = True) -> list[PageMapping]:
    """Every present page mapped by the 4-level page tables rooted at `cr3`, sorted by
    virtual address.

    Each table page is read once, whole (4 KiB). With `user_only` (the default), only the
    lower half (PML4 entries 0-255) is walked and only pages whose U/S bit is set at every
    level are returned. Errors of `read_physical` propagate.
    """
    table = _Tables(read_physical)

    mappings: list[PageMapping] = []

    def descend(
        address: int, level: int, base: int, writable: bool, user: bool, executable: bool
    ) -> None:
        shift = _LEAF_SHIFTS[level]
        entries = table(address)
        limit = _LOWER_HALF_ENTRIES if (user_only and level == 0) else _ENTRIES
        for index in range(limit):
            entry = entries[index]
            if not entry & _PRESENT:
                continue
            entry_user = user and bool(entry & _USER)
            if user_only and not entry_user:
                continue
            virtual = base | (index << shift)
            entry_writable = writable and bool(entry & _WRITABLE)
            entry_executable = executable and not entry & _NO_EXECUTE
            if level == 3 or (level in (1, 2) and entry & _LARGE):
                mappings.append(
                    PageMapping(
                        virtual=_canonical(virtual),
                        physical=entry & _frame_mask(shift),
                        size=1 << shift,
                        writable=entry_writable,
                        user=entry_user,
                        executable=entry_executable,
                    )
                )
            else:
                descend(
                    entry & _ADDRESS_MASK,
                    level + 1,
                    virtual,
                    entry_writable,
                    entry_user,
                    entry_executable,
                )

    descend(cr3 & _ADDRESS_MASK, 0, 0, True, True, True)
    logger.debug("walked cr3=%#x: %d table pages, %d mappings", cr3, len(table), len(mappings))
    mappings.sort(key=lambda mapping: mapping.virtual)
    return mappings


def translate(cr3: int, virtual: int, read_physical: PhysicalReader) -> int | None:
    """The physical address that `virtual` maps to under `cr3`, or None if it is not
    mapped (a non-present entry on the way, or a non-canonical address).

    Reads one 8-byte entry per level; permissions are not checked.
    """
    virtual &= (1 << 64) - 1
    if _canonical(virtual & ((1 << 48) - 1)) != virtual:
        return None
    table = cr3 & _ADDRESS_MASK
    for level, shift in enumerate(_LEAF_SHIFTS):
        index = (virtual >> shift) & (_ENTRIES - 1)
        entry = _read_entry(read_physical, table + 8 * index)
        if not entry & _PRESENT:
            return None
        if level == 3 or (level in (1, 2) and entry & _LARGE):
            return (entry & _frame_mask(shift)) | (virtual & ((1 << shift) - 1))
        table = entry & _ADDRESS_MASK
    raise AssertionError("unreachable: the last level is always a leaf")


_A64_VALID = 1 << 0
_A64_TABLE = 1 << 1
_A64_AP_EL0 = 1 << 6
_A64_AP_READ_ONLY = 1 << 7
_A64_UXN = 1 << 54
_A64_UXN_TABLE = 1 << 60
_A64_AP_TABLE_NO_EL0 = 1 << 61
_A64_AP_TABLE_READ_ONLY = 1 << 62
_A64_ADDRESS_MASK = ((1 << 48) - 1) & ~(PAGE_SIZE_4K - 1)
_A64_ROOT_MASK = ((1 << 48) - 1) & ~1
_TCR_T0SZ = 0x3F
_TCR_TG0_SHIFT = 14
_TCR_EPD0 = 1 << 7


def walk_arm64(
    ttbr0: int, read_physical: PhysicalReader, *, user_only: bool = True
) -> list[PageMapping]:
    """Every valid page mapped by the aarch64 tables rooted at `ttbr0` (4 KiB granule,
    48-bit addresses: levels 0-3), sorted by virtual address. With `user_only`, only
    pages EL0 may access. Each table page is read once, whole."""
    table = _Tables(read_physical)

    mappings: list[PageMapping] = []

    def descend(
        address: int, level: int, base: int, writable: bool, user: bool, executable: bool
    ) -> None:
        shift = _LEAF_SHIFTS[level]
        for index, entry in enumerate(table(address)):
            if not entry & _A64_VALID:
                continue
            virtual = base | (index << shift)
            if level < 3 and entry & _A64_TABLE:
                below_user = user and not entry & _A64_AP_TABLE_NO_EL0
                if user_only and not below_user:
                    continue
                descend(
                    entry & _A64_ADDRESS_MASK,
                    level + 1,
                    virtual,
                    writable and not entry & _A64_AP_TABLE_READ_ONLY,
                    below_user,
                    executable and not entry & _A64_UXN_TABLE,
                )
                continue
            if level == 0 or (level == 3 and not entry & _A64_TABLE):
                continue  # reserved encodings
            leaf_user = user and bool(entry & _A64_AP_EL0)
            if user_only and not leaf_user:
                continue
            mappings.append(
                PageMapping(
                    virtual=virtual,
                    physical=entry & _A64_ADDRESS_MASK & ~((1 << shift) - 1),
                    size=1 << shift,
                    writable=writable and not entry & _A64_AP_READ_ONLY,
                    user=leaf_user,
                    executable=executable and not entry & _A64_UXN,
                )
            )

    descend(ttbr0 & _A64_ROOT_MASK & _A64_ADDRESS_MASK, 0, 0, True, True, True)
    logger.debug("walked ttbr0=%#x: %d table pages, %d mappings", ttbr0, len(table), len(mappings))
    mappings.sort(key=lambda mapping: mapping.virtual)
    return mappings


def translate_arm64(ttbr0: int, virtual: int, read_physical: PhysicalReader) -> int | None:
    """The physical address `virtual` (a lower-half address) maps to under `ttbr0`, or
    None if it is not mapped. Reads one 8-byte descriptor per level."""
    if virtual >> 48:
        return None
    table = ttbr0 & _A64_ROOT_MASK & _A64_ADDRESS_MASK
    for level, shift in enumerate(_LEAF_SHIFTS):
        index = (virtual >> shift) & (_ENTRIES - 1)
        entry = _read_entry(read_physical, table + 8 * index)
        if not entry & _A64_VALID:
            return None
        if level < 3 and entry & _A64_TABLE:
            table = entry & _A64_ADDRESS_MASK
            continue
        if level == 0 or (level == 3 and not entry & _A64_TABLE):
            return None
        return (entry & _A64_ADDRESS_MASK & ~((1 << shift) - 1)) | (virtual & ((1 << shift) - 1))
    raise AssertionError("unreachable: the last level is always a leaf")


def walk_address_space(
    arch: Arch, root: int, read_physical: PhysicalReader, *, user_only: bool = True
) -> list[PageMapping]:
    """`walk` (x86-64, `root` a CR3) or `walk_arm64` (aarch64, `root` a TTBR0_EL1)."""
    if arch is Arch.AARCH64:
        return walk_arm64(root, read_physical, user_only=user_only)
    return walk(root, read_physical, user_only=user_only)


def translate_address(
    arch: Arch, root: int, virtual: int, read_physical: PhysicalReader
) -> int | None:
    """`translate` (x86-64) or `translate_arm64` (aarch64)."""
    if arch is Arch.AARCH64:
        return translate_arm64(root, virtual, read_physical)
    return translate(root, virtual, read_physical)


def _check_arm64_translation(tcr: int) -> None:
    t0sz = tcr & _TCR_T0SZ
    granule = (tcr >> _TCR_TG0_SHIFT) & 3
    if tcr & _TCR_EPD0:
        raise MachineError("TTBR0_EL1 walks are disabled (TCR_EL1.EPD0): no user address space")
    if granule != 0:
        size = {1: "64 KiB", 2: "16 KiB"}.get(granule, "reserved")
        raise MachineError(f"the guest uses the {size} translation granule; only 4 KiB is walked")
    if t0sz != 16:
        raise MachineError(
            f"the guest's user addresses are {64 - t0sz}-bit (TCR_EL1.T0SZ={t0sz}); "
            "only 48-bit addresses are walked"
        )


def process_pages(
    gdb: GdbStub, *, user_only: bool = True, arch: Arch = DEFAULT_ARCH
) -> list[PageMapping]:
    """Walk the address space the halted vCPU is in (its CR3, or TTBR0_EL1 on aarch64),
    reading the tables through the gdbstub's physical-memory mode.

    Raises MachineError if the vCPU is not in 4-level long-mode paging (x86-64), or uses
    a granule or address size other than 4 KiB and 48 bits (aarch64).
    """

    def read(address: int, size: int) -> bytes:
        return gdb.read_memory(address, size, physical=True)

    if arch is Arch.AARCH64:
        state = gdb.read_registers(["TTBR0_EL1", "TCR_EL1"])
        _check_arm64_translation(state["TCR_EL1"])
        return walk_arm64(state["TTBR0_EL1"], read, user_only=user_only)
    registers = gdb.read_registers(["cr0", "cr3", "cr4", "efer"])
    cr0, cr3, cr4, efer = (registers[name] for name in ("cr0", "cr3", "cr4", "efer"))
    if not (cr0 & _CR0_PG and cr4 & _CR4_PAE and efer & _EFER_LMA):
        raise MachineError(
            f"the vCPU is not in long-mode paging (cr0={cr0:#x}, cr4={cr4:#x}, efer={efer:#x})"
        )
    if cr4 & _CR4_LA57:
        raise MachineError(f"the vCPU uses 5-level paging (cr4={cr4:#x}), which is not supported")
    return walk(cr3, read, user_only=user_only)


LEVEL_NAMES = ("PML4", "PDPT", "PD", "PT")
"""The tables of the 4 levels, root first."""


@dataclass(frozen=True)
class TableEntry:
    """One present entry of a page table: its guest-physical `address` (8 bytes), its
    `level` (0 PML4 .. 3 PT), the first virtual address it maps (canonical), its value, and
    whether it is a leaf (maps a page) or points to a table below."""

    address: int
    level: int
    virtual: int
    value: int
    leaf: bool

    @property
    def table(self) -> str:
        """The name of its table (PML4, PDPT, PD, PT)."""
        return LEVEL_NAMES[self.level]

    @property
    def upper_half(self) -> bool:
        """Whether it maps the upper (kernel) half of the address space."""
        return bool(self.virtual & _CANONICAL_BIT)


def table_entries(
    cr3: int, read_physical: PhysicalReader, *, lower: bool = True, upper: bool = True
) -> list[TableEntry]:
    """Every present entry of the 4-level page tables rooted at `cr3`, at every level, of
    the lower half of the address space (PML4 entries 0-255: a process's own) and of the
    upper half (256-511: the kernel's, shared by every process), as asked; in walk order.
    Each table page is read once, whole. Errors of `read_physical` propagate."""
    found: list[TableEntry] = []
    seen: set[int] = set()

    def descend(address: int, level: int, base: int, first: int, stop: int) -> None:
        if address in seen:
            return  # a table linked twice: its entries are counted once
        seen.add(address)
        data = read_physical(address, _TABLE_BYTES)
        if len(data) != _TABLE_BYTES:
            raise MachineError(
                f"page table read at {address:#x} returned {len(data)} bytes, not {_TABLE_BYTES}"
            )
        shift = _LEAF_SHIFTS[level]
        for index, entry in enumerate(_TABLE.unpack(data)):
            if not first <= index < stop or not entry & _PRESENT:
                continue
            virtual = base | (index << shift)
            leaf = level == 3 or (level in (1, 2) and bool(entry & _LARGE))
            found.append(TableEntry(address + 8 * index, level, _canonical(virtual), entry, leaf))
            if not leaf:
                descend(entry & _ADDRESS_MASK, level + 1, virtual, 0, _ENTRIES)

    first = 0 if lower else _LOWER_HALF_ENTRIES
    stop = _ENTRIES if upper else _LOWER_HALF_ENTRIES
    if first < stop:
        descend(cr3 & _ADDRESS_MASK, 0, 0, first, stop)
    return found


class _Tables:
    """Page-table pages by physical address, each read once, whole (4 KiB), as its 512
    64-bit entries; MachineError on a short read. `len()` is the pages read."""

    def __init__(self, read_physical: PhysicalReader) -> None:
        self._read = read_physical
        self._pages: dict[int, tuple[int, ...]] = {}

    def __call__(self, address: int) -> tuple[int, ...]:
        entries = self._pages.get(address)
        if entries is None:
            data = self._read(address, _TABLE_BYTES)
            if len(data) != _TABLE_BYTES:
                raise MachineError(
                    f"page table read at {address:#x} returned {len(data)} bytes, "
                    f"not {_TABLE_BYTES}"
                )
            entries = _TABLE.unpack(data)
            self._pages[address] = entries
        return entries

    def __len__(self) -> int:
        return len(self._pages)


def _read_entry(read_physical: PhysicalReader, address: int) -> int:
    """The 8-byte little-endian page-table entry at physical `address`; MachineError on
    a short read."""
    data = read_physical(address, 8)
    if len(data) != 8:
        raise MachineError(f"page table read at {address:#x} returned {len(data)} bytes, not 8")
    return int.from_bytes(data, "little")
