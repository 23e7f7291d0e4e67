"""Scaling out: the local executor against Dask on one host, and what one coordinator absorbs.

1. The same campaign (checksum register flips) on 2 local workers and on a Dask cluster of
   2 workers on 127.0.0.1 (a scheduler and two `dask worker`s started here): experiments
   per second while both run, and their ratio (Dask's overhead on one host).
2. Records per second one coordinator commits to SQLite from a synthetic stream of
   realistic records (a register injection, one machine run): the ceiling of any cluster
   behind one coordinator. Target: >= 2,000 records/s.

Prints figures, targets and ratios; asserts nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vmfault.campaign import plan_campaign
from vmfault.campaign.cluster import ClusterOptions, connect
from vmfault.campaign.executor import Completed
from vmfault.campaign.runner import CampaignProgress, prepare_campaign, run_campaign
from vmfault.campaign.spec import CampaignSpec, ExecutorName, load_campaign
from vmfault.classify import Outcome
from vmfault.experiment.pipeline import build_record
from vmfault.experiment.records import DEFAULT_MACHINE, MachineRun, RegisterInjection, TriggerPoint
from vmfault.store import SQLiteStore

EXPERIMENTS = int(os.environ.get("SCALE_EXPERIMENTS", "60"))
STREAM = 5_000
TARGET_RECORDS_S = 2_000.0
CAMPAIGN = """
[campaign]
name = "scale-{name}"
seed = 3
experiments = {experiments}
workers = 2

[guest]
workload = "checksum"

[[faults]]
target = "register:gpr"
context = "user"
"""


def rate(name: str, tmp: Path, cluster: ClusterOptions | None) -> float:
    """Experiments per second from the first result to the last (boots left out); prints
    the median host seconds of one experiment on its worker."""
    file = tmp / f"{name}.toml"
    file.write_text(CAMPAIGN.format(name=name, experiments=EXPERIMENTS))
    prepared = prepare_campaign(load_campaign(file), tmp / f"{name}.db", resume=False)
    stamps: list[float] = []

    def on_record(progress: CampaignProgress, done: Completed) -> None:
        stamps.append(time.monotonic())

    if cluster is None:
        run_campaign(prepared, on_record=on_record)
    else:
        with connect(cluster, log_directory=tmp / "slurm") as connected:
            run_campaign(prepared, on_record=on_record, cluster=connected)
    durations = sorted(float(str(row["duration_s"])) for row in prepared.store.rows())
    prepared.store.close()
    print(f"  {name}: median experiment {durations[len(durations) // 2]:.3f} s on its worker")
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def dask_cluster(tmp: Path) -> tuple[str, list[subprocess.Popen[bytes]]]:
    dask = str(Path(sys.executable).with_name("dask"))
    os.environ["DASK_TEMPORARY_DIRECTORY"] = str(tmp)
    info = tmp / "scheduler.json"
    log = (tmp / "dask.log").open("wb")
    processes = [subprocess.Popen(
        [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", str(info)], stdout=log, stderr=subprocess.STDOUT,
    )]  # fmt: skip
    while not (info.is_file() and info.stat().st_size):
        time.sleep(0.2)
    address = str(json.loads(info.read_text())["address"])
    for i in range(2):
        processes.append(subprocess.Popen(
            [dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--resources",
             "VM=1", "--no-nanny", "--no-dashboard", "--name", f"w{i}"],
            stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    time.sleep(5.0)
    return address, processes


def absorbed(tmp: Path) -> tuple[float, float]:
    """Records per second committed by one store from a synthetic stream: per second of
    wall time, and per second of the coordinator's CPU time (what it takes on a core of
    its own, whatever else loads the host)."""
    spec = CampaignSpec.model_validate({
        "campaign": {"name": "stream", "experiments": STREAM},
        "guest": {"workload": "checksum"},
        "faults": [{"target": "register:gpr"}],
    })  # fmt: skip
    plan = plan_campaign(spec)
    store = SQLiteStore.create(
        tmp / "stream.db", campaign_name="stream", seed=0, spec_json=spec.to_json(),
        file_sha256="", total_planned=plan.total, provenance={"tool_version": "bench"},
    )  # fmt: skip
    records = []
    for i in range(STREAM):
        planned = plan.experiment(i)
        mask = 1 << i % 64
        injection = RegisterInjection(
            target="register:gpr", location="rax", register="rax", width=64, mask=mask,
            before=0x1234, after=0x1234 ^ mask, readback=0x1234 ^ mask, injected=True,
            trigger=TriggerPoint(spec="time", time_s=0.01 * i),
        )  # fmt: skip
        run = MachineRun(machine=DEFAULT_MACHINE, outcome=Outcome.CRASH, reason="killed by SIGSEGV",
                         cause="SIGSEGV", evidence="checksum[42]: segfault at 0 ip 0 error 4",
                         output="", exit_status=None, signal="SIGSEGV")  # fmt: skip
        record = build_record(
            planned.spec, seed=planned.seed, index=planned.index, injections=[injection],
            machines=[run], judged=DEFAULT_MACHINE,
        )  # fmt: skip
        records.append((i, planned.stratum.name, record))
    started, cpu = time.perf_counter(), time.process_time()
    for i, stratum, record in records:
        store.record(i, stratum, record, worker="stream", started_at=1.0, finished_at=2.0)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    store.close()
    return STREAM / elapsed, STREAM / cpu


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vmfault-scale-") as name:
        tmp = Path(name)
        per_s, per_cpu_s = absorbed(tmp)
        print(f"one coordinator absorbs {per_s:,.0f} records/s into SQLite, "
              f"{per_cpu_s:,.0f} per CPU second ({STREAM} records; target >= "
              f"{TARGET_RECORDS_S:,.0f}/s)")  # fmt: skip
        if os.environ.get("SCALE_STORE_ONLY"):
            return
        local = rate("local", tmp, None)
        address, processes = dask_cluster(tmp)
        try:
            over_dask = rate("dask", tmp, ClusterOptions(ExecutorName.DASK, scheduler=address))
        finally:
            for process in reversed(processes):  # the workers first, then the scheduler
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        print(f"2 local workers: {local:.2f} experiments/s; 2 Dask workers on this host: "
              f"{over_dask:.2f} experiments/s; Dask / local = {over_dask / local:.2f}")  # fmt: skip
        each = over_dask / 2
        for workers in (100, 1_000):
            print(f"{workers} workers at {each:.2f} experiments/s each: "
                  f"{workers * each:,.0f} records/s, {workers * each / per_cpu_s:.0%} "
                  "of what one coordinator absorbs on a core of its own")  # fmt: skip


if __name__ == "__main__":
    main()
