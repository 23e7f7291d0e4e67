"""The results store: every field stored and reloaded, every injection kind, testbeds of
several machines, golden runs per machine, duplicates, readers beside the writer, a writer
killed mid-campaign, files that are not campaign databases, and schema versions 1 and 2."""

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
from vmfault.experiment.records import (
    DEFAULT_MACHINE,
    ControlInjection,
    ExperimentRecord,
    FlipInjection,
    GoldenRun,
    Injection,
    InstructionInjection,
    MachineRun,
    MemoryInjection,
    RegisterInjection,
    StormSummary,
    TriggerPoint,
)
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

SPEC = {"target": "register:xmm0", "bits": 1, "trigger": "time"}
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
    """Experiment `i` on the one machine `guest`: a 128-bit xmm fault, a kernel-memory fault
    or a not-injected one, with every optional field both set and unset across the ids."""
    kind = i % 3
    injection: Injection
    if kind == 0:
        mask = 1 << 127 | 1 << (i % 64)
        injection = RegisterInjection(
            target="register:xmm0",
            location="xmm0",
            register="xmm0",
            width=128,
            mask=mask,
            mode="flip",
            injected=True,
            before=XMM_BEFORE,
            after=XMM_BEFORE ^ mask,
            readback=XMM_BEFORE ^ mask,
            trigger=TriggerPoint(
                spec="time:0.5",
                time_s=0.25 + i / 1000,
                instructions=1_000_000 + i,
                rip=0xFFFF_FFFF_8100_0000 + i,
                user_mode=False,
                progress=0.5 + i / 1000,
            ),
        )
        outcome, latency = Outcome.CRASH, Latency(1234 + i, LatencyUnit.INSTRUCTIONS)
    elif kind == 1:
        injection = MemoryInjection(
            target="memory:kernel-data",
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
            trigger=TriggerPoint(
                spec="instructions:5000", instructions=5000, rip=0x4010_00 + i, user_mode=True
            ),
        )
        outcome, latency = Outcome.SDC, None
    else:
        injection = RegisterInjection(
            target="register:st0",
            location="st0",
            register="st0",
            width=80,
            mask=1 << 79,
            mode="flip",
            injected=False,
            reason="the workload exited before the trigger",
            trigger=TriggerPoint(spec="time:0.5"),
        )
        outcome, latency = Outcome.NOT_INJECTED, None
    run = MachineRun(
        machine=DEFAULT_MACHINE,
        outcome=outcome,
        reason=f'reason {i}: stdout differs, "quoted", comma, ünïcode ☃\nsecond line',
        cause="page-fault" if outcome is Outcome.CRASH else None,
        evidence="BUG: unable to handle page fault for address: 0000000000000008" if kind else "",
        output=f"checksum: {i:#018x}\r\nline\x00with NUL\n",
        stderr="" if kind else "checksum: DETECTED mismatch\n",
        exit_status=None if kind == 0 else 0,
        signal="SIGSEGV" if kind == 0 else None,
    )
    return ExperimentRecord(
        index=i,
        seed=20240501 + i,
        spec=SPEC,
        injections=(injection,),
        machines=(run,),
        latency=latency,
        activation=Activation.MANIFESTED if injection.injected else Activation.NOT_ACTIVATED,
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


STORM_SPEC = {"target": "memory:process", "storm": {"schedule": "rate"}}
STORM_COLUMNS = ("flips", "storm_s", "real_world_s")


def make_storm_record(i: int) -> ExperimentRecord:
    """Storm experiment `i`: three process-memory flips (the second not held), rate-model
    timing (real_world_s set, two attempts) for even ids, fixed gaps (None, one) for odd."""
    rate = i % 2 == 0
    schedule = "rate:1e-6/bit/h" if rate else "gaps:0.001"
    flips = tuple(
        FlipInjection(
            target="memory:process",
            location=f"{0x1234_5000 + 64 * n + i:#x}",
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
            scheduled_s=0.001 * (n + 1),
            trigger=TriggerPoint(
                spec=f"storm:{schedule}",
                time_s=0.001 * (n + 1) + i / 1e6,
                instructions=1_000_000 * (n + 1),
                rip=0x4010_00 + n,
                user_mode=True,
            ),
        )
        for n, bit in enumerate((3, 5, 7))
    )
    storm = StormSummary(
        region="process",
        schedule=schedule,
        flips=len(flips),
        guest_s=0.003 + i / 1e6,
        real_world_s=3600.0 * (i + 1) / 7 if rate else None,
        max_error_s=1.25e-5,
        mean_error_s=1e-5 / 3,
        first_flip_error_s=2e-7,
        guest_time="instructions" if rate else "running-time",
        attempts=2 if rate else 1,
    )
    run = MachineRun(
        machine=DEFAULT_MACHINE,
        outcome=Outcome.CRASH,
        reason=f"storm {i}: SIGSEGV",
        cause="SIGSEGV",
        evidence="checksum: killed by SIGSEGV",
        signal="SIGSEGV",
    )
    return ExperimentRecord(
        index=i,
        seed=20240501 + i,
        spec=STORM_SPEC,
        injections=flips,
        machines=(run,),
        latency=Latency(5000 + i, LatencyUnit.GUEST_NS),
        activation=Activation.MANIFESTED,
        phases_s={"restore": 0.01, "storm": 0.5, "observe": 1 / 3},
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
    )
    return rec


INSTRUCTION_SPEC = {"target": "instruction:fadd@main", "instance": 7}


def instruction_injection(i: int) -> InstructionInjection:
    """An F-SEFI fault in the memory result of the 7th `fadd` of `main`, every field set."""
    before = 0x3FF8_0000_0000_0000  # 1.5
    mask = 1 << 52  # the exponent's low bit: 0.75
    return InstructionInjection(
        target="instruction:fadd@main",
        location="addsd [rbp-0x18] -> [rbp-0x18]",
        address=0x7_F000 + 8 * i,
        virtual=0x7FFF_FFFF_E018 - 8 * i,
        width=64,
        mask=mask,
        mode="flip",
        before=before,
        after=before ^ mask,
        readback=before ^ mask,
        injected=True,
        op="fadd",
        function="main",
        instance=7,
        instruction=0x40_1136 + i,
        disassembly="addsd xmm0, qword ptr [rbp - 0x18]",
        value_format="f64",
        process="checksum",
        pid=4242,
        trigger=TriggerPoint(spec="fadd@main#7", time_s=0.0125, rip=0x40_113A + i, user_mode=True),
    )


def make_instruction_record(i: int) -> ExperimentRecord:
    """Instruction experiment `i`: two faults of `fadd` results (a memory result, then an
    xmm register result), an SDC."""
    first = instruction_injection(i)
    second = dataclasses.replace(
        first,
        location="addsd xmm0, [rbp-0x18] -> xmm0",
        register="xmm0",
        address=None,
        virtual=None,
        width=128,
        mask=1 << 127,
        before=XMM_BEFORE,
        after=XMM_BEFORE ^ 1 << 127,
        readback=XMM_BEFORE ^ 1 << 127,
        instance=8,
        value_format="f64x2",
    )
    run = MachineRun(
        machine=DEFAULT_MACHINE,
        outcome=Outcome.SDC,
        reason="stdout differs",
        evidence="checksum: 0x1",
        output="checksum: 0x1\n",
        exit_status=0,
    )
    return ExperimentRecord(
        index=i,
        seed=SEED + i,
        spec=INSTRUCTION_SPEC,
        injections=(first, second),
        machines=(run,),
        activation=Activation.MANIFESTED,
        phases_s={"restore": 0.02, "to_trigger": 0.5, "observe": 1.0},
    )


def make_vmm_error_record(i: int) -> ExperimentRecord:
    """Experiment `i` during which the VMM failed: a plain `Injection` that did not hold."""
    reason = "QMP command failed: stop: timed out"
    injection = Injection(target="memory:kernel-data", mode="flip", reason=reason)
    run = MachineRun(machine=DEFAULT_MACHINE, outcome=Outcome.VMM_ERROR, reason=reason)
    return ExperimentRecord(
        index=i, seed=SEED + i, spec=SPEC, injections=(injection,), machines=(run,)
    )


CONTROL_SPEC = {"target": "none", "bits": {"mode": "flip"}, "context": "any"}


def make_control_record(i: int) -> ExperimentRecord:
    """Control experiment `i`: nothing injected (one `ControlInjection` that holds), benign."""
    run = MachineRun(
        machine=DEFAULT_MACHINE,
        outcome=Outcome.BENIGN,
        reason="output and exit status match the golden run",
        output="checksum: 0x1\n",
        exit_status=0,
    )
    return ExperimentRecord(
        index=i,
        seed=SEED + i,
        spec=CONTROL_SPEC,
        injections=(ControlInjection(injected=True),),
        machines=(run,),
        phases_s={"restore": 0.01, "to_trigger": 0.0, "inject": 0.001, "observe": 0.4},
    )


TESTBED_SPEC = {"target": "register:rax", "machines": ["server", "client"], "judge": "server"}


def make_testbed_record(i: int) -> ExperimentRecord:
    """Experiment `i` of a testbed of two machines: the fault goes to `server`, which is
    judged (it crashed), and a second to `client`, which got a wrong answer; the runs are
    given in the testbed's order, not by name."""
    server = MachineRun(
        machine="server",
        outcome=Outcome.CRASH,
        reason="killed by SIGSEGV",
        cause="SIGSEGV",
        evidence="server: killed by SIGSEGV",
        output="listening\n",
        stderr="segfault\n",
        exit_status=139,
        signal="SIGSEGV",
    )
    client = MachineRun(
        machine="client",
        outcome=Outcome.DETECTED,
        reason="the workload reported an error",
        cause=None,
        evidence="client: connection reset",
        output="request 1\n",
        stderr="client: connection reset\n",
        exit_status=2,
        signal=None,
    )
    on_server = RegisterInjection(
        target="register:rax",
        machine="server",
        location="rax",
        register="rax",
        width=64,
        mask=1 << 63,
        before=KERNEL_ADDRESS,
        after=KERNEL_ADDRESS ^ 1 << 63,
        readback=KERNEL_ADDRESS ^ 1 << 63,
        injected=True,
        trigger=TriggerPoint(spec="time:0.1", time_s=0.1, rip=0x40_2000, user_mode=True),
    )
    on_client = MemoryInjection(
        target="memory:process",
        machine="client",
        location="heap+0x40",
        address=0x2000 + i,
        virtual=0x5555_5555_9040,
        width=64,
        mask=1 << 5,
        before=0,
        after=1 << 5,
        readback=1 << 5,
        injected=True,
        trigger=TriggerPoint(spec="time:0.1", time_s=0.1, user_mode=False),
    )
    return ExperimentRecord(
        index=i,
        seed=SEED + i,
        spec=TESTBED_SPEC,
        injections=(on_server, on_client),
        machines=(server, client),
        judged="server",
        latency=Latency(77, LatencyUnit.WALL_NS),
        activation=Activation.MANIFESTED,
        phases_s={"restore": 0.05, "observe": 2.0},
    )


def _created(path: Path) -> SQLiteStore:
    return create_store(path)


def _reopened(path: Path) -> SQLiteStore:
    create_store(path).close()
    return SQLiteStore.open(path)


def _created_again(path: Path) -> SQLiteStore:
    create_store(path).close()
    return create_store(path)


STORE_FILE = "campaign.db"
"""The database of the `store` fixture, under the test's tmp_path."""


@pytest.fixture(
    params=[_created, _reopened, _created_again], ids=["created", "reopened", "created-again"]
)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ResultStore]:
    """A writer on a fresh database, obtained each way a campaign obtains one."""
    factory: Callable[[Path], SQLiteStore] = request.param
    opened: ResultStore = factory(tmp_path / STORE_FILE)
    with opened:
        yield opened


