"""Kernel symbols from the booted guest's /proc/kallsyms, and the kernel's memory ranges.

The package's System.map is a placeholder, so vmfault boots the image once in kallsyms
mode, stores the table beside the image and reuses it: with `nokaslr` the addresses are
the same on every boot.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from vmfault.errors import ImageError

__all__ = ["KERNEL_MAP_BASE", "AddressRange", "KernelSymbol", "KernelSymbols"]

KERNEL_MAP_BASE = 0xFFFFFFFF80000000
"""__START_KERNEL_map on x86-64: kernel image virtual address = physical + this."""
_IOMEM_KERNEL = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) : Kernel (code|data|bss)$", re.MULTILINE)
"""A kernel image range of /proc/iomem, which the capture appends to kallsyms."""


@dataclass(frozen=True, order=True)
class KernelSymbol:
    """One kallsyms entry: virtual address, type letter (t/T text, d/D data, ...), name."""

    address: int
    name: str
    kind: str
    module: str = ""

    @property
    def is_function(self) -> bool:
        """True for text symbols."""
        return self.kind in "tTwW"


@dataclass(frozen=True)
class AddressRange:
    """Virtual [start, end) and the matching physical start of a kernel image range
    (`image_offset`: the kernel image's virtual minus physical addresses)."""

    start: int
    end: int
    image_offset: int = KERNEL_MAP_BASE

    @property
    def size(self) -> int:
        """Length in bytes."""
        return self.end - self.start

    @property
    def physical_start(self) -> int:
        """Guest-physical address of `start` (kernel image mapping)."""
        return self.start - self.image_offset


class KernelSymbols:
    """A sorted kallsyms table with lookups by name and by address.

    `image_offset` is the kernel image's virtual minus physical addresses
    (`Platform.kernel_image_offset`: __START_KERNEL_map on x86-64).
    """

    def __init__(
        self,
        symbols: list[KernelSymbol],
        *,
        image_offset: int = KERNEL_MAP_BASE,
        iomem: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        self.image_offset = image_offset
        self.iomem = dict(iomem or {})
        """Physical [start, end) of `Kernel code`/`data`/`bss` in /proc/iomem, if captured."""
        self._symbols = sorted(s for s in symbols if s.address)
        self._addresses = [s.address for s in self._symbols]
        self._by_name: dict[str, KernelSymbol] = {}
        for symbol in self._symbols:
            self._by_name.setdefault(symbol.name, symbol)

    @classmethod
    def parse(cls, text: str, *, image_offset: int = KERNEL_MAP_BASE) -> KernelSymbols:
        """Parse /proc/kallsyms text (`ADDR TYPE NAME [MODULE]` lines)."""
        symbols: list[KernelSymbol] = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                address = int(parts[0], 16)
            except ValueError:
                continue
            module = parts[3].strip("[]") if len(parts) > 3 else ""
            symbols.append(KernelSymbol(address, parts[2], parts[1], module))
        if not symbols:
            raise ImageError("the kernel symbol table is empty or unreadable")
        iomem = {
            found.group(3): (int(found.group(1), 16), int(found.group(2), 16) + 1)
            for found in _IOMEM_KERNEL.finditer(text)
        }
        return cls(symbols, image_offset=image_offset, iomem=iomem)

    @classmethod
    def load(cls, path: Path, *, image_offset: int = KERNEL_MAP_BASE) -> KernelSymbols:
        """Read a stored kallsyms file."""
        try:
            return cls.parse(path.read_text(), image_offset=image_offset)
        except OSError as exc:
            raise ImageError(
                f"cannot read kernel symbols {path}: {exc.strerror}",
                hint="run `vmfault image build` to capture them",
            ) from exc

    def __len__(self) -> int:
        return len(self._symbols)

    def __iter__(self) -> Iterator[KernelSymbol]:
        return iter(self._symbols)

    def address(self, name: str) -> int:
        """The virtual address of `name`; ImageError if unknown."""
        symbol = self._by_name.get(name)
        if symbol is None:
            raise ImageError(f"no kernel symbol named {name!r}")
        return symbol.address

    def get(self, name: str) -> KernelSymbol | None:
        """The symbol called `name`, or None."""
        return self._by_name.get(name)

    def containing(self, address: int) -> KernelSymbol | None:
        """The closest symbol at or below `address` (the function it is probably in)."""
        index = bisect.bisect_right(self._addresses, address) - 1
        return self._symbols[index] if index >= 0 else None

    def size_of(self, symbol: KernelSymbol) -> int:
        """Bytes from `symbol` to the next symbol at a higher address (its probable size)."""
        index = bisect.bisect_right(self._addresses, symbol.address)
        if index >= len(self._addresses):
            return 1
        return self._addresses[index] - symbol.address

    def physical_of(self, virtual: int) -> int:
        """The guest-physical address of a kernel image address."""
        return virtual - self.image_offset

    def _range(self, start: str, end: str) -> AddressRange:
        return AddressRange(self.address(start), self.address(end), self.image_offset)

    def text(self) -> AddressRange:
        """Kernel code: _stext up to _etext."""
        return self._range("_stext", "_etext")

    def data(self) -> AddressRange:
        """Kernel data: _sdata up to __bss_stop (initialised data and BSS); for a kernel
        whose kallsyms has no data symbols (arm64), /proc/iomem's `Kernel data` (there:
        _sdata up to _end, the BSS and the early page tables included)."""
        if "_sdata" not in self._by_name and "data" in self.iomem:
            start, end = self.iomem["data"]
            if "bss" in self.iomem:
                end = max(end, self.iomem["bss"][1])
            return AddressRange(
                start + self.image_offset, end + self.image_offset, self.image_offset
            )
        return self._range("_sdata", "__bss_stop")
