"""The results store: every field stored and reloaded, duplicates, readers beside the writer,
a writer killed mid-campaign, and files that are not campaign databases."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import vmfault.store.sqlite as sqlite_backend
from vmfault.classify import Activation, Latency, LatencyUnit, Outcome
from vmfault.errors import UsageError, VmfaultError
from vmfault.experiment import ExperimentRecord, Injection, StormSummary
from vmfault.store import (
    COLUMN_NAMES,
    SCHEMA_VERSION,
    DuplicateExperiment,
    GoldenMismatchError,
    ResultStore,
    SQLiteStore,
    StoreError,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

SPEC = {"target": "register", "registers": ["rax", "xmm0"], "bits": 1, "trigger": "time"}
NAME = "checksum-registers"
SEED = 20240501
SPEC_JSON = json.dumps({"campaign": {"name": NAME}, "faults": [SPEC]})
FILE_SHA256 = "ab" * 32
TOTAL = 50
PROVENANCE = {
    "tool_version": "0.1.0",
    "qemu_version": "QEMU emulator version 8.2.2",
    "image_hash": "cd" * 32,
    "campaign_file_sha256": FILE_SHA256,
    "host": "bench-1",
    "python": "3.11.7",
}

XMM_BEFORE = 0x0123_4567_89AB_CDEF_FEDC_BA98_7654_3210
"""A 128-bit register value: no SQLite INTEGER holds it."""
KERNEL_ADDRESS = 0xFFFF_8880_0123_4000
"""Above 2**63: no signed 64-bit integer holds it either."""


def create_store(
    path: Path,
    *,
    campaign_name: str = NAME,
    seed: int = SEED,
    spec_json: str = SPEC_JSON,
    file_sha256: str = FILE_SHA256,
    total_planned: int = TOTAL,
    provenance: Mapping[str, str] = PROVENANCE,
) -> SQLiteStore:
    """A writer on a database of the test campaign."""
    return SQLiteStore.create(
        path,
        campaign_name=campaign_name,
        seed=seed,
        spec_json=spec_json,
        file_sha256=file_sha256,
        total_planned=total_planned,
        provenance=provenance,
    )


def make_record(i: int) -> ExperimentRecord:
    """Experiment `i`: a 128-bit xmm fault, a kernel-memory fault or a not-injected one, with
    every optional field both set and unset across the ids."""
    kind = i % 3
    if kind == 0:
        mask = 1 << 127 | 1 << (i % 64)
        injection = Injection(
            target="register",
            location="xmm0",
            width=128,
            mask=mask,
            mode="flip",
            injected=True,
            register="xmm0",
            before=XMM_BEFORE,
            after=XMM_BEFORE ^ mask,
            readback=XMM_BEFORE ^ mask,
            trigger="time:0.5",
            time_s=0.25 + i / 1000,
            instructions=1_000_000 + i,
            rip=0xFFFF_FFFF_8100_0000 + i,
            user_mode=False,
        )
        outcome, latency = Outcome.CRASH, Latency(1234 + i, LatencyUnit.INSTRUCTIONS)
    elif kind == 1:
        injection = Injection(
            target="memory",
            location="kernel-data",
            width=8,
            mask=0x80,
            mode="flip",
            injected=True,
            address=KERNEL_ADDRESS + i,
            virtual=0xFFFF_C900_0000_0000 + i,
            before=0x00,
            after=0x80,
            readback=0x80,
            trigger="instructions:5000",
            instructions=5000,
            rip=0x4010_00 + i,
            user_mode=True,
        )
        outcome, latency = Outcome.SDC, None
    else:
        injection = Injection(
            target="register",
            location="st0",
            width=80,
            mask=1 << 79,
            mode="flip",
            injected=False,
            reason="the workload exited before the trigger",
        )
        outcome, latency = Outcome.NOT_INJECTED, None
    return ExperimentRecord(
        index=i,
        seed=20240501 + i,
        spec=SPEC,
        injection=injection,
        outcome=outcome,
        reason=f'reason {i}: stdout differs, "quoted", comma, ünïcode ☃\nsecond line',
        cause="page-fault" if outcome is Outcome.CRASH else None,
        evidence="BUG: unable to handle page fault for address: 0000000000000008" if kind else "",
        latency=latency,
        activation=Activation.MANIFESTED if injection.injected else Activation.NOT_ACTIVATED,
        output=f"checksum: {i:#018x}\r\nline\x00with NUL\n",
        stderr="" if kind else "checksum: DETECTED mismatch\n",
        exit_status=None if kind == 0 else 0,
        signal="SIGSEGV" if kind == 0 else None,
        phases_s={"restore": 0.01 + i / 7, "to_trigger": 1 / 3, "observe": 2.5},
    )


def record(store: ResultStore, i: int, stratum: str | None = None) -> ExperimentRecord:
    """Record experiment `i` (of stratum `s<i % 2>` unless given); returns its record."""
    rec = make_record(i)
    store.record(
        i,
        stratum if stratum is not None else f"s{i % 2}",
        rec,
        worker=f"worker-{i % 4}",
        started_at=1_714_560_000.0 + i,
        finished_at=1_714_560_000.0 + i + 0.75,
    )
    return rec


STORM_SPEC = {"target": "storm", "region": "process", "schedule": "rate"}
STORM_COLUMNS = ("flips", "storm_s", "real_world_s")


def make_storm_record(i: int) -> ExperimentRecord:
    """Storm experiment `i`: three process-memory flips (the first `injection`, the second
    not held), rate-model timing (real_world_s set) for even ids, fixed gaps (None) for odd."""
    flips = tuple(
        Injection(
            target="memory",
            location="process",
            width=8,
            mask=1 << bit,
            mode="flip",
            injected=n != 1,
            reason="" if n != 1 else "read back 0x0, wrote 0x20",
            address=0x1234_5000 + 64 * n + i,
            virtual=0x7FFF_F000_0000 + 64 * n + i,
            before=0x00,
            after=1 << bit,
            readback=0x00 if n == 1 else 1 << bit,
            trigger=f"storm:{n}",
            time_s=0.001 * (n + 1) + i / 1e6,
            instructions=1_000_000 * (n + 1),
            rip=0x4010_00 + n,
            user_mode=True,
        )
        for n, bit in enumerate((3, 5, 7))
    )
    rate = i % 2 == 0
    storm = StormSummary(
        region="process",
        schedule="rate:1e-6/bit/h" if rate else "gaps:0.001",
        flips=len(flips),
        guest_s=0.003 + i / 1e6,
        real_world_s=3600.0 * (i + 1) / 7 if rate else None,
        max_error_s=1.25e-5,
        mean_error_s=1e-5 / 3,
        first_flip_error_s=2e-7,
        guest_time="instructions" if rate else "running-time",
    )
    return ExperimentRecord(
        index=i,
        seed=20240501 + i,
        spec=STORM_SPEC,
        injection=flips[0],
        outcome=Outcome.CRASH,
        reason=f"storm {i}: SIGSEGV",
        cause="SIGSEGV",
        evidence="checksum: killed by SIGSEGV",
        latency=Latency(5000 + i, LatencyUnit.GUEST_NS),
        activation=Activation.MANIFESTED,
        output="",
        stderr="",
        exit_status=None,
        signal="SIGSEGV",
        phases_s={"restore": 0.01, "storm": 0.5, "observe": 1 / 3},
        extra_injections=flips[1:],
        storm=storm,
    )


def record_storm(store: ResultStore, i: int) -> ExperimentRecord:
    """Record storm experiment `i` (stratum `storm`) as the campaign runner does."""
    rec = make_storm_record(i)
    store.record(
        i,
        "storm",
        rec,
        worker="worker-storm",
        started_at=1_714_560_000.0 + i,
        finished_at=1_714_560_001.0 + i,
        extra_injections=rec.extra_injections,
    )
    return rec


def _created(path: Path) -> SQLiteStore:
    return create_store(path)


def _reopened(path: Path) -> SQLiteStore:
    create_store(path).close()
    return SQLiteStore.open(path)


def _created_again(path: Path) -> SQLiteStore:
    create_store(path).close()
    return create_store(path)


@pytest.fixture(
    params=[_created, _reopened, _created_again], ids=["created", "reopened", "created-again"]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    """A writer on a fresh database, obtained each way a campaign obtains one."""
    factory: Callable[[Path], SQLiteStore] = request.param
    opened: ResultStore = factory(tmp_path / "campaign.db")
    with opened:
        yield opened


# --------------------------------------------------------------------- behaviour of any store


def test_campaign_info_round_trips(store: ResultStore) -> None:
    info = store.campaign_info()
    assert (info.name, info.seed, info.file_sha256, info.total_planned) == (
        NAME,
        SEED,
        FILE_SHA256,
        TOTAL,
    )
    assert info.spec_json == SPEC_JSON
    assert info.spec == json.loads(SPEC_JSON)
    assert dict(info.provenance) == PROVENANCE
    assert info.schema_version == SCHEMA_VERSION
    created = datetime.fromisoformat(info.created_at)
    assert created.utcoffset() == timedelta(0)


def test_every_field_reloads_equal(store: ResultStore) -> None:
    records = {i: record(store, i) for i in range(9)}
    for i, rec in records.items():
        assert store.load(i) == rec
        assert store.record_json(i) == rec.to_json()
        assert store.injections(i) == (rec.injection,)
    wide = store.load(0)
    assert wide is not None
    assert wide.injection.before == XMM_BEFORE
    assert wide.injection.mask == 1 << 127 | 1
    memory = store.load(1)
    assert memory is not None
    assert memory.injection.address == KERNEL_ADDRESS + 1


def test_several_injections_keep_their_order(store: ResultStore) -> None:
    rec = make_record(0)
    extra = (make_record(1).injection, make_record(2).injection)
    store.record(7, "s", rec, worker="w", started_at=1.0, finished_at=2.0, extra_injections=extra)
    assert store.injections(7) == (rec.injection, *extra)
    assert store.load(7) == rec
    data = store.record_json(7)
    assert data is not None
    assert data["extra_injections"] == [injection.to_json() for injection in extra]
    row = next(store.rows())
    assert row["injections"] == 3
    assert row["location"] == "xmm0"


def test_a_storm_round_trips(store: ResultStore) -> None:
    storms = {i: record_storm(store, i) for i in (20, 21)}
    others = {i: record(store, i) for i in (0, 1)}
    for i, rec in storms.items():
        assert rec.storm is not None
        loaded = store.load(i)
        assert loaded is not None
        assert loaded == rec
        assert loaded.injection == rec.injection  # the first flip
        assert store.injections(i) == (rec.injection, *rec.extra_injections)
        assert len(store.injections(i)) == rec.storm.flips == 3
        assert store.record_json(i) == rec.to_json()
    fixed = store.load(21)
    assert fixed is not None and fixed.storm is not None
    assert fixed.storm.real_world_s is None
    for i, rec in others.items():
        loaded = store.load(i)
        assert loaded is not None
        assert loaded == rec
        assert loaded.storm is None and loaded.extra_injections == ()
    assert COLUMN_NAMES[-3:] == STORM_COLUMNS
    rows = {row["experiment_id"]: row for row in store.rows()}
    for i, rec in storms.items():
        assert rec.storm is not None
        assert rows[i]["injections"] == 3
        assert rows[i]["location"] == "process"
        assert [rows[i][name] for name in STORM_COLUMNS] == [
            3,
            rec.storm.guest_s,
            rec.storm.real_world_s,
        ]
    assert rows[20]["real_world_s"] == 3600.0 * 21 / 7
    for i in others:
        assert [rows[i][name] for name in STORM_COLUMNS] == [None, None, None]


def test_a_failed_storm_record_leaves_nothing(store: ResultStore) -> None:
    rec = make_storm_record(20)
    assert rec.storm is not None
    nameless = dataclasses.replace(rec.storm, region=None)  # type: ignore[arg-type]
    bad = dataclasses.replace(rec, storm=nameless)
    with pytest.raises(StoreError, match="NOT NULL"):
        store.record(
            20,
            "storm",
            bad,
            worker="w",
            started_at=0.0,
            finished_at=1.0,
            extra_injections=bad.extra_injections,
        )
    assert not store.has(20)
    assert store.injections(20) == ()
    record_storm(store, 20)
    assert store.load(20) == rec


def test_duplicate_id_raises_and_keeps_the_first(store: ResultStore) -> None:
    first = record(store, 4)
    other = dataclasses.replace(make_record(5), reason="another")
    with pytest.raises(DuplicateExperiment) as caught:
        store.record(4, "s9", other, worker="w", started_at=0.0, finished_at=1.0)
    assert isinstance(caught.value, VmfaultError)
    assert caught.value.experiment_id == 4
    assert store.load(4) == first
    assert store.count() == 1
    assert store.injections(4) == (first.injection,)
    assert [row["stratum"] for row in store.rows()] == ["s0"]


def test_done_ids_count_and_has(store: ResultStore) -> None:
    assert store.done_ids() == set()
    assert store.count() == 0
    for i in (3, 10, 11):
        record(store, i)
    assert store.done_ids() == {3, 10, 11}
    assert store.count() == 3
    assert store.has(10)
    assert not store.has(4)


def test_missing_experiment_is_none(store: ResultStore) -> None:
    assert store.load(99) is None
    assert store.record_json(99) is None
    assert store.injections(99) == ()


def test_outcome_counts_include_every_outcome_in_order(store: ResultStore) -> None:
    empty = store.outcome_counts()
    assert list(empty) == [outcome.value for outcome in Outcome]
    assert set(empty.values()) == {0}
    for i in range(7):  # kinds 0,1,2,0,1,2,0: crash x3, sdc x2, not-injected x2
        record(store, i, stratum="regs" if i < 4 else "mem")
    counts = store.outcome_counts()
    assert list(counts) == [outcome.value for outcome in Outcome]
    assert [counts[name] for name in ("crash", "sdc", "not-injected", "benign")] == [3, 2, 2, 0]
    regs = store.outcome_counts(stratum="regs")
    assert (regs["crash"], regs["sdc"], regs["not-injected"]) == (2, 1, 1)
    assert sum(store.outcome_counts(stratum="nowhere").values()) == 0
    by_stratum = store.counts_by_stratum()
    assert list(by_stratum) == ["mem", "regs"]
    assert by_stratum["regs"] == regs
    assert by_stratum["mem"] == store.outcome_counts(stratum="mem")


def test_rows_are_flat_ordered_and_complete(
    store: ResultStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "ROW_CHUNK", 4)
    ids = [12, 0, 5, 3, 7, 1, 9, 2, 4, 11]  # recorded out of order; 10 ids span three chunks
    for i in ids:
        record(store, i)
    rows = list(store.rows())
    assert [row["experiment_id"] for row in rows] == sorted(ids)
    assert all(tuple(row) == COLUMN_NAMES for row in rows)
    wide = rows[0]
    rec = make_record(0)
    assert wide == {
        "experiment_id": 0,
        "stratum": "s0",
        "seed": rec.seed,
        "index": 0,
        "outcome": "crash",
        "reason": rec.reason,
        "cause": "page-fault",
        "evidence": "",
        "activation": "manifested",
        "latency_value": 1234,
        "latency_unit": "instructions",
        "exit_status": None,
        "signal": "SIGSEGV",
        "injected": True,
        "injections": 1,
        "target": "register",
        "location": "xmm0",
        "register": "xmm0",
        "address": None,
        "virtual": None,
        "width": 128,
        "mask": "0x80000000000000000000000000000001",
        "mode": "flip",
        "before": "0x123456789abcdeffedcba9876543210",
        "after": f"{XMM_BEFORE ^ (1 << 127 | 1):#x}",
        "readback": f"{XMM_BEFORE ^ (1 << 127 | 1):#x}",
        "injection_reason": "",
        "trigger": "time:0.5",
        "time_s": 0.25,
        "instructions": 1_000_000,
        "rip": "0xffffffff81000000",
        "user_mode": False,
        "worker": "worker-0",
        "started_at": 1_714_560_000.0,
        "finished_at": 1_714_560_000.75,
        "duration_s": 0.75,
        "phases_json": json.dumps(rec.phases_s),
        "output": rec.output,
        "stderr": rec.stderr,
        "flips": None,
        "storm_s": None,
        "real_world_s": None,
    }
    not_injected = rows[2]
    assert (not_injected["outcome"], not_injected["injected"]) == ("not-injected", False)
    assert not_injected["user_mode"] is None
    assert not_injected["injection_reason"] == "the workload exited before the trigger"
    assert all(row[name] is None for row in rows for name in STORM_COLUMNS)
    assert rows[1]["address"] == f"{KERNEL_ADDRESS + 1:#x}"
    assert rows[1]["user_mode"] is True


def test_rows_of_an_empty_store(store: ResultStore) -> None:
    assert list(store.rows()) == []


def test_golden_is_kept_once(store: ResultStore) -> None:
    argv = ["checksum", "4096"]
    assert store.golden(argv) is None
    saved = store.save_golden(
        argv,
        stdout=b"checksum: 0xdeadbeef\n\xff\x00",
        stderr=b"",
        exit_status=0,
        signal=None,
        duration_s=1.5,
        instructions=123_456_789,
    )
    assert saved.argv == ("checksum", "4096")
    assert (saved.stdout, saved.stderr, saved.exit_status, saved.signal) == (
        b"checksum: 0xdeadbeef\n\xff\x00",
        b"",
        0,
        None,
    )
    assert (saved.duration_s, saved.instructions) == (1.5, 123_456_789)
    assert store.golden(("checksum", "4096")) == saved
    assert store.golden(["checksum"]) is None
    again = store.save_golden(
        argv,
        stdout=saved.stdout,
        stderr=b"",
        exit_status=0,
        signal=None,
        duration_s=1.7,
        instructions=None,
    )
    assert again == saved
    with pytest.raises(GoldenMismatchError) as caught:
        store.save_golden(
            argv,
            stdout=b"other\n",
            stderr=b"",
            exit_status=1,
            signal=None,
            duration_s=1.0,
            instructions=None,
        )
    assert caught.value.fields == ("stdout", "exit status")
    assert store.golden(argv) == saved
    with pytest.raises(TypeError):
        store.golden("checksum")


def test_failed_record_leaves_nothing(store: ResultStore) -> None:
    bad = dataclasses.replace(make_record(0), output="lone surrogate \ud800")
    with pytest.raises(UnicodeEncodeError):
        store.record(0, "s", bad, worker="w", started_at=0.0, finished_at=1.0)
    assert not store.has(0)
    assert store.injections(0) == ()
    assert store.count() == 0
    record(store, 0)
    assert store.load(0) == make_record(0)


def test_closed_store_refuses(store: ResultStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.count()
    with pytest.raises(StoreError, match="closed"):
        record(store, 0)


# --------------------------------------------------------------------- the SQLite backend


def test_database_is_wal_and_marked(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    create_store(path).close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == sqlite_backend.APPLICATION_ID
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        assert {"campaign", "provenance", "golden", "experiment", "injection", "outcome"} <= tables
    finally:
        conn.close()


def test_create_again_is_idempotent_and_adds_provenance(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with create_store(path) as first:
        record(first, 0)
        created_at = first.campaign_info().created_at
    respaced = json.dumps(json.loads(SPEC_JSON), indent=2)
    provenance = {**PROVENANCE, "kernel_release": "6.1.0-18"}
    with create_store(path, spec_json=respaced, provenance=provenance) as again:
        info = again.campaign_info()
        assert info.created_at == created_at
        assert info.spec_json == SPEC_JSON
        assert dict(info.provenance) == provenance
        assert again.done_ids() == {0}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("campaign_name", "other"),
        ("seed", 7),
        ("spec_json", json.dumps({"faults": []})),
        ("file_sha256", "ef" * 32),
        ("total_planned", 51),
    ],
)
def test_create_refuses_another_campaign(tmp_path: Path, field: str, value: Any) -> None:
    path = tmp_path / "c.db"
    create_store(path).close()
    with pytest.raises(UsageError, match="another campaign") as caught:
        create_store(path, **{field: value})
    assert caught.value.hint
    with SQLiteStore.open_readonly(path) as reader:
        assert reader.campaign_info().name == NAME


def test_create_refuses_changed_provenance(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    create_store(path).close()
    provenance = {**PROVENANCE, "qemu_version": "QEMU 9.0.0"}
    with pytest.raises(UsageError, match="qemu_version was"):
        create_store(path, provenance=provenance)


def test_seed_must_fit_64_bits(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="64 bits"):
        create_store(tmp_path / "c.db", seed=2**64)


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    lock = tmp_path / "c.db-writer.lock"
    writer = create_store(path)
    assert lock.read_text().strip() == str(os.getpid())
    with pytest.raises(UsageError, match="already open for writing") as caught:
        SQLiteStore.open(path)
    assert str(os.getpid()) in caught.value.message
    with pytest.raises(UsageError, match="already open for writing"):
        create_store(path)
    with SQLiteStore.open_readonly(path) as reader:
        assert reader.count() == 0
    writer.close()
    assert not lock.exists()
    with SQLiteStore.open(path) as again:
        assert again.count() == 0


def test_reader_refuses_writes(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    create_store(path).close()
    with SQLiteStore.open_readonly(path) as reader:
        assert reader.readonly
        with pytest.raises(StoreError, match="read-only"):
            record(reader, 0)
        with pytest.raises(StoreError, match="read-only"):
            reader.save_golden(
                ["x"],
                stdout=b"",
                stderr=b"",
                exit_status=0,
                signal=None,
                duration_s=0.0,
                instructions=None,
            )


def test_reader_sees_each_commit_while_the_writer_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "ROW_CHUNK", 2)
    path = tmp_path / "c.db"
    with create_store(path) as writer, SQLiteStore.open_readonly(path) as reader:
        rows = reader.rows()
        for i in range(5):
            record(writer, i)
            assert reader.count() == i + 1
            assert reader.done_ids() == set(range(i + 1))
        assert next(rows)["experiment_id"] == 0
        record(writer, 5)  # the half-read iteration holds no lock: the write goes through
        assert [row["experiment_id"] for row in rows] == [1, 2, 3, 4, 5]
        assert reader.outcome_counts() == writer.outcome_counts()
        assert reader.load(5) == make_record(5)

        # Mid-transaction (experiment and injection rows written, outcome not yet): the
        # reader sees the last commit and does not wait for the writer.
        seen: list[tuple[int, bool]] = []

        def trace(statement: str) -> None:
            if statement.lstrip().startswith("INSERT INTO outcome"):
                seen.append((reader.count(), reader.has(6)))

        assert writer._conn is not None
        writer._conn.set_trace_callback(trace)
        record(writer, 6)
        writer._conn.set_trace_callback(None)
        assert seen == [(6, False)]
        assert reader.count() == 7


CHILD = """
import sys
from pathlib import Path

