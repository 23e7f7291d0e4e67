"""Page-table walks of real guest processes: a workload halted at its `main`, and the agent."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from vmfault.guest.image import GuestImage
from vmfault.machine.pagetable import PAGE_SIZE_4K, PageMapping, process_pages, translate
from vmfault.session import GuestSession

pytestmark = pytest.mark.vm

WORKLOAD = "checksum"
WORKLOAD_BASE = 0x1000_0000
AGENT_BASE = 0x3000_0000
PROGRAM_SPAN = 0x1000_0000
STOP_TIMEOUT_S = 30.0


def elf_symbol(path: Path, name: str) -> int:
    with path.open("rb") as stream:
        symtab = ELFFile(stream).get_section_by_name(".symtab")
        assert isinstance(symtab, SymbolTableSection), f"{path} has no symbol table"
        symbols = symtab.get_symbol_by_name(name)
        assert symbols, f"{path} has no symbol {name}"
        return int(symbols[0]["st_value"])


def containing(pages: list[PageMapping], virtual: int) -> PageMapping:
    found = [page for page in pages if page.contains(virtual)]
    assert len(found) == 1, f"{virtual:#x} is in {len(found)} mappings"
    return found[0]


def program_frames(pages: list[PageMapping], base: int) -> set[int]:
    return {
        page.physical + offset
        for page in pages
        if base <= page.virtual < base + PROGRAM_SPAN and page.executable
        for offset in range(0, page.size, PAGE_SIZE_4K)
    }


@pytest.fixture(scope="module")
def session(image: GuestImage) -> Iterator[GuestSession]:
    """The workload's session, halted at the start hook (the agent's context)."""
    with GuestSession(image, [WORKLOAD]) as guest:
        guest.start()
        yield guest


def test_workload_and_agent_address_spaces(image: GuestImage, session: GuestSession) -> None:
    vm = session.machine
    gdb = vm.gdb

    started = time.perf_counter()
    agent_pages = process_pages(gdb)
    agent_walk_s = time.perf_counter() - started
    agent_cr3 = gdb.read_register("cr3")
    hook = containing(agent_pages, session.hooks.started)
    assert AGENT_BASE <= hook.virtual < AGENT_BASE + PROGRAM_SPAN
    assert hook.user and hook.executable and not hook.writable

    main = elf_symbol(image.workloads[WORKLOAD].host_binary, "main")
    gdb.set_breakpoint(main)
    try:
        vm.cont()
        assert vm.wait_stop(timeout_s=STOP_TIMEOUT_S) is not None, vm.console.transcript()
    finally:
        gdb.remove_breakpoint(main)
    registers = gdb.read_registers(["rip", "rsp", "cr3", "cs"])
    rip, rsp, cr3 = registers["rip"], registers["rsp"], registers["cr3"]
    assert rip == main
    assert registers["cs"] & 3 == 3, "main runs in user mode"
    assert cr3 != agent_cr3

    started = time.perf_counter()
    pages = process_pages(gdb)
    walk_s = time.perf_counter() - started
    started = time.perf_counter()
    everything = process_pages(gdb, user_only=False)
    full_walk_s = time.perf_counter() - started

    first = containing(pages, WORKLOAD_BASE)
    assert first.user and not first.writable
    text = containing(pages, rip)
    assert WORKLOAD_BASE <= text.virtual < WORKLOAD_BASE + PROGRAM_SPAN
    assert text.user and text.executable and not text.writable

    def read(address: int, size: int) -> bytes:
        return gdb.read_memory(address, size, physical=True)

    physical = translate(cr3, rip, read)
    assert physical == text.physical_of(rip)
    assert gdb.read_memory(physical, 64, physical=True) == gdb.read_memory(rip, 64)

    stack = containing(pages, rsp)
    assert stack.user and stack.writable and not stack.executable
    stack_physical = translate(cr3, rsp, read)
    assert stack_physical is not None
    assert gdb.read_memory(stack_physical, 8, physical=True) == gdb.read_memory(rsp, 8)

    assert all(page.user for page in pages)
    assert all(page.virtual < 1 << 47 for page in pages)
    assert {page.virtual for page in pages} < {page.virtual for page in everything}
    assert any(not page.user and page.virtual >= 1 << 63 for page in everything)

    workload_frames = program_frames(pages, WORKLOAD_BASE)
    agent_frames = program_frames(agent_pages, AGENT_BASE)
    assert workload_frames and agent_frames
    assert not workload_frames & agent_frames

    sizes = sorted({page.size for page in everything})
    print(
        f"\nagent: {len(agent_pages)} user pages in {agent_walk_s * 1e3:.1f} ms; "
        f"{WORKLOAD}: {len(pages)} user pages in {walk_s * 1e3:.1f} ms, "
        f"{len(everything)} pages (sizes {sizes}) with the kernel's in {full_walk_s * 1e3:.1f} ms"
    )
