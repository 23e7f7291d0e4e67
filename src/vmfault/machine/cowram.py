"""Guest RAM mapped copy-on-write from a template file, and put back to it in milliseconds.

A clone of a template maps the template's RAM file privately (`memory-backend-file` with
`share=off`): a page the guest never writes stays the page-cache page of the file, shared
by every clone; the first write to a page gives the clone its own anonymous copy. So the
pages a clone has written since it started are exactly those whose /proc/PID/pagemap
entry is present and no longer a file page (bit 61 clear), or swapped out (bit 62). This
host kernel has no soft-dirty tracking to use instead (CONFIG_MEM_SOFT_DIRTY is off).

Putting RAM back is then: find the written pages, and copy each back from the template
through /proc/PID/mem. Kernels from 6.7 answer the first part with the PAGEMAP_SCAN ioctl,
which returns the runs of anonymous pages of the mapping directly (measured on the 128 MiB
guest, every page mapped: ~1 ms, against ~2.5 ms to read and parse the mapping's 256 KiB
of pagemap entries, which older kernels fall back to). The copy keeps the page
anonymous, so the set of written pages only grows over a clone's life: `written_bytes`
says how large it is, and a caller may start a fresh clone when it gets large.

Writes through /proc/PID/mem bypass QEMU's detection of self-modifying code: the caller
must make QEMU drop its translated code afterwards (`loadvm` does: its post-load flushes
every translation block).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
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

# PAGEMAP_SCAN (linux/fs.h, kernel 6.7+): page categories, its argument and result types.
_PAGE_IS_FILE, _PAGE_IS_PRESENT, _PAGE_IS_SWAPPED = 1 << 2, 1 << 3, 1 << 4
_SCAN_REGIONS = 512
"""Regions one scan call returns at most; a mapping with more is scanned on from where
the call stopped."""


class _ScanArg(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "size", "flags", "start", "end", "walk_end", "vec", "vec_len", "max_pages",
            "category_inverted", "category_mask", "category_anyof_mask", "return_mask",
        )
    ]  # fmt: skip


class _Region(ctypes.Structure):
    _fields_ = [
        ("start", ctypes.c_uint64),
        ("end", ctypes.c_uint64),
        ("categories", ctypes.c_uint64),
    ]


_PAGEMAP_SCAN = (3 << 30) | (ctypes.sizeof(_ScanArg) << 16) | (ord("f") << 8) | 16
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
        self._regions = (_Region * _SCAN_REGIONS)()
        self.scans = True
        """Whether the kernel answers PAGEMAP_SCAN (set False at its first refusal)."""

    def written(self) -> list[tuple[int, int]]:
        """Runs of pages written so far, as (first page, page count) of the mapping."""
        if self.scans:
            try:
                return self._scan()
            except OSError as error:
                if error.errno not in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                    raise MachineError(f"cannot scan QEMU's page map: {error}") from error
                self.scans = False  # a kernel before 6.7: read the entries instead
        return self._read_pagemap()

    def _scan(self) -> list[tuple[int, int]]:
        """`written()` by the PAGEMAP_SCAN ioctl: anonymous (not file) pages, present or
        swapped out."""
        start, end = self.mapping.start, self.mapping.end
        arg = _ScanArg(
            size=ctypes.sizeof(_ScanArg), start=start, end=end,
            vec=ctypes.addressof(self._regions), vec_len=_SCAN_REGIONS,
            category_inverted=_PAGE_IS_FILE, category_mask=_PAGE_IS_FILE,
            category_anyof_mask=_PAGE_IS_PRESENT | _PAGE_IS_SWAPPED,
        )  # fmt: skip
        runs: list[tuple[int, int]] = []
        while True:
            found = fcntl.ioctl(self._pagemap, _PAGEMAP_SCAN, arg)
            for region in self._regions[:found]:
                first = (region.start - start) // PAGE_BYTES
                count = (region.end - region.start) // PAGE_BYTES
                if runs and runs[-1][0] + runs[-1][1] == first:  # split by a full vector
                    first, count = runs[-1][0], runs.pop()[1] + count
                runs.append((first, count))
            if arg.walk_end >= end or found == 0:
                return runs
            arg.start = arg.walk_end

    def _read_pagemap(self) -> list[tuple[int, int]]:
        """`written()` from the mapping's pagemap entries (any kernel)."""
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