def raw(path: Path, query: str, params: tuple[object, ...] = ()) -> list[tuple[Any, ...]]:
    """The rows of `query` on the database file, read beside the store."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(query, params).fetchall()
    finally:
        conn.close()


def golden_run(machine: str = DEFAULT_MACHINE, **changes: Any) -> GoldenRun:
    """The golden run of `checksum 4096` on `machine`, every stored field set."""
    golden = GoldenRun(
        machine=machine,
        argv=("checksum", "4096"),
        stdout=b"checksum: 0xdeadbeef\n\xff\x00",
        stderr=b"",
        exit_code=0,
        signal=None,
        guest_s=1.25,
        host_s=1.5,
        instructions=123_456_789,
        pid=4242,
        restored_s=(1.375, 1.25, 1.5),
    )
    return dataclasses.replace(golden, **changes)


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
        assert store.injections(i) == rec.injections == (rec.injection,)
    wide = store.load(0)
    assert wide is not None
    assert wide.injection.before == XMM_BEFORE
    assert wide.injection.mask == 1 << 127 | 1
    assert isinstance(wide.injection, RegisterInjection)
    assert wide.injection.register == "xmm0"
    assert wide.injection.trigger.rip == 0xFFFF_FFFF_8100_0000
    assert (wide.output, wide.signal, wide.exit_status) == (
        "checksum: 0x0000000000000000\r\nline\x00with NUL\n",
        "SIGSEGV",
        None,
    )
    memory = store.load(1)
    assert memory is not None
    assert isinstance(memory.injection, MemoryInjection)
    assert memory.injection.address == KERNEL_ADDRESS + 1
    assert memory.injection.virtual == 0xFFFF_C900_0000_0001
    not_injected = store.load(2)
    assert not_injected is not None
    assert not_injected.injection.trigger == TriggerPoint(spec="time:0.5")
    assert not_injected.latency is None and not_injected.cause is None


def test_several_injections_keep_their_order(store: ResultStore) -> None:
    extra = (make_record(1).injection, make_record(2).injection)
    rec = dataclasses.replace(make_record(0), injections=(make_record(0).injection, *extra))
    store.record(7, "s", rec, worker="w", started_at=1.0, finished_at=2.0)
    assert store.injections(7) == (rec.injection, *extra)
    assert store.load(7) == rec
    data = store.record_json(7)
    assert data is not None
    assert data["extra_injections"] == [injection.to_json() for injection in extra]
    row = next(store.rows())
    assert row["injections"] == 3
    assert row["location"] == "xmm0"


KIND_CASES: dict[str, Callable[[], ExperimentRecord]] = {
    "register": lambda: make_record(0),
    "memory": lambda: make_record(1),
    "flip": lambda: make_storm_record(20),
    "instruction": lambda: make_instruction_record(30),
    "fault": lambda: make_vmm_error_record(31),
    "control": lambda: make_control_record(32),
}
"""A record whose first injection is of each kind (`Injection.kind`)."""


@pytest.mark.parametrize("kind", list(KIND_CASES))
def test_every_injection_kind_round_trips(store: ResultStore, tmp_path: Path, kind: str) -> None:
    rec = KIND_CASES[kind]()
    store.record(5, kind, rec, worker="w", started_at=1.0, finished_at=2.0)
    loaded = store.injections(5)
    assert loaded == rec.injections
    assert [type(injection) for injection in loaded] == [type(i) for i in rec.injections]
    assert [injection.fields() for injection in loaded] == [i.fields() for i in rec.injections]
    assert loaded[0].kind == kind
    assert store.load(5) == rec
    assert store.record_json(5) == rec.to_json()
    stored = raw(
        tmp_path / STORE_FILE,
        "SELECT machine, kind, detail_json FROM injection WHERE experiment_id = 5 ORDER BY ordinal",
    )
    assert [(machine, name) for machine, name, _ in stored] == [
        (i.machine, i.kind) for i in rec.injections
    ]
    details = [None if text is None else json.loads(text) for _, _, text in stored]
    first = rec.injection
    if isinstance(first, InstructionInjection):
        assert details[0] == {
            "op": "fadd",
            "function": "main",
            "instance": 7,
            "instruction": 0x40_1136 + 30,
            "disassembly": "addsd xmm0, qword ptr [rbp - 0x18]",
            "value_format": "f64",
            "process": "checksum",
            "pid": 4242,
        }
        assert details[1] is not None and details[1]["value_format"] == "f64x2"
    elif isinstance(first, FlipInjection):
        assert details == [{"scheduled_s": 0.001 * (n + 1)} for n in range(3)]
    else:
        assert details == [None]


def test_a_control_run_round_trips_with_nothing_injected(store: ResultStore) -> None:
    rec = make_control_record(32)
    store.record(32, "none", rec, worker="w", started_at=1.0, finished_at=2.0)
    loaded = store.load(32)
    assert loaded == rec
    assert loaded is not None
    (injection,) = loaded.injections
    assert isinstance(injection, ControlInjection)
    assert (injection.kind, injection.target, injection.mode, injection.injected) == (
        "control",
        "none",
        "none",
        True,
    )
    assert injection.trigger == TriggerPoint(spec="none")
    assert (injection.width, injection.mask, injection.bits, injection.reason) == (0, 0, (), "")
    (row,) = store.rows()
    assert (row["outcome"], row["target"], row["mode"], row["trigger"]) == (
        "benign",
        "none",
        "none",
        "none",
    )
    assert (row["injected"], row["progress"], row["location"]) == (True, None, "")
    assert store.outcome_counts(stratum="none")["benign"] == 1


def test_an_instruction_fault_keeps_its_own_fields(store: ResultStore) -> None:
    rec = make_instruction_record(30)
    store.record(30, "instruction", rec, worker="w", started_at=1.0, finished_at=2.0)
    memory_result, register_result = store.injections(30)
    assert isinstance(memory_result, InstructionInjection)
    assert isinstance(register_result, InstructionInjection)
    assert (
        memory_result.op,
        memory_result.function,
        memory_result.instance,
        memory_result.instruction,
        memory_result.disassembly,
        memory_result.value_format,
        memory_result.process,
        memory_result.pid,
    ) == (
        "fadd",
        "main",
        7,
        0x40_1136 + 30,
        "addsd xmm0, qword ptr [rbp - 0x18]",
        "f64",
        "checksum",
        4242,
    )
    assert (memory_result.address, memory_result.register) == (0x7_F000 + 240, None)
    assert (register_result.register, register_result.address) == ("xmm0", None)
    assert (register_result.instance, register_result.value_format) == (8, "f64x2")
    assert register_result.before == XMM_BEFORE
    data = store.record_json(30)
    assert data is not None
    assert data["instruction"]["log"].startswith("[INJECT] time=0.012500s process=checksum")
    assert (data["instruction"]["before"], data["instruction"]["after"]) == (1.5, 0.75)
    assert [entry["instance"] for entry in data["extra_injections"]] == [8]


def test_a_record_of_two_machines_round_trips(store: ResultStore, tmp_path: Path) -> None:
    rec = make_testbed_record(8)
    store.record(8, "testbed", rec, worker="w", started_at=1.0, finished_at=2.0)
    loaded = store.load(8)
    assert loaded == rec
    assert loaded is not None
    assert (loaded.judged, loaded.outcome, loaded.exit_status, loaded.signal) == (
        "server",
        Outcome.CRASH,
        139,
        "SIGSEGV",
    )
    assert [run.machine for run in loaded.machines] == ["client", "server"]
    assert store.injections(8) == rec.injections
    assert [i.machine for i in store.injections(8)] == ["server", "client"]
    assert store.record_json(8) == rec.to_json()
    path = tmp_path / STORE_FILE
    assert raw(path, "SELECT machine, class FROM outcome WHERE experiment_id = 8") == [
        ("server", "crash")
    ]
    client = next(run for run in rec.machines if run.machine == "client")
    assert raw(
        path,
        "SELECT machine, class, reason, cause, evidence, exit_status, signal, output, stderr "
        "FROM machine_run WHERE experiment_id = 8",
    ) == [
        (
            "client",
            "detected",
            client.reason,
            None,
            client.evidence,
            2,
            None,
            client.output,
            client.stderr,
        )
    ]
    (row,) = store.rows()
    assert (row["outcome"], row["exit_status"], row["output"], row["injections"]) == (
        "crash",
        139,
        "listening\n",
        2,
    )
    assert store.outcome_counts()["crash"] == 1
    assert store.outcome_counts()["detected"] == 0


def test_a_one_machine_record_has_no_other_runs(store: ResultStore, tmp_path: Path) -> None:
    record(store, 0)
    assert raw(tmp_path / STORE_FILE, "SELECT count(*) FROM machine_run") == [(0,)]
    assert raw(tmp_path / STORE_FILE, "SELECT machine FROM outcome") == [(DEFAULT_MACHINE,)]


def test_a_record_keeps_one_run_per_machine_in_name_order() -> None:
    rec = make_testbed_record(8)
    assert dataclasses.replace(rec, machines=tuple(reversed(rec.machines))) == rec
    assert [run.machine for run in rec.machines] == ["client", "server"]
    twice = (*rec.machines, dataclasses.replace(rec.machines[0], reason="again"))
    with pytest.raises(ValueError, match="two runs"):
        dataclasses.replace(rec, machines=twice)
    with pytest.raises(ValueError, match="no run"):
        dataclasses.replace(rec, judged="router")


def test_a_storm_round_trips(store: ResultStore) -> None:
    storms = {i: record_storm(store, i) for i in (20, 21)}
    others = {i: record(store, i) for i in (0, 1)}
    for i, rec in storms.items():
        assert rec.storm is not None
        loaded = store.load(i)
        assert loaded is not None
        assert loaded == rec
        assert loaded.storm == rec.storm
        assert loaded.injection == rec.injection  # the first flip
        assert store.injections(i) == rec.injections
        assert len(store.injections(i)) == rec.storm.flips == 3
        assert store.record_json(i) == rec.to_json()
        assert loaded.storm_json() == rec.storm_json()
    rate = store.load(20)
    assert rate is not None and rate.storm is not None
    assert rate.storm.attempts == 2
    assert [flip["scheduled_s"] for flip in rate.storm_json()["flips"]] == [0.001, 0.002, 0.003]
    fixed = store.load(21)
    assert fixed is not None and fixed.storm is not None
    assert fixed.storm.real_world_s is None
    assert fixed.storm.attempts == 1
    for i, rec in others.items():
        loaded = store.load(i)
        assert loaded is not None
        assert loaded == rec
        assert loaded.storm is None and loaded.extra_injections == ()
    assert set(STORM_COLUMNS) <= set(COLUMN_NAMES)
    rows = {row["experiment_id"]: row for row in store.rows()}
    for i, rec in storms.items():
        assert rec.storm is not None
        assert rows[i]["injections"] == 3
        assert rows[i]["location"] == rec.injection.location
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
        store.record(20, "storm", bad, worker="w", started_at=0.0, finished_at=1.0)
    assert not store.has(20)
    assert store.injections(20) == ()
    record_storm(store, 20)
    assert store.load(20) == rec


def test_duplicate_id_raises_and_keeps_the_first(store: ResultStore) -> None:
    first = record(store, 4)
    other = dataclasses.replace(
        make_record(5), machines=(dataclasses.replace(make_record(5).result, reason="another"),)
    )
    with pytest.raises(DuplicateExperiment) as caught:
        store.record(4, "s9", other, worker="w", started_at=0.0, finished_at=1.0)
    assert isinstance(caught.value, VmfaultError)
    assert caught.value.experiment_id == 4
    assert store.load(4) == first
    assert store.count() == 1
    assert store.injections(4) == (first.injection,)
    assert [row["stratum"] for row in store.rows()] == ["s0"]
    with pytest.raises(DuplicateExperiment):
        store.record(4, "s9", make_testbed_record(4), worker="w", started_at=0.0, finished_at=1.0)
    assert store.load(4) == first


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
        "target": "register:xmm0",
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
        "progress": 0.5,
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
        "machine": DEFAULT_MACHINE,
        "judged": DEFAULT_MACHINE,
        "machine_outcomes": json.dumps({DEFAULT_MACHINE: "crash"}, separators=(",", ":")),
        "frames": None,
        "frames_dropped": None,
        "frames_corrupted": None,
        "frames_delayed": None,
        "frames_duplicated": None,
        "frames_reordered": None,
        "traffic_json": None,
        "disk": None,
        "disk_fault": None,
        "sector_first": None,
        "sector_last": None,
        "errno": None,
        "requests_faulted": None,
    }
    not_injected = rows[2]
    assert (not_injected["outcome"], not_injected["injected"]) == ("not-injected", False)
    assert not_injected["user_mode"] is None
    assert not_injected["injection_reason"] == "the workload exited before the trigger"
    assert all(row[name] is None for row in rows for name in STORM_COLUMNS)
    assert rows[1]["address"] == f"{KERNEL_ADDRESS + 1:#x}"
    assert rows[1]["virtual"] == "0xffffc90000000001"
    assert rows[1]["user_mode"] is True


def test_rows_of_an_empty_store(store: ResultStore) -> None:
    assert list(store.rows()) == []


def test_golden_is_kept_once(store: ResultStore) -> None:
    argv = ["checksum", "4096"]
    assert store.golden(argv) is None
    golden = golden_run()
    saved = store.save_golden(golden)
    assert saved.recorded_at is not None
    assert datetime.fromisoformat(saved.recorded_at).utcoffset() == timedelta(0)
    assert saved == dataclasses.replace(golden, recorded_at=saved.recorded_at)
    assert (saved.machine, saved.argv, saved.exit_status) == (DEFAULT_MACHINE, tuple(argv), 0)
    assert (saved.guest_s, saved.host_s, saved.instructions, saved.pid) == (
        1.25,
        1.5,
        123_456_789,
        4242,
    )
    assert store.golden(("checksum", "4096")) == saved
    assert store.golden(argv, machine=DEFAULT_MACHINE) == saved
    assert store.golden(["checksum"]) is None
    again = store.save_golden(golden_run(host_s=1.7, guest_s=1.3, instructions=None, pid=7))
    assert again == saved
    with pytest.raises(GoldenMismatchError) as caught:
        store.save_golden(golden_run(stdout=b"other\n", exit_code=1))
    assert caught.value.fields == ("stdout", "exit status")
    assert caught.value.argv == tuple(argv)
    with pytest.raises(GoldenMismatchError) as caught:
        store.save_golden(golden_run(exit_code=None, signal="SIGSEGV"))
    assert caught.value.fields == ("exit status", "signal")
    assert store.golden(argv) == saved
    with pytest.raises(TypeError):
        store.golden("checksum")


def test_a_golden_killed_by_a_signal_round_trips(store: ResultStore) -> None:
    golden = golden_run(exit_code=None, signal="SIGSEGV", stderr=b"Segmentation fault\n")
    saved = store.save_golden(golden)
    assert saved == dataclasses.replace(golden, recorded_at=saved.recorded_at)
    assert (saved.exit_code, saved.signal, saved.exit_status) == (None, "SIGSEGV", 139)


def test_golden_runs_are_kept_per_machine(store: ResultStore, tmp_path: Path) -> None:
    argv = ("checksum", "4096")
    guest = store.save_golden(golden_run())
    client = store.save_golden(
        golden_run("client", stdout=b"client output\n", exit_code=3, host_s=0.5, pid=9)
    )
    assert client.machine == "client"
    assert (client.stdout, client.exit_code, client.host_s, client.pid) == (
        b"client output\n",
        3,
        0.5,
        9,
    )
    assert store.golden(argv) == guest
    assert store.golden(argv, machine="client") == client
    assert store.golden(argv, machine="server") is None
    with pytest.raises(GoldenMismatchError) as caught:
        store.save_golden(golden_run("client"))
    assert caught.value.fields == ("stdout", "exit status")
    assert store.golden(argv, machine="client") == client
    assert store.golden(argv) == guest
    assert raw(tmp_path / STORE_FILE, "SELECT machine FROM golden ORDER BY machine") == [
        ("client",),
        (DEFAULT_MACHINE,),
    ]


@pytest.mark.parametrize("machine", ["judged", "other"])
def test_failed_record_leaves_nothing(store: ResultStore, tmp_path: Path, machine: str) -> None:
    rec = make_testbed_record(0)
    name = "server" if machine == "judged" else "client"
    runs = tuple(
        dataclasses.replace(run, output="lone surrogate \ud800") if run.machine == name else run
        for run in rec.machines
    )
    bad = dataclasses.replace(rec, machines=runs)
    with pytest.raises(UnicodeEncodeError):
        store.record(0, "s", bad, worker="w", started_at=0.0, finished_at=1.0)
    assert not store.has(0)
    assert store.injections(0) == ()
    assert store.count() == 0
    for table in ("experiment", "injection", "outcome", "machine_run"):
        assert raw(tmp_path / STORE_FILE, f"SELECT count(*) FROM {table}") == [(0,)]
    store.record(0, "s", rec, worker="w", started_at=0.0, finished_at=1.0)
    assert store.load(0) == rec


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
        assert {"storm", "machine_run"} <= tables
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
            reader.save_golden(golden_run())
        assert reader.golden(golden_run().argv) is None


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


# --------------------------------------------------------------------- schema versions 1 and 2

OLD_GOLDEN = golden_run()
OLD_RECORDED_AT = "2024-04-30T10:00:00.000+00:00"
OLD_RECORDS: Mapping[int, Callable[[int], ExperimentRecord]] = {
    0: make_record,  # register
    1: make_record,  # memory
    2: make_record,  # a register fault not injected
    3: make_record,
    30: make_instruction_record,
    31: make_vmm_error_record,  # no register, no address: a plain fault
}
"""The experiments an old database holds (version 2 also holds the storms STORM_IDS)."""
STORM_IDS = (20, 21)
OLD_KINDS = {
    0: [RegisterInjection],
    1: [MemoryInjection],
    2: [RegisterInjection],
    3: [RegisterInjection],
    20: [FlipInjection] * 3,
    21: [FlipInjection] * 3,
    30: [InstructionInjection] * 2,
    31: [Injection],
}
"""The injection classes a reader derives from the target and trigger of an old row."""

_OLD_INSERT_INJECTION = """
INSERT INTO injection (
    experiment_id, ordinal, target, location, "register", address, "virtual", width, mask, mode,
    "before", "after", readback, injected, reason, "trigger", time_s, instructions, rip, user_mode
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


def old_ids(version: int) -> tuple[int, ...]:
    """The experiment ids of a database of schema `version`."""
    return tuple(sorted((*OLD_RECORDS, *(STORM_IDS if version >= 2 else ()))))


def old_record(i: int) -> ExperimentRecord:
    """Experiment `i` of an old database, as it was recorded."""
    return make_storm_record(i) if i in STORM_IDS else OLD_RECORDS[i](i)


def as_kept_by_old_versions(rec: ExperimentRecord) -> ExperimentRecord:
    """What schema 1 and 2 keep of a record: no kind's own fields (but an instruction
    fault's op, which its target names), no trigger progress, every storm one attempt."""

    def kept(injection: Injection) -> Injection:
        injection = dataclasses.replace(
            injection, trigger=dataclasses.replace(injection.trigger, progress=None)
        )
        if isinstance(injection, FlipInjection):
            return dataclasses.replace(injection, scheduled_s=0.0)
        if isinstance(injection, InstructionInjection):
            return dataclasses.replace(
                injection,
                function=None,
                instance=None,
                instruction=None,
                disassembly=None,
                value_format="int",
                process=None,
                pid=None,
            )
        return injection

    storm = None if rec.storm is None else dataclasses.replace(rec.storm, attempts=1)
    return dataclasses.replace(rec, injections=tuple(kept(i) for i in rec.injections), storm=storm)


def as_kept_golden() -> GoldenRun:
    """What schema 1 and 2 keep of OLD_GOLDEN (no guest seconds, pid or restored runs)."""
    return dataclasses.replace(
        OLD_GOLDEN, guest_s=0.0, pid=None, restored_s=(), recorded_at=OLD_RECORDED_AT
    )


def _hex(value: int | None) -> str | None:
    return None if value is None else f"{value:#x}"


def write_old_record(conn: sqlite3.Connection, experiment_id: int, rec: ExperimentRecord) -> None:
    """Insert `rec` as the store of schema 1 and 2 did (one machine, no kinds, no attempts)."""
    assert [run.machine for run in rec.machines] == [DEFAULT_MACHINE]
    spec_json = json.dumps(rec.spec)
    conn.execute("INSERT OR IGNORE INTO fault_spec (spec_json) VALUES (?)", (spec_json,))
    (spec_id,) = conn.execute(
        "SELECT spec_id FROM fault_spec WHERE spec_json = ?", (spec_json,)
    ).fetchone()
    started_at = 1_714_000_000.0 + experiment_id
    conn.execute(
        "INSERT INTO experiment (experiment_id, stratum, seed, idx, spec_id, worker, "
        "started_at, finished_at, duration_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (experiment_id, "old", rec.seed, rec.index, spec_id, "w", started_at, started_at + 1, 1.0),
    )
    for ordinal, injection in enumerate(rec.injections):
        values = injection.fields()
        user_mode = values["user_mode"]
        conn.execute(
            _OLD_INSERT_INJECTION,
            (
                experiment_id,
                ordinal,
                injection.target,
                injection.location,
                values.get("register"),
                _hex(values.get("address")),
                _hex(values.get("virtual")),
                injection.width,
                _hex(injection.mask),
                injection.mode,
                _hex(injection.before),
                _hex(injection.after),
                _hex(injection.readback),
                int(injection.injected),
                injection.reason,
                values["trigger"],
                values["time_s"],
                values["instructions"],
                _hex(values["rip"]),
                None if user_mode is None else int(user_mode),
            ),
        )
    latency = rec.latency
    conn.execute(
        "INSERT INTO outcome (experiment_id, class, reason, cause, evidence, latency_value, "
        "latency_unit, activation, output, stderr, exit_status, signal, phases_json) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            experiment_id,
            rec.outcome.value,
            rec.reason,
            rec.cause,
            rec.evidence,
            None if latency is None else latency.value,
            None if latency is None else latency.unit.value,
            rec.activation.value,
            rec.output,
            rec.stderr,
            rec.exit_status,
            rec.signal,
            json.dumps(dict(rec.phases_s)),
        ),
    )
    storm = rec.storm
    if storm is not None:
        conn.execute(
            "INSERT INTO storm (experiment_id, region, schedule, flips, guest_s, real_world_s, "
            "max_error_s, mean_error_s, first_flip_error_s, guest_time) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                experiment_id,
                storm.region,
                storm.schedule,
                storm.flips,
                storm.guest_s,
                storm.real_world_s,
                storm.max_error_s,
                storm.mean_error_s,
                storm.first_flip_error_s,
                storm.guest_time,
            ),
        )


