"""The workload process of one run: its address space and load base, seen at its exec.

The agent forks the workload just before the golden snapshot and the child then execs it,
so the first call of the kernel's `start_thread` after a restore is the workload's exec.
There the new stack holds the auxiliary vector, whose AT_ENTRY is the executable's entry
point as loaded: minus the ELF entry, that is the load base (0 for a position-dependent
executable, random for a PIE under ASLR). `start_thread`'s new_ip is the process's first
user instruction; its CR3 there is the root user code of this process runs on (the user
half of a KPTI pair, or the only root without KPTI), which identifies the process (on
aarch64: its TTBR0_EL1, without the ASID; start_thread's arguments in x1 and x2).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from vmfault.arch import DEFAULT_ARCH, Platform
from vmfault.errors import GdbError, MachineError
from vmfault.guest.symbols import KernelSymbols
from vmfault.machine import Machine
from vmfault.machine.gdbstub import GdbStub

__all__ = [
    "AT_BASE",
    "AT_ENTRY",
    "AT_PHDR",
    "EXEC_FUNCTION",
    "WorkloadProcess",
    "exec_address",
    "parse_auxv",
    "read_process_at_exec",
    "run_to_exec",
]

EXEC_FUNCTION = "start_thread"
"""The kernel function every exec calls with the new address space live: start_thread(regs,
new_ip, new_sp)."""
AT_PHDR = 3
AT_BASE = 7
AT_ENTRY = 9
_AUXV_WORDS_MAX = 4096
_READ_BYTES = 256


@dataclass(frozen=True)
class WorkloadProcess:
    """The workload process: its address space (the `page_table_key` of its page-table
    root: CR3, TTBR0_EL1) and where its executable (and, if dynamic, its interpreter) is
    loaded."""

    page_tables: int
    """The `Platform.page_table_key` of the root its user code runs on."""
    load_base: int
    entry: int
    """The entry point as loaded (AT_ENTRY)."""
    interpreter_base: int | None = None
    """AT_BASE: the program interpreter's load base (None for a static executable)."""
    first_pc: int = 0
    """The first user instruction (the interpreter's entry for a dynamic executable)."""
    platform: Platform = DEFAULT_ARCH.platform

    def owns(self, root: int) -> bool:
        """Whether the page-table root (CR3, TTBR0_EL1), read while user code runs, is this
        process's address space."""
        return self.platform.page_table_key(root) == self.page_tables


def parse_auxv(words: Sequence[int]) -> dict[int, int]:
    """The auxiliary vector from the words at a new process's stack pointer:
    argc, argv..., 0, envp..., 0, then (type, value) pairs up to AT_NULL.

    Raises ValueError if the words end before AT_NULL.
    """
    if not words:
        raise ValueError("no words at the stack pointer")
    at = 1 + words[0] + 1  # argc, the argv pointers, their NULL
    while at < len(words) and words[at] != 0:
        at += 1
    at += 1  # the NULL after envp
    vector: dict[int, int] = {}
    while at + 1 < len(words):
        kind, value = words[at], words[at + 1]
        if kind == 0:
            return vector
        vector[kind] = value
        at += 2
    raise ValueError("the auxiliary vector does not end within the words read")


def _read_words(gdb: GdbStub, address: int) -> list[int]:
    words: list[int] = []
    while len(words) < _AUXV_WORDS_MAX:
        try:
            data = gdb.read_memory(address, _READ_BYTES)
        except GdbError:
            try:
                data = gdb.read_memory(address, 8)
            except GdbError:
                return words
        words.extend(struct.unpack(f"<{len(data) // 8}Q", data))
        address += len(data)
        try:
            parse_auxv(words)
            return words
        except ValueError:
            continue
    return words


def read_process_at_exec(
    gdb: GdbStub, *, link_entry: int, platform: Platform = DEFAULT_ARCH.platform
) -> WorkloadProcess:
    """The new process, read with the (halted) vCPU at `start_thread` of its exec.

    `link_entry` is the executable's ELF entry point. Raises MachineError if the new
    stack holds no auxiliary vector.
    """
    new_ip, new_sp = platform.exec_args
    root = platform.page_table_root
    registers = gdb.read_registers([root, new_ip, new_sp])
    try:
        vector = parse_auxv(_read_words(gdb, registers[new_sp]))
    except ValueError as exc:
        raise MachineError(f"cannot read the new process's auxiliary vector: {exc}") from exc
    entry = vector.get(AT_ENTRY)
    if entry is None:
        raise MachineError("the new process's auxiliary vector has no AT_ENTRY")
    base = vector.get(AT_BASE) or None
    return WorkloadProcess(
        page_tables=platform.page_table_key(registers[root]),
        load_base=entry - link_entry,
        entry=entry,
        interpreter_base=base,
        first_pc=registers[new_ip],
        platform=platform,
    )


def exec_address(symbols: KernelSymbols, platform: Platform, link_entry: int) -> int:
    """Where a run is halted to catch the workload's exec: the kernel's `start_thread`, or
    on aarch64 (where it is inlined) the executable's entry point, which only the
    workload's process runs (its executables are position-dependent there)."""
    if platform.exec_hook is None:
        return link_entry
    return symbols.address(platform.exec_hook)


def run_to_exec(
    vm: Machine, exec_address: int, link_entry: int, timeout_s: float
) -> WorkloadProcess:
    """From the golden snapshot (halted), run to the workload's exec, read its process, and
    run on to its first user instruction, whose CR3 identifies it.

    `exec_address` is where the exec is caught (see `exec_address`), `link_entry` the
    executable's ELF entry. Leaves the VM halted at that first instruction with no
    breakpoint of its own set. Raises MachineError if either point is not reached within
    `timeout_s` seconds.
    """
    vm.run_to(exec_address, timeout_s=timeout_s).require(
        "the workload's exec", vm, timeout_s=timeout_s
    )
    platform = vm.platform
    process = read_process_at_exec(vm.gdb, link_entry=link_entry, platform=platform)
    if vm.gdb.read_register(platform.pc) != process.first_pc:
        vm.run_to(process.first_pc, timeout_s=timeout_s).require(
            "the workload's first instruction", vm, timeout_s=timeout_s
        )
    state = vm.gdb.read_registers([platform.page_table_root, platform.privilege])
    if not platform.is_user(state[platform.privilege]):
        raise MachineError("the workload's first instruction ran in kernel mode")
    root = platform.page_table_key(state[platform.page_table_root])
    return dataclasses.replace(process, page_tables=root)
