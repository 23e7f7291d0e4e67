"""Durations, address ranges and hang budgets as users write them (pure)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmfault.errors import UsageError

__all__ = ["DEFAULT_BUDGET_FACTOR", "Budget", "parse_duration_s", "parse_ranges"]

DEFAULT_BUDGET_FACTOR = 2.0
"""A run that takes longer than this many golden runs is a hang."""


def _bad(what: str, text: str, allowed: str) -> UsageError:
    return UsageError(f"invalid {what} {text!r}", hint=f"allowed: {allowed}")


_DURATION = re.compile(r"^(\d+(?:\.\d*)?)(ns|us|ms|s)$")
_SCALE = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}


def parse_duration_s(text: str) -> float:
    """`20ms`, `1.5s`, `300us`, `0.02` (seconds) -> seconds; UsageError otherwise."""
    found = _DURATION.match(text.strip())
    if found:
        return float(found.group(1)) * _SCALE[found.group(2)]
    try:
        value = float(text)
    except ValueError:
        raise _bad("duration", text, "a number with a unit: 20ms, 1.5s, 300us") from None
    if value < 0:
        raise _bad("duration", text, "a non-negative duration")
    return value


def parse_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """`0xSTART-0xEND[,...]` (end exclusive, start < end) -> ranges; ValueError otherwise."""
    ranges = []
    for part in text.split(","):
        start_text, separator, end_text = part.partition("-")
        if not separator:
            raise ValueError(f"not a range: {part!r}")
        start, end = int(start_text.strip(), 0), int(end_text.strip(), 0)
        if not 0 <= start < end:
            raise ValueError(f"empty or negative range: {part!r}")
        ranges.append((start, end))
    return tuple(ranges)


@dataclass(frozen=True)
class Budget:
    """How long a run may take before it is a hang: `factor` times the golden run, or,
    when `guest_s` is set, that many guest seconds whatever the golden run took (networks:
    TCP recovers a lost segment only after a retransmission timeout of 200 ms or more).
    Counted from the restore (see the experiment pipeline for where else)."""

    factor: float = DEFAULT_BUDGET_FACTOR
    guest_s: float | None = None

    def __post_init__(self) -> None:
        if self.guest_s is not None and not self.guest_s > 0:
            raise UsageError(
                f"a hang budget of {self.guest_s:g} s ends every run at once", hint='e.g. "20s"'
            )
        if self.guest_s is None and not self.factor > 0:
            raise UsageError(
                f"a hang budget of {self.factor:g} golden runs ends every experiment at once",
                hint="give a budget above 0, e.g. 2 (golden runs), or a duration such as 20s",
            )

    @classmethod
    def parse(cls, value: float | str) -> Budget:
        """A number of golden runs (`2`, `"2.5"`) or a guest duration (`"20s"`, `"500ms"`);
        UsageError otherwise."""
        if isinstance(value, bool):
            raise UsageError(f"invalid hang budget {value!r}", hint='e.g. 2 or "20s"')
        if isinstance(value, int | float):
            return cls(factor=float(value))
        text = value.strip()
        try:
            return cls(factor=float(text))
        except ValueError:
            pass
        if not _DURATION.match(text):
            raise UsageError(
                f"invalid hang budget {value!r}",
                hint='a number of golden runs (2) or a guest duration with a unit ("20s")',
            )
        return cls(guest_s=parse_duration_s(text))

    @property
    def spelling(self) -> str:
        """`2 golden runs` or `20 s`."""
        if self.guest_s is not None:
            return f"{self.guest_s:g} s"
        return f"{self.factor:g} golden runs"