def make_old_database(path: Path, version: int) -> None:
    """A database of schema `version` (1 or 2) built with that version's DDL and rows as
    its store wrote them: the campaign, OLD_GOLDEN, the experiments of `old_ids(version)`."""
    schema = sqlite_backend._SCHEMA_V1 + (sqlite_backend._STORM_SCHEMA if version >= 2 else ())
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("BEGIN IMMEDIATE")
        for statement in schema:
            conn.execute(statement)
        conn.execute(f"PRAGMA application_id = {sqlite_backend.APPLICATION_ID}")
        conn.execute(f"PRAGMA user_version = {version}")
        conn.execute(
            "INSERT INTO campaign (id, name, seed, spec_json, file_sha256, created_at, "
            "total_planned) VALUES (1, ?, ?, ?, ?, ?, ?)",
            (NAME, SEED, SPEC_JSON, FILE_SHA256, OLD_RECORDED_AT, TOTAL),
        )
        conn.executemany(
            "INSERT INTO provenance (key, value) VALUES (?, ?)", sorted(PROVENANCE.items())
        )
        conn.execute(
            "INSERT INTO golden (argv_json, stdout, stderr, exit_status, signal, duration_s, "
            "instructions, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                json.dumps(list(OLD_GOLDEN.argv)),
                OLD_GOLDEN.stdout,
                OLD_GOLDEN.stderr,
                OLD_GOLDEN.exit_status,
                OLD_GOLDEN.signal,
                OLD_GOLDEN.host_s,
                OLD_GOLDEN.instructions,
                OLD_RECORDED_AT,
            ),
        )
        for i in old_ids(version):
            write_old_record(conn, i, old_record(i))
        conn.execute("COMMIT")
    finally:
        conn.close()
    assert schema_of(path)[0] == version


