"""Flip schedules for memory fault storms, and the radiation rate model behind them (pure).

A schedule gives the guest-time gaps between successive flips: fixed (`10ms`), uniform in
a range (`5ms..50ms`), or exponential, i.e. a Poisson process (`poisson:200` flips per
second of guest time). `RateModel` turns a physical upset rate (FIT per Mbit, or upsets
per GiB per month) into a Poisson schedule, with a time compression factor, and says how
much real-world time a run stands for.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from typing import Any

from vmfault.errors import UsageError
from vmfault.faults.units import parse_duration_s, parse_ranges

__all__ = ["RateModel", "RateUnit", "Schedule", "ScheduleKind", "Storm", "parse_region"]

_SECONDS_PER_HOUR = 3600.0
_SECONDS_PER_MONTH = 30.0 * 24 * 3600
_BITS_PER_MBIT = 1e6
_BYTES_PER_GIB = 1024**3


class ScheduleKind(enum.StrEnum):
    """How the gaps between flips are drawn."""

    FIXED = "fixed"
    UNIFORM = "uniform"
    POISSON = "poisson"


@dataclass(frozen=True)
class Schedule:
    """Gaps between flips, in seconds of guest time."""

    kind: ScheduleKind
    interval_s: float = 0.0
    low_s: float = 0.0
    high_s: float = 0.0
    rate_per_s: float = 0.0

    ALLOWED = "10ms, 5ms..50ms, or poisson:RATE (flips per guest second)"

    @classmethod
    def parse(cls, text: str) -> Schedule:
        """Parse `10ms`, `5ms..50ms` or `poisson:200`; UsageError otherwise."""
        text = text.strip()
        try:
            if text.startswith("poisson:"):
                rate = float(text.split(":", 1)[1].removesuffix("/s"))
                if rate <= 0:
                    raise ValueError
                return cls(ScheduleKind.POISSON, rate_per_s=rate)
            if ".." in text:
                low_text, high_text = text.split("..", 1)
                low, high = parse_duration_s(low_text), parse_duration_s(high_text)
                if not 0 < low <= high:
                    raise ValueError
                return cls(ScheduleKind.UNIFORM, low_s=low, high_s=high)
            interval = parse_duration_s(text)
            if interval <= 0:
                raise ValueError
            return cls(ScheduleKind.FIXED, interval_s=interval)
        except (ValueError, UsageError):
            raise UsageError(f"invalid interval {text!r}", hint=f"allowed: {cls.ALLOWED}") from None

    def gaps(self, count: int, rng: random.Random) -> list[float]:
        """`count` gaps in seconds: the first is from the workload's start to the first flip."""
        if self.kind is ScheduleKind.FIXED:
            return [self.interval_s] * count
        if self.kind is ScheduleKind.UNIFORM:
            return [rng.uniform(self.low_s, self.high_s) for _ in range(count)]
        return [rng.expovariate(self.rate_per_s) for _ in range(count)]

    @property
    def mean_gap_s(self) -> float:
        """The expected gap between flips, in seconds."""
        if self.kind is ScheduleKind.FIXED:
            return self.interval_s
        if self.kind is ScheduleKind.UNIFORM:
            return (self.low_s + self.high_s) / 2
        return 1.0 / self.rate_per_s

    def describe(self) -> str:
        """The schedule in the CLI's own spelling."""
        if self.kind is ScheduleKind.FIXED:
            return f"{self.interval_s * 1e3:g}ms"
        if self.kind is ScheduleKind.UNIFORM:
            return f"{self.low_s * 1e3:g}ms..{self.high_s * 1e3:g}ms"
        return f"poisson:{self.rate_per_s:g}"


class RateUnit(enum.StrEnum):
    """Units of physical upset rates."""

    FIT_PER_MBIT = "fit-per-mbit"
    """Failures in time: upsets per 10^9 device-hours, per Mbit."""
    PER_GIB_MONTH = "per-gib-month"
    """Upsets per GiB of memory per month."""


