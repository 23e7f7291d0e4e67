"""Campaigns scaled out: a real Dask cluster on 127.0.0.1 (a scheduler and two workers,
started here), a SLURM cluster of this host (tools/slurm-cluster.sh), and workers lost
mid-campaign under every executor."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from tests.conftest import leaked_qemu_processes
from tests.integration.test_campaign import (
    committed,
    qemu_children_of,
    status,
    wait_for,
    worker_pids,
)
from vmfault.guest.image import GuestImage

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parents[2]
DASK = Path(sys.executable).with_name("dask")
CAMPAIGN = """
[campaign]
name = "{name}"
seed = 7
experiments = {experiments}
workers = {workers}
{executor}

[guest]
workload = "checksum"
deterministic = {deterministic}

[[faults]]
name = "gpr"
target = "register:gpr"
{trigger}

[[faults]]
name = "ram"
target = "memory:ram"
{tables}
"""


def campaign_file(tmp_path: Path, name: str, experiments: int, *, workers: int = 2,
                  deterministic: bool = False, executor: str = "",
                  tables: str = "") -> Path:  # fmt: skip
    path = tmp_path / f"{name}.toml"
    trigger = 'trigger = "exec:main"' if deterministic else 'context = "user"'
    path.write_text(CAMPAIGN.format(
        name=name, experiments=experiments, workers=workers, executor=executor, tables=tables,
        deterministic=str(deterministic).lower(), trigger=trigger,
    ))  # fmt: skip
    return path


def vmfault(*args: str, cwd: Path, env: dict[str, str] | None = None,
            timeout_s: float = 600) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args], capture_output=True, text=True,
        timeout=timeout_s, check=False, cwd=cwd, env=env,
    )  # fmt: skip


def children(pid: int) -> set[int]:
    """The child processes of every thread of `pid`."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found |= {int(child) for child in (task / "children").read_text().split()}
        except OSError:
            continue
    return found


