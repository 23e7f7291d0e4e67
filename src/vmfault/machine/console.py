"""The guest's serial console: the whole transcript in a log file, and expect-style waiting."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

from vmfault.errors import MachineTimeoutError

__all__ = ["Console", "ConsoleMatch", "Pump"]

Pattern = str | bytes | re.Pattern[str] | re.Pattern[bytes]


class Pump(Protocol):
    """Runs the machine's I/O until `done()` is true or `timeout_s` passes; True if done."""

    def __call__(self, done: Callable[[], bool], timeout_s: float | None) -> bool: ...


@dataclass(frozen=True)
class ConsoleMatch:
    """Which pattern matched (`index` into the patterns given), where, and the matched text."""

    index: int
    start: int
    end: int
    text: str
    groups: tuple[str | None, ...]


def _compile(pattern: Pattern) -> re.Pattern[bytes]:
    if isinstance(pattern, re.Pattern):
        if isinstance(pattern.pattern, bytes):
            return pattern
        return re.compile(pattern.pattern.encode(), pattern.flags & ~re.UNICODE)
    if isinstance(pattern, str):
        return re.compile(pattern.encode())
    return re.compile(pattern)


class Console:
    """Collects console bytes as the machine produces them; every byte also goes to the log.

    Positions are byte offsets into the transcript, which only grows. `expect` searches
    from a cursor and moves it past the match, like pexpect, so successive calls see
    successive output.
    """

    def __init__(self, log_path: Path, pump: Pump) -> None:
        self.log_path = log_path
        self._log: BinaryIO = log_path.open("ab", buffering=0)
        self._data = bytearray()
        self._cursor = 0
        self._pump = pump

    def feed(self, data: bytes) -> None:
        """Append bytes read from the guest (called by the machine's I/O loop)."""
        self._data += data
        if not self._log.closed:
            self._log.write(data)

    def close(self) -> None:
        """Close the log file; the in-memory transcript stays readable."""
        self._log.close()

    @property
    def size(self) -> int:
        """Bytes received so far."""
        return len(self._data)

    def mark(self) -> int:
        """The current end of the transcript, to pass as `since` later."""
        return len(self._data)

    def transcript(self, since: int = 0) -> str:
        """The transcript from byte offset `since`, decoded leniently (a fault may garble it)."""
        return self._data[since:].decode("utf-8", errors="replace")

    def skip(self) -> None:
        """Move the expect cursor to the end: later expects see only new output."""
        self._cursor = len(self._data)

    def search(
        self, patterns: Pattern | Sequence[Pattern], *, since: int = 0
    ) -> ConsoleMatch | None:
        """The earliest match of any pattern at or after `since`, without waiting."""
        compiled = [_compile(p) for p in _as_list(patterns)]
        return self._search(compiled, since)

    def _search(self, compiled: list[re.Pattern[bytes]], since: int) -> ConsoleMatch | None:
        best: ConsoleMatch | None = None
        view = bytes(self._data[since:])
        for index, regex in enumerate(compiled):
            found = regex.search(view)
            if found is None or (best is not None and since + found.start() >= best.start):
                continue
            best = ConsoleMatch(
                index=index,
                start=since + found.start(),
                end=since + found.end(),
                text=found.group(0).decode("utf-8", errors="replace"),
                groups=tuple(
                    None if g is None else g.decode("utf-8", errors="replace")
                    for g in found.groups()
                ),
            )
        return best

    def expect(
        self, patterns: Pattern | Sequence[Pattern], *, timeout_s: float | None
    ) -> ConsoleMatch:
        """Wait until one of `patterns` appears after the cursor; move the cursor past it.

        Patterns are regular expressions (str or bytes). With several, the earliest match in
        the transcript wins and `ConsoleMatch.index` says which. Raises MachineTimeoutError after
        `timeout_s` seconds (None waits for ever).
        """
        compiled = [_compile(p) for p in _as_list(patterns)]
        found: list[ConsoleMatch] = []
        searched_to = self._cursor

        def done() -> bool:
            nonlocal searched_to
            if len(self._data) == searched_to and searched_to != self._cursor:
                return False
            match = self._search(compiled, self._cursor)
            searched_to = len(self._data)
            if match is None:
                return False
            found.append(match)
            return True

        if not self._pump(done, timeout_s):
            shown = ", ".join(repr(c.pattern.decode(errors="replace")) for c in compiled)
            raise MachineTimeoutError(
                f"console did not show {shown} within {timeout_s} s",
                timeout_s=timeout_s or 0.0,
            )
        self._cursor = found[0].end
        return found[0]


def _as_list(patterns: Pattern | Sequence[Pattern]) -> list[Pattern]:
    if isinstance(patterns, str | bytes | re.Pattern):
        return [patterns]
    return list(patterns)
