"""Durations and address ranges as users write them (pure)."""

from __future__ import annotations

import re

from vmfault.errors import UsageError

__all__ = ["parse_duration_s", "parse_ranges"]


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
