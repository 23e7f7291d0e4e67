"""The Dask side of a campaign: a worker plugin that holds one testbed per Dask worker, and
the tasks the coordinator submits to it.

`TestbedPlugin` is registered by the coordinator (`vmfault.campaign.cluster`) on every
Dask worker that offers the `VM` resource (`dask worker --resources VM=1 --nthreads 1`).
On its first task a worker writes the campaign's guest image into its image cache (from
the blobs shipped with the task, every file checked by its SHA-256), boots its testbed
and takes the golden runs, once; `run_batch` then runs a batch of experiments on it, one
after another, each with its deadline.

The testbed lives on a thread of the plugin's own, which starts every QEMU (they are tied
to that thread and die with the worker process) and runs every experiment; the task's
thread only waits. The experiments themselves run through `vmfault.campaign.worker`'s
`_Worker`, as in the local executor's worker processes. A testbed left idle for
IDLE_TIMEOUT_S (its coordinator gone) is destroyed; the next task boots it again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import logging
import queue
import threading
from collections.abc import Callable, Mapping
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
from vmfault.campaign.worker import (
    Answer,
    Goldens,
    LostError,
    WorkerSetup,
    _Worker,
    job_timeout_s,
    serve,
)
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
ABORT_GRACE_S = 60.0
"""How long an experiment past its deadline may take to end once its QEMU is killed."""

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
    """One testbed on a thread of its own: built on first use from the shipped image,
    reused for every experiment, destroyed by `close()` or after IDLE_TIMEOUT_S idle."""

    def __init__(self, setup: WorkerSetup, bundle: ImageBundle,
                 crash_patterns: tuple[BundleFile, bytes] | None) -> None:  # fmt: skip
        self.setup = setup
        self.bundle = bundle
        self.crash_patterns = crash_patterns
        self.goldens: Goldens | None = None
        self.deadline_s = 0.0
        self._worker: _Worker | None = None
        self._lock = threading.Lock()
        self._closing = threading.Lock()
        self._closed = False
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None]
        self._calls = queue.Queue()
        self._thread = threading.Thread(target=self._serve, name="vmfault-testbed", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """The testbed's thread: runs the calls it is given, one at a time."""
        while True:
            try:
                call = self._calls.get(timeout=IDLE_TIMEOUT_S)
            except queue.Empty:
                with self._lock:
                    self._drop()
                continue
            if call is None:
                self._drop()
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

    def _drop(self) -> None:
        """Destroy the testbed (on the testbed's thread)."""
        if self._worker is not None:
            self._worker.close()
        self._worker = None
        self.goldens = None

    def ready(self, blobs: Mapping[str, bytes] | None) -> Goldens:
        """The testbed's golden runs, after writing the image and booting it if not done
        yet. VmfaultError if it cannot start."""
        with self._lock:
            if self.goldens is not None:
                return self.goldens
            cache = default_cache_root()
            root = materialize(self.bundle, blobs, cache)
            patterns = None
            if self.crash_patterns is not None:
                item, data = self.crash_patterns
                patterns = cache / item.path
                materialize_file(patterns, item, {_key(data): data})
            setup = dataclasses.replace(self.setup, image_root=root, crash_patterns=patterns)

            def boot() -> Goldens:
                self._drop()
                self._worker = _Worker(setup)
                return self._worker.boot()

            goldens = self._call(boot).result(timeout=BOOT_TIMEOUT_S)
            self.deadline_s = job_timeout_s([goldens], setup.budget_factor)
            self.goldens = goldens
            return goldens

    def serve(self, experiment_id: int, spec: FaultSpec, seed: int, index: int) -> Answer:
        """Run one experiment on the testbed's thread and answer for it; one that overruns
        its deadline has its QEMU killed and is answered `lost`."""
        worker = self._worker
        if worker is None:
            return ("lost", experiment_id, "the worker's testbed was destroyed")
        future = self._call(lambda: serve(worker, experiment_id, spec, seed, index))
        reason = f"no answer within {self.deadline_s:g} s"
        try:
            try:
                return future.result(timeout=self.deadline_s)
            except concurrent.futures.TimeoutError:
                worker.abort(reason)
                return future.result(timeout=ABORT_GRACE_S)
        except concurrent.futures.TimeoutError:
            return ("lost", experiment_id, f"{reason}, nor after its QEMU was killed")
        except LostError as exc:
            return ("lost", experiment_id, exc.one_line())

    def close(self, *, wait_s: float = 60.0) -> None:
        """Destroy the testbed (the experiment under way ended, every QEMU reaped) and end
        its thread; calls still waiting are answered lost."""
        with self._closing:
            self._closed = True
            self._calls.put(None)
        worker = self._worker
        if worker is not None:
            worker.abort("the worker's testbed was closed")
        self._thread.join(timeout=wait_s)


def _key(data: bytes) -> str:
    return blob_key(hashlib.sha256(data).hexdigest())


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
            self.host = TestbedHost(self.worker_setup, self.bundle, self.crash_patterns)

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