from tests.unit.test_store import record
from vmfault.store import SQLiteStore

store = SQLiteStore.open(Path(sys.argv[1]))
stop_at = int(sys.argv[2])
stop_statement = sys.argv[3]
current = -1


def trace(statement):
    if current == stop_at and statement.lstrip().startswith(stop_statement):
        print("stopped", flush=True)
        sys.stdin.readline()


store._conn.set_trace_callback(trace)
for i in range(50):
    current = i
    record(store, i)
    print(i, flush=True)
"""


@pytest.mark.parametrize(
    "stop_statement",
    ["BEGIN IMMEDIATE", "INSERT INTO outcome"],
    ids=["between-records", "mid-transaction"],
)
def test_sigkill_mid_campaign_loses_nothing_committed(tmp_path: Path, stop_statement: str) -> None:
    """The child records experiments 0..49 and blocks, on a pipe, as the statement
    `stop_statement` of experiment 25 starts; it is killed there."""
    path = tmp_path / "c.db"
    create_store(path).close()
    stop_at = 25
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path), str(stop_at), stop_statement],
        cwd=REPO_ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        lines = []
        while (line := child.stdout.readline().strip()) != "stopped":
            assert line, f"the child ended early: {child.communicate()[1]}"
            lines.append(line)
        assert lines == [str(i) for i in range(stop_at)]
        # The child is blocked at the start of experiment 25 or inside its transaction
        # (holding SQLite's write lock): a reader here still reads every committed record.
        with SQLiteStore.open_readonly(path) as reader:
            assert reader.done_ids() == set(range(stop_at))
        with pytest.raises(UsageError, match="already open for writing"):
            SQLiteStore.open(path)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.communicate()

    with SQLiteStore.open_readonly(path) as reader:
        assert reader.done_ids() == set(range(stop_at))
        assert all(reader.load(i) == make_record(i) for i in range(stop_at))
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        orphans = conn.execute(
            "SELECT count(*) FROM injection WHERE experiment_id NOT IN "
            "(SELECT experiment_id FROM outcome)"
        ).fetchone()[0]
        assert orphans == 0
    finally:
        conn.close()
    with SQLiteStore.open(path) as writer:
        record(writer, stop_at)
        assert writer.done_ids() == set(range(stop_at + 1))


# --------------------------------------------------------------------- files that are not ours


def _not_sqlite(path: Path) -> None:
    path.write_bytes(b"checksum,outcome\n" * 100)


def _other_application(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
    conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
    conn.commit()
    conn.close()


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _directory(path: Path) -> None:
    path.mkdir()


OPENERS: dict[str, Callable[[Path], SQLiteStore]] = {
    "open": SQLiteStore.open,
    "open_readonly": SQLiteStore.open_readonly,
    "constructor": SQLiteStore,
}


@pytest.mark.parametrize("opener", list(OPENERS))
@pytest.mark.parametrize(
    "make_bad",
    [_not_sqlite, _other_application, _empty, _directory],
    ids=["not-sqlite", "other-application", "empty", "directory"],
)
def test_opening_a_file_that_is_not_a_campaign_database(
    tmp_path: Path, opener: str, make_bad: Callable[[Path], None]
) -> None:
    path = tmp_path / "c.db"
    make_bad(path)
    before = sorted(p.name for p in tmp_path.iterdir())
    content = path.read_bytes() if path.is_file() else None
    with pytest.raises(UsageError) as caught:
        OPENERS[opener](path)
    assert caught.value.hint
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if content is not None:
        assert path.read_bytes() == content


@pytest.mark.parametrize(
    "make_bad", [_not_sqlite, _other_application, _directory], ids=["not-sqlite", "other", "dir"]
)
def test_create_refuses_a_file_that_is_not_a_campaign_database(
    tmp_path: Path, make_bad: Callable[[Path], None]
) -> None:
    path = tmp_path / "c.db"
    make_bad(path)
    content = path.read_bytes() if path.is_file() else None
    with pytest.raises(UsageError) as caught:
        create_store(path)
    assert caught.value.hint
    if content is not None:
        assert path.read_bytes() == content
    assert not (tmp_path / "c.db-writer.lock").exists()


def test_create_fills_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    path.write_bytes(b"")
    with create_store(path) as created:
        assert created.campaign_info().name == NAME


def test_missing_database(tmp_path: Path) -> None:
    for opener in OPENERS.values():
        with pytest.raises(UsageError, match="does not exist"):
            opener(tmp_path / "absent.db")
    assert list(tmp_path.iterdir()) == []


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    create_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    for opener in OPENERS.values():
        with pytest.raises(UsageError, match="newer") as caught:
            opener(path)
        assert "upgrade" in caught.value.hint


@pytest.mark.parametrize("version", [0, -1])
def test_unknown_schema_version_is_refused(tmp_path: Path, version: int) -> None:
    path = tmp_path / "c.db"
    create_store(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()
    for opener in OPENERS.values():
        with pytest.raises(UsageError, match="unknown schema version"):
            opener(path)


# --------------------------------------------------------------------- schema version 1

V1_IDS = (0, 1, 2, 3)


def make_version_1(path: Path) -> None:
    """A version-1 database (no storm table, user_version 1) holding experiments V1_IDS."""
    with create_store(path) as store:
        for i in V1_IDS:
            record(store, i)
    conn = sqlite3.connect(path)
    try:
        conn.execute("DROP TABLE storm")
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    finally:
        conn.close()
    assert schema_of(path) == (1, False)


def schema_of(path: Path) -> tuple[int, bool]:
    """The file's user_version, and whether it has a storm table."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    finally:
        conn.close()
    return version, "storm" in tables


