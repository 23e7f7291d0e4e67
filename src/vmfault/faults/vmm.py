"""Where a VMM fault goes in the QEMU process (pure, no I/O): which of its mappings count as
its heap or its data, never guest RAM, and which thread register.

From `/proc/PID/maps` (and the resident sizes of `/proc/PID/smaps`):

- `vmm:heap` is `[heap]` and the anonymous writable mappings (glib's and QEMU's
  allocations, thread stacks, TCG's translation buffer);
- `vmm:data` is the writable mappings of the QEMU binary and of its libraries (`.data`,
  `.got`, `.bss`'s file-backed page) and the anonymous mapping that directly follows one
  of them (the rest of its `.bss`);
- guest RAM and firmware (mappings that hold a host address of guest memory, or the file
  guest RAM lives in), the main stack and the kernel's `[vvar]`/`[vdso]` are never targets.

A word is drawn weighted by residency: a mapping in proportion to its resident bytes,
then one of its resident pages, then an aligned 64-bit word in it. Pages the process
never touched (most of a reserved translation buffer) hold nothing QEMU uses.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = [
    "PAGE_BYTES",
    "THREAD_REGISTERS",
    "Mapping",
    "choose_mapping",
    "parse_maps",
    "parse_smaps_rss",
    "present_pages",
    "vmm_mappings",
]

PAGE_BYTES = 4096
THREAD_REGISTERS: tuple[str, ...] = (
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags",
)  # fmt: skip
"""A QEMU thread's registers a `vmm:registers` fault flips (of `struct user_regs_struct`,
each 64 bits wide)."""
_MAPS_LINE = re.compile(
    r"^([0-9a-f]+)-([0-9a-f]+) ([rwxsp-]{4}) ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+)\s*(.*)$"
)
_NEVER = ("[stack]", "[vvar]", "[vdso]", "[vsyscall]")


@dataclass(frozen=True)
class Mapping:
    """One line of `/proc/PID/maps`: host addresses [start, end), permissions, the file
    offset, the path (empty: anonymous; `[heap]` and the like as the kernel names them)."""

    start: int
    end: int
    perms: str
    offset: int
    inode: int
    path: str
    rss_bytes: int = 0
    """Resident bytes (from smaps; 0 if unknown)."""

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self.end - self.start

    @property
    def writable(self) -> bool:
        """Whether the process may write it."""
        return self.perms[1] == "w"

    @property
    def anonymous(self) -> bool:
        """No file behind it (and no kernel name)."""
        return not self.path

    @property
    def label(self) -> str:
        """As records name it: `[heap]`, `anon@0x7f...`, or the file's name."""
        if self.anonymous:
            return f"anon@{self.start:#x}"
        return self.path.rsplit("/", 1)[-1]

    def contains(self, address: int) -> bool:
        """Whether `address` lies in the mapping."""
        return self.start <= address < self.end


def parse_maps(text: str) -> list[Mapping]:
    """The mappings of a `/proc/PID/maps` text, in address order."""
    mappings = []
    for line in text.splitlines():
        found = _MAPS_LINE.match(line.strip())
        if found is None:
            continue
        start, end, perms, offset, _, inode, path = found.groups()
        mappings.append(
            Mapping(int(start, 16), int(end, 16), perms, int(offset, 16), int(inode), path.strip())
        )
    return mappings


def parse_smaps_rss(text: str) -> dict[int, int]:
    """Resident bytes by mapping start, from a `/proc/PID/smaps` text."""
    rss: dict[int, int] = {}
    current: int | None = None
    for line in text.splitlines():
        found = _MAPS_LINE.match(line.strip())
        if found is not None:
            current = int(found.group(1), 16)
            continue
        if current is not None and line.startswith("Rss:"):
            rss[current] = int(line.split()[1]) * 1024
    return rss


def _is_elf_path(path: str) -> bool:
    return path.startswith("/") and not path.startswith(("/dev/", "/memfd:"))


def vmm_mappings(
    mappings: Sequence[Mapping],
    region: str,
    *,
    guest_addresses: Collection[int] = (),
    guest_files: Collection[str] = (),
) -> list[Mapping]:
    """The mappings of `region` (`heap` or `data`): writable, never the main stack or the
    kernel's pages, never a mapping that holds one of `guest_addresses` (host addresses of
    guest RAM and firmware) or maps one of `guest_files` (the file guest RAM lives in)."""
    if region not in ("heap", "data"):
        raise ValueError(f"unknown VMM region {region!r}")
    chosen = []
    previous: Mapping | None = None
    for mapping in mappings:
        after, previous = previous, mapping
        if not mapping.writable or mapping.path in _NEVER:
            continue
        if mapping.path in guest_files or mapping.path.startswith("/memfd:"):
            continue
        if any(mapping.contains(address) for address in guest_addresses):
            continue
        follows_file = (
            after is not None
            and after.end == mapping.start
            and _is_elf_path(after.path)
            and after.writable
        )
        if region == "data":
            if _is_elf_path(mapping.path) or (mapping.anonymous and follows_file):
                chosen.append(mapping)
        elif mapping.path == "[heap]" or (mapping.anonymous and not follows_file):
            chosen.append(mapping)
    return chosen


def choose_mapping(mappings: Sequence[Mapping], rng: random.Random) -> Mapping:
    """A mapping drawn in proportion to its resident bytes (its size if none is known to
    be resident); ValueError if there is none."""
    if not mappings:
        raise ValueError("no mapping to choose from")
    weights = [m.rss_bytes for m in mappings]
    if not any(weights):
        weights = [m.size for m in mappings]
    return rng.choices(list(mappings), weights=weights)[0]


def present_pages(pagemap: bytes, start: int) -> list[int]:
    """The host addresses of the pages `pagemap` (the mapping's entries of
    `/proc/PID/pagemap`, 8 bytes per page from `start`) says are present or swapped."""
    pages = []
    for k in range(len(pagemap) // 8):
        entry = int.from_bytes(pagemap[8 * k : 8 * k + 8], "little")
        if entry & (0b11 << 62):  # bit 63 present, bit 62 swapped
            pages.append(start + k * PAGE_BYTES)
    return pages