def rows(db: Path, tmp_path: Path) -> dict[int, dict[str, str]]:
    out = tmp_path / f"{db.stem}.csv"
    done = vmfault("campaign", "export", str(db), "--format", "csv", "-o", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with out.open() as stream:
        found = list(csv.DictReader(stream))
    by_id = {int(row["experiment_id"]): row for row in found}
    assert len(by_id) == len(found), "an experiment was recorded twice"
    return by_id


# --------------------------------------------------------------------- a Dask cluster


class DaskCluster:
    """`dask scheduler` and `dask worker`s (one thread, the VM resource, no nanny) on
    127.0.0.1, as subprocesses; `close()` ends them by their pids."""

    def __init__(self, directory: Path, workers: int = 2) -> None:
        self.directory = directory
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: list[IO[bytes]] = []
        info = directory / "scheduler.json"
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0",
                    "--no-dashboard", "--scheduler-file", str(info))  # fmt: skip
        assert wait_for(lambda: info.is_file() and info.stat().st_size > 0, 60), self.log(0)
        self.address = str(json.loads(info.read_text())["address"])
        self.workers: list[subprocess.Popen[bytes]] = []
        for i in range(workers):
            self.workers.append(self._start(
                f"worker-{i}", "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1",
                "--resources", "VM=1", "--no-nanny", "--no-dashboard", "--name", f"w{i}",
            ))  # fmt: skip
        for i in range(workers):
            assert wait_for(lambda i=i: "Registered to" in self.log(i + 1), 60), self.log(i + 1)

    def _start(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        log = (self.directory / f"{name}.log").open("wb")
        self.logs.append(log)
        env = dict(os.environ, DASK_TEMPORARY_DIRECTORY=str(self.directory))
        process = subprocess.Popen([str(DASK), *argv], stdout=log, stderr=subprocess.STDOUT,
                                   cwd=self.directory, env=env)  # fmt: skip
        self.processes.append(process)
        return process

    def log(self, index: int) -> str:
        return Path(self.logs[index].name).read_text(errors="replace")

    def close(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for log in self.logs:
            log.close()


@pytest.fixture
def dask_cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DaskCluster]:
    """A Dask cluster of two workers (or as many as the test's parameter says)."""
    directory = tmp_path / "dask"
    directory.mkdir()
    cluster = DaskCluster(directory, workers=getattr(request, "param", 2))
    try:
        yield cluster
    finally:
        cluster.close()
    assert wait_for(lambda: not leaked_qemu_processes(), 30), leaked_qemu_processes()


COMPARED = ("stratum", "outcome", "injected", "target", "location", "register", "address",
            "mask", "before", "after", "readback")  # fmt: skip


@pytest.mark.parametrize("dask_cluster", [1], indirect=True)
def test_dask_and_local_workers_give_the_same_records_in_deterministic_mode(
    image: GuestImage, dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """Eight deterministic experiments on a Dask worker and on a local worker (one each:
    icount boots are slow, and agreement between workers is checked elsewhere): the same
    outcome and the same injection, field by field."""
    file = campaign_file(tmp_path, "same", 8, workers=1, deterministic=True)
    over_dask = tmp_path / "dask.db"
    result = vmfault("campaign", "run", str(file), "--db", str(over_dask), "--executor", "dask",
                     "--scheduler", dask_cluster.address, cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    local = tmp_path / "local.db"
    result = vmfault("campaign", "run", str(file), "--db", str(local), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    remote, here = rows(over_dask, tmp_path), rows(local, tmp_path)
    assert sorted(remote) == sorted(here) == list(range(8))
    assert all(re.fullmatch(r"tcp://127\.0\.0\.1:\d+", row["worker"]) for row in remote.values())
    for i in range(8):
        assert {k: remote[i][k] for k in COMPARED} == {k: here[i][k] for k in COMPARED}, i
    assert wait_for(lambda: not leaked_qemu_processes(), 30), leaked_qemu_processes()


@pytest.mark.timeout(900)
def test_a_dask_worker_and_the_coordinator_killed_mid_campaign_lose_and_duplicate_nothing(
    image: GuestImage, dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    """60 experiments on two Dask workers: one worker killed (SIGKILL) after 10 records,
    its QEMU dies with it; the coordinator killed (SIGKILL) after 30; `campaign resume`
    finishes on the worker left: 60 records, each once, none given up, no QEMU left."""
    file = campaign_file(tmp_path, "lost", 60)
    db = tmp_path / "lost.db"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "vmfault", "campaign", "run", str(file), "--scheduler",
         dask_cluster.address], cwd=tmp_path, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(lambda: committed(db) >= 10, 300), "the campaign made no progress"
        victim = dask_cluster.workers[0]
        its_qemu = qemu_children_of(children(victim.pid))
        assert its_qemu, "the Dask worker runs no QEMU"
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        assert wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in its_qemu), 30)
        assert wait_for(lambda: committed(db) >= 30, 300), "no progress on the worker left"
    finally:
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
    before = committed(db)
    assert 30 <= before < 60
    result = vmfault("campaign", "resume", str(db), "--scheduler", dask_cluster.address,
                     "--json", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    found = rows(db, tmp_path)
    assert sorted(found) == list(range(60))
    data = status(db, tmp_path)
    assert data["done"] == 60 and data["infra_failures"] == 0
    assert wait_for(lambda: not leaked_qemu_processes(), 30), leaked_qemu_processes()


def test_an_unreachable_scheduler_is_one_line_before_anything_boots(tmp_path: Path) -> None:
    file = campaign_file(tmp_path, "nowhere", 4)
    result = vmfault("campaign", "run", str(file), "--scheduler", "tcp://127.0.0.1:9",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in line
    assert not (tmp_path / "nowhere.db").exists()


# --------------------------------------------------------------------- local workers lost


def test_local_workers_and_qemus_killed_from_outside_leave_no_vmm_error(
    image: GuestImage, tmp_path: Path
) -> None:
    """A worker process killed by SIGKILL, then a worker's QEMU killed by SIGKILL: their
    experiments run again (the first on a new worker), no record blames the VMM or the
    kills, every experiment once."""
    file = campaign_file(tmp_path, "killed", 30)
    db = tmp_path / "killed.db"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "vmfault", "campaign", "run", str(file), "--json"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert wait_for(lambda: committed(db) >= 5, 240)
    workers = sorted(worker_pids(coordinator.pid))
    os.kill(workers[0], signal.SIGKILL)
    assert wait_for(lambda: committed(db) >= 12, 240)
    victims = qemu_children_of(worker_pids(coordinator.pid))
    assert victims, "no worker QEMU found"
    os.kill(victims[0], signal.SIGKILL)
    stdout, stderr = coordinator.communicate(timeout=600)
    assert coordinator.returncode == 0, stderr
    assert json.loads(stdout)["done"] == 30
    said = " ".join(stderr.split())
    # The kills land during an experiment or between two (then nothing is lost): either
    # way no record blames them, and what was lost ran again.
    lost = re.findall(r"experiment (\d+) lost \(([^)]*)\)", said)
    found = rows(db, tmp_path)
    assert sorted(found) == list(range(30))
    assert "worker-3" in {row["worker"] for row in found.values()}, "no worker replaced"
    for experiment, why in lost:
        assert found[int(experiment)]["outcome"] not in ("vmm-error", "infra-failure"), why
        killed = re.match(r"(worker-\d+) was killed by SIGKILL", why)
        if killed:
            assert found[int(experiment)]["worker"] != killed.group(1)
    for row in found.values():
        assert not re.search(r"was killed|exited|worker-\d|from outside", row["reason"]), row


# --------------------------------------------------------------------- SLURM


SLURM_SCRIPT = ROOT / "tools" / "slurm-cluster.sh"


@pytest.fixture
def slurm(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A single-node SLURM cluster of this host (slurmctld, slurmd and munged in a temp
    directory), stopped after the test; skips with the reason if it cannot run here."""
    for daemon in ("slurmctld", "slurmd", "munged", "sbatch"):
        if shutil.which(daemon) is None and not Path(f"/usr/sbin/{daemon}").exists():
            pytest.skip(f"{daemon} is not installed (tools/setup-system.sh installs SLURM)")
    directory = tmp_path / "slurm"
    started = subprocess.run(["bash", str(SLURM_SCRIPT), "start", str(directory)],
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    try:
        if started.returncode != 0:
            reason = started.stderr.strip().splitlines()[-1:] or ["no reason given"]
            pytest.skip(f"SLURM cannot run here: {reason[0]}")
        env = dict(os.environ, SLURM_CONF=str(directory / "slurm.conf"),
                   DASK_TEMPORARY_DIRECTORY=str(directory))  # fmt: skip
        yield env
    finally:
        subprocess.run(["bash", str(SLURM_SCRIPT), "stop", str(directory)],
                       capture_output=True, timeout=120, check=False)  # fmt: skip


def test_a_campaign_runs_on_slurm_jobs(
    image: GuestImage, slurm: dict[str, str], tmp_path: Path
) -> None:
    """Six experiments on two SLURM jobs of one Dask worker each (dask-jobqueue), on this
    host: six records, every job gone afterwards, no QEMU left."""
    tables = """
[slurm]
queue = "vmfault"
walltime = "00:20:00"
cores = 1
memory = "2GB"
jobs = 2
interface = "lo"
"""
    file = campaign_file(tmp_path, "slurm", 6, executor='executor = "slurm"', tables=tables)
    result = vmfault("campaign", "run", str(file), "--json", cwd=tmp_path, env=slurm)
    assert result.returncode == 0, result.stderr
    found = rows(tmp_path / "slurm.db", tmp_path)
    assert sorted(found) == list(range(6))
    queue = subprocess.run(["squeue", "--noheader"], capture_output=True, text=True, env=slurm,
                           timeout=30, check=False)  # fmt: skip
    assert wait_for(lambda: not subprocess.run(
        ["squeue", "--noheader"], capture_output=True, text=True, env=slurm, timeout=30,
        check=False).stdout.strip(), 60), queue.stdout  # fmt: skip
    assert wait_for(lambda: not leaked_qemu_processes(), 60), leaked_qemu_processes()
