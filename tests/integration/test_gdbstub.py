"""The gdbstub client against a real QEMU guest idling in the Linux idle loop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from vmfault.machine import Machine
from vmfault.machine.gdbproto import BreakpointKind, StopReason, WatchKind
from vmfault.machine.gdbstub import GdbStub

pytestmark = pytest.mark.vm

KERNEL_TEXT_VIRT = 0xFFFFFFFF81000000
KERNEL_TEXT_PHYS = 0x1000000  # with nokaslr
SCRATCH_PHYS = 0x7000000
IDLE_FUNCTION = "default_idle_call"  # entered on every pass of the idle loop
TICK_COUNTER = "jiffies"  # written on every timer tick
STOP_TIMEOUT_S = 20.0


@pytest.fixture
def gdb(machine: Machine) -> Iterator[GdbStub]:
    """The machine's gdbstub client, halted; the VM runs again after the test."""
    stub = machine.gdb
    stub.halt()
    yield stub
    if not stub.running:
        stub.cont()


def test_target_description(gdb: GdbStub) -> None:
    regs = gdb.registers
    assert gdb.architecture == "i386:x86-64"
    assert regs["rip"].bitsize == 64
    assert regs["xmm3"].bitsize == 128
    assert regs["st0"].bitsize == 80
    assert len({reg.regnum for reg in regs.values()}) == len(regs)


def test_write_gpr_and_read_back(gdb: GdbStub) -> None:
    original = gdb.read_register("rax")
    try:
        gdb.write_register("rax", original ^ (1 << 17))
        assert gdb.read_register("rax") == original ^ (1 << 17)
        assert gdb.read_registers(["rax"])["rax"] == original ^ (1 << 17)
    finally:
        gdb.write_register("rax", original, verify=True)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("r12", 0x0123_4567_89AB_CDEF),
        ("xmm3", 0x0011_2233_4455_6677_8899_AABB_CCDD_EEFF),
        ("st0", 0x3FFF_C000_0000_0000_0000),  # 1.5 as x87 extended precision
    ],
)
def test_wide_registers_read_back(gdb: GdbStub, name: str, value: int) -> None:
    original = gdb.read_register(name)
    try:
        gdb.write_register(name, value, verify=True)
        assert gdb.read_registers()[name] == value
    finally:
        gdb.write_register(name, original, verify=True)


def test_physical_memory_bit_flip(gdb: GdbStub) -> None:
    before = gdb.read_memory(SCRATCH_PHYS, 1, physical=True)
    flipped = bytes([before[0] ^ 0x10])
    try:
        gdb.write_memory(SCRATCH_PHYS, flipped, physical=True)
        assert gdb.read_memory(SCRATCH_PHYS, 1, physical=True) == flipped
    finally:
        gdb.write_memory(SCRATCH_PHYS, before, physical=True)
    assert gdb.read_memory(SCRATCH_PHYS, 1, physical=True) == before


def test_virtual_kernel_text_matches_physical(gdb: GdbStub) -> None:
    chunk = 64 * 1024
    for index in range(4):
        offset = index * chunk
        virtual = gdb.read_memory(KERNEL_TEXT_VIRT + offset, chunk)
        physical = gdb.read_memory(KERNEL_TEXT_PHYS + offset, chunk, physical=True)
        assert len(virtual) == chunk
        assert virtual == physical, f"differs in the chunk at +{offset:#x}"


@pytest.mark.parametrize("hardware", [False, True], ids=["software", "hardware"])
def test_breakpoint_hits_and_reports_its_kind(
    gdb: GdbStub, kernel_symbol: Callable[[str], int], hardware: bool
) -> None:
    address = kernel_symbol(IDLE_FUNCTION)
    gdb.set_breakpoint(address, hardware=hardware)
    try:
        gdb.cont()
        stop = gdb.wait_stop(timeout_s=STOP_TIMEOUT_S)
        assert stop is not None, "the idle loop did not reach the breakpoint"
        assert stop.reason is StopReason.BREAKPOINT
        expected = BreakpointKind.HARDWARE if hardware else BreakpointKind.SOFTWARE
        assert stop.breakpoint_kind is expected
        assert stop.pc == address
        assert gdb.read_register("rip") == address
        # Continuing steps past the breakpoint, which then fires on the next pass.
        gdb.cont()
        again = gdb.wait_stop(timeout_s=STOP_TIMEOUT_S)
        assert again is not None
        assert again.reason is StopReason.BREAKPOINT
    finally:
        gdb.halt()
        gdb.remove_breakpoint(address, hardware=hardware)


def test_write_watchpoint(gdb: GdbStub, kernel_symbol: Callable[[str], int]) -> None:
    address = kernel_symbol(TICK_COUNTER)
    before = int.from_bytes(gdb.read_memory(address, 8), "little")
    gdb.set_watchpoint(address, 8, kind=WatchKind.WRITE)
    try:
        gdb.cont()
        stop = gdb.wait_stop(timeout_s=STOP_TIMEOUT_S)
        assert stop is not None, "no timer tick wrote the tick counter"
        assert stop.reason is StopReason.WATCHPOINT
        assert stop.watch_kind is WatchKind.WRITE
        assert stop.watch_address == address
        # The VM stops after the writing instruction.
        assert int.from_bytes(gdb.read_memory(address, 8), "little") != before
    finally:
        gdb.halt()
        gdb.remove_watchpoint(address, 8, kind=WatchKind.WRITE)


def test_single_step_advances_rip(gdb: GdbStub) -> None:
    rip = gdb.read_register("rip")
    stop = gdb.step()
    assert stop.reason is StopReason.STEP
    assert not gdb.running
    assert gdb.read_register("rip") != rip
    stop = gdb.step(count=20)
    assert stop.reason is StopReason.STEP


def test_wait_stop_times_out_cleanly(gdb: GdbStub) -> None:
    gdb.cont()
    started = time.monotonic()
    assert gdb.wait_stop(timeout_s=0.3) is None
    assert 0.25 < time.monotonic() - started < 2.0
    assert gdb.running
    assert gdb.poll_stop() is None
    stop = gdb.halt()
    assert stop.reason is StopReason.INTERRUPT
    assert not gdb.running


def test_halt_and_continue_repeatedly(gdb: GdbStub) -> None:
    for _ in range(200):
        gdb.cont()
        gdb.halt()
        gdb.read_register("rip")
    assert gdb.halt() is gdb.last_stop  # already halted: no-op


def test_monitor_command(gdb: GdbStub) -> None:
    output = gdb.monitor("info registers")
    assert "RIP=" in output
