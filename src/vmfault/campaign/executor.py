"""Executors run experiments somewhere and hand back their records.

The runner needs only the `Executor` protocol; `LocalExecutor` runs worker processes on
this machine (one QEMU each), `vmfault.campaign.cluster.DaskExecutor` Dask workers on
any number of hosts. Both yield each experiment once: one lost to the infrastructure
runs again (`Attempts`) and is never recorded as an outcome of its fault.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import selectors
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from vmfault.campaign.worker import (
    Answer,
    Goldens,
    WorkerSetup,
    make_start_state,
    read_message,
    write_message,
)
from vmfault.classify import signal_name
from vmfault.errors import MachineError, UsageError
from vmfault.experiment.pipeline import infra_failure_record, vmm_error_record
from vmfault.experiment.records import ExperimentRecord
from vmfault.experiment.testbed import RestoreMethod
from vmfault.faults import FaultSpec
from vmfault.machine.rundir import RunDir, ram_root
from vmfault.machine.spawn import spawn_tied

__all__ = [
    "MAX_ATTEMPTS",
    "WORKER_PROGRAM",
    "Attempts",
    "Completed",
    "Executor",
    "Job",
    "LocalExecutor",
    "WorkerProcess",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

BOOT_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 3
"""Runs of one experiment before it is given up as lost to the infrastructure."""
WORKER_PROGRAM = (sys.executable, "-m", "vmfault.campaign.worker")
"""The command line of a local worker process (`vmfault.campaign.worker.main`)."""


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


class WorkerProcess:
    """One worker process (`vmfault.campaign.worker`), over its pipes; started tied to the
    calling thread (it dies with it, see `spawn_tied`)."""

    def __init__(self, name: str, setup: WorkerSetup, log: Path,
                 program: Sequence[str] = WORKER_PROGRAM) -> None:  # fmt: skip
        self.name = name
        self.log = log
        self.process = spawn_tied(program, output=log, pipes=True)
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

    def await_ready(self, timeout_s: float = BOOT_TIMEOUT_S) -> Goldens:
        """The worker's golden runs once it has booted; MachineError (the process killed)
        if it does not within `timeout_s`, exits or cannot start."""
        with selectors.DefaultSelector() as one:
            one.register(self.stdout, selectors.EVENT_READ)
            if not one.select(timeout_s):
                self.kill()
                raise MachineError(f"{self.name} did not boot in {timeout_s:g} s")
        try:
            kind, payload = self.receive()
        except EOFError:
            self.kill()
            raise MachineError(
                f"{self.name} exited during start-up", hint=f"see its log: {self.log}"
            ) from None
        if kind != "ready":
            self.kill()
            raise MachineError(f"{self.name} could not start: {payload}")
        assert isinstance(payload, dict)
        return payload

    def answer(self, job: Job, timeout_s: float) -> Answer:
        """Run `job` and wait for the answer (`vmfault.campaign.worker.Answer`). A worker
        that exits or gives no answer within `timeout_s` is killed and answered `exited`
        or `overran`, with the reason."""
        self.send(job, timeout_s)
        with selectors.DefaultSelector() as one:
            one.register(self.stdout, selectors.EVENT_READ)
            if not one.select(timeout_s):
                self.kill()
                return ("overran", job.experiment_id, f"{self.name} gave no answer within "
                        f"{timeout_s:g} s")  # fmt: skip
        try:
            answer: Answer = self.receive()
        except EOFError:
            return ("exited", job.experiment_id, self.exit_reason())
        finally:
            self.job = None
        return answer

    def exit_reason(self) -> str:
        """Why the worker's pipe ended: how its process ended (it is killed if it lives)."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=STOP_TIMEOUT_S)
        code = self.process.poll()
        self.kill()
        if code is None:
            return f"{self.name} closed its pipe"
        if code < 0:
            return f"{self.name} was killed by {signal_name(-code)}"
        return f"{self.name} exited with status {code}"

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


class Attempts:
    """How often each experiment was lost to the infrastructure, and when to give it up.

    An experiment lost (its worker killed by a signal or the OOM killer, its node gone,
    its QEMU killed from outside, its deadline passed) runs again, up to `max_attempts`
    runs in all. Then it is given up: as `vmm-error` if every attempt overran its
    deadline (QEMU stops answering under this fault wherever it runs: the VMM failing
    under the guest's fault), else as `infra-failure`, which no rate counts and which
    `campaign resume` runs again.
    """

    def __init__(
        self, max_attempts: int = MAX_ATTEMPTS, *, notify: Callable[[str], None] | None = None
    ) -> None:
        self.max_attempts = max_attempts
        self.losses: dict[int, list[tuple[str, bool]]] = {}
        self._notify = notify

    def lose(self, job: Job, reason: str, *, worker: str, deadline: bool) -> Completed | None:
        """Note that `job` was lost for `reason` (`deadline`: it overran its deadline).
        None: run it again; else the record that gives it up."""
        losses = self.losses.setdefault(job.experiment_id, [])
        losses.append((reason, deadline))
        if len(losses) < self.max_attempts:
            self._say(
                f"experiment {job.experiment_id} lost ({reason}): running it again "
                f"(attempt {len(losses) + 1} of {self.max_attempts})"
            )
            return None
        now = time.time()
        tried = f"on {len(losses)} attempts; the last: {reason}"
        if all(overran for _, overran in losses):
            record = vmm_error_record(
                job.spec, seed=job.seed, index=job.index,
                reason=f"QEMU gave no answer within the experiment's deadline {tried}",
                evidence="; ".join(why for why, _ in losses),
            )  # fmt: skip
        else:
            record = infra_failure_record(
                job.spec, seed=job.seed, index=job.index,
                reason=f"lost to the infrastructure {tried}",
            )  # fmt: skip
        self._say(f"experiment {job.experiment_id} given up: {record.reason}")
        return Completed(job, record, worker, now, now)

    def _say(self, message: str) -> None:
        logger.warning("%s", message)
        if self._notify is not None:
            self._notify(message)


