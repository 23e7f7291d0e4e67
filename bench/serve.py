"""The dashboard's cost: what watching a campaign database costs when nothing changed, when a
few records landed, and against building the whole report again; and one page load.

A store of N hand-made records (register and memory faults of every outcome, several
workers) stands in for a long campaign. Prints figures and ratios; asserts nothing.
Targets: a look with no change under 1 ms; an update after 10 new records at least 5x
cheaper than rebuilding the report at 5,000 records.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from vmfault.classify import Activation, Latency, LatencyUnit, Outcome
from vmfault.experiment.records import (
    ExperimentRecord,
    GoldenRun,
    MachineRun,
    RegisterInjection,
    TriggerPoint,
)
from vmfault.report import build_report
from vmfault.serve import CampaignWatch
from vmfault.serve.activity import campaign_activity
from vmfault.serve.pages import Links, dashboard_fragments
from vmfault.store import SQLiteStore

SIZES = (1_000, 5_000)
OUTCOMES = (Outcome.BENIGN,) * 6 + (Outcome.SDC, Outcome.CRASH, Outcome.HANG, Outcome.DETECTED)
REGISTERS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip")


def make_record(i: int) -> ExperimentRecord:
    outcome = OUTCOMES[i % len(OUTCOMES)]
    register = REGISTERS[i % len(REGISTERS)]
    injection = RegisterInjection(
        target="register:gpr", location=register, width=64, mask=1 << (i % 64), mode="flip",
        injected=True, register=register, before=i, after=i ^ (1 << (i % 64)),
        readback=i ^ (1 << (i % 64)),
        trigger=TriggerPoint(spec="time", time_s=0.01 * (i % 10), user_mode=True,
                             progress=(i % 97) / 97),
    )  # fmt: skip
    run = MachineRun(
        machine="guest", outcome=outcome, reason=f"reason {i % 7}",
        cause="SIGSEGV" if outcome is Outcome.CRASH else None,
        evidence="segfault at 0" if outcome is Outcome.CRASH else "", output="checksum: 0x1\n",
        exit_status=0,
    )  # fmt: skip
    return ExperimentRecord(
        index=i, seed=1, spec={"target": "register:gpr"}, injections=(injection,),
        machines=(run,),
        latency=Latency(1000 + i, LatencyUnit.WALL_NS) if outcome is Outcome.CRASH else None,
        activation=Activation.UNKNOWN,
    )  # fmt: skip


def fill(store: SQLiteStore, first: int, count: int) -> None:
    for i in range(first, first + count):
        store.record(
            i, "gpr", make_record(i), worker=f"worker-{i % 2 + 1}",
            started_at=1.7e9 + i, finished_at=1.7e9 + i + 0.8,
        )  # fmt: skip


def timed(action: object, repeat: int = 1) -> float:
    assert callable(action)
    start = time.perf_counter()
    for _ in range(repeat):
        action()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    for size in SIZES:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench.db"
            spec = {"campaign": {"name": "bench"}, "guest": {"workload": "checksum"},
                    "faults": [{"name": "gpr", "target": "register:gpr"}]}  # fmt: skip
            with SQLiteStore.create(
                path, campaign_name="bench", seed=1, spec_json=json.dumps(spec),
                file_sha256="0" * 64, total_planned=size + 100, provenance={},
            ) as store:  # fmt: skip
                store.save_golden(
                    GoldenRun(machine="guest", argv=("checksum",), stdout=b"checksum: 0x1\n",
                              stderr=b"", exit_code=0, signal=None, guest_s=0.2, host_s=0.3)
                )  # fmt: skip
                fill(store, 0, size)
                watch = CampaignWatch(path)
                first = timed(watch.poll)
                idle = timed(watch.poll, repeat=200)
                fill(store, size, 10)
                update = timed(watch.poll)
                rebuild = timed(lambda: build_report(store))
                snap = watch.current()
                activity = campaign_activity(store, total=size + 100, done=size + 10)
                render = timed(
                    lambda s=snap, a=activity: dashboard_fragments(s.report, a, Links("a"))
                )
                watch.close()
            print(
                f"{size:>6} records: first look {first * 1e3:7.1f} ms · look, nothing changed "
                f"{idle * 1e6:6.0f} us · update after 10 records {update * 1e3:6.1f} ms · "
                f"whole report rebuilt {rebuild * 1e3:7.1f} ms "
                f"({rebuild / update:4.1f}x the update) · page sections rendered "
                f"{render * 1e3:6.1f} ms"
            )


if __name__ == "__main__":
    main()
