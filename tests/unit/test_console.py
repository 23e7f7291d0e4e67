"""Console transcript, log file and expect semantics, with a scripted pump instead of QEMU."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from vmfault.errors import MachineTimeoutError
from vmfault.machine.console import Console


class ScriptedPump:
    """Feeds scripted chunks to the console each time the waiter asks for more."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.console: Console | None = None

    def __call__(self, done: Callable[[], bool], timeout_s: float | None) -> bool:
        while not done():
            if not self.chunks:
                return False
            assert self.console is not None
            self.console.feed(self.chunks.pop(0))
        return True


@pytest.fixture
def console(tmp_path: Path) -> tuple[Console, ScriptedPump]:
    pump = ScriptedPump()
    con = Console(tmp_path / "console.log", pump)
    pump.console = con
    return con, pump


def test_expect_moves_cursor(console: tuple[Console, ScriptedPump]) -> None:
    con, pump = console
    pump.chunks = [b"boot\nvmfault-agent: rea", b"dy\nline A\n", b"line B\n"]
    assert con.expect("ready", timeout_s=1).text == "ready"
    assert con.expect(r"line (\w)", timeout_s=1).groups == ("A",)
    assert con.expect(r"line (\w)", timeout_s=1).groups == ("B",)


def test_earliest_of_several_patterns_wins(console: tuple[Console, ScriptedPump]) -> None:
    con, pump = console
    pump.chunks = [b"xx Kernel panic - not syncing: oops\nsegfault at 0\n"]
    match = con.expect(["segfault at", re.compile("Kernel panic")], timeout_s=1)
    assert match.index == 1
    assert match.text == "Kernel panic"


def test_timeout_raises_with_pattern(console: tuple[Console, ScriptedPump]) -> None:
    con, pump = console
    pump.chunks = [b"nothing here\n"]
    with pytest.raises(MachineTimeoutError, match="never"):
        con.expect("never", timeout_s=0.01)


def test_log_file_holds_every_byte(console: tuple[Console, ScriptedPump], tmp_path: Path) -> None:
    con, _ = console
    con.feed(b"\xff\xfe garbled \x00 bytes\n")
    con.feed(b"more\n")
    assert (tmp_path / "console.log").read_bytes() == b"\xff\xfe garbled \x00 bytes\nmore\n"
    assert "garbled" in con.transcript()
    mark = con.mark()
    con.feed(b"after\n")
    assert con.transcript(mark) == "after\n"
    con.close()
    assert con.transcript(mark) == "after\n"


def test_search_without_waiting(console: tuple[Console, ScriptedPump]) -> None:
    con, _ = console
    con.feed(b"a segfault at 10 ip 00\n")
    found = con.search(r"segfault at (\w+)")
    assert found is not None and found.groups == ("10",)
    assert con.search("absent") is None
