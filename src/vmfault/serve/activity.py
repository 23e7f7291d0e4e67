"""Where a campaign stands, from its database alone: whether it runs, how fast, when it
should end, and what each worker did last.

Everything comes from what the store records (each experiment's worker, start and finish
times) and from the writer lock (`vmfault.store.writer_of`): `vmfault serve` reading a
campaign another process runs sees what `campaign run --serve` sees. Times are Unix
seconds; the page turns them into "12 s ago" and "in 3 min" as the clock moves.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from vmfault.classify import Outcome
from vmfault.store import WorkerActivity, Writer, writer_of

__all__ = [
    "RATE_WINDOW",
    "Activity",
    "ActivitySource",
    "CampaignState",
    "WorkerState",
    "WorkerView",
    "campaign_activity",
]

RATE_WINDOW = 30
"""Experiments per second are measured over the latest this many experiments of the run."""


class CampaignState(enum.StrEnum):
    """Whether a campaign is being run."""

    RUNNING = "running"
    """A process holds the database open for writing."""
    FINISHED = "finished"
    """No writer, every planned experiment recorded."""
    STOPPED = "stopped"
    """No writer, experiments missing: interrupted (resume it) or stopped early."""


class WorkerState(enum.StrEnum):
    """What a worker of the campaign is doing, as far as its records tell."""

    RUNNING = "running"
    """Part of the running campaign: it runs an experiment now."""
    REPLACED = "replaced"
    """Its last experiment was a vmm-error and a newer worker started since: it was
    replaced (its QEMU died or it stopped answering)."""
    DONE = "done"
    """The campaign is not running."""


@dataclass(frozen=True)
class WorkerView:
    """One worker: its records so far (`WorkerActivity`) and its state."""

    activity: WorkerActivity
    state: WorkerState

    def to_json(self) -> dict[str, Any]:
        """Plain data: the activity's fields and `state`."""
        return {**self.activity.to_json(), "state": self.state.value}


@dataclass(frozen=True)
class Activity:
    """Progress of a campaign: counts, speed, expected end, workers."""

    state: CampaignState
    writer_pid: int | None
    """The process running the campaign, if one does."""
    run_started_at: float | None
    """When the running campaign process opened the database (its writer lock)."""
    total: int
    """Experiments planned."""
    done: int
    """Experiments recorded (not-injected ones included)."""
    rate_per_s: float | None
    """Experiments recorded per second over the latest RATE_WINDOW of this run (None while
    the campaign is not running or before its first record)."""
    eta_at: float | None
    """When the last planned experiment should be recorded at that rate."""
    last_finished_at: float | None
    workers: tuple[WorkerView, ...]

    @property
    def remaining(self) -> int:
        """Planned experiments not yet recorded."""
        return max(0, self.total - self.done)

    def to_json(self) -> dict[str, Any]:
        """`/api/activity`: every field, workers as a list."""
        data = dataclasses.asdict(self)
        data["state"] = self.state.value
        data["remaining"] = self.remaining
        data["workers"] = [worker.to_json() for worker in self.workers]
        return data


class ActivitySource(Protocol):
    """What the activity reads from a store (`SQLiteStore` provides it)."""

    path: Path

    def finish_times(self, limit: int) -> list[float]: ...

    def worker_activity(self, *, since: float | None = None) -> list[WorkerActivity]: ...


def campaign_activity(
    store: ActivitySource,
    *,
    total: int,
    done: int,
    writer: Writer | None = None,
    writer_known: bool = False,
) -> Activity:
    """The activity of the campaign in `store`, `done` of `total` recorded (the summary's
    counts, read with it). `writer` is the process running it (None: none), if
    `writer_known` or given; else the process writing `store.path` now is looked up."""
    if writer is None and not writer_known:
        writer = writer_of(store.path)
    running = writer is not None
    since = writer.since if writer is not None else None
    finishes = store.finish_times(RATE_WINDOW)
    workers = store.worker_activity(since=since)
    rate = eta = None
    if running and since is not None:
        rate = _rate([t for t in finishes if t >= since], since)
        if rate is not None and finishes:
            eta = finishes[0] + max(0, total - done) / rate
    if running:
        state = CampaignState.RUNNING
    else:
        state = CampaignState.FINISHED if done >= total else CampaignState.STOPPED
    return Activity(
        state=state,
        writer_pid=None if writer is None else writer.pid,
        run_started_at=since,
        total=total,
        done=done,
        rate_per_s=rate,
        eta_at=eta,
        last_finished_at=finishes[0] if finishes else None,
        workers=tuple(_worker_views(workers, running=running)),
    )


def _rate(finishes: Sequence[float], since: float) -> float | None:
    """Experiments per second from the latest finish times of a run (latest first): over
    the gaps between them, or from the run's start when there is one finish."""
    if not finishes:
        return None
    if len(finishes) == 1:
        span = finishes[0] - since
        return 1.0 / span if span > 0 else None
    span = finishes[0] - finishes[-1]
    return (len(finishes) - 1) / span if span > 0 else None


def _worker_views(workers: Sequence[WorkerActivity], *, running: bool) -> list[WorkerView]:
    views = []
    for worker in workers:
        if not running:
            state = WorkerState.DONE
        elif worker.last_outcome == Outcome.VMM_ERROR.value and any(
            other.first_started_at > worker.last_finished_at for other in workers
        ):
            state = WorkerState.REPLACED
        else:
            state = WorkerState.RUNNING
        views.append(WorkerView(worker, state))
    return views