def schema_of(path: Path) -> tuple[int, frozenset[str]]:
    """The file's user_version and the names of its tables."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        tables = frozenset(
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        )
    finally:
        conn.close()
    return version, tables


def columns_of(path: Path, table: str) -> list[str]:
    """The column names of `table`."""
    return [row[1] for row in raw(path, f"PRAGMA table_info({table})")]


OLD_TABLES = frozenset(
    {"campaign", "provenance", "golden", "fault_spec", "experiment", "injection", "outcome"}
)
"""The tables of schema 1; 2 adds `storm`, 3 `machine_run`."""
V3_TABLES = OLD_TABLES | {"storm", "machine_run"}


def assert_reads_as_recorded(reader: ResultStore, version: int) -> None:
    """`reader` sees every experiment of an old database as that version kept it."""
    ids = old_ids(version)
    assert set(ids) <= reader.done_ids()
    for i in ids:
        kept = as_kept_by_old_versions(old_record(i))
        assert reader.load(i) == kept
        assert reader.injections(i) == kept.injections
        assert [type(injection) for injection in reader.injections(i)] == OLD_KINDS[i]
        assert all(injection.machine == DEFAULT_MACHINE for injection in kept.injections)
        assert reader.record_json(i) == kept.to_json()
    assert reader.golden(OLD_GOLDEN.argv) == as_kept_golden()
    rows = list(reader.rows())
    assert all(tuple(row) == COLUMN_NAMES for row in rows)
    by_id = {row["experiment_id"]: row for row in rows}
    for i in ids:
        storm = old_record(i).storm
        expected = [None] * 3 if storm is None else [storm.flips, storm.guest_s, storm.real_world_s]
        assert [by_id[i][name] for name in STORM_COLUMNS] == expected
    assert by_id[0]["mask"] == "0x80000000000000000000000000000001"
    assert by_id[1]["address"] == f"{KERNEL_ADDRESS + 1:#x}"


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_database_is_read_without_writing(tmp_path: Path, version: int) -> None:
    path = tmp_path / "c.db"
    make_old_database(path, version)
    content = path.read_bytes()
    with SQLiteStore.open_readonly(path) as reader:
        assert reader.campaign_info().schema_version == version
        assert reader.campaign_info().created_at == OLD_RECORDED_AT
        assert reader.done_ids() == set(old_ids(version))
        assert [row["experiment_id"] for row in reader.rows()] == list(old_ids(version))
        assert_reads_as_recorded(reader, version)
        assert reader.golden(OLD_GOLDEN.argv, machine="client") is None
        instruction = reader.injections(30)[0]
        assert isinstance(instruction, InstructionInjection)
        assert (instruction.op, instruction.function, instruction.value_format) == (
            "fadd",
            None,
            "int",
        )
        if version >= 2:
            storm = reader.load(20)
            assert storm is not None and storm.storm is not None
            assert storm.storm.attempts == 1
        with pytest.raises(StoreError, match="read-only"):
            record_storm(reader, 22)
        with pytest.raises(StoreError, match="read-only"):
            reader.save_golden(golden_run("client"))
    assert path.read_bytes() == content
    assert schema_of(path) == (version, OLD_TABLES | ({"storm"} if version >= 2 else set()))


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("opener", [SQLiteStore.open, create_store], ids=["open", "create"])
def test_a_writer_migrates_an_old_database(
    tmp_path: Path, opener: Callable[[Path], SQLiteStore], version: int
) -> None:
    path = tmp_path / "c.db"
    make_old_database(path, version)
    with SQLiteStore.open_readonly(path) as reader:
        assert reader.campaign_info().schema_version == version
        with opener(path) as writer:
            assert schema_of(path) == (SCHEMA_VERSION, V3_TABLES)
            assert writer.campaign_info().schema_version == SCHEMA_VERSION
            assert_reads_as_recorded(writer, version)
            assert writer.save_golden(OLD_GOLDEN) == as_kept_golden()
            client = writer.save_golden(golden_run("client", stdout=b"client\n"))
            storm = record_storm(writer, 22)
            testbed = make_testbed_record(40)
            writer.record(40, "testbed", testbed, worker="w", started_at=1.0, finished_at=2.0)
            assert writer.load(22) == storm
            assert writer.load(40) == testbed
        # The reader opened on the old version sees the migration and what was written since.
        assert reader.campaign_info().schema_version == SCHEMA_VERSION
        assert reader.load(22) == storm
        assert reader.load(40) == testbed
        assert reader.golden(OLD_GOLDEN.argv, machine="client") == client
        assert reader.golden(OLD_GOLDEN.argv) == as_kept_golden()
        rows = {row["experiment_id"]: row for row in reader.rows()}
        assert rows[22]["flips"] == 3
        assert all(rows[i]["flips"] is None for i in OLD_RECORDS)
    assert columns_of(path, "golden") == [
        "machine", "argv_json", "stdout", "stderr", "exit_status", "signal", "host_s",
        "guest_s", "instructions", "pid", "restored_json", "recorded_at",
    ]  # fmt: skip
    assert raw(
        path,
        "SELECT machine, argv_json, exit_status, host_s, guest_s, instructions, pid, recorded_at "
        "FROM golden WHERE machine = ?",
        (DEFAULT_MACHINE,),
    ) == [
        (
            DEFAULT_MACHINE,
            json.dumps(list(OLD_GOLDEN.argv)),
            0,
            OLD_GOLDEN.host_s,
            None,
            OLD_GOLDEN.instructions,
            None,
            OLD_RECORDED_AT,
        )
    ]
    storms = raw(path, "SELECT experiment_id, attempts FROM storm ORDER BY 1")
    assert storms == [*((i, 1) for i in STORM_IDS if version >= 2), (22, 2)]
    with SQLiteStore.open(path) as again:  # a migrated database opens as it is
        assert again.count() == len(old_ids(version)) + 2
        assert_reads_as_recorded(again, version)
    assert schema_of(path) == (SCHEMA_VERSION, V3_TABLES)


@pytest.mark.parametrize("version", [1, 2])
def test_a_failed_migration_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, version: int
) -> None:
    """The migration fails at its very last statement: nothing of it is kept, not even the
    earlier steps (one transaction), and the database reads as before."""
    path = tmp_path / "c.db"
    make_old_database(path, version)
    before = schema_of(path)
    golden_columns = columns_of(path, "golden")
    failing = {
        **sqlite_backend._MIGRATIONS,
        2: (*sqlite_backend._MIGRATIONS[2], "CREATE TABLE machine_run (x)"),
    }
    monkeypatch.setattr(sqlite_backend, "_MIGRATIONS", failing)
    with pytest.raises(StoreError, match="already exists"):
        SQLiteStore.open(path)
    assert schema_of(path) == before
    assert columns_of(path, "golden") == golden_columns
    assert "duration_s" in golden_columns
    assert not (tmp_path / "c.db-writer.lock").exists()
    with SQLiteStore.open_readonly(path) as reader:
        assert_reads_as_recorded(reader, version)
    monkeypatch.undo()
    with SQLiteStore.open(path) as writer:
        assert_reads_as_recorded(writer, version)
    assert schema_of(path) == (SCHEMA_VERSION, V3_TABLES)
