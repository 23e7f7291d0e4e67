"""Copy-on-write RAM: written pages found from the page map, and copied back from the template.

The pure parts are tested on crafted page-map bytes; `CowRam` itself on a real child process
that maps a template file privately, as a clone's QEMU does (no QEMU needed).
"""

from __future__ import annotations

import mmap
import os
import signal
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmfault.errors import MachineError
from vmfault.machine.cowram import PAGE_BYTES, CowRam, find_mapping, written_runs

PRESENT = 1 << 63
SWAPPED = 1 << 62
FILE = 1 << 61


def pagemap(*entries: int) -> bytes:
    return b"".join(struct.pack("<Q", entry) for entry in entries)


def test_written_pages_are_present_and_no_longer_file_pages() -> None:
    entries = pagemap(
        PRESENT | FILE,  # read only: still the file's page
        PRESENT,  # written: anonymous now
        PRESENT | 123,  # written (a frame number does not matter)
        0,  # never touched
        SWAPPED,  # written, then swapped out
        PRESENT | FILE,
        PRESENT,
    )
    assert written_runs(entries) == [(1, 2), (4, 1), (6, 1)]


def test_nothing_written_is_no_run() -> None:
    assert written_runs(pagemap(PRESENT | FILE, 0, 0, FILE)) == []
    assert written_runs(b"") == []


def test_the_mapping_of_the_ram_file_is_found_in_the_maps_text() -> None:
    maps = "\n".join(
        [
            "55d0c0000000-55d0c0100000 r-xp 00000000 fd:01 1234 /usr/bin/qemu-system-x86_64",
            "7f0000000000-7f0008000000 rw-p 00000000 00:1a 99 /dev/shm/t/ram",
            "7f0010000000-7f0010001000 rw-p 00002000 00:1a 99 /dev/shm/t/ram",
            "7f0020000000-7f0020001000 rw-p 00000000 00:00 0 ",
        ]
    )
    found = find_mapping(maps, Path("/dev/shm/t/ram"))
    assert (found.start, found.end, found.offset) == (0x7F0000000000, 0x7F0008000000, 0)
    assert found.size == 128 << 20
    with pytest.raises(MachineError, match="not mapped"):
        find_mapping(maps, Path("/dev/shm/other"))


@pytest.fixture
def clone(tmp_path: Path) -> Iterator[tuple[int, Path, int]]:
    """A child process that maps a 64-page template privately, writes pages 3, 4 and 40,
    reads page 10, and waits: (its pid, the template, the pipe it reports on)."""
    template = tmp_path / "ram"
    template.write_bytes(b"".join(bytes([n]) * PAGE_BYTES for n in range(64)))
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a stand-in for QEMU's RAM mapping
        try:
            with template.open("rb") as source:
                ram = mmap.mmap(source.fileno(), 0, flags=mmap.MAP_PRIVATE,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            for page in (3, 4, 40):
                ram[page * PAGE_BYTES : page * PAGE_BYTES + 5] = b"dirty"
            _ = ram[10 * PAGE_BYTES]
            os.write(ready_w, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"1"
    yield pid, template, ready_r
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(ready_r)


def test_the_page_map_scan_and_the_page_map_entries_agree(clone: tuple[int, Path, int]) -> None:
    # On a kernel with PAGEMAP_SCAN (6.7+) written() scans; on any kernel the entries can
    # be read: both must find the same runs (on an older kernel this compares the
    # fallback with itself, and `scans` turns False at the first call).
    pid, template, _ = clone
    ram = CowRam(pid, template)
    try:
        assert ram.written() == ram._read_pagemap() == [(3, 2), (40, 1)]
        ram.scans = False
        assert ram.written() == [(3, 2), (40, 1)]
    finally:
        ram.close()


def read_child(pid: int, address: int, size: int) -> bytes:
    with Path(f"/proc/{pid}/mem").open("rb") as mem:
        mem.seek(address)
        return mem.read(size)


def test_a_clone_s_written_pages_are_found_and_put_back(clone: tuple[int, Path, int]) -> None:
    pid, template, _ = clone
    ram = CowRam(pid, template)
    try:
        assert ram.written() == [(3, 2), (40, 1)]
        base = ram.mapping.start
        assert read_child(pid, base + 3 * PAGE_BYTES, 5) == b"dirty"
        assert ram.read(3 * PAGE_BYTES, 6) == b"dirty" + bytes([3])
        assert ram.reset() == 3 * PAGE_BYTES
        assert ram.written_bytes == 3 * PAGE_BYTES
        whole = read_child(pid, base, 64 * PAGE_BYTES)
        assert whole == template.read_bytes()
        assert ram.read(0, 64 * PAGE_BYTES) == whole
        assert ram.read(40 * PAGE_BYTES, 5) == bytes([40]) * 5
        assert ram.differing_pages(0, whole) == []
        changed = bytearray(whole)
        changed[7 * PAGE_BYTES] ^= 1
        changed[9 * PAGE_BYTES + 100] ^= 1
        assert ram.differing_pages(0, bytes(changed)) == [7 * PAGE_BYTES, 9 * PAGE_BYTES]
        # The pages copied back stay the clone's own: they are copied again each time.
        assert ram.written() == [(3, 2), (40, 1)]
    finally:
        ram.close()
        ram.close()


def test_a_scan_with_more_runs_than_one_call_returns_finds_them_all(tmp_path: Path) -> None:
    # 1,500 runs of one page: the scan goes on from where each call stopped (512 a call).
    template = tmp_path / "ram"
    template.write_bytes(bytes(3000 * PAGE_BYTES))
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            with template.open("rb") as source:
                ram = mmap.mmap(source.fileno(), 0, flags=mmap.MAP_PRIVATE,
                                prot=mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
            for page in range(0, 3000, 2):
                ram[page * PAGE_BYTES] = 1
            os.write(ready_w, b"1")
            signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    try:
        assert os.read(ready_r, 1) == b"1"
        cow = CowRam(pid, template)
        try:
            assert cow.written() == cow._read_pagemap() == [(p, 1) for p in range(0, 3000, 2)]
        finally:
            cow.close()
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
