"""One campaign database watched for new records, read-only, at the cost of what changed.

`CampaignWatch.poll()` looks at the database file and its write-ahead log (size and
modification time: a `stat` each) and at the writer lock (is a campaign running it), and
only when they moved asks SQLite whether another connection committed (`PRAGMA
data_version`, no table read). Only then does it read: the
summary counts (the function behind `vmfault campaign status`), the rows of the experiments
recorded since the last look (added to the report's `ReportRows`, never read twice), and
the activity. A `Snapshot` is the result, numbered by `revision`. Rows are read
ROW_CHUNK at a time, one short read transaction each, as `rows()` reads them.

The store is opened with `SQLiteStore.open_readonly` (a `mode=ro` connection, `query_only`):
in WAL mode readers never block the campaign's one writer, and each read is one short
transaction.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vmfault.report.data import CampaignReport, ReportRows, assemble_report, campaign_golden
from vmfault.report.summary import Summary, store_summary
from vmfault.serve.activity import Activity, campaign_activity
from vmfault.stats import IntervalMethod
from vmfault.store import CampaignInfo, SQLiteStore, Writer, writer_of
from vmfault.store.sqlite import ROW_CHUNK

__all__ = ["NEW_ROWS_SLACK_S", "CampaignWatch", "Snapshot"]

NEW_ROWS_SLACK_S = 120.0
"""New records are looked for among those that finished at most this long before the
latest one already read (the runner commits each record as it arrives); a count that
does not add up falls back to reading every id."""

FileState = tuple[int, int, int, int]
"""The database's and its WAL's modification time (ns) and size (bytes)."""


@dataclass(frozen=True)
class Snapshot:
    """What a campaign's database held at one moment."""

    revision: int
    """Grows by one each time the database was seen to change."""
    info: CampaignInfo
    summary: Summary
    """`vmfault campaign status` (`summary.to_json()` is its `--json`)."""
    report: CampaignReport
    """The report of everything recorded, assembled from the rows read so far."""
    activity: Activity
    taken_at: float
    """Unix time (s)."""
    cost_s: float
    """Host seconds the reading and assembling took."""


class CampaignWatch:
    """A campaign database watched read-only (see the module docstring); thread-safe.

    `db_label` names the database in replay commands (the path as the user gave it).
    """

    def __init__(
        self,
        path: Path,
        *,
        db_label: str | None = None,
        confidence: float = 0.95,
        method: IntervalMethod = IntervalMethod.WILSON,
    ) -> None:
        self.path = Path(path)
        self.confidence = confidence
        self.method = method
        self.store = SQLiteStore.open_readonly(self.path)
        self._rows = ReportRows(
            db_label if db_label is not None else str(path), confidence=confidence, method=method
        )
        self._lock = threading.Lock()
        self._seen: set[int] = set()
        self._latest_finish = float("-inf")
        self._files: FileState | None = None
        self._version: int | None = None
        self._writer: Writer | None = None
        self._golden_found = False
        self._snapshot: Snapshot | None = None
        self.rows_read = 0
        """Analysis rows read from the store so far (each experiment once)."""

    def close(self) -> None:
        """Close the store; idempotent."""
        self.store.close()

    def _file_state(self) -> FileState:
        stats = []
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                found = path.stat()
            except FileNotFoundError:
                stats += [0, 0]
            else:
                stats += [found.st_mtime_ns, found.st_size]
        return (stats[0], stats[1], stats[2], stats[3])

    def poll(self) -> Snapshot | None:
        """A new snapshot if the database changed since the last one (the first call always
        gives one), else None."""
        with self._lock:
            files = self._file_state()
            writer = writer_of(self.path)
            same_writer = self._snapshot is not None and writer == self._writer
            if same_writer and files == self._files:
                return None
            self._files, self._writer = files, writer
            version = self.store.data_version()
            if same_writer and version == self._version:
                return None
            self._version = version
            self._snapshot = self._read(writer)
            return self._snapshot

    def current(self) -> Snapshot:
        """The latest snapshot, polling first."""
        self.poll()
        with self._lock:
            assert self._snapshot is not None
            return self._snapshot

    def _read(self, writer: Writer | None) -> Snapshot:
        start = time.perf_counter()
        store = self.store
        info = store.campaign_info()
        summary = store_summary(store, confidence=self.confidence, method=self.method)
        self._add_new_rows(store.count())
        golden = None
        if self._snapshot is not None and self._golden_found:
            golden = self._snapshot.report.golden
        if golden is None:
            golden = campaign_golden(store, info)
            self._golden_found = golden is not None
        report = assemble_report(info, summary, self._rows, golden=golden)
        activity = campaign_activity(
            store, total=summary.total, done=summary.done, writer=writer, writer_known=True
        )
        revision = 1 if self._snapshot is None else self._snapshot.revision + 1
        return Snapshot(
            revision=revision,
            info=info,
            summary=summary,
            report=report,
            activity=activity,
            taken_at=time.time(),
            cost_s=time.perf_counter() - start,
        )

    def _add_new_rows(self, count: int) -> None:
        """Add the rows of the experiments recorded since the last look (about `count` in
        all now) to the report's rows."""
        if count <= len(self._seen):
            return
        new: set[int] = set()
        if self._seen:
            new = self.store.finished_since(self._latest_finish - NEW_ROWS_SLACK_S) - self._seen
        if len(self._seen) + len(new) < count:
            new = self.store.done_ids() - self._seen
        ordered = sorted(new)
        chunks = (ordered[i : i + ROW_CHUNK] for i in range(0, len(ordered), ROW_CHUNK))
        for row in (row for chunk in chunks for row in self.store.rows_for(chunk)):
            experiment_id = row["experiment_id"]
            assert isinstance(experiment_id, int)
            if experiment_id in self._seen:
                continue
            self._seen.add(experiment_id)
            self._rows.add(row)
            self.rows_read += 1
            finished = row.get("finished_at")
            if isinstance(finished, int | float):
                self._latest_finish = max(self._latest_finish, float(finished))

    def __repr__(self) -> str:
        return f"CampaignWatch({str(self.path)!r}, {len(self._seen)} rows)"