@dataclass(frozen=True)
class RateModel:
    """A physical upset rate applied to `memory_bytes`, sped up by `compression`.

    `compression` = real-world seconds represented by one second of guest time.
    """

    rate: float
    unit: RateUnit
    memory_bytes: int
    compression: float

    def upsets_per_real_second(self) -> float:
        """Expected upsets per second of real-world time for the whole memory."""
        if self.unit is RateUnit.FIT_PER_MBIT:
            mbits = self.memory_bytes * 8 / _BITS_PER_MBIT
            return self.rate * mbits / 1e9 / _SECONDS_PER_HOUR
        return self.rate * self.memory_bytes / _BYTES_PER_GIB / _SECONDS_PER_MONTH

    def schedule(self) -> Schedule:
        """The Poisson schedule in guest time that this rate and compression give."""
        rate = self.upsets_per_real_second() * self.compression
        if rate <= 0:
            raise UsageError("the upset rate is zero", hint="give a positive rate and memory size")
        return Schedule(ScheduleKind.POISSON, rate_per_s=rate)

    def real_world_s(self, guest_s: float) -> float:
        """The real-world time that `guest_s` seconds of guest time stand for."""
        return guest_s * self.compression


@dataclass(frozen=True)
class Storm:
    """A storm's size and pace: `flips` flips spaced by `schedule`, or by the Poisson
    schedule a physical `rate` (in `rate_unit`, over the region's bytes) gives when sped up
    by `compression` (real-world seconds per guest second). Exactly one of the two is set.
    """

    flips: int
    schedule: Schedule | None = None
    rate: float | None = None
    rate_unit: RateUnit = RateUnit.FIT_PER_MBIT
    compression: float | None = None

    def __post_init__(self) -> None:
        if self.flips < 1:
            raise UsageError(f"a storm needs at least one flip, not {self.flips}")
        if (self.schedule is None) == (self.rate is None):
            raise UsageError(
                "give a storm exactly one of interval and rate",
                hint="e.g. interval 10ms, or rate 1000 with rate_unit and compression",
            )
        if self.rate is not None:
            if self.rate <= 0:
                raise UsageError(f"rate {self.rate:g} is not positive", hint="give upsets > 0")
            if self.compression is None or self.compression <= 0:
                raise UsageError(
                    "a rate needs a positive compression",
                    hint="set compression: real-world seconds per guest second, e.g. 1e9",
                )

    def resolve(self, memory_bytes: int) -> tuple[Schedule, RateModel | None]:
        """The schedule in guest time, and the rate model behind it (None: a given interval).

        `memory_bytes` is the size of the region the flips fall in.
        """
        if self.schedule is not None:
            return self.schedule, None
        assert self.rate is not None and self.compression is not None
        model = RateModel(self.rate, self.rate_unit, memory_bytes, self.compression)
        return model.schedule(), model

    def describe(self) -> str:
        """`10 x 10ms` or `10 x 1000 fit-per-mbit x1e+09`."""
        if self.schedule is not None:
            return f"{self.flips} x {self.schedule.describe()}"
        return f"{self.flips} x {self.rate:g} {self.rate_unit.value} x{self.compression:g}"

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "flips": self.flips,
            "interval": None if self.schedule is None else self.schedule.describe(),
            "rate": self.rate,
            "rate_unit": self.rate_unit.value,
            "compression": self.compression,
        }


def parse_region(text: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """A storm region: `ram`, `kernel-text`, `kernel-data`, `process`, or custom physical
    ranges `0xSTART-0xEND[,...]` (end exclusive). Returns (name, ranges)."""
    text = text.strip()
    if text in ("ram", "kernel-text", "kernel-data", "process"):
        return text, ()
    try:
        return "custom", parse_ranges(text)
    except ValueError:
        raise UsageError(
            f"invalid region {text!r}",
            hint="allowed: ram, kernel-text, kernel-data, process, or 0xSTART-0xEND[,...]",
        ) from None