class LocalExecutor:
    """Worker processes on this machine, each with one long-lived QEMU.

    `start()` boots them and collects each one's golden run: restored by TEMPLATE, it
    first boots the machines once and saves their RAM templates (with the golden runs
    timed on a clone), and every worker starts as a clone of them. A worker that dies or
    overruns `job_timeout_s` is killed and replaced, and its experiment runs again
    (`Attempts`); a worker whose QEMU was killed from outside answers `lost` and boots a
    fresh testbed. `close()` kills every worker (their QEMUs die with them) and removes the
    templates.
    """

    def __init__(self, setup: WorkerSetup, *, workers: int, log: Path, job_timeout_s: float,
                 notify: Callable[[str], None] | None = None,
                 program: Sequence[str] = WORKER_PROGRAM) -> None:  # fmt: skip
        self.setup = setup
        self.workers = workers
        self.log = log
        self.job_timeout_s = job_timeout_s
        self.notify = notify
        self.program = tuple(program)
        self.goldens: list[Goldens] = []
        self._procs: list[WorkerProcess] = []
        self._spawned = 0
        self._templates: RunDir | None = None
        self._selector = selectors.DefaultSelector()

    def __enter__(self) -> LocalExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> WorkerProcess:
        self._spawned += 1
        proc = WorkerProcess(f"worker-{self._spawned}", self.setup, self.log, self.program)
        self.goldens.append(proc.await_ready())
        self._procs.append(proc)
        self._selector.register(proc.stdout, selectors.EVENT_READ, proc)
        return proc

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

    def _replace(self, proc: WorkerProcess) -> WorkerProcess:
        self._selector.unregister(proc.stdout)
        self._procs.remove(proc)
        proc.kill()
        return self._spawn()

    def run(self, jobs: Iterable[Job]) -> Iterator[Completed]:
        """Run `jobs`, yielding each result as soon as it is available; an experiment lost
        to the infrastructure runs again (see `Attempts`)."""
        pending = iter(jobs)
        again: deque[Job] = deque()
        attempts = Attempts(notify=self.notify)
        exhausted = False

        def feed(proc: WorkerProcess) -> None:
            nonlocal exhausted
            while True:
                job = again.popleft() if again else None
                if job is None and not exhausted:
                    job = next(pending, None)
                    exhausted = job is None
                if job is None:
                    return
                try:
                    proc.send(job, self.job_timeout_s)
                    return
                except OSError:  # the worker died while idle: the job never ran there
                    proc.job = None
                    again.appendleft(job)
                    proc = self._replace(proc)

        def lost(job: Job, proc: WorkerProcess, reason: str, *, deadline: bool) -> Completed | None:
            given_up = attempts.lose(job, reason, worker=proc.name, deadline=deadline)
            if given_up is None:
                again.append(job)
            return given_up

        for proc in list(self._procs):
            feed(proc)
        while any(p.job is not None for p in self._procs):
            now = time.monotonic()
            wait_s = max(0.0, min(p.deadline for p in self._procs if p.job is not None) - now)
            for key, _ in self._selector.select(wait_s):
                proc = key.data
                if proc not in self._procs:
                    continue
                if proc.job is None:  # an idle worker's pipe ended: it died between jobs
                    proc.exit_reason()
                    feed(self._replace(proc))
                    continue
                job = proc.job
                try:
                    message = proc.receive()
                except EOFError:
                    message = ("exited", job.experiment_id, proc.exit_reason())
                kind = message[0]
                if kind == "usage-error":
                    raise UsageError(message[2])
                if kind == "fatal":
                    raise MachineError(message[2])
                proc.job = None
                if kind == "done":
                    _, _, record, started, finished = message
                    yield Completed(job, record, proc.name, started, finished)
                elif kind == "lost":  # the worker lives on, with a fresh testbed
                    given_up = lost(job, proc, message[2], deadline=False)
                    if given_up is not None:
                        yield given_up
                else:
                    given_up = lost(job, proc, message[2], deadline=False)
                    if given_up is not None:
                        yield given_up
                    proc = self._replace(proc)
                feed(proc)
            for proc in [p for p in self._procs if p.job is not None]:
                if time.monotonic() > proc.deadline:
                    job = proc.job
                    assert job is not None
                    proc.job = None
                    reason = f"{proc.name} gave no answer within {self.job_timeout_s:g} s"
                    given_up = lost(job, proc, reason, deadline=True)
                    if given_up is not None:
                        yield given_up
                    feed(self._replace(proc))

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
