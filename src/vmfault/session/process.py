"""The workload process of one run: its address space and load base, seen at its exec.

The agent forks the workload just before the golden snapshot and the child then execs it,
so the first call of the kernel's `start_thread` after a restore is the workload's exec.
There the new stack holds the auxiliary vector, whose AT_ENTRY is the executable's entry
point as loaded: minus the ELF entry, that is the load base (0 for a position-dependent
executable, random for a PIE under ASLR). `start_thread`'s new_ip is the process's first
user instruction; its CR3 there is the root user code of this process runs on (the user
half of a KPTI pair, or the only root without KPTI), which identifies the process.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from vmfault.errors import GdbError, MachineError
from vmfault.machine import Machine
from vmfault.machine.gdbstub import GdbStub
from vmfault.machine.pagetable import page_table_key

__all__ = [
    "AT_BASE",
    "AT_ENTRY",
    "AT_PHDR",
    "EXEC_FUNCTION",
    "WorkloadProcess",
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
    """The workload process: its address space (a `page_table_key` of CR3) and where its
    executable (and, if dynamic, its interpreter) is loaded."""

    page_tables: int
    """The `page_table_key` of the CR3 its user code runs on."""
    load_base: int
    entry: int
    """The entry point as loaded (AT_ENTRY)."""
    interpreter_base: int | None = None
    """AT_BASE: the program interpreter's load base (None for a static executable)."""
    first_pc: int = 0
    """The first user instruction (the interpreter's entry for a dynamic executable)."""

    def owns(self, cr3: int) -> bool:
        """Whether CR3, read while user code runs, is this process's address space."""
        return page_table_key(cr3) == self.page_tables


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


def read_process_at_exec(gdb: GdbStub, *, link_entry: int) -> WorkloadProcess:
    """The new process, read with the (halted) vCPU at `start_thread` of its exec.

    `link_entry` is the executable's ELF entry point. Raises MachineError if the new
    stack holds no auxiliary vector.
    """
    registers = gdb.read_registers(["cr3", "rsi", "rdx"])
    try:
        vector = parse_auxv(_read_words(gdb, registers["rdx"]))
    except ValueError as exc:
        raise MachineError(f"cannot read the new process's auxiliary vector: {exc}") from exc
    entry = vector.get(AT_ENTRY)
    if entry is None:
        raise MachineError("the new process's auxiliary vector has no AT_ENTRY")
    base = vector.get(AT_BASE) or None
    return WorkloadProcess(
        page_tables=page_table_key(registers["cr3"]),
        load_base=entry - link_entry,
        entry=entry,
        interpreter_base=base,
        first_pc=registers["rsi"],
    )


def run_to_exec(
    vm: Machine, exec_address: int, link_entry: int, timeout_s: float
) -> WorkloadProcess:
    """From the golden snapshot (halted), run to the workload's exec, read its process, and
    run on to its first user instruction, whose CR3 identifies it.

    `exec_address` is the kernel's `start_thread`, `link_entry` the executable's ELF entry.
    Leaves the VM halted at that first instruction with no breakpoint of its own set.
    Raises MachineError if either point is not reached within `timeout_s` seconds.
    """
    vm.run_to(exec_address, timeout_s=timeout_s).require(
        "the workload's exec", vm, timeout_s=timeout_s
    )
    process = read_process_at_exec(vm.gdb, link_entry=link_entry)
    vm.run_to(process.first_pc, timeout_s=timeout_s).require(
        "the workload's first instruction", vm, timeout_s=timeout_s
    )
    state = vm.gdb.read_registers(["cr3", "cs"])
    if state["cs"] & 3 != 3:
        raise MachineError("the workload's first instruction ran in kernel mode")
    return dataclasses.replace(process, page_tables=page_table_key(state["cr3"]))
