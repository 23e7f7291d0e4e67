"""Campaigns on Dask: an existing Dask cluster, or one of SLURM jobs (dask-jobqueue).

`cluster_options` reads the executor of a campaign (`[campaign] executor`, `--executor`,
`--scheduler`, the `[dask]` and `[slurm]` tables) and `connect` reaches the cluster, both
before anything is built or booted, so bad input fails in one line. `DaskExecutor` runs
the campaign's experiments there through `vmfault.campaign.daskworker`:

- every Dask worker offering the `VM` resource holds one testbed (booted and golden runs
  taken once per worker); the golden runs of every worker must agree, as with local
  workers;
- tasks are batches of BATCH_SIZE experiments, at most WINDOW_PER_WORKER batches per
  worker in flight; results come back as batches finish (`as_completed`);
- the guest image travels as blobs keyed by their SHA-256 (`vmfault.campaign.artifacts`)
  and is checked by hash on each worker before use;
- a batch lost with its worker is run again by Dask, or by the executor (`Attempts`): an
  experiment is yielded once, whatever ran twice; only the coordinator writes the store.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import re
import shutil
import sys
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmfault.campaign.artifacts import BundleFile, image_bundle, read_blobs
from vmfault.campaign.executor import Attempts, Completed, Job
from vmfault.campaign.spec import CampaignSpec, ExecutorName, SlurmSection
from vmfault.campaign.worker import Goldens, WorkerSetup, same_goldens
from vmfault.errors import MachineError, UsageError
from vmfault.guest.image import load_image

if TYPE_CHECKING:
    from distributed import Client, Future

    from vmfault.campaign.daskworker import BatchResult, WorkerStart

__all__ = [
    "BATCH_SIZE",
    "WINDOW_PER_WORKER",
    "Cluster",
    "ClusterOptions",
    "DaskExecutor",
    "cluster_options",
    "connect",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

BATCH_SIZE = 4
"""Experiments per Dask task."""
WINDOW_PER_WORKER = 2
"""Batches in flight per VM worker: one running, one queued behind it."""
CONNECT_TIMEOUT_S = 10.0
"""How long reaching a Dask scheduler may take."""
WORKER_WAIT_S = 3600.0
"""How long a SLURM campaign waits for its first worker (its jobs may queue)."""
START_TIMEOUT_S = 900.0
"""How long the workers present at the start may take to boot their testbeds."""
VM_RESOURCE = "VM"
"""The Dask worker resource one testbed takes (`vmfault.campaign.daskworker`)."""
_ADDRESS = re.compile(r"^(tcp|tls|ucx|inproc)://[^\s/]+(:\d+)?$")
_WORKER_HINT = (
    f"start Dask workers with `dask worker SCHEDULER --resources {VM_RESOURCE}=1 --nthreads 1`"
)


@dataclass(frozen=True)
class ClusterOptions:
    """Where a campaign runs when not on local workers: a Dask scheduler's address, or a
    SLURM cluster of Dask workers."""

    executor: ExecutorName
    scheduler: str | None = None
    slurm: SlurmSection | None = None


def cluster_options(
    spec: CampaignSpec, *, executor: str | None = None, scheduler: str | None = None
) -> ClusterOptions | None:
    """The campaign's executor, the command line's choices first; None for local workers.
    UsageError (one line) for an unknown executor, a Dask executor without a scheduler
    and a SLURM executor without a `[slurm]` table."""
    name: str = spec.campaign.executor.value
    if executor is not None:
        name = executor
    elif scheduler is not None:
        name = ExecutorName.DASK.value
    try:
        chosen = ExecutorName(name)
    except ValueError:
        allowed = ", ".join(e.value for e in ExecutorName)
        raise UsageError(
            f"unknown executor {name!r} (allowed: {allowed})",
            hint="--executor local|dask|slurm, or executor = ... in [campaign]",
        ) from None
    if chosen is ExecutorName.LOCAL:
        if scheduler is not None:
            raise UsageError(
                "--scheduler needs the dask executor", hint="add --executor dask, or drop it"
            )
        return None
    if chosen is ExecutorName.DASK:
        address = scheduler or (spec.dask.scheduler if spec.dask is not None else None)
        if not address:
            raise UsageError(
                "the dask executor needs a scheduler address",
                hint="give --scheduler tcp://HOST:PORT, or scheduler = ... in a [dask] table",
            )
        if not _ADDRESS.match(address):
            raise UsageError(
                f"{address!r} is not a Dask scheduler address",
                hint="give it as tcp://HOST:PORT",
            )
        return ClusterOptions(chosen, scheduler=address)
    if spec.slurm is None:
        raise UsageError(
            "the slurm executor needs a [slurm] table in the campaign file",
            hint="add [slurm] with cores, memory, walltime and jobs (queue, account and "
            "job_extra_directives if your site needs them)",
        )
    return ClusterOptions(chosen, slurm=spec.slurm)


class Cluster:
    """A connected Dask client, and the SLURM cluster it runs on if we made one; `close()`
    ends both (the SLURM jobs are cancelled)."""

    def __init__(self, client: Client, description: str, cluster: Any = None) -> None:
        self.client = client
        self.description = description
        self._cluster = cluster

    def vm_workers(self) -> list[str]:
        """The addresses of the workers that offer the VM resource now."""
        workers = self.client.scheduler_info()["workers"]
        return [
            address
            for address, info in workers.items()
            if float(info.get("resources", {}).get(VM_RESOURCE, 0)) >= 1
        ]

    def close(self) -> None:
        """Close the client, then the SLURM cluster (its jobs cancelled); idempotent."""
        with contextlib.suppress(Exception):
            self.client.close()
        cluster, self._cluster = self._cluster, None
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect(options: ClusterOptions, *, log_directory: Path) -> Cluster:
    """Reach the cluster of `options` (submit the SLURM jobs); UsageError, one line, if the
    scheduler cannot be reached, has no worker with the VM resource, or SLURM is missing.
    SLURM jobs write their output to `log_directory`."""
    if options.executor is ExecutorName.DASK:
        assert options.scheduler is not None
        from distributed import Client  # noqa: PLC0415 (Dask loads only when used)

        try:
            client = Client(options.scheduler, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise UsageError(
                f"cannot reach the Dask scheduler at {options.scheduler}: {reason[:200]}",
                hint="start one with `dask scheduler`, or give its address with --scheduler",
            ) from None
        cluster = Cluster(client, f"Dask scheduler {options.scheduler}")
        if not cluster.vm_workers():
            cluster.close()
            raise UsageError(
                f"no worker of the Dask scheduler at {options.scheduler} offers the "
                f"{VM_RESOURCE} resource",
                hint=_WORKER_HINT.replace("SCHEDULER", options.scheduler),
            )
        return cluster
    return _slurm(options, log_directory)


def _slurm(options: ClusterOptions, log_directory: Path) -> Cluster:
    settings = options.slurm
    assert settings is not None
    if shutil.which("sbatch") is None:
        raise UsageError(
            "the slurm executor needs SLURM's sbatch, which is not on PATH",
            hint="run the campaign on a SLURM login node, or choose --executor local or dask",
        )
    from dask_jobqueue.slurm import SLURMCluster  # noqa: PLC0415 (loads only for SLURM)

    log_directory.mkdir(parents=True, exist_ok=True)
    try:
        cluster = SLURMCluster(
            queue=settings.queue,
            account=settings.account,
            walltime=settings.walltime,
            cores=settings.cores,
            processes=settings.cores,
            memory=settings.memory,
            job_extra_directives=list(settings.job_extra_directives),
            worker_extra_args=["--resources", f"{VM_RESOURCE}=1"],
            interface=settings.interface,
            log_directory=str(log_directory),
            python=sys.executable,
            name="vmfault",
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise UsageError(
            f"cannot start the SLURM cluster: {' '.join(str(exc).split())[:200]}",
            hint="check the [slurm] table against your site's partitions and accounts",
        ) from None
    cluster.scale(jobs=settings.jobs)
    from distributed import Client  # noqa: PLC0415 (Dask loads only when used)

    client = Client(cluster, set_as_default=False)
    return Cluster(client, f"SLURM, {settings.jobs} job(s) of {settings.cores} worker(s)", cluster)


class DaskExecutor:
    """Runs a campaign's experiments on the Dask workers of `cluster` (see the module
    docstring). `start()` ships the image, registers the plugin and boots the workers
    present; `close()` removes the plugin, which destroys every worker's testbed."""

    def __init__(
        self,
        setup: WorkerSetup,
        cluster: Cluster,
        *,
        name: str,
        batch_size: int = BATCH_SIZE,
        window_per_worker: int = WINDOW_PER_WORKER,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.setup = setup
        self.cluster = cluster
        self.client = cluster.client
        self.batch_size = batch_size
        self.window_per_worker = window_per_worker
        self.goldens: list[Goldens] = []
        self.workers: dict[str, Goldens] = {}
        self._log = log or (lambda _message: None)
        self._token = uuid.uuid4().hex[:12]
        self._plugin = f"vmfault-testbed-{name}"
        self._blobs: dict[str, Future[bytes]] = {}
        self._blob_data: dict[str, bytes] = {}
        self._registered = False
        self._inflight: dict[Future[BatchResult], list[Job]] = {}
        self._batches = itertools.count()

    def __enter__(self) -> DaskExecutor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Ship the image, register the plugin, boot the workers present (waiting for the
        first one of a SLURM cluster); MachineError if one cannot start."""
        from distributed import as_completed  # noqa: PLC0415 (Dask loads only when used)

        from vmfault.campaign.daskworker import TestbedPlugin, start_worker  # noqa: PLC0415

        image = load_image(self.setup.image_root)
        bundle = image_bundle(image.root, image.image_hash)
        self._blob_data = read_blobs(image.root, bundle)
        patterns = None
        if self.setup.crash_patterns is not None:
            data = self.setup.crash_patterns.read_bytes()
            digest = hashlib.sha256(data).hexdigest()
            item = BundleFile(f"crash-patterns/{digest}.toml", digest, len(data), 0o644)
            patterns = (item, data)
        plugin = TestbedPlugin(self._plugin, self.setup, bundle, patterns)
        self.client.register_plugin(plugin, name=self._plugin)
        self._registered = True
        workers = self._await_workers()
        self._ship()
        self._log(
            f"{len(workers)} Dask worker(s) on {self.cluster.description}: shipped the image "
            f"({bundle.size_bytes / 2**20:.0f} MiB in {len(bundle.files)} files), booting"
        )
        starts = [
            self.client.submit(
                start_worker,
                self._plugin,
                self._blobs,
                workers=[address],
                resources={VM_RESOURCE: 1},
                pure=False,
                key=f"vmfault-start-{self._token}-{i}",
            )
            for i, address in enumerate(workers)
        ]
        try:
            for future in as_completed(starts, loop=self.client.loop, timeout=START_TIMEOUT_S):
                self._started(future.result())
        except TimeoutError:
            if not self.workers:
                raise MachineError(
                    f"no Dask worker booted its testbed within {START_TIMEOUT_S:g} s"
                ) from None
        finally:
            self.client.cancel(starts)

    def _await_workers(self) -> list[str]:
        deadline = time.monotonic() + WORKER_WAIT_S
        while not (workers := self.cluster.vm_workers()):
            if time.monotonic() > deadline:
                raise MachineError(
                    f"no Dask worker with the {VM_RESOURCE} resource joined within "
                    f"{WORKER_WAIT_S:g} s",
                    hint="check the SLURM queue (squeue) and the job logs",
                )
            time.sleep(1.0)
        return workers

    def _ship(self) -> None:
        """Scatter the image's blobs to every worker (again if a lost worker took them)."""
        if self._blobs and all(f.status == "finished" for f in self._blobs.values()):
            return
        self._blobs = self.client.scatter(self._blob_data, broadcast=True, hash=False)

    def _started(self, start: WorkerStart) -> None:
        if start.goldens is None:
            raise MachineError(f"Dask worker {start.worker} could not start: {start.failure}")
        self._add_worker(start.worker, start.goldens)

    def _add_worker(self, worker: str, goldens: Goldens) -> None:
        if worker in self.workers:
            return
        if self.goldens and not same_goldens(self.goldens[0], goldens):
            raise MachineError(
                f"the workload's golden runs differ between workers ({worker})",
                hint="the workload must be deterministic, or use `deterministic = true`",
            )
        self.workers[worker] = goldens
        self.goldens.append(goldens)

    def run(self, jobs: Iterable[Job]) -> Iterator[Completed]:
        """Run `jobs` in batches, yielding each experiment's result once, as batches
        finish; experiments lost with their worker run again (`Attempts`)."""
        from distributed import as_completed  # noqa: PLC0415 (Dask loads only when used)

        from vmfault.campaign.daskworker import BatchResult, run_batch  # noqa: PLC0415

        pending = iter(jobs)
        again: deque[Job] = deque()
        attempts = Attempts(notify=self._log)
        yielded: set[int] = set()
        finished = as_completed(loop=self.client.loop)

        def fill() -> None:
            window = max(1, len(self.cluster.vm_workers())) * self.window_per_worker
            while len(self._inflight) < window:
                batch = [again.popleft() for _ in range(min(len(again), self.batch_size))]
                batch += itertools.islice(pending, self.batch_size - len(batch))
                if not batch:
                    return
                self._ship()
                experiments = [(j.experiment_id, j.spec, j.seed, j.index) for j in batch]
                future = self.client.submit(
                    run_batch, self._plugin, experiments, self._blobs,
                    resources={VM_RESOURCE: 1}, pure=False,
                    key=f"vmfault-batch-{self._token}-{next(self._batches)}",
                )  # fmt: skip
                self._inflight[future] = batch
                finished.add(future)

        try:
            fill()
            for future in finished:
                batch = self._inflight.pop(future)
                try:
                    result: BatchResult = future.result()
                except Exception as exc:  # the batch was lost: its worker, a dependency
                    reason = f"a Dask batch was lost ({type(exc).__name__}: {exc})"
                    result = BatchResult("dask", None, (), reason)
                finally:
                    future.release()
                yield from self._results(batch, result, attempts, again, yielded)
                fill()
        finally:
            self._cancel()

    def _results(
        self,
        batch: list[Job],
        result: BatchResult,
        attempts: Attempts,
        again: deque[Job],
        yielded: set[int],
    ) -> Iterator[Completed]:
        if result.goldens is not None:
            self._add_worker(result.worker, result.goldens)
        by_id = {job.experiment_id: job for job in batch}
        for answer in result.answers:
            kind, experiment_id = answer[0], int(answer[1])
            job = by_id.pop(experiment_id)
            if kind == "usage-error":
                raise UsageError(str(answer[2]))
            if kind == "done":
                if experiment_id in yielded:
                    logger.info("experiment %d ran twice: the second result dropped",
                                experiment_id)  # fmt: skip
                    continue
                yielded.add(experiment_id)
                _, _, record, started, done_at = answer
                yield Completed(job, record, result.worker, started, done_at)
                continue
            given_up = attempts.lose(job, str(answer[2]), worker=result.worker, deadline=False)
            if given_up is None:
                again.append(job)
            elif experiment_id not in yielded:
                yielded.add(experiment_id)
                yield given_up
        for job in by_id.values():  # not run: the batch failed before it
            if job.experiment_id in yielded:
                continue
            reason = result.failure or f"{result.worker} did not run it"
            given_up = attempts.lose(job, reason, worker=result.worker, deadline=False)
            if given_up is None:
                again.append(job)
            else:
                yielded.add(job.experiment_id)
                yield given_up

    def _cancel(self) -> None:
        if self._inflight:
            self.client.cancel(list(self._inflight))
            self._inflight.clear()

    def close(self) -> None:
        """Cancel what is in flight, remove the plugin (every worker's testbed destroyed,
        its QEMUs reaped) and release the image's blobs; safe to call more than once."""
        with contextlib.suppress(Exception):
            self._cancel()
        if self._registered:
            self._registered = False
            with contextlib.suppress(Exception):
                self.client.unregister_worker_plugin(self._plugin)
        if self._blobs:
            with contextlib.suppress(Exception):
                self.client.cancel(list(self._blobs.values()))
            self._blobs = {}
