"""Symbols of a workload's ELF binary (name, address, size), read with pyelftools."""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from vmfault.errors import UsageError

__all__ = ["ElfSymbol", "elf_symbols", "lookup_symbol"]


@dataclass(frozen=True)
class ElfSymbol:
    """A function or object symbol: virtual address and size in bytes."""

    name: str
    address: int
    size: int
    kind: str
    """`FUNC` or `OBJECT`."""


@functools.cache
def elf_symbols(path: Path) -> dict[str, ElfSymbol]:
    """Function and object symbols of the ELF at `path`; UsageError if it has none."""
    try:
        with path.open("rb") as stream:
            table = ELFFile(stream).get_section_by_name(".symtab")
            if not isinstance(table, SymbolTableSection):
                raise UsageError(
                    f"{path.name} is stripped: it has no symbol table",
                    hint="build it without -s and do not strip it",
                )
            found: dict[str, ElfSymbol] = {}
            global_names: set[str] = set()
            for symbol in table.iter_symbols():
                kind = symbol["st_info"]["type"]
                if kind not in ("STT_FUNC", "STT_OBJECT") or not symbol["st_value"]:
                    continue
                # A static binary holds libc's local symbols too: a global name wins, then
                # the first local one.
                is_global = symbol["st_info"]["bind"] != "STB_LOCAL"
                if symbol.name in global_names or (symbol.name in found and not is_global):
                    continue
                if is_global:
                    global_names.add(symbol.name)
                found[symbol.name] = ElfSymbol(
                    symbol.name, symbol["st_value"], symbol["st_size"], kind[4:]
                )
            return found
    except (OSError, ELFError) as exc:
        raise UsageError(f"cannot read symbols of {path}: {exc}", hint="give an ELF file") from exc


def lookup_symbol(path: Path, name: str) -> ElfSymbol:
    """The symbol `name` of the ELF at `path`; UsageError naming the closest names if absent."""
    symbols = elf_symbols(path)
    if name in symbols:
        return symbols[name]
    close = difflib.get_close_matches(name, symbols, n=5)
    raise UsageError(
        f"{path.name} has no symbol {name!r}",
        hint=("closest: " + ", ".join(close)) if close else "check the name",
    )
