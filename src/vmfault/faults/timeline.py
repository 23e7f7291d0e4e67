"""Where the vCPU is during a golden run, sampled (pure).

A timeline is a golden run from the snapshot cut into short slices: each slice says what
the vCPU was running at its end (the workload's own code in user mode, other user code,
the kernel, or the kernel's idle loop) and how long the guest ran in it. It tells how much
of the run each context takes, and how long the golden run ever sat idle (the stall rule
of a hang compares with it). Each halt adds a little to the measured running time, so a
sampled timeline is scaled to the length of runs made without halts.
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass

from vmfault.faults.model import Context

__all__ = ["Activity", "Probes", "Slice", "Timeline"]


class Activity(enum.StrEnum):
    """What the vCPU ran at the end of a slice."""

    WORKLOAD = "workload"
    """The workload's own code, in user mode."""
    USER = "user"
    """Other user code (the agent, a library outside the workload's text)."""
    KERNEL = "kernel"
    """Kernel code other than the idle loop."""
    IDLE = "idle"
    """The kernel's idle loop: nothing was runnable."""

    def matches(self, context: Context) -> bool:
        """Whether a fault asking for `context` may land here."""
        if context is Context.USER:
            return self is Activity.WORKLOAD
        if context is Context.KERNEL:
            return self in (Activity.KERNEL, Activity.IDLE)
        return True


@dataclass(frozen=True)
class Slice:
    """One slice of a sampled run: guest seconds [start_s, end_s) from the snapshot, and
    what ran at its end."""

    start_s: float
    end_s: float
    activity: Activity

    @property
    def span_s(self) -> float:
        """The slice's length in guest seconds."""
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Timeline:
    """A sampled golden run from the snapshot to the workload's exit, slices in order."""

    slices: tuple[Slice, ...]

    @property
    def duration_s(self) -> float:
        """Guest seconds from the snapshot to the last slice's end."""
        return self.slices[-1].end_s if self.slices else 0.0

    def share(self, context: Context) -> float:
        """The fraction (0..1) of the run spent where `context` may land."""
        total = self.duration_s
        if total <= 0:
            return 0.0
        return sum(s.span_s for s in self.slices if s.activity.matches(context)) / total

    def scaled(self, duration_s: float) -> Timeline:
        """The same timeline stretched or shrunk to last `duration_s`."""
        if self.duration_s <= 0:
            return self
        ratio = duration_s / self.duration_s
        return Timeline(
            tuple(Slice(s.start_s * ratio, s.end_s * ratio, s.activity) for s in self.slices)
        )

    def longest_idle_s(self) -> float:
        """The longest stretch of consecutive idle slices, in guest seconds."""
        longest = current = 0.0
        for piece in self.slices:
            current = current + piece.span_s if piece.activity is Activity.IDLE else 0.0
            longest = max(longest, current)
        return longest


@dataclass(frozen=True)
class Probes:
    """Moments of golden runs from the snapshot, each a fraction (0..1) of the execution,
    and what the vCPU ran there: looks drawn uniformly, a few per run, as a fault with a
    context draws its own moments (so they see runs as experiments make them).

    `fraction_of(context, fraction)` is the share of the context's moments that lie before
    `fraction`: where a fault drawn among the context's moments stands within them (0..1).
    """

    looks: tuple[tuple[float, Activity], ...]

    def share(self, context: Context) -> float:
        """The fraction (0..1) of the looks that found the vCPU in `context`."""
        if not self.looks:
            return 0.0
        return sum(activity.matches(context) for _, activity in self.looks) / len(self.looks)

    def with_look(self, fraction: float, activity: Activity, *, keep: int) -> Probes:
        """These probes and one more look, keeping the last `keep`."""
        return Probes((*self.looks, (fraction, activity))[-keep:])

    def hits(self, context: Context) -> int:
        """How many looks found the vCPU in `context`."""
        return sum(activity.matches(context) for _, activity in self.looks)

    def fraction_of(self, context: Context, fraction: float) -> float:
        """The distribution of `context`'s moments over the execution (piecewise linear
        between looks), read at `fraction`; `fraction` itself without a look in it."""
        points = sorted(f for f, activity in self.looks if activity.matches(context))
        if not points:
            return min(1.0, max(0.0, fraction))
        knots = [0.0, *points, 1.0]
        rank = bisect.bisect_right(knots, fraction) - 1
        rank = min(max(rank, 0), len(knots) - 2)
        low, high = knots[rank], knots[rank + 1]
        inside = 0.0 if high <= low else (min(max(fraction, low), high) - low) / (high - low)
        return min(1.0, (rank + inside) / (len(knots) - 1))

    def to_json(self) -> dict[str, object]:
        """Plain data (the cache format)."""
        return {"looks": [[fraction, activity.value] for fraction, activity in self.looks]}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Probes:
        """Rebuild from `to_json`; ValueError or TypeError if it is not one."""
        looks = data["looks"]
        if not isinstance(looks, list):
            raise TypeError("looks must be a list")
        return cls(tuple((float(f), Activity(str(a))) for f, a in looks))
