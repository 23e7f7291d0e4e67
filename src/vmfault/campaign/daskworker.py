"""The Dask side of a campaign: a worker plugin that holds one testbed per Dask worker, and
the tasks the coordinator submits to it.

`TestbedPlugin` is registered by the coordinator (`vmfault.campaign.cluster`) on every
Dask worker that offers the `VM` resource (`dask worker --resources VM=1 --nthreads 1`).
On its first task a worker writes the campaign's guest image into its image cache (from
the blobs shipped with the task, every file checked by its SHA-256), boots its testbed
and takes the golden runs, once; `run_batch` then runs a batch of experiments on it, one
after another, each with its deadline.

The testbed is a worker process of the local executor's kind (`vmfault.campaign.worker`,
over its pipes), so every experiment runs through the same `_Worker` wherever it runs,
apart from the Dask worker's own threads. It is started from a thread of the plugin's
own, to which it is tied: it dies with the Dask worker, and its QEMU with it. A testbed
left idle for IDLE_TIMEOUT_S (its coordinator gone) is stopped; the next task boots it
again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from distributed import WorkerPlugin, get_worker
from distributed.worker import Worker

from vmfault.campaign.artifacts import (
    BundleFile,
    ImageBundle,
    blob_key,
    materialize,
    materialize_file,
)
from vmfault.campaign.cluster import VM_RESOURCE
from vmfault.campaign.executor import STOP_TIMEOUT_S, Job, WorkerProcess
from vmfault.campaign.worker import Answer, Goldens, LostError, WorkerSetup, job_timeout_s
from vmfault.errors import MachineError, VmfaultError
from vmfault.faults import FaultSpec
from vmfault.guest.image import default_cache_root

__all__ = [
    "VM_RESOURCE",
    "BatchResult",
    "TestbedHost",
    "TestbedPlugin",
    "WorkerStart",
    "run_batch",
    "start_worker",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

BOOT_TIMEOUT_S = 600.0
"""How long a worker may take to write its image, boot its testbed and take its golden
runs, host seconds."""
IDLE_TIMEOUT_S = 900.0
"""A testbed without a task for this long (its coordinator gone) is destroyed."""

T = TypeVar("T")
Experiment = tuple[int, FaultSpec, int, int]
"""One experiment of a batch: its id, fault family, seed and index."""


@dataclasses.dataclass(frozen=True)
class WorkerStart:
    """How a Dask worker came up: its name (its address), its golden runs, or why it
    could not start."""

    worker: str
    goldens: Goldens | None
    failure: str = ""


@dataclasses.dataclass(frozen=True)
class BatchResult:
    """What a Dask worker answers for a batch: its name, its golden runs and one `Answer`
    per experiment it ran (in order; those after a usage error are left out)."""

    worker: str
    goldens: Goldens | None
    answers: tuple[Answer, ...]
    failure: str = ""


class TestbedHost:
    """The testbed of one Dask worker: a worker process (`vmfault.campaign.worker`, the
    local executor's) started on first use from the shipped image, reused for every
    experiment, stopped by `close()` or after IDLE_TIMEOUT_S idle.

    The worker process runs apart from the Dask worker's threads (no lock shared with its
    event loop); it is started from a thread of the host's own, to which it is tied, and
    dies with the Dask worker.
    """

    def __init__(self, setup: WorkerSetup, bundle: ImageBundle,
                 crash_patterns: tuple[BundleFile, bytes] | None, log: Path) -> None:  # fmt: skip
        self.setup = setup
        self.bundle = bundle
        self.crash_patterns = crash_patterns
        self.log = log
        self.goldens: Goldens | None = None
        self.deadline_s = 0.0
        self._local: WorkerSetup | None = None
        self._process: WorkerProcess | None = None
        self._started = 0
        self._lock = threading.Lock()
        self._closing = threading.Lock()
        self._closed = False
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None]
        self._calls = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="vmfault-testbed", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """The host's thread: starts worker processes (tied to it), one call at a time."""
        while True:
            try:
                call = self._calls.get(timeout=IDLE_TIMEOUT_S)
            except queue.Empty:
                if self._lock.acquire(blocking=False):
                    try:
                        self._stop()
                    finally:
                        self._lock.release()
                continue
            if call is None:
                with self._closing:
                    while not self._calls.empty():
                        left = self._calls.get_nowait()
                        if left is not None:
                            left[1].set_exception(LostError("the worker's testbed was closed"))
                return
            function, future = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except BaseException as exc:  # handed to the waiting task
                future.set_exception(exc)

    def _call(self, function: Callable[[], T]) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        with self._closing:
            if self._closed:
                future.set_exception(LostError("the worker's testbed was closed"))
            else:
                self._calls.put((function, future))
        return future

    def _stop(self) -> None:
        process, self._process = self._process, None
        self.goldens = None
        if process is not None:
            process.stop(STOP_TIMEOUT_S)

    def _start(self) -> Goldens:
        """A new worker process, booted (the lock held); its golden runs."""
        local = self._local
        assert local is not None
        self._started += 1
        name = f"testbed-{self._started}"
        process = self._call(lambda: WorkerProcess(name, local, self.log)).result(
            timeout=BOOT_TIMEOUT_S
        )
        goldens = process.await_ready(BOOT_TIMEOUT_S)
        self._process = process
        self.deadline_s = job_timeout_s([goldens], local.budget_factor)
        self.goldens = goldens
        return goldens

    def ready(self, blobs: Mapping[str, bytes] | None) -> Goldens:
        """The testbed's golden runs, after writing the image and booting it if not done
        yet. VmfaultError if it cannot start."""
        with self._lock:
            if self.goldens is not None:
                return self.goldens
            if self._local is None:
                cache = default_cache_root()
                root = materialize(self.bundle, blobs, cache)
                patterns = None
                if self.crash_patterns is not None:
                    item, data = self.crash_patterns
                    patterns = cache / item.path
                    materialize_file(patterns, item, {blob_key(item.sha256): data})
                self._local = dataclasses.replace(
                    self.setup, image_root=root, crash_patterns=patterns
                )
            return self._start()

    def serve(self, experiment_id: int, spec: FaultSpec, seed: int, index: int) -> Answer:
        """Run one experiment on the worker process and answer for it; one that exits or
        overruns its deadline (then killed) is answered `lost`, and the next experiment
        boots a new worker process."""
        with self._lock:
            try:
                if self._process is None:
                    self._start()
            except VmfaultError as exc:
                return ("lost", experiment_id, f"a new testbed did not start: {exc.one_line()}")
            process = self._process
            assert process is not None
            job = Job(experiment_id, spec, seed, index, "")
            try:
                answer = process.answer(job, self.deadline_s)
            except OSError as exc:  # its pipe broke: it died between two experiments
                answer = ("exited", experiment_id, f"{process.name}: {exc.strerror}")
            if answer[0] in ("exited", "overran"):
                process.kill()
                self._process = None
                return ("lost", experiment_id, str(answer[2]))
            return answer

    def close(self) -> None:
        """Stop the worker process (its QEMU reaped) and end the host's thread; calls still
        waiting are answered lost."""
        with self._closing:
            self._closed = True
            self._calls.put(None)
        process = self._process
        if process is not None:
            process.kill()  # the experiment under way is of no use: end it now
        with self._lock:
            self._stop()
        self._thread.join(timeout=STOP_TIMEOUT_S)


