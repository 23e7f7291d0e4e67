"""Kernel symbol table parsing and the kernel's text and data ranges."""

from __future__ import annotations

import pytest

from vmfault.errors import ImageError
from vmfault.guest.symbols import KERNEL_MAP_BASE, KernelSymbols

KALLSYMS = """\
0000000000000000 A fixed_percpu_data
ffffffff81000000 T _stext
ffffffff81000000 T _text
ffffffff81001000 T do_idle
ffffffff81002000 t helper
ffffffff81e00000 T _etext
ffffffff82000000 D _sdata
ffffffff82400000 B __bss_stop
ffffffffc0000000 t pvpanic_probe\t[pvpanic_mmio]
"""


def test_lookup_by_name_and_address() -> None:
    table = KernelSymbols.parse(KALLSYMS)
    assert table.address("do_idle") == 0xFFFFFFFF81001000
    containing = table.containing(0xFFFFFFFF81001234)
    assert containing is not None and containing.name == "do_idle"
    assert table.get("pvpanic_probe") is not None
    assert table.get("pvpanic_probe").module == "pvpanic_mmio"  # type: ignore[union-attr]
    with pytest.raises(ImageError, match="nope"):
        table.address("nope")


def test_ranges_and_physical_addresses() -> None:
    table = KernelSymbols.parse(KALLSYMS)
    text = table.text()
    assert (text.start, text.end) == (0xFFFFFFFF81000000, 0xFFFFFFFF81E00000)
    assert text.physical_start == 0x1000000
    assert KERNEL_MAP_BASE + text.physical_start == text.start
    assert table.data().size == 0x400000


def test_empty_table_is_an_error() -> None:
    with pytest.raises(ImageError):
        KernelSymbols.parse("garbage\n")
