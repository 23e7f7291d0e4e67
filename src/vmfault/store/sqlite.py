"""The SQLite results store: one campaign per database file, one writer, any number of readers.

The database runs in WAL mode with `synchronous=NORMAL`: every `record()` is one
transaction, committed before it returns. A committed record survives the writing process
being killed at any moment (SIGKILL included); an OS crash or power loss may lose the last
few commits but never corrupts the file. Readers (`open_readonly`) see every committed record
while the writer goes on writing, and never block it.

Only one process may write a database: the writer holds an exclusive `flock` on
`<db>-writer.lock` (removed on close; released by the kernel if the writer dies), and a
second writer gets a UsageError.

Integers up to 64 bits signed are INTEGER columns; addresses, masks and register values
(up to 128 bits: xmm registers) are hex TEXT such as `0xdeadbeef`. The schema version is
`PRAGMA user_version`; `PRAGMA application_id` marks the file as vmfault's.

Schema versions: 1 has no `storm` table; 2 adds it; 3 (the current one) names machines:
each injection says which machine it went to, its kind and its kind's own fields
(`detail_json`), the outcome says which machine was judged, `machine_run` holds what the
other machines of the testbed did, and golden runs are kept per machine with host and
guest seconds. A writer migrates an older database when it opens it, in one transaction;
a reader reads it as it is (one machine, `guest`; the newer fields None) and never writes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal, Self

from vmfault.classify import Activation, Latency, LatencyUnit, Outcome
from vmfault.errors import UsageError
from vmfault.experiment.records import (
    DEFAULT_MACHINE,
    DISK_COLUMNS,
    ExperimentRecord,
    GoldenRun,
    Injection,
    MachineRun,
    StormSummary,
    Traffic,
    disk_columns,
    injection_from_fields,
)
from vmfault.store.base import (
    COLUMN_NAMES,
    CampaignInfo,
    DuplicateExperiment,
    ExperimentFilter,
    ExperimentPage,
    GoldenMismatchError,
    StoreError,
    WorkerActivity,
)

__all__ = [
    "APPLICATION_ID",
    "BUSY_TIMEOUT_S",
    "PAGE_MAX_ROWS",
    "SCHEMA_VERSION",
    "TRAFFIC_KEY",
    "SQLiteStore",
    "Writer",
    "writer_of",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

SCHEMA_VERSION = 3
"""`PRAGMA user_version` of the databases this code writes."""
_OLDEST_VERSION = 1
"""The oldest schema version this code reads (and migrates when opened for writing)."""
_STORM_VERSION = 2
"""The first schema version with the storm table."""
_MACHINES_VERSION = 3
"""The first schema version that names machines and kinds."""
TRAFFIC_KEY = "traffic"
"""The key of an experiment's traffic in its first injection's `detail_json`."""
APPLICATION_ID = 0x564D4674
"""`PRAGMA application_id` of a vmfault database (`VMFt`)."""
BUSY_TIMEOUT_S = 10.0
"""How long a connection waits for a lock before failing."""
ROW_CHUNK = 500
"""Rows fetched per query by `rows()`; no read transaction stays open between chunks."""
PAGE_MAX_ROWS = 500
"""The most rows one `experiment_page()` returns."""

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_NOT_OURS_HINT = "give the database file a vmfault campaign created"

_SCHEMA_V1: tuple[str, ...] = (
    """CREATE TABLE campaign (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        name TEXT NOT NULL,
        seed INTEGER NOT NULL,
        spec_json TEXT NOT NULL,
        file_sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL,
        total_planned INTEGER NOT NULL
    )""",
    """CREATE TABLE provenance (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    )""",
    """CREATE TABLE golden (
        argv_json TEXT PRIMARY KEY,
        stdout BLOB NOT NULL,
        stderr BLOB NOT NULL,
        exit_status INTEGER,
        signal TEXT,
        duration_s REAL NOT NULL,
        instructions INTEGER,
        recorded_at TEXT NOT NULL
    )""",
    """CREATE TABLE fault_spec (
        spec_id INTEGER PRIMARY KEY,
        spec_json TEXT NOT NULL UNIQUE
    )""",
    """CREATE TABLE experiment (
        experiment_id INTEGER PRIMARY KEY,
        stratum TEXT NOT NULL,
        seed INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        spec_id INTEGER NOT NULL REFERENCES fault_spec (spec_id),
        worker TEXT NOT NULL,
        started_at REAL NOT NULL,
        finished_at REAL NOT NULL,
        duration_s REAL NOT NULL
    )""",
    "CREATE INDEX experiment_stratum ON experiment (stratum)",
    """CREATE TABLE injection (
        experiment_id INTEGER NOT NULL REFERENCES experiment (experiment_id),
        ordinal INTEGER NOT NULL,
        target TEXT NOT NULL,
        location TEXT NOT NULL,
        "register" TEXT,
        address TEXT,
        "virtual" TEXT,
        width INTEGER NOT NULL,
        mask TEXT NOT NULL,
        mode TEXT NOT NULL,
        "before" TEXT,
        "after" TEXT,
        readback TEXT,
        injected INTEGER NOT NULL CHECK (injected IN (0, 1)),
        reason TEXT NOT NULL,
        "trigger" TEXT NOT NULL,
        time_s REAL,
        instructions INTEGER,
        rip TEXT,
        user_mode INTEGER CHECK (user_mode IN (0, 1)),
        PRIMARY KEY (experiment_id, ordinal)
    ) WITHOUT ROWID""",
    """CREATE TABLE outcome (
        experiment_id INTEGER PRIMARY KEY REFERENCES experiment (experiment_id),
        class TEXT NOT NULL,
        reason TEXT NOT NULL,
        cause TEXT,
        evidence TEXT NOT NULL,
        latency_value INTEGER,
        latency_unit TEXT,
        activation TEXT NOT NULL,
        output TEXT NOT NULL,
        stderr TEXT NOT NULL,
        exit_status INTEGER,
        signal TEXT,
        phases_json TEXT NOT NULL,
        CHECK ((latency_value IS NULL) = (latency_unit IS NULL))
    )""",
    "CREATE INDEX outcome_class ON outcome (class)",
)
"""Schema version 1."""

_STORM_SCHEMA: tuple[str, ...] = (
    """CREATE TABLE storm (
        experiment_id INTEGER PRIMARY KEY REFERENCES experiment (experiment_id),
        region TEXT NOT NULL,
        schedule TEXT NOT NULL,
        flips INTEGER NOT NULL,
        guest_s REAL NOT NULL,
        real_world_s REAL,
        max_error_s REAL NOT NULL,
        mean_error_s REAL NOT NULL,
        first_flip_error_s REAL NOT NULL,
        guest_time TEXT NOT NULL
    )""",
)
"""What schema version 2 adds to version 1."""

_MACHINE_SCHEMA: tuple[str, ...] = (
    f"ALTER TABLE injection ADD COLUMN machine TEXT NOT NULL DEFAULT '{DEFAULT_MACHINE}'",
    "ALTER TABLE injection ADD COLUMN kind TEXT",
    "ALTER TABLE injection ADD COLUMN detail_json TEXT",
    "ALTER TABLE injection ADD COLUMN progress REAL",
    f"ALTER TABLE outcome ADD COLUMN machine TEXT NOT NULL DEFAULT '{DEFAULT_MACHINE}'",
    "ALTER TABLE storm ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1",
    """CREATE TABLE machine_run (
        experiment_id INTEGER NOT NULL REFERENCES experiment (experiment_id),
        machine TEXT NOT NULL,
        class TEXT NOT NULL,
        reason TEXT NOT NULL,
        cause TEXT,
        evidence TEXT NOT NULL,
        exit_status INTEGER,
        signal TEXT,
        output TEXT NOT NULL,
        stderr TEXT NOT NULL,
        PRIMARY KEY (experiment_id, machine)
    ) WITHOUT ROWID""",
    """CREATE TABLE golden_by_machine (
        machine TEXT NOT NULL,
        argv_json TEXT NOT NULL,
        stdout BLOB NOT NULL,
        stderr BLOB NOT NULL,
        exit_status INTEGER,
        signal TEXT,
        host_s REAL NOT NULL,
        guest_s REAL,
        instructions INTEGER,
        pid INTEGER,
        restored_json TEXT,
        recorded_at TEXT NOT NULL,
        PRIMARY KEY (machine, argv_json)
    )""",
    f"""INSERT INTO golden_by_machine (machine, argv_json, stdout, stderr, exit_status, signal,
        host_s, instructions, recorded_at)
        SELECT '{DEFAULT_MACHINE}', argv_json, stdout, stderr, exit_status, signal, duration_s,
        instructions, recorded_at FROM golden""",  # noqa: S608 (constants only)
    "DROP TABLE golden",
    "ALTER TABLE golden_by_machine RENAME TO golden",
)
"""What schema version 3 adds to version 2 (machines, kinds, per-machine golden runs)."""

_SCHEMA: tuple[str, ...] = _SCHEMA_V1 + _STORM_SCHEMA + _MACHINE_SCHEMA
"""The current schema (SCHEMA_VERSION), built as its migrations build it."""

_MIGRATIONS: Mapping[int, tuple[str, ...]] = MappingProxyType(
    {1: _STORM_SCHEMA, 2: _MACHINE_SCHEMA}
)
"""Statements taking a database from schema version `key` to `key + 1`."""

_INSERT_INJECTION = """
INSERT INTO injection (
    experiment_id, ordinal, target, location, "register", address, "virtual", width, mask, mode,
    "before", "after", readback, injected, reason, "trigger", time_s, instructions, rip, user_mode,
    machine, kind, detail_json, progress
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
_SELECT_INJECTIONS = """
SELECT target, location, "register", address, "virtual", width, mask, mode, "before", "after",
       readback, injected, reason, "trigger", time_s, instructions, rip, user_mode,
       {machine_columns}
FROM injection WHERE experiment_id = ? ORDER BY ordinal
"""
_INJECTION_COLUMNS = frozenset({
    "target", "location", "register", "address", "virtual", "width", "mask", "mode", "before",
    "after", "readback", "injected", "reason", "trigger", "time_s", "instructions", "rip",
    "user_mode", "machine", "progress",
})  # fmt: skip
"""Injection fields with a column of their own; a kind's other fields go to detail_json."""
_HEX_COLUMNS = frozenset({"mask", "address", "virtual", "before", "after", "readback", "rip"})

_ROWS_SELECT_TEMPLATE = """
SELECT e.experiment_id, e.stratum, e.seed, e.idx,
       o.class, o.reason, o.cause, o.evidence, o.activation, o.latency_value, o.latency_unit,
       o.exit_status, o.signal,
       i.injected,
       (SELECT count(*) FROM injection AS c WHERE c.experiment_id = e.experiment_id),
       i.target, i.location, i."register", i.address, i."virtual", i.width, i.mask, i.mode,
       i."before", i."after", i.readback, i.reason, i."trigger", i.time_s, i.instructions,
       i.rip, i.user_mode, {progress},
       e.worker, e.started_at, e.finished_at, e.duration_s,
       o.phases_json, o.output, o.stderr,
       {storm_columns},
       {machine_columns}, {detail}
FROM experiment AS e
JOIN outcome AS o ON o.experiment_id = e.experiment_id
LEFT JOIN injection AS i ON i.experiment_id = e.experiment_id AND i.ordinal = 0
{storm_join}
"""
_MACHINE_COLUMNS = """i.machine, o.machine,
       json_patch(json_object(o.machine, o.class), coalesce(
           (SELECT json_group_object(m.machine, m.class) FROM machine_run AS m
            WHERE m.experiment_id = e.experiment_id), '{}')),
       json_extract(i.detail_json, '$.traffic.frames'),
       json_extract(i.detail_json, '$.frames_dropped'),
       json_extract(i.detail_json, '$.frames_corrupted'),
       json_extract(i.detail_json, '$.frames_delayed'),
       json_extract(i.detail_json, '$.frames_duplicated'),
       json_extract(i.detail_json, '$.frames_reordered'),
       json_extract(i.detail_json, '$.traffic.links')"""
"""The columns on machines and networks, derived from `machine_run` and `detail_json`."""
_OLD_MACHINE_COLUMNS = (
    f"'{DEFAULT_MACHINE}', '{DEFAULT_MACHINE}', json_object('{DEFAULT_MACHINE}', o.class), "
    "NULL, NULL, NULL, NULL, NULL, NULL, NULL"
)
"""The same of a database before schema 3: one machine, no network."""
"""The analysis rows' SELECT and joins, without a WHERE clause (`rows()`, `rows_for()`,
`experiment_page()` add theirs)."""
_ROWS_QUERY_TEMPLATE = (
    _ROWS_SELECT_TEMPLATE + "WHERE e.experiment_id >= ?\nORDER BY e.experiment_id\nLIMIT ?\n"
)
_ROWS_QUERY = _ROWS_QUERY_TEMPLATE.format(
    progress="i.progress",
    storm_columns="st.flips, st.guest_s, st.real_world_s",
    storm_join="LEFT JOIN storm AS st ON st.experiment_id = e.experiment_id",
    detail="i.detail_json",
    machine_columns=_MACHINE_COLUMNS,
)
_ROWS_QUERY_V2 = _ROWS_QUERY_TEMPLATE.format(
    progress="NULL",
    storm_columns="st.flips, st.guest_s, st.real_world_s",
    storm_join="LEFT JOIN storm AS st ON st.experiment_id = e.experiment_id",
    detail="NULL",
    machine_columns=_OLD_MACHINE_COLUMNS,
)
"""The rows of a version-2 database (read-only): no trigger progress."""
_ROWS_QUERY_V1 = _ROWS_QUERY_TEMPLATE.format(
    progress="NULL", storm_columns="NULL, NULL, NULL", storm_join="", detail="NULL",
    machine_columns=_OLD_MACHINE_COLUMNS,
)  # fmt: skip
"""The rows of a version-1 database (read-only): no storm table, the storm columns None."""


_COUNT_QUERY = (
    "SELECT count(*) FROM experiment AS e JOIN outcome AS o ON o.experiment_id = e.experiment_id "
)
"""How many experiments match; a filter's WHERE clause follows."""


def _rows_select(version: int) -> str:
    """The analysis rows' SELECT for a database of schema `version`, without WHERE."""
    progress = "i.progress" if version >= _MACHINES_VERSION else "NULL"
    if version >= _STORM_VERSION:
        storm_columns = "st.flips, st.guest_s, st.real_world_s"
        storm_join = "LEFT JOIN storm AS st ON st.experiment_id = e.experiment_id"
    else:
        storm_columns, storm_join = "NULL, NULL, NULL", ""
    new = version >= _MACHINES_VERSION
    return _ROWS_SELECT_TEMPLATE.format(
        progress=progress, storm_columns=storm_columns, storm_join=storm_join,
        detail="i.detail_json" if new else "NULL",
        machine_columns=_MACHINE_COLUMNS if new else _OLD_MACHINE_COLUMNS,
    )  # fmt: skip


def _filter_clause(found: ExperimentFilter, version: int) -> tuple[str, tuple[object, ...]]:
    """The WHERE clause (empty or starting with WHERE) of `found`, and its parameters."""
    terms: list[str] = []
    params: list[object] = []
    for column, value in (
        ("e.stratum", found.stratum),
        ("o.class", found.outcome),
        ("o.cause", found.cause),
    ):
        if value is not None:
            terms.append(f"{column} = ?")
            params.append(value)
    if found.machine is not None:
        if version >= _MACHINES_VERSION:
            terms.append(
                "(o.machine = ? OR EXISTS (SELECT 1 FROM injection AS m "
                "WHERE m.experiment_id = e.experiment_id AND m.machine = ?))"
            )
            params += [found.machine, found.machine]
        elif found.machine != DEFAULT_MACHINE:
            terms.append("0")
    return ("WHERE " + " AND ".join(terms) if terms else ""), tuple(params)


_SELECT_STORM = """
SELECT region, schedule, flips, guest_s, real_world_s, max_error_s, mean_error_s,
       first_flip_error_s, guest_time, {attempts}
FROM storm WHERE experiment_id = ?
"""
_LOAD_QUERY_TEMPLATE = """
SELECT e.idx, e.seed, s.spec_json, o.class, o.reason, o.cause, o.evidence, o.latency_value,
       o.latency_unit, o.activation, o.output, o.stderr, o.exit_status, o.signal, o.phases_json,
       {judged} AS judged
FROM experiment AS e
JOIN fault_spec AS s ON s.spec_id = e.spec_id
JOIN outcome AS o ON o.experiment_id = e.experiment_id
WHERE e.experiment_id = ?
"""
_LOAD_QUERY = _LOAD_QUERY_TEMPLATE.format(judged="o.machine")
_LOAD_QUERY_OLD = _LOAD_QUERY_TEMPLATE.format(judged=f"'{DEFAULT_MACHINE}'")
"""A record of schema 1 or 2: the judged machine is the one machine."""
_BOOL_COLUMNS = frozenset({COLUMN_NAMES.index("injected"), COLUMN_NAMES.index("user_mode")})
_SELECTED_COLUMNS = COLUMN_NAMES[: -len(DISK_COLUMNS)]
"""The analysis columns the rows query selects; the disk columns follow from detail_json."""


@dataclass(frozen=True)
class _NewCampaign:
    name: str
    seed: int
    spec_json: str
    file_sha256: str
    total_planned: int
    provenance: Mapping[str, str]


class _WriterLock:
    """An exclusive `flock` on a lock file next to the database; the file goes on release."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.path = database.with_name(database.name + "-writer.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise UsageError naming the process that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            except OSError as exc:
                raise UsageError(
                    f"cannot create the writer lock {self.path}: {exc.strerror}",
                    hint="the database's directory must be writable by the campaign",
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise UsageError(
                    f"{self.database} is already open for writing"
                    + (f" (by process {holder})" if holder else ""),
                    hint="one campaign process writes a database; read it with "
                    "`vmfault campaign status`, or stop the other process",
                ) from None
            except BaseException:
                os.close(fd)
                raise
            # Whoever held the lock before may have unlinked the file after we opened it:
            # the lock only counts if it is on the file the path names now.
            try:
                current = self.path.stat()
            except FileNotFoundError:
                current = None
            held = os.fstat(fd)
            if current is not None and (current.st_dev, current.st_ino) == (
                held.st_dev,
                held.st_ino,
            ):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock; idempotent."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None


@dataclass(frozen=True)
class Writer:
    """The process writing a database: its id and when it took the writer lock (Unix s)."""

    pid: int
    since: float


def writer_of(database: Path) -> Writer | None:
    """The live process that holds `database` open for writing (a running campaign), or
    None. Reads the writer lock file only: never takes the lock, so it cannot get in the
    way of a campaign starting."""
    lock = _WriterLock(Path(database)).path
    try:
        text = lock.read_text(errors="replace").strip()
        since = lock.stat().st_mtime
    except OSError:
        return None
    if not text.isdigit() or int(text) <= 0:
        return None
    pid = int(text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # killed without releasing: the kernel dropped its lock
    except PermissionError:
        pass  # alive, another user's
    return Writer(pid, since)


def _uri(path: Path, mode: Literal["ro", "rw", "rwc"]) -> str:
    return f"file:{urllib.parse.quote(str(path.absolute()))}?mode={mode}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def _unhex(text: str | None) -> int | None:
    return None if text is None else int(text, 16)


def _opt_bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _int64(name: str, value: int) -> int:
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise UsageError(
            f"{name} {value} does not fit in 64 bits (signed)",
            hint="choose a value between -2**63 and 2**63 - 1",
        )
    return value


@contextlib.contextmanager
def _translated(path: Path) -> Iterator[None]:
    """sqlite3 errors as StoreError, the database named."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if "not a database" in text or "malformed" in text:
            raise StoreError(
                f"{path} is damaged: {text}", hint="restore it from a copy, or start a new one"
            ) from exc
        raise StoreError(f"{path}: {text}") from exc


class SQLiteStore:
    """The results of one campaign in one SQLite file (see the module docstring).

    `SQLiteStore(path)` opens an existing database for writing, `open_readonly(path)` for
    reading, `create(path, ...)` makes a new one (or opens the same campaign again). A store
    is a context manager; methods may be called from several threads.
    """

    path: Path
    readonly: bool

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self._setup(Path(path), readonly=readonly, new=None)

    # ------------------------------------------------------------------ opening

    @classmethod
    def create(
        cls,
        path: Path,
        *,
        campaign_name: str,
        seed: int,
        spec_json: str,
        file_sha256: str,
        total_planned: int,
        provenance: Mapping[str, str],
    ) -> Self:
        """A writer on a new database for this campaign, or on the existing one of it.

        An existing file must hold the same campaign (name, seed, spec, file hash, planned
        total) recorded with the same provenance values (new keys are added); anything else
        is a UsageError. `spec_json` must be JSON text.
        """
        try:
            json.loads(spec_json)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"spec_json is not JSON text: {exc}") from None
        for key, value in provenance.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"provenance {key!r}: keys and values must be str")
        new = _NewCampaign(
            name=campaign_name,
            seed=_int64("seed", seed),
            spec_json=spec_json,
            file_sha256=file_sha256,
            total_planned=total_planned,
            provenance=dict(provenance),
        )
        store = cls.__new__(cls)
        store._setup(Path(path), readonly=False, new=new)
        return store

    @classmethod
    def open(cls, path: Path) -> Self:
        """A writer on an existing vmfault database; UsageError if it is none."""
        return cls(path)

    @classmethod
    def open_readonly(cls, path: Path) -> Self:
        """A reader on an existing vmfault database; works while another process writes."""
        return cls(path, readonly=True)

    def _setup(self, path: Path, *, readonly: bool, new: _NewCampaign | None) -> None:
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        self._writer: _WriterLock | None = None
        self._version = SCHEMA_VERSION
        self._spec_ids: dict[str, int] = {}
        """fault_spec ids this writer has committed, by spec JSON (one writer: they stay)."""
        try:
            if new is None and not path.is_file():
                raise UsageError(
                    f"{path} does not exist" if not path.exists() else f"{path} is not a file",
                    hint="give the database file of a campaign",
                )
            if not path.parent.is_dir():
                raise UsageError(
                    f"cannot create {path}: {path.parent} is not a directory",
                    hint="create the directory first",
                )
            if not readonly:
                self._writer = _WriterLock(path)
                self._writer.acquire()
            mode: Literal["ro", "rw", "rwc"] = "ro" if readonly else "rw" if new is None else "rwc"
            try:
                self._conn = sqlite3.connect(
                    _uri(path, mode),
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=BUSY_TIMEOUT_S,
                )
            except sqlite3.Error as exc:
                raise UsageError(
                    f"cannot open {path}: {exc}", hint="check the path and its permissions"
                ) from None
            empty = self._inspect()
            if empty and new is None:
                raise UsageError(
                    f"{path} is not a vmfault campaign database (it is empty)",
                    hint=_NOT_OURS_HINT,
                )
            self._configure()
            if not empty and not readonly and self._version < SCHEMA_VERSION:
                self._migrate()
            if new is not None:
                if empty:
                    self._initialise(new)
                else:
                    self._check_campaign(new)
        except BaseException:
            self.close()
            raise
        logger.debug("opened %s (%s)", path, "read-only" if readonly else "writer")

    def _inspect(self) -> bool:
        """Check the file is a vmfault database of a known version; True if it is empty.

        Sets the store's view of the schema version (unchanged if the file is empty).
        """
        conn = self._connection()
        try:
            app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            objects = int(conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0])
        except sqlite3.OperationalError as exc:
            raise UsageError(
                f"cannot read {self.path}: {exc}",
                hint="check the permissions of the file and of its directory",
            ) from None
        except sqlite3.DatabaseError as exc:
            raise UsageError(
                f"{self.path} is not a vmfault campaign database ({exc})", hint=_NOT_OURS_HINT
            ) from None
        if app_id == 0 and version == 0 and objects == 0:
            return True
        if app_id != APPLICATION_ID:
            raise UsageError(
                f"{self.path} is an SQLite database of another application, "
                "not a vmfault campaign database",
                hint=_NOT_OURS_HINT,
            )
        if version > SCHEMA_VERSION:
            raise UsageError(
                f"{self.path} has schema version {version}, newer than this vmfault's "
                f"({SCHEMA_VERSION})",
                hint="upgrade vmfault to read it",
            )
        if version < _OLDEST_VERSION:
            raise UsageError(
                f"{self.path} has unknown schema version {version}", hint=_NOT_OURS_HINT
            )
        self._version = version
        return False

    def _configure(self) -> None:
        conn = self._connection()
        with _translated(self.path):
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            if self.readonly:
                conn.execute("PRAGMA query_only = ON")
                return
            mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
            if mode.lower() != "wal":
                raise UsageError(
                    f"{self.path}: SQLite cannot use WAL mode here (journal mode {mode})",
                    hint="put the database on a local filesystem",
                )
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")

    def _initialise(self, new: _NewCampaign) -> None:
        with self._write() as conn:
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute(
                "INSERT INTO campaign (id, name, seed, spec_json, file_sha256, created_at, "
                "total_planned) VALUES (1, ?, ?, ?, ?, ?, ?)",
                (new.name, new.seed, new.spec_json, new.file_sha256, _now(), new.total_planned),
            )
            conn.executemany(
                "INSERT INTO provenance (key, value) VALUES (?, ?)",
                sorted(new.provenance.items()),
            )
        logger.info("created campaign database %s for %r", self.path, new.name)

    def _migrate(self) -> None:
        """Bring the database to SCHEMA_VERSION in one transaction (all of it or nothing)."""
        with self._write() as conn:
            found = int(conn.execute("PRAGMA user_version").fetchone()[0])
            for version in range(found, SCHEMA_VERSION):
                for statement in _MIGRATIONS[version]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        logger.info(
            "migrated %s from schema version %d to %d", self.path, self._version, SCHEMA_VERSION
        )
        self._version = SCHEMA_VERSION

    def _check_campaign(self, new: _NewCampaign) -> None:
        stored = self.campaign_info()
        differs = [
            name
            for name, old, now in (
                ("name", stored.name, new.name),
                ("seed", stored.seed, new.seed),
                ("spec", stored.spec, json.loads(new.spec_json)),
                ("campaign file sha256", stored.file_sha256, new.file_sha256),
                ("planned total", stored.total_planned, new.total_planned),
            )
            if old != now
        ]
        if differs:
            raise UsageError(
                f"{self.path} holds campaign {stored.name!r} (seed {stored.seed}, campaign file "
                f"sha256 {stored.file_sha256[:12]}), another campaign than this one: "
                f"{', '.join(differs)} differ",
                hint="give a new database path, or resume with the campaign file it was made with",
            )
        changed = [
            f"{key} was {stored.provenance[key]!r}, now {value!r}"
            for key, value in sorted(new.provenance.items())
            if key in stored.provenance and stored.provenance[key] != value
        ]
        if changed:
            raise UsageError(
                f"{self.path} was made under different conditions: {'; '.join(changed)}",
                hint="finish the campaign with the setup it started with, or use a new database",
            )
        added = {k: v for k, v in new.provenance.items() if k not in stored.provenance}
        if added:
            with self._write() as conn:
                conn.executemany(
                    "INSERT INTO provenance (key, value) VALUES (?, ?)", sorted(added.items())
                )

    # ------------------------------------------------------------------ plumbing

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"the store of {self.path} is closed")
        return self._conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed on success and rolled back on any exception."""
        if self.readonly:
            raise StoreError(
                f"{self.path} is open read-only", hint="open it with `SQLiteStore.open`"
            )
        with self._lock, _translated(self.path):
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same committed state.

        A reader of an older schema version looks again at the version first, in the same
        transaction: a writer may have migrated the database since.
        """
        with self._lock, _translated(self.path):
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                if self._version < SCHEMA_VERSION:
                    self._version = int(conn.execute("PRAGMA user_version").fetchone()[0])
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    # ------------------------------------------------------------------ campaign

    def campaign_info(self) -> CampaignInfo:
        """The campaign row and its provenance."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT name, seed, spec_json, file_sha256, created_at, total_planned "
                "FROM campaign WHERE id = 1"
            ).fetchone()
            provenance = dict(conn.execute("SELECT key, value FROM provenance ORDER BY key"))
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if row is None:
            raise StoreError(f"{self.path} holds no campaign row", hint=_NOT_OURS_HINT)
        name, seed, spec_json, file_sha256, created_at, total_planned = row
        return CampaignInfo(
            name=name,
            seed=seed,
            spec_json=spec_json,
            file_sha256=file_sha256,
            created_at=created_at,
            total_planned=total_planned,
            provenance=MappingProxyType(provenance),
            schema_version=version,
        )

    # ------------------------------------------------------------------ golden runs

    def save_golden(self, golden: GoldenRun) -> GoldenRun:
        """Store the golden run of its machine and argv once; returns the stored run.

        The first golden run of a machine and argv is kept: saving one with the same
        stdout, stderr, exit status and signal again changes nothing; a different one
        raises GoldenMismatchError.
        """
        key = _argv_json(golden.argv)
        with self._write() as conn:
            stored = _golden_row(conn, golden.machine, key, self._version)
            if stored is not None:
                differs = [
                    name
                    for name, old, now in (
                        ("stdout", stored.stdout, bytes(golden.stdout)),
                        ("stderr", stored.stderr, bytes(golden.stderr)),
                        ("exit status", stored.exit_status, golden.exit_status),
                        ("signal", stored.signal, golden.signal),
                    )
                    if old != now
                ]
                if differs:
                    raise GoldenMismatchError(golden.argv, differs)
                return stored
            conn.execute(
                "INSERT INTO golden (machine, argv_json, stdout, stderr, exit_status, signal, "
                "host_s, guest_s, instructions, pid, restored_json, recorded_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    golden.machine, key, bytes(golden.stdout), bytes(golden.stderr),
                    _golden_status(golden), golden.signal, float(golden.host_s),
                    float(golden.guest_s), golden.instructions, golden.pid,
                    json.dumps(list(golden.restored_s)), _now(),
                ),
            )  # fmt: skip
            row = _golden_row(conn, golden.machine, key, self._version)
        assert row is not None
        return row

    def golden(self, argv: Sequence[str], *, machine: str = DEFAULT_MACHINE) -> GoldenRun | None:
        """The stored golden run of `machine` running `argv`, or None."""
        key = _argv_json(argv)
        with self._read() as conn:
            return _golden_row(conn, machine, key, self._version)

    # ------------------------------------------------------------------ experiments

    def record(
        self,
        experiment_id: int,
        stratum: str,
        record: ExperimentRecord,
        *,
        worker: str,
        started_at: float,
        finished_at: float,
    ) -> None:
        """Store one experiment whole (experiment, injections, outcome, the other machines'
        runs, the storm), committed on return.

        `started_at` and `finished_at` are Unix times in seconds. DuplicateExperiment if
        `experiment_id` is already stored (the stored one is kept, nothing is written).
        """
        _int64("experiment id", experiment_id)
        _int64("seed", record.seed)
        spec_json = json.dumps(record.spec)
        latency = record.latency
        injections = [
            _injection_params(
                experiment_id, ordinal, injection, record.traffic if ordinal == 0 else None
            )
            for ordinal, injection in enumerate(record.injections)
        ]
        judged = record.result
        with self._write() as conn:
            spec_id = self._spec_ids.get(spec_json)
            if spec_id is None:
                conn.execute(
                    "INSERT OR IGNORE INTO fault_spec (spec_json) VALUES (?)", (spec_json,)
                )
                spec_id = int(
                    conn.execute(
                        "SELECT spec_id FROM fault_spec WHERE spec_json = ?", (spec_json,)
                    ).fetchone()[0]
                )
            try:
                conn.execute(
                    "INSERT INTO experiment (experiment_id, stratum, seed, idx, spec_id, worker, "
                    "started_at, finished_at, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        experiment_id, stratum, record.seed, record.index, spec_id, worker,
                        float(started_at), float(finished_at),
                        float(finished_at) - float(started_at),
                    ),
                )  # fmt: skip
            except sqlite3.IntegrityError as exc:
                if "experiment.experiment_id" in str(exc):
                    raise DuplicateExperiment(experiment_id) from None
                raise
            conn.executemany(_INSERT_INJECTION, injections)
            conn.execute(
                "INSERT INTO outcome (experiment_id, class, reason, cause, evidence, "
                "latency_value, latency_unit, activation, output, stderr, exit_status, signal, "
                "phases_json, machine) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    experiment_id, judged.outcome.value, judged.reason, judged.cause,
                    judged.evidence, None if latency is None else latency.value,
                    None if latency is None else latency.unit.value, record.activation.value,
                    judged.output, judged.stderr, judged.exit_status, judged.signal,
                    json.dumps(dict(record.phases_s)), judged.machine,
                ),
            )  # fmt: skip
            conn.executemany(
                "INSERT INTO machine_run (experiment_id, machine, class, reason, cause, "
                "evidence, exit_status, signal, output, stderr) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        experiment_id, run.machine, run.outcome.value, run.reason, run.cause,
                        run.evidence, run.exit_status, run.signal, run.output, run.stderr,
                    )
                    for run in record.machines
                    if run.machine != judged.machine
                ],
            )  # fmt: skip
            storm = record.storm
            if storm is not None:
                conn.execute(
                    "INSERT INTO storm (experiment_id, region, schedule, flips, guest_s, "
                    "real_world_s, max_error_s, mean_error_s, first_flip_error_s, guest_time, "
                    "attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        experiment_id, storm.region, storm.schedule, storm.flips, storm.guest_s,
                        storm.real_world_s, storm.max_error_s, storm.mean_error_s,
                        storm.first_flip_error_s, storm.guest_time, storm.attempts,
                    ),
                )  # fmt: skip
        self._spec_ids[spec_json] = spec_id  # committed

    def forget_infra_failures(self) -> list[int]:
        """Delete every experiment given up as lost to the infrastructure (`infra-failure`:
        no outcome of its fault), in one transaction, so that it runs again; their ids."""
        with self._write() as conn:
            ids = [
                int(row[0])
                for row in conn.execute(
                    "SELECT experiment_id FROM outcome WHERE class = ? ORDER BY experiment_id",
                    (Outcome.INFRA_FAILURE.value,),
                )
            ]
            for table in ("storm", "machine_run", "injection", "outcome", "experiment"):
                conn.executemany(
                    f"DELETE FROM {table} WHERE experiment_id = ?",  # noqa: S608 (constants)
                    [(i,) for i in ids],
                )
        return ids

    def has(self, experiment_id: int) -> bool:
        """Whether `experiment_id` is recorded."""
        with self._read() as conn:
            found = conn.execute(
                "SELECT 1 FROM experiment WHERE experiment_id = ?", (experiment_id,)
            ).fetchone()
        return found is not None

    def done_ids(self) -> set[int]:
        """The recorded experiment ids."""
        with self._read() as conn:
            return {int(row[0]) for row in conn.execute("SELECT experiment_id FROM experiment")}

    def count(self) -> int:
        """How many experiments are recorded (not-injected ones included)."""
        with self._read() as conn:
            return int(conn.execute("SELECT count(*) FROM experiment").fetchone()[0])

    def outcome_counts(self, *, stratum: str | None = None) -> dict[str, int]:
        """Experiments per outcome value, every Outcome present (zeros included), in enum order.

        Only those of `stratum` if given.
        """
        query = (
            "SELECT o.class, count(*) FROM outcome AS o "
            "JOIN experiment AS e ON e.experiment_id = o.experiment_id"
        )
        params: tuple[str, ...] = ()
        if stratum is not None:
            query += " WHERE e.stratum = ?"
            params = (stratum,)
        with self._read() as conn:
            found = {str(name): int(n) for name, n in conn.execute(query + " GROUP BY 1", params)}
        return _with_zeros(found)

    def counts_by_stratum(self) -> dict[str, dict[str, int]]:
        """`outcome_counts` of every recorded stratum, strata sorted by name."""
        found: dict[str, dict[str, int]] = {}
        with self._read() as conn:
            for stratum, name, n in conn.execute(
                "SELECT e.stratum, o.class, count(*) FROM outcome AS o "
                "JOIN experiment AS e ON e.experiment_id = o.experiment_id "
                "GROUP BY 1, 2 ORDER BY 1"
            ):
                found.setdefault(str(stratum), {})[str(name)] = int(n)
        return {stratum: _with_zeros(counts) for stratum, counts in found.items()}

    def rows(self) -> Iterator[dict[str, object]]:
        """One flat dict per experiment, keys `COLUMN_NAMES` in order, by experiment id.

        Fetched in chunks of ROW_CHUNK rows, each a consistent snapshot; no transaction stays
        open between chunks, so a slow consumer never holds up the writer. Experiments
        committed during the iteration appear if they fall in a chunk fetched after the commit.
        `flips`, `storm_s` and `real_world_s` are None except for storm experiments.
        """
        start = _INT64_MIN
        while True:
            with self._read() as conn:
                query = (
                    _ROWS_QUERY
                    if self._version >= _MACHINES_VERSION
                    else _ROWS_QUERY_V2
                    if self._version >= _STORM_VERSION
                    else _ROWS_QUERY_V1
                )
                chunk = conn.execute(query, (start, ROW_CHUNK)).fetchall()
            for values in chunk:
                yield _row(values)
            last = int(chunk[-1][0]) if chunk else _INT64_MAX
            if len(chunk) < ROW_CHUNK or last == _INT64_MAX:
                return
            start = last + 1

    def load(self, experiment_id: int) -> ExperimentRecord | None:
        """The stored record rebuilt (every injection, every machine's run, the storm), or
        None if not recorded. It equals the record given to `record()`."""
        with self._read() as conn:
            cursor = conn.cursor()
            cursor.row_factory = sqlite3.Row
            query = _LOAD_QUERY if self._version >= _MACHINES_VERSION else _LOAD_QUERY_OLD
            row = cursor.execute(query, (experiment_id,)).fetchone()
            injections = _injections(conn, experiment_id, self._version)
            traffic = _traffic(conn, experiment_id, self._version)
            storm = _storm(conn, experiment_id, self._version)
            others = _machine_runs(conn, experiment_id, self._version)
        if row is None or not injections:
            return None
        latency_value = row["latency_value"]
        judged_run = MachineRun(
            machine=row["judged"], outcome=Outcome(row["class"]), reason=row["reason"],
            cause=row["cause"], evidence=row["evidence"], output=row["output"],
            stderr=row["stderr"], exit_status=row["exit_status"], signal=row["signal"],
        )  # fmt: skip
        return ExperimentRecord(
            index=row["idx"],
            seed=row["seed"],
            spec=json.loads(row["spec_json"]),
            injections=injections,
            machines=tuple(sorted((judged_run, *others), key=lambda run: run.machine)),
            judged=judged_run.machine,
            latency=None
            if latency_value is None
            else Latency(latency_value, LatencyUnit(row["latency_unit"])),
            activation=Activation(row["activation"]),
            phases_s=json.loads(row["phases_json"]),
            storm=storm,
            traffic=traffic,
        )

    def injections(self, experiment_id: int) -> tuple[Injection, ...]:
        """Every injection of the experiment in order (empty if not recorded)."""
        with self._read() as conn:
            return _injections(conn, experiment_id, self._version)

    def record_json(self, experiment_id: int) -> dict[str, Any] | None:
        """`load(experiment_id).to_json()` (the `vmfault inject --json` shape), or None."""
        record = self.load(experiment_id)
        return None if record is None else record.to_json()

    # ------------------------------------------------------------------ browsing

    def data_version(self) -> int:
        """SQLite's `PRAGMA data_version` of this connection: it changes whenever another
        connection commits, and costs no read of the tables (a cheap change detector)."""
        with self._lock, _translated(self.path):
            return int(self._connection().execute("PRAGMA data_version").fetchone()[0])

    def rows_for(self, experiment_ids: Iterable[int]) -> list[dict[str, object]]:
        """The analysis rows (as `rows()` yields them) of the recorded ones among
        `experiment_ids`, by experiment id, in one read transaction."""
        wanted = json.dumps(sorted({int(i) for i in experiment_ids}))
        with self._read() as conn:
            where = "WHERE e.experiment_id IN (SELECT value FROM json_each(?))"
            query = f"{_rows_select(self._version)}{where}\nORDER BY e.experiment_id"
            return [_row(values) for values in conn.execute(query, (wanted,))]

    def experiment_page(
        self,
        found: ExperimentFilter = ExperimentFilter(),  # noqa: B008 (frozen, never changed)
        *,
        offset: int = 0,
        limit: int = 50,
        newest_first: bool = False,
    ) -> ExperimentPage:
        """One page of the analysis rows matching `found`, by experiment id (or, with
        `newest_first`, by the time they finished, latest first), and how many match in all;
        one read transaction. `limit` is capped at PAGE_MAX_ROWS."""
        offset = max(0, int(offset))
        limit = max(0, min(int(limit), PAGE_MAX_ROWS))
        with self._read() as conn:
            where, params = _filter_clause(found, self._version)
            total = int(conn.execute(_COUNT_QUERY + where, params).fetchone()[0])
            order = (
                "e.finished_at DESC, e.experiment_id DESC" if newest_first else "e.experiment_id"
            )
            query = f"{_rows_select(self._version)}{where}\nORDER BY {order} LIMIT ? OFFSET ?"
            rows = [_row(values) for values in conn.execute(query, (*params, limit, offset))]
        return ExperimentPage(found, total, offset, limit, tuple(rows))

    def filter_values(self) -> dict[str, dict[str, int]]:
        """What the experiments can be filtered by, with how many experiments have each
        value: `stratum`, `outcome`, `cause` (crash causes and the like; experiments without
        one left out) and `machine` (judged, or faulted); values sorted by name."""
        found: dict[str, dict[str, int]] = {}
        with self._read() as conn:
            machines = (
                "SELECT machine, count(*) FROM (SELECT experiment_id, machine FROM outcome "
                "UNION SELECT experiment_id, machine FROM injection) GROUP BY 1 ORDER BY 1"
                if self._version >= _MACHINES_VERSION
                else f"SELECT '{DEFAULT_MACHINE}', count(*) FROM experiment "  # noqa: S608
                "HAVING count(*) > 0"
            )
            for name, query in (
                ("stratum", "SELECT stratum, count(*) FROM experiment GROUP BY 1 ORDER BY 1"),
                ("outcome", "SELECT class, count(*) FROM outcome GROUP BY 1 ORDER BY 1"),
                (
                    "cause",
                    "SELECT cause, count(*) FROM outcome WHERE cause IS NOT NULL "
                    "GROUP BY 1 ORDER BY 1",
                ),
                ("machine", machines),
            ):
                found[name] = {str(value): int(n) for value, n in conn.execute(query)}
        return found

    def finish_times(self, limit: int) -> list[float]:
        """The Unix times (s) the latest `limit` experiments finished, latest first."""
        with self._read() as conn:
            return [
                float(row[0])
                for row in conn.execute(
                    "SELECT finished_at FROM experiment ORDER BY finished_at DESC LIMIT ?",
                    (max(0, int(limit)),),
                )
            ]

    def finished_since(self, since: float) -> set[int]:
        """The ids of the experiments that finished at or after Unix time `since` (s)."""
        with self._read() as conn:
            return {
                int(row[0])
                for row in conn.execute(
                    "SELECT experiment_id FROM experiment WHERE finished_at >= ?", (since,)
                )
            }

    def worker_activity(self, *, since: float | None = None) -> list[WorkerActivity]:
        """What each worker has recorded so far (only the experiments started at or after
        Unix time `since`, if given: one run of a resumed campaign, whose workers have the
        names of the run before), workers in the order they first started."""
        with self._read() as conn:
            rows = conn.execute(
                "SELECT e.worker, a.n, a.first, a.last, a.mean, e.experiment_id, o.class "
                "FROM (SELECT worker, count(*) AS n, min(started_at) AS first, "
                "max(finished_at) AS last, avg(duration_s) AS mean "
                "FROM experiment WHERE started_at >= ? GROUP BY worker) AS a "
                "JOIN experiment AS e ON e.worker = a.worker AND e.finished_at = a.last "
                "JOIN outcome AS o ON o.experiment_id = e.experiment_id "
                "ORDER BY a.first, e.worker, e.experiment_id DESC",
                (float("-inf") if since is None else float(since),),
            ).fetchall()
        found: dict[str, WorkerActivity] = {}
        for worker, n, first, last, mean, experiment_id, outcome in rows:
            found.setdefault(
                str(worker),
                WorkerActivity(
                    worker=str(worker), experiments=int(n), first_started_at=float(first),
                    last_finished_at=float(last), mean_duration_s=float(mean),
                    last_experiment=int(experiment_id), last_outcome=str(outcome),
                ),
            )  # fmt: skip
        return list(found.values())

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Close the connection and release the writer lock; idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._writer is not None:
                self._writer.release()
                self._writer = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "read-only" if self.readonly else "writer"
        return f"SQLiteStore({str(self.path)!r}, {state})"


def _argv_json(argv: Sequence[str]) -> str:
    if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
        raise TypeError(f"argv must be a non-empty sequence of str, not {argv!r}")
    return json.dumps(list(argv))


def _golden_row(conn: sqlite3.Connection, machine: str, key: str, version: int) -> GoldenRun | None:
    if version >= _MACHINES_VERSION:
        row = conn.execute(
            "SELECT stdout, stderr, exit_status, signal, host_s, guest_s, instructions, pid, "
            "restored_json, recorded_at FROM golden WHERE machine = ? AND argv_json = ?",
            (machine, key),
        ).fetchone()
    elif machine == DEFAULT_MACHINE:
        row = conn.execute(
            "SELECT stdout, stderr, exit_status, signal, duration_s, NULL, instructions, NULL, "
            "NULL, recorded_at FROM golden WHERE argv_json = ?",
            (key,),
        ).fetchone()
    else:
        row = None
    if row is None:
        return None
    (stdout, stderr, exit_status, signal, host_s, guest_s, instructions, pid, restored,
     recorded_at) = row  # fmt: skip
    return GoldenRun(
        machine=machine, argv=tuple(json.loads(key)), stdout=bytes(stdout),
        stderr=bytes(stderr), exit_code=exit_status if signal is None else None,
        signal=signal, guest_s=0.0 if guest_s is None else float(guest_s),
        host_s=float(host_s), instructions=instructions, pid=pid, recorded_at=recorded_at,
        restored_s=tuple(float(s) for s in json.loads(restored)) if restored else (),
    )  # fmt: skip


def _golden_status(golden: GoldenRun) -> int | None:
    """The exit status column of a golden run: None for a daemon stopped while it ran."""
    if golden.exit_code is None and golden.signal is None:
        return None
    return golden.exit_status


def _injection_params(
    experiment_id: int, ordinal: int, injection: Injection, traffic: Traffic | None = None
) -> tuple[object, ...]:
    """The row of one injection. The experiment's traffic (a testbed with a network) rides
    in the first injection's `detail_json` under TRAFFIC_KEY: no column of its own."""
    fields = injection.fields()
    detail = {k: v for k, v in fields.items() if k not in _INJECTION_COLUMNS}
    if traffic is not None:
        detail[TRAFFIC_KEY] = traffic.to_json()
    for name in _HEX_COLUMNS:
        fields[name] = _hex(fields.get(name))
    user_mode = fields["user_mode"]
    return (
        experiment_id, ordinal, injection.target, injection.location, fields.get("register"),
        fields["address"], fields["virtual"], injection.width, fields["mask"], injection.mode,
        fields["before"], fields["after"], fields["readback"], int(injection.injected),
        injection.reason, fields["trigger"], fields["time_s"], fields["instructions"],
        fields["rip"], None if user_mode is None else int(user_mode), injection.machine,
        injection.kind, json.dumps(detail) if detail else None, fields["progress"],
    )  # fmt: skip


def _old_kind(values: Mapping[str, Any]) -> str:
    """The kind of an injection stored before kinds were (schema 1 and 2)."""
    target = str(values["target"])
    if str(values["trigger"]).startswith("storm:"):
        return "flip"
    if target.startswith("instruction:"):
        return "instruction"
    if target.startswith("register:") and values["register"] is not None:
        return "register"
    if target.startswith(("memory", "kernel-code:")) and values["address"] is not None:
        return "memory"
    return "fault"


def _injections(
    conn: sqlite3.Connection, experiment_id: int, version: int
) -> tuple[Injection, ...]:
    machines = version >= _MACHINES_VERSION
    query = _SELECT_INJECTIONS.format(
        machine_columns="machine, kind, detail_json, progress"
        if machines
        else f"'{DEFAULT_MACHINE}' AS machine, NULL AS kind, NULL AS detail_json, NULL AS progress"
    )
    cursor = conn.cursor()
    cursor.row_factory = sqlite3.Row
    found = []
    for row in cursor.execute(query, (experiment_id,)):
        values: dict[str, Any] = {key: row[key] for key in row.keys()}  # noqa: SIM118
        for name in _HEX_COLUMNS:
            values[name] = _unhex(values[name])
        values["injected"] = bool(values["injected"])
        values["user_mode"] = _opt_bool(values["user_mode"])
        detail = values.pop("detail_json")
        if detail:
            values.update(json.loads(detail))
            values.pop(TRAFFIC_KEY, None)
        kind = values.pop("kind") or _old_kind(values)
        if kind == "instruction" and "op" not in values:  # schema 1 and 2 kept no detail
            values["op"] = str(values["target"]).partition(":")[2].partition("@")[0]
        found.append(injection_from_fields(kind, values))
    return tuple(found)


def _machine_runs(
    conn: sqlite3.Connection, experiment_id: int, version: int
) -> tuple[MachineRun, ...]:
    if version < _MACHINES_VERSION:
        return ()
    rows = conn.execute(
        "SELECT machine, class, reason, cause, evidence, exit_status, signal, output, stderr "
        "FROM machine_run WHERE experiment_id = ? ORDER BY machine",
        (experiment_id,),
    ).fetchall()
    return tuple(
        MachineRun(
            machine=row[0],
            outcome=Outcome(row[1]),
            reason=row[2],
            cause=row[3],
            evidence=row[4],
            exit_status=row[5],
            signal=row[6],
            output=row[7],
            stderr=row[8],
        )
        for row in rows
    )


def _traffic(conn: sqlite3.Connection, experiment_id: int, version: int) -> Traffic | None:
    if version < _MACHINES_VERSION:
        return None
    row = conn.execute(
        "SELECT detail_json FROM injection WHERE experiment_id = ? AND ordinal = 0",
        (experiment_id,),
    ).fetchone()
    if row is None or not row[0]:
        return None
    data = json.loads(row[0]).get(TRAFFIC_KEY)
    return None if data is None else Traffic.from_json(data)


def _storm(conn: sqlite3.Connection, experiment_id: int, version: int) -> StormSummary | None:
    if version < _STORM_VERSION:
        return None
    query = _SELECT_STORM.format(attempts="attempts" if version >= _MACHINES_VERSION else "1")
    row = conn.execute(query, (experiment_id,)).fetchone()
    if row is None:
        return None
    (region, schedule, flips, guest_s, real_world_s, max_error_s, mean_error_s, first, unit,
     attempts) = row  # fmt: skip
    return StormSummary(
        region=region, schedule=schedule, flips=flips, guest_s=guest_s,
        real_world_s=real_world_s, max_error_s=max_error_s, mean_error_s=mean_error_s,
        first_flip_error_s=first, guest_time=unit, attempts=attempts,
    )  # fmt: skip


def _row(values: Sequence[object]) -> dict[str, object]:
    """One analysis row from the values of the rows query, booleans made bool; the disk
    columns come from the first injection's detail (the query's last value)."""
    row: dict[str, object] = dict(zip(_SELECTED_COLUMNS, values[:-1], strict=True))
    for position in _BOOL_COLUMNS:
        value = values[position]
        row[COLUMN_NAMES[position]] = None if value is None else bool(value)
    detail = values[-1]
    row.update(disk_columns(json.loads(detail) if isinstance(detail, str) and detail else None))
    return row


def _with_zeros(found: Mapping[str, int]) -> dict[str, int]:
    counts = {outcome.value: found.get(outcome.value, 0) for outcome in Outcome}
    counts.update({name: n for name, n in found.items() if name not in counts})
    return counts