class TestbedPlugin(WorkerPlugin):
    """Holds a `TestbedHost` on every Dask worker that offers the VM resource; its
    teardown (the plugin removed, the worker closing) destroys the testbed."""

    idempotent = False

    def __init__(self, name: str, setup: WorkerSetup, bundle: ImageBundle,
                 crash_patterns: tuple[BundleFile, bytes] | None) -> None:  # fmt: skip
        self.name = name
        self.worker_setup = setup
        self.bundle = bundle
        self.crash_patterns = crash_patterns
        self.host: TestbedHost | None = None

    def setup(self, worker: Worker) -> None:
        """Make the host (nothing boots before the first task)."""
        if worker.state.total_resources.get(VM_RESOURCE, 0) >= 1:
            log = Path(worker.local_directory) / "vmfault-testbed.log"
            self.host = TestbedHost(self.worker_setup, self.bundle, self.crash_patterns, log)

    async def teardown(self, worker: Worker) -> None:
        """Destroy the testbed (on a thread: the worker's event loop goes on)."""
        host, self.host = self.host, None
        if host is not None:
            await asyncio.get_running_loop().run_in_executor(None, host.close)


def _host(plugin_name: str) -> tuple[str, TestbedHost]:
    worker = get_worker()
    plugin = worker.plugins.get(plugin_name)
    if not isinstance(plugin, TestbedPlugin) or plugin.host is None:
        raise MachineError(
            f"Dask worker {worker.address} holds no vmfault testbed ({plugin_name})",
            hint=f"start Dask workers with `--resources {VM_RESOURCE}=1 --nthreads 1`",
        )
    return str(worker.address), plugin.host


def start_worker(plugin_name: str, blobs: Mapping[str, bytes]) -> WorkerStart:
    """Task: write the image and boot this worker's testbed (once); its golden runs."""
    name, host = _host(plugin_name)
    try:
        return WorkerStart(name, host.ready(blobs))
    except VmfaultError as exc:
        return WorkerStart(name, None, exc.one_line())


def run_batch(
    plugin_name: str, experiments: list[Experiment], blobs: Mapping[str, bytes]
) -> BatchResult:
    """Task: run `experiments` one after another on this worker's testbed."""
    name, host = _host(plugin_name)
    try:
        goldens = host.ready(blobs)
    except VmfaultError as exc:
        return BatchResult(name, None, (), f"{name} could not start: {exc.one_line()}")
    answers: list[Answer] = []
    for experiment_id, spec, seed, index in experiments:
        answer = host.serve(experiment_id, spec, seed, index)
        answers.append(answer)
        if answer[0] == "usage-error":
            break
    return BatchResult(name, goldens, tuple(answers))
