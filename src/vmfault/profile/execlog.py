"""Exact instruction counts from QEMU's execution log (`-d exec,cpu,nochain`), pure.

With `nochain` QEMU logs every translation block (TB) it enters whose start lies in the
`-dfilter` range, with the CPU state before it (so CR3 names the process), and a
`Stopped execution of TB chain before ...` line for a block it entered but stopped before
running (an interrupt was pending). Translating that into instruction counts needs three
corrections, all made here:

- a block entered but stopped is not counted;
- a block runs from its start to its first control transfer, unless it stopped early
  (an exception such as a page fault, or an emulator limit): then the next block of the
  same process starts inside it, at the faulting or next instruction, and only the
  instructions before that point ran. A page fault shows as a change of CR2 between the
  two blocks; a start inside the block that is no successor of its last instruction shows
  an emulator limit;
- a `rep` string instruction runs one iteration per block: the blocks that continue it
  are not new executions.

Known limit: a block that loops to its own start while another process page-faults in
between is taken for a faulting retry, so that iteration goes uncounted.

AArch64 logs no CR2 or CR3 in its CPU state (`-d exec,nochain,int` is used there): a block
that stopped at a fault is told by the synchronous exception from EL0 (`Taking exception
... [Data Abort]`, `[Prefetch Abort]`, `[Undefined Instruction]`, `...from EL0 to EL1`)
that `int` logs after it, counted as CR2 changes are; and blocks carry no address space:
the `-dfilter` range holds only the workload's code (its executables are linked apart from
every other program of the image and are position-dependent there).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from vmfault.arch import DEFAULT_ARCH, Arch
from vmfault.faults.instructions import Flow, Instruction
from vmfault.machine.pagetable import page_table_key

__all__ = [
    "CodeIndex",
    "TraceEntry",
    "count_executions",
    "log_items",
    "parse_exec_log",
]

_TRACE = b"Trace "
_STOPPED = b"Stopped execution of TB chain before "
_READ_BYTES = 1 << 24
_EL0_FAULT = re.compile(
    rb"Taking exception \d+ \[(?:Data Abort|Prefetch Abort|Undefined Instruction)\][^\n]*\n"
    rb"\.\.\.from EL0 to"
)


def log_items(arch: Arch = DEFAULT_ARCH) -> str:
    """QEMU's `-d` items for an execution log of `arch` (HMP `log ITEMS`)."""
    return "exec,nochain,int" if arch is Arch.AARCH64 else "exec,cpu,nochain"


@dataclass(frozen=True)
class TraceEntry:
    """One logged block: its start address, the address space and CR2 before it, and
    whether it ran (False: QEMU stopped before running it). On aarch64 `cr3` is None (not
    logged) and `cr2` counts the faults from EL0 logged before the block."""

    pc: int
    cr3: int | None
    cr2: int
    executed: bool = True


def _register(record: bytes, name: bytes) -> int:
    at = record.find(name)
    if at < 0:
        raise ValueError(f"no {name.decode()} in a logged CPU state")
    start = at + len(name)
    return int(record[start : start + 16], 16)


def _entry(record: bytes, faults: int | None = None) -> TraceEntry:
    """A record: the text after `Trace ` up to the next one; `faults`, for an aarch64
    log, the EL0 faults logged before it."""
    head_end = record.find(b"\n")
    head = record[:head_end]
    fields = head[head.find(b"[") + 1 : head.find(b"]")].split(b"/")
    pc = int(fields[1], 16)
    executed = True
    stopped = record.find(_STOPPED, head_end)
    if stopped >= 0:
        bracket = record.find(b"[", stopped)
        executed = int(record[bracket + 1 : record.find(b"]", bracket)], 16) != pc
    if faults is not None:
        return TraceEntry(pc=pc, cr3=None, cr2=faults, executed=executed)
    return TraceEntry(
        pc=pc,
        cr3=page_table_key(_register(record, b"CR3=")),
        cr2=_register(record, b"CR2="),
        executed=executed,
    )


def parse_exec_log(
    stream: BinaryIO, *, read_bytes: int = _READ_BYTES, arch: Arch = DEFAULT_ARCH
) -> Iterator[TraceEntry]:
    """The blocks of a `log_items(arch)` log, in order, read `read_bytes` at a time.

    Raises ValueError if an x86-64 block's CPU state is missing (the log lacks `cpu`),
    except the log's last block: logging turned off between its two lines leaves it
    without its state (seen with a PIE's log range, which holds the agent's code too), and
    it is left out.
    """
    faults = 0 if arch is Arch.AARCH64 else None
    pending = b""
    while True:
        data = stream.read(read_bytes)
        if data:
            pending += data
            cut = pending.rfind(b"\n" + _TRACE)
            if cut < 0:
                continue
            complete, pending = pending[: cut + 1], pending[cut + 1 :]
        else:
            complete, pending = pending, b""
        records = complete.split(_TRACE)
        if faults is not None:
            faults += len(_EL0_FAULT.findall(records[0]))
        last = len(records) - 1
        for index, record in enumerate(records[1:], start=1):
            try:
                entry = _entry(record, faults)
            except ValueError:
                if data or index != last:
                    raise
                return
            yield entry
            if faults is not None:
                faults += len(_EL0_FAULT.findall(record))
        if not data:
            return


class CodeIndex(Protocol):
    """Decoded code: the instructions a block starting at an address runs, at most."""

    def block_at(self, pc: int) -> tuple[Instruction, ...]:
        """The instructions from `pc` through the first that ends a translation block
        (empty if `pc` is not known code)."""
        ...


@dataclass
class _Pending:
    block: tuple[Instruction, ...]
    cr2: int
    continuation: bool


def _ran(pending: _Pending, following: TraceEntry | None) -> tuple[Instruction, ...]:
    """The instructions of `pending` that ran, knowing which block came next."""
    block = pending.block
    if pending.continuation:
        block = block[1:]
    if following is None or not pending.block:
        return block
    starts = [insn.address for insn in pending.block]
    if following.pc not in starts:
        return block
    cut = starts.index(following.pc)
    faulted = following.cr2 != pending.cr2
    if cut == 0:
        return () if faulted else block
    successors = pending.block[-1].successors()
    if faulted or (successors is not None and following.pc not in successors):
        kept = pending.block[:cut]
        return kept[1:] if pending.continuation else kept
    return block


def count_executions(
    entries: Iterable[TraceEntry], *, process: int, code: CodeIndex
) -> tuple[Counter[int], dict[int, Instruction]]:
    """Executions per instruction address in the address space `process` (a
    `page_table_key`), and the instructions seen, by address."""
    counts: Counter[int] = Counter()
    seen: dict[int, Instruction] = {}
    pending: _Pending | None = None
    for entry in entries:
        if (entry.cr3 is not None and entry.cr3 != process) or not entry.executed:
            continue
        continuation = False
        if pending is not None:
            last = pending.block[-1] if pending.block else None
            continuation = (
                last is not None and last.flow is Flow.REPEAT and entry.pc == last.address
            )
            for insn in _ran(pending, entry):
                counts[insn.address] += 1
        block = code.block_at(entry.pc)
        for insn in block:
            seen.setdefault(insn.address, insn)
        pending = _Pending(block, entry.cr2, continuation)
    if pending is not None:
        for insn in _ran(pending, None):
            counts[insn.address] += 1
    return counts, seen
