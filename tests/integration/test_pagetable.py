"""Page-table walks of real guests: a workload halted at its `main`, the agent, and the
kernel's own mappings in an idle guest."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from vmfault.arch import Arch
from vmfault.guest.image import GuestImage
from vmfault.guest.symbols import KERNEL_MAP_BASE, KernelSymbols
from vmfault.machine import Machine
from vmfault.machine.pagetable import (
    PAGE_SIZE_4K,
    PageMapping,
    process_pages,
    translate,
    translate_address,
)
from vmfault.session import GuestSession

pytestmark = pytest.mark.vm

WORKLOAD = "checksum"
WORKLOAD_BASE = 0x1000_0000
AGENT_BASE = 0x3000_0000
PROGRAM_SPAN = 0x1000_0000
STOP_TIMEOUT_S = 30.0
DIRECT_MAP = 0xFFFF_8880_0000_0000
"""page_offset_base without KASLR: all of physical memory is mapped from here."""


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


def span(pages: list[PageMapping], start: int, end: int) -> list[PageMapping]:
    """The pages that hold [start, end), asserting that they hold all of it, without gaps."""
    found = [page for page in pages if page.virtual < end and page.virtual_end > start]
    assert found, f"nothing mapped in [{start:#x}, {end:#x})"
    assert found[0].virtual <= start and found[-1].virtual_end >= end
    gaps = [
        (a.virtual_end, b.virtual)
        for a, b in itertools.pairwise(found)
        if a.virtual_end != b.virtual
    ]
    assert not gaps, f"holes in [{start:#x}, {end:#x}): {gaps[:4]}"
    return found


def program_frames(pages: list[PageMapping], base: int) -> set[int]:
    return {
        page.physical + offset
        for page in pages
        if base <= page.virtual < base + PROGRAM_SPAN and page.executable
        for offset in range(0, page.size, PAGE_SIZE_4K)
    }


@pytest.fixture(scope="module")
def session(arch_image: GuestImage) -> Iterator[GuestSession]:
    """The workload's session, halted at the start hook (the agent's context), on each
    architecture."""
    with GuestSession(arch_image, [WORKLOAD]) as guest:
        guest.start()
        yield guest


def test_workload_and_agent_address_spaces(session: GuestSession) -> None:
    image = session.image
    arch = image.arch
    names = arch.platform  # rip rsp cr3 cs; pc sp TTBR0_EL1 cpsr
    vm = session.machine
    gdb = vm.gdb

    started = time.perf_counter()
    agent_pages = process_pages(gdb, arch=arch)
    agent_walk_s = time.perf_counter() - started
    agent_cr3 = gdb.read_register(names.page_table_root)
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
    registers = gdb.read_registers(
        [names.pc, names.stack_pointer, names.page_table_root, names.privilege]
    )
    rip, rsp = registers[names.pc], registers[names.stack_pointer]
    cr3 = registers[names.page_table_root]
    assert rip == main
    assert names.is_user(registers[names.privilege]), "main runs in user mode"
    assert cr3 != agent_cr3

    started = time.perf_counter()
    pages = process_pages(gdb, arch=arch)
    walk_s = time.perf_counter() - started
    started = time.perf_counter()
    everything = process_pages(gdb, user_only=False, arch=arch)
    full_walk_s = time.perf_counter() - started

    first = containing(pages, WORKLOAD_BASE)
    assert first.user and not first.writable
    text = containing(pages, rip)
    assert WORKLOAD_BASE <= text.virtual < WORKLOAD_BASE + PROGRAM_SPAN
    assert text.user and text.executable and not text.writable

    def read(address: int, size: int) -> bytes:
        return gdb.read_memory(address, size, physical=True)

    physical = translate_address(arch, cr3, rip, read)
    assert physical == text.physical_of(rip)
    assert gdb.read_memory(physical, 64, physical=True) == gdb.read_memory(rip, 64)

    stack = containing(pages, rsp)
    assert stack.user and stack.writable and not stack.executable
    stack_physical = translate_address(arch, cr3, rsp, read)
    assert stack_physical is not None
    assert gdb.read_memory(stack_physical, 8, physical=True) == gdb.read_memory(rsp, 8)

    assert all(page.user for page in pages)
    assert all(page.virtual < 1 << 48 for page in pages)
    if arch is Arch.X86_64:  # one root maps both halves; aarch64's kernel has TTBR1 of its own
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


def test_idle_guest_maps_the_kernel_and_all_ram(
    machine: Machine, kernel_symbols: KernelSymbols
) -> None:
    machine.halt()
    gdb = machine.gdb
    assert gdb.read_register("cs") & 3 == 0, "the idle guest halts in the kernel"
    cr3 = gdb.read_register("cr3")
    pages = process_pages(gdb, user_only=False)

    text_start, text_end = (kernel_symbols.address(n) for n in ("_stext", "_etext"))
    for page in span(pages, text_start, text_end):
        assert page.executable and not page.writable and not page.user, page
        assert page.physical == page.virtual - KERNEL_MAP_BASE, page
    data_start, data_end = (kernel_symbols.address(n) for n in ("_sdata", "_edata"))
    for page in span(pages, data_start, data_end):
        assert page.writable and not page.executable and not page.user, page

    ram_end = machine.config.ram_mib << 20
    assert max(region.end for region in machine.memory_map().ram()) == ram_end
    direct = span(pages, DIRECT_MAP, DIRECT_MAP + ram_end)
    assert direct[-1].virtual_end == DIRECT_MAP + ram_end, "the direct map ends with RAM"
    assert all(p.physical == p.virtual - DIRECT_MAP and not p.user for p in direct)

    def read(address: int, size: int) -> bytes:
        return gdb.read_memory(address, size, physical=True)

    jiffies = kernel_symbols.address("jiffies")
    physical = translate(cr3, jiffies, read)
    assert physical == jiffies - KERNEL_MAP_BASE
    assert translate(cr3, DIRECT_MAP + physical, read) == physical
    assert gdb.read_memory(DIRECT_MAP + physical, 8) == gdb.read_memory(jiffies, 8)
    assert gdb.read_memory(jiffies, 8) == read(physical, 8)
