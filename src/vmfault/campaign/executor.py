"""Executors run experiments somewhere and hand back their records.

The runner needs only the `Executor` protocol; `LocalExecutor` runs worker processes on
this machine (one QEMU each). A distributed executor plugs in by implementing the same
three members.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import selectors
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from vmfault.campaign.worker import (
    Goldens,
    WorkerSetup,
    make_start_state,
    read_message,
    write_message,
)
from vmfault.errors import MachineError, UsageError
from vmfault.experiment.pipeline import vmm_error_record
from vmfault.experiment.records import ExperimentRecord
from vmfault.experiment.testbed import RestoreMethod
from vmfault.faults import FaultSpec
from vmfault.machine.rundir import RunDir, ram_root
from vmfault.machine.spawn import spawn_tied

__all__ = ["Completed", "Executor", "Job", "LocalExecutor"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

BOOT_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Job:
    """One experiment to run: its id, fault family, seed and index."""

    experiment_id: int
    spec: FaultSpec
    seed: int
    index: int
    stratum: str


@dataclass(frozen=True)
class Completed:
    """A finished experiment and where and when it ran (Unix times, seconds)."""

    job: Job
    record: ExperimentRecord
    worker: str
    started_at: float
    finished_at: float


class Executor(Protocol):
    """Runs jobs and yields their results as they complete, in any order."""

    goldens: list[Goldens]
    """Each worker's golden runs, by machine name, as its testbed started."""

    def run(self, jobs: Iterable[Job]) -> Iterator[Completed]: ...

    def close(self) -> None: ...


class _Process:
    def __init__(self, name: str, setup: WorkerSetup, log: Path) -> None:
        self.name = name
        argv = [sys.executable, "-m", "vmfault.campaign.worker"]
        self.process = spawn_tied(argv, output=log, pipes=True)
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin: IO[bytes] = self.process.stdin
        self.stdout: IO[bytes] = self.process.stdout
        write_message(self.stdin, setup)
        self.job: Job | None = None
        self.deadline = 0.0

    def send(self, job: Job, timeout_s: float) -> None:
        self.job = job
        self.deadline = time.monotonic() + timeout_s
        write_message(self.stdin, ("run", job.experiment_id, job.spec, job.seed, job.index))

    def receive(self) -> Any:
        return read_message(self.stdout)

    def stop(self, timeout_s: float) -> None:
        """Ask the worker to finish (end of its input): it destroys its machine, reaps its
        QEMU and removes its run directory. Killed if it does not exit within `timeout_s`."""
        with contextlib.suppress(OSError):
            self.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout_s)
        self.kill()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):
                stream.close()


class LocalExecutor:
    """Worker processes on this machine, each with one long-lived QEMU.

    `start()` boots them and collects each one's golden run: restored by TEMPLATE, it
    first boots the machines once and saves their RAM templates (with the golden runs
    timed on a clone), and every worker starts as a clone of them. A worker that dies or
    overruns `job_timeout_s` is killed and replaced, and its experiment is recorded as
    `vmm-error`. `close()` kills every worker (their QEMUs die with them) and removes the
    templates.
    """

    def __init__(self, setup: WorkerSetup, *, workers: int, log: Path,
                 job_timeout_s: float) -> None:  # fmt: skip
        self.setup = setup
        self.workers = workers
        self.log = log
        self.job_timeout_s = job_timeout_s
        self.goldens: list[Goldens] = []
        self._procs: list[_Process] = []
        self._spawned = 0
        self._templates: RunDir | None = None
        self._selector = selectors.DefaultSelector()

    def __enter__(self) -> LocalExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> _Process:
        self._spawned += 1
        proc = _Process(f"worker-{self._spawned}", self.setup, self.log)
        message = self._await_ready(proc)
        self.goldens.append(message)
        self._procs.append(proc)
        self._selector.register(proc.stdout, selectors.EVENT_READ, proc)
        return proc

    def _await_ready(self, proc: _Process) -> Goldens:
        with selectors.DefaultSelector() as one:
            one.register(proc.stdout, selectors.EVENT_READ)
            if not one.select(BOOT_TIMEOUT_S):
                proc.kill()
                raise MachineError(f"{proc.name} did not boot in {BOOT_TIMEOUT_S:g} s")
        try:
            kind, payload = proc.receive()
        except EOFError:
            proc.kill()
            raise MachineError(
                f"{proc.name} exited during start-up", hint=f"see its log: {self.log}"
            ) from None
        if kind != "ready":
            proc.kill()
            raise MachineError(f"{proc.name} could not start: {payload}")
        assert isinstance(payload, dict)
        return payload

    def start(self) -> None:
        """Make the templates (restored by TEMPLATE), then start every worker (one after
        another on purpose: boots are CPU-bound)."""
        setup = self.setup
        if setup.restore is RestoreMethod.TEMPLATE and setup.start_state is None:
            self._templates = RunDir(ram_root())
            state = make_start_state(setup, self._templates.path)
            self.setup = dataclasses.replace(setup, start_state=state)
        for _ in range(self.workers):
            self._spawn()

    def _replace(self, proc: _Process) -> None:
        self._selector.unregister(proc.stdout)
        self._procs.remove(proc)
        proc.kill()
        self._spawn()

    def run(self, jobs: Iterable[Job]) -> Iterator[Completed]:
        """Run `jobs`, yielding each result as soon as it is available."""
        pending = iter(jobs)
        exhausted = False

        def feed(proc: _Process) -> None:
            nonlocal exhausted
            if exhausted:
                return
            job = next(pending, None)
            if job is None:
                exhausted = True
                return
            proc.send(job, self.job_timeout_s)

        for proc in list(self._procs):
            feed(proc)
        while any(p.job is not None for p in self._procs):
            now = time.monotonic()
            wait_s = max(0.0, min(p.deadline for p in self._procs if p.job is not None) - now)
            for key, _ in self._selector.select(wait_s):
                proc = key.data
                if proc not in self._procs or proc.job is None:
                    continue
                job = proc.job
                try:
                    message = proc.receive()
                except EOFError:
                    message = ("died", job.experiment_id, f"{proc.name} exited")
                kind = message[0]
                if kind == "usage-error":
                    raise UsageError(message[2])
                if kind == "fatal":
                    raise MachineError(message[2])
                proc.job = None
                if kind == "done":
                    _, _, record, started, finished = message
                    yield Completed(job, record, proc.name, started, finished)
                    feed(proc)
                    continue
                yield self._failed(job, proc, message[2])
                self._replace(proc)
                feed(self._procs[-1])
            for proc in [p for p in self._procs if p.job is not None]:
                if time.monotonic() > proc.deadline:
                    job = proc.job
                    assert job is not None
                    proc.job = None
                    reason = f"{proc.name} gave no answer within {self.job_timeout_s:g} s"
                    yield self._failed(job, proc, reason)
                    self._replace(proc)
                    feed(self._procs[-1])

    def _failed(self, job: Job, proc: _Process, reason: str) -> Completed:
        now = time.time()
        machine = job.spec.machine or self.setup.judge or self.setup.machines[0].name
        record = vmm_error_record(
            job.spec, seed=job.seed, index=job.index, reason=reason, machine=machine
        )
        return Completed(job, record, proc.name, now, now)

    def close(self) -> None:
        """Stop every worker, killing those that do not finish in time; safe to call more
        than once. Their QEMUs are reaped by them, or die with them when killed."""
        for proc in self._procs:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        for proc in self._procs:
            proc.stop(STOP_TIMEOUT_S)
        self._procs.clear()
        self._selector.close()
        if self._templates is not None:
            self._templates.close()
            self._templates = None
