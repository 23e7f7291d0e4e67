"""Guest RAM mapped copy-on-write from a template file, and put back to it in milliseconds.

A clone of a template maps the template's RAM file privately (`memory-backend-file` with
`share=off`): a page the guest never writes stays the page-cache page of the file, shared
by every clone; the first write to a page gives the clone its own anonymous copy. So the
pages a clone has written since it started are exactly those whose /proc/PID/pagemap
entry is present and no longer a file page (bit 61 clear), or swapped out (bit 62). This
host kernel has no soft-dirty tracking to use instead (CONFIG_MEM_SOFT_DIRTY is off).

Putting RAM back is then: read the pagemap of the mapping (8 bytes a page), and copy
every written page back from the template through /proc/PID/mem. The copy keeps the page
anonymous, so the set of written pages only grows over a clone's life: `written_bytes`
says how large it is, and a caller may start a fresh clone when it gets large.

Writes through /proc/PID/mem bypass QEMU's detection of self-modifying code: the caller
must make QEMU drop its translated code afterwards (`loadvm` does: its post-load flushes
every translation block).
"""

from __future__ import annotations

import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

from vmfault.errors import MachineError

__all__ = ["PAGE_BYTES", "CowRam", "RamMapping", "find_mapping", "written_runs"]

PAGE_BYTES = mmap.PAGESIZE
_ENTRY_BYTES = 8
# The top byte of a pagemap entry: bit 63 present, 62 swapped, 61 file page or shared anon.
_PRESENT, _SWAPPED, _FILE = 0x80, 0x40, 0x20
_WRITTEN = bytes(
    1 if (top & _SWAPPED) or (top & (_PRESENT | _FILE)) == _PRESENT else 0 for top in range(256)
)
_RUNS = re.compile(b"\x01+")
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class RamMapping:
    """Where a file is mapped in a process: its start address, length and file offset."""

    start: int
    end: int
    offset: int

    @property
    def size(self) -> int:
        """Bytes mapped."""
        return self.end - self.start


def find_mapping(maps_text: str, path: Path) -> RamMapping:
    """The mapping of `path` in the text of /proc/PID/maps (the largest, if several);
    MachineError if there is none."""
    target = str(path)
    found: list[RamMapping] = []
    for line in maps_text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 6 or parts[5] != target:
            continue
        low, high = (int(x, 16) for x in parts[0].split("-"))
        found.append(RamMapping(low, high, int(parts[2], 16)))
    if not found:
        raise MachineError(f"guest RAM file {path} is not mapped by QEMU")
    return max(found, key=lambda m: m.size)


def written_runs(pagemap: bytes) -> list[tuple[int, int]]:
    """Runs of pages written since the mapping was made, as (first page, page count),
    from the raw pagemap entries of the mapping (8 bytes a page, little-endian)."""
    flags = pagemap[_ENTRY_BYTES - 1 :: _ENTRY_BYTES].translate(_WRITTEN)
    return [(m.start(), m.end() - m.start()) for m in _RUNS.finditer(flags)]


class CowRam:
    """The copy-on-write RAM of one QEMU process, put back to its template file on demand.

    Needs the right to ptrace the process (QEMU is vmfault's own child) for /proc/PID/mem.
    `close()` releases the file descriptors; the process itself is not touched.
    """

    def __init__(self, pid: int, template: Path) -> None:
        self.pid = pid
        self.template = template
        maps = Path(f"/proc/{pid}/maps").read_text()
        self.mapping = find_mapping(maps, template)
        self._pagemap = os.open(f"/proc/{pid}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        self._mem = os.open(f"/proc/{pid}/mem", os.O_RDWR | os.O_CLOEXEC)
        with template.open("rb") as source:
            self._source = mmap.mmap(source.fileno(), 0, access=mmap.ACCESS_READ)
        self.written_bytes = 0
        """Bytes of RAM the process has written since it started (after the last reset)."""

    def written(self) -> list[tuple[int, int]]:
        """Runs of pages written so far, as (first page, page count) of the mapping."""
        pages = self.mapping.size // PAGE_BYTES
        offset = self.mapping.start // PAGE_BYTES * _ENTRY_BYTES
        entries = os.pread(self._pagemap, pages * _ENTRY_BYTES, offset)
        if len(entries) != pages * _ENTRY_BYTES:
            raise MachineError(f"short read of QEMU's page map ({len(entries)} bytes)")
        return written_runs(entries)

    def reset(self) -> int:
        """Copy every page the process wrote back from the template (the process must not
        run meanwhile); returns the bytes copied."""
        copied = 0
        source = memoryview(self._source)
        base = self.mapping.start
        file_offset = self.mapping.offset
        for first, count in self.written():
            start = first * PAGE_BYTES
            size = count * PAGE_BYTES
            chunk = source[file_offset + start : file_offset + start + size]
            done = os.pwrite(self._mem, chunk, base + start)
            if done != size:
                raise MachineError(f"short write to QEMU's memory ({done} of {size} bytes)")
            copied += size
        self.written_bytes = copied
        return copied

    def read(self, offset: int, size: int) -> bytes:
        """`size` bytes of the process's RAM from file `offset` of the mapping, as the
        guest sees them (its RAM is this mapping)."""
        data = os.pread(self._mem, size, self.mapping.start + offset - self.mapping.offset)
        if len(data) != size:
            raise MachineError(f"short read of QEMU's memory ({len(data)} of {size} bytes)")
        return data

    def differing_pages(self, offset: int, data: bytes | mmap.mmap, *, most: int = 8) -> list[int]:
        """Offsets into `data` of the pages (at most `most`) that differ from the
        template's bytes at file `offset`; empty if all are equal. Compared a chunk at a
        time as bytes (a C memcmp; comparing memoryviews goes element by element)."""
        found: list[int] = []
        size = len(data)
        for chunk in range(0, size, _CHUNK_BYTES):
            end = min(size, chunk + _CHUNK_BYTES)
            ours = self._source[offset + chunk : offset + end]
            if ours == data[chunk:end]:
                continue
            for start in range(chunk, end, PAGE_BYTES):
                stop = min(end, start + PAGE_BYTES)
                if ours[start - chunk : stop - chunk] != data[start:stop]:
                    found.append(start)
                    if len(found) == most:
                        return found
        return found

    def close(self) -> None:
        """Release the file descriptors and the template's mapping (safe to repeat)."""
        for name in ("_pagemap", "_mem"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)
        if not self._source.closed:
            self._source.close()