def test_a_version_1_database_is_read_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    make_version_1(path)
    content = path.read_bytes()
    with SQLiteStore.open_readonly(path) as reader:
        assert reader.campaign_info().schema_version == 1
        assert reader.done_ids() == set(V1_IDS)
        assert all(reader.load(i) == make_record(i) for i in V1_IDS)
        assert reader.injections(0) == (make_record(0).injection,)
        rows = list(reader.rows())
        assert [row["experiment_id"] for row in rows] == list(V1_IDS)
        assert all(tuple(row) == COLUMN_NAMES for row in rows)
        assert all(row[name] is None for row in rows for name in STORM_COLUMNS)
        with pytest.raises(StoreError, match="read-only"):
            record_storm(reader, 20)
    assert path.read_bytes() == content
    assert schema_of(path) == (1, False)


@pytest.mark.parametrize("opener", [SQLiteStore.open, create_store], ids=["open", "create"])
def test_a_writer_migrates_a_version_1_database(
    tmp_path: Path, opener: Callable[[Path], SQLiteStore]
) -> None:
    path = tmp_path / "c.db"
    make_version_1(path)
    with SQLiteStore.open_readonly(path) as reader:
        assert reader.campaign_info().schema_version == 1
        with opener(path) as writer:
            assert schema_of(path) == (SCHEMA_VERSION, True)
            assert writer.campaign_info().schema_version == SCHEMA_VERSION
            assert all(writer.load(i) == make_record(i) for i in V1_IDS)
            storm = record_storm(writer, 20)
            assert writer.load(20) == storm
        # The reader opened on version 1 sees the migration and the storm recorded since.
        assert reader.campaign_info().schema_version == SCHEMA_VERSION
        assert reader.load(20) == storm
        rows = {row["experiment_id"]: row for row in reader.rows()}
        assert rows[20]["flips"] == 3
        assert all(rows[i]["flips"] is None for i in V1_IDS)
    with SQLiteStore.open(path) as again:  # a migrated database opens as it is
        assert again.count() == len(V1_IDS) + 1
    assert schema_of(path) == (SCHEMA_VERSION, True)


def test_a_failed_migration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.db"
    make_version_1(path)
    failing = (*sqlite_backend._MIGRATIONS[1], "CREATE TABLE storm (x)")
    monkeypatch.setattr(sqlite_backend, "_MIGRATIONS", {1: failing})
    with pytest.raises(StoreError, match="already exists"):
        SQLiteStore.open(path)
    assert schema_of(path) == (1, False)
    assert not (tmp_path / "c.db-writer.lock").exists()
    monkeypatch.undo()
    with SQLiteStore.open(path) as writer:
        assert writer.done_ids() == set(V1_IDS)
    assert schema_of(path) == (SCHEMA_VERSION, True)
