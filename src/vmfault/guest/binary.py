"""A workload's ELF binary as code: its functions, its executable bytes, decoded on demand.

Addresses here are link-time addresses plus a load base (0 for a position-dependent
executable, the base learned at run time for a PIE), so one binary serves every run.
"""

from __future__ import annotations

import bisect
import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vmfault.arch import Arch
from vmfault.errors import UsageError
from vmfault.faults.instructions import Instruction, decode, iter_decode
from vmfault.guest.elfsyms import ElfSymbol, elf_symbols, lookup_symbol

__all__ = ["BLOCK_INSTRUCTIONS_MAX", "CodeRange", "LoadedCode", "WorkloadBinary"]

BLOCK_INSTRUCTIONS_MAX = 512
"""The most instructions QEMU puts in one translation block."""
_DECODE_BYTES = 16
"""Enough bytes for one x86 instruction (at most 15) or one AArch64 instruction (4)."""
_ARCH_OF_MACHINE = {"EM_X86_64": Arch.X86_64, "EM_AARCH64": Arch.AARCH64}


@dataclass(frozen=True)
class CodeRange:
    """Code the user named: a function (`name`), or the whole executable (`name` None),
    as [start, end) link-time address spans."""

    name: str | None
    spans: tuple[tuple[int, int], ...]

    def contains(self, address: int) -> bool:
        """Whether a link-time address lies in the range."""
        return any(start <= address < end for start, end in self.spans)


class WorkloadBinary:
    """The ELF file of a workload (read once): type, entry point, executable segments."""

    def __init__(self, path: Path) -> None:
        try:
            with path.open("rb") as stream:
                elf = ELFFile(stream)
                self.pie = elf.header["e_type"] == "ET_DYN"
                self.entry = int(elf.header["e_entry"])
                machine = elf.header["e_machine"]
                self.interpreter: str | None = None
                segments: list[tuple[int, bytes]] = []
                for segment in elf.iter_segments():
                    if segment["p_type"] == "PT_INTERP":
                        self.interpreter = segment.data().rstrip(b"\0").decode()
                    if segment["p_type"] == "PT_LOAD" and segment["p_flags"] & 1:
                        segments.append((int(segment["p_vaddr"]), bytes(segment.data())))
        except (OSError, ELFError) as exc:
            raise UsageError(f"cannot read {path}: {exc}", hint="give an ELF executable") from exc
        arch = _ARCH_OF_MACHINE.get(str(machine))
        if arch is None:
            raise UsageError(
                f"{path} is an executable for {machine}, not x86-64 or aarch64",
                hint="give an executable of the guest's architecture",
            )
        self.arch: Arch = arch
        """The architecture of its code (from the ELF header)."""
        self.path = path
        self.segments = tuple(segments)
        """(link-time address, bytes) of each executable PT_LOAD segment."""

    @property
    def executable_spans(self) -> tuple[tuple[int, int], ...]:
        """[start, end) of each executable segment (link time)."""
        return tuple((start, start + len(data)) for start, data in self.segments)

    def function(self, name: str) -> ElfSymbol:
        """The function `name`; UsageError naming the closest functions and the likely cause
        (a misspelling, or inlining), or saying that the binary is stripped."""
        symbols = elf_symbols(self.path)  # UsageError for a stripped binary
        if name not in symbols:
            # A static function inlined into every caller leaves no copy, so no symbol.
            close = difflib.get_close_matches(name, self.functions(), n=5)
            first = f"closest: {', '.join(close)}" if close else "check the name"
            raise UsageError(
                f"{self.path.name} has no function {name!r}: misspelt, or inlined into "
                "every caller",
                hint=f"{first}; if inlined, build it with -O0 (--cflags -O0 for a C "
                "workload) or mark it __attribute__((noinline))",
            )
        symbol = lookup_symbol(self.path, name)
        if symbol.kind != "FUNC" or symbol.size == 0:
            raise UsageError(
                f"{name} in {self.path.name} is not a function with a size",
                hint="give a function symbol (see `nm --size-sort`)",
            )
        return symbol

    def functions(self) -> dict[str, ElfSymbol]:
        """Every sized function symbol, by name (UsageError if the binary is stripped)."""
        return {
            name: symbol
            for name, symbol in elf_symbols(self.path).items()
            if symbol.kind == "FUNC" and symbol.size
        }

    def code_range(self, function: str | None) -> CodeRange:
        """The link-time spans of `function`, or of the whole executable for None."""
        if function is None:
            return CodeRange(None, self.executable_spans)
        symbol = self.function(function)
        return CodeRange(function, ((symbol.address, symbol.address + symbol.size),))

    def function_at(self, address: int) -> str | None:
        """The name of the function holding a link-time address (None if none does)."""
        spans = _function_spans(self.path)
        at = bisect.bisect_right(spans, (address, 1 << 64, "")) - 1
        if at >= 0 and spans[at][0] <= address < spans[at][1]:
            return spans[at][2]
        return None

    def bytes_at(self, address: int, size: int) -> bytes:
        """Up to `size` bytes of executable code from a link-time address (empty outside)."""
        for start, data in self.segments:
            if start <= address < start + len(data):
                offset = address - start
                return data[offset : offset + size]
        return b""

    def decode_range(self, code: CodeRange, *, base: int = 0) -> tuple[Instruction, ...]:
        """Every instruction of `code`, at addresses shifted by `base`."""
        found: list[Instruction] = []
        for start, end in code.spans:
            code_bytes = self.bytes_at(start, end - start)
            found.extend(decode(code_bytes, start + base, arch=self.arch))
        return tuple(found)

    def loaded(self, base: int) -> LoadedCode:
        """The code as loaded at `base` (a `vmfault.profile.execlog.CodeIndex`)."""
        return LoadedCode(self, base)


@functools.cache
def _function_spans(path: Path) -> tuple[tuple[int, int, str], ...]:
    try:
        symbols = elf_symbols(path)
    except UsageError:
        return ()
    return tuple(
        sorted((s.address, s.address + s.size, n) for n, s in symbols.items() if s.kind == "FUNC")
    )


class LoadedCode:
    """A binary's code at a load base, decoded block by block on demand (and cached)."""

    def __init__(self, binary: WorkloadBinary, base: int) -> None:
        self.binary = binary
        self.base = base
        self._blocks: dict[int, tuple[Instruction, ...]] = {}
        self._instructions: dict[int, Instruction] = {}

    def block_at(self, pc: int) -> tuple[Instruction, ...]:
        """The instructions a translation block starting at run-time `pc` runs at most."""
        block = self._blocks.get(pc)
        if block is None:
            found: list[Instruction] = []
            at = pc
            while len(found) < BLOCK_INSTRUCTIONS_MAX:
                insn = self._instructions.get(at)
                if insn is None:
                    data = self.binary.bytes_at(at - self.base, _DECODE_BYTES)
                    insn = next(iter_decode(data, at, arch=self.binary.arch), None)
                    if insn is None:
                        break
                    self._instructions[at] = insn
                found.append(insn)
                if insn.flow.ends_block:
                    break
                at = insn.end
            block = tuple(found)
            self._blocks[pc] = block
        return block
