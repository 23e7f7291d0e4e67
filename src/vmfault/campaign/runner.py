"""The campaign runner: plan, golden run, experiments on workers, every record committed.

Guarantees: each experiment's record is committed to the store before the next result is
taken, once (the coordinator is the one writer; a second result of an experiment, as Dask
may give after a lost worker, is dropped); an interrupted or killed campaign resumes with
exactly the missing experiments (experiment i is the same fault wherever and whenever it
runs); the local workers' QEMUs never outlive the coordinator.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmfault._version import __version__
from vmfault.campaign.cluster import Cluster, DaskExecutor
from vmfault.campaign.executor import Completed, Executor, Job, LocalExecutor
from vmfault.campaign.planner import CampaignPlan, plan_campaign, should_stop
from vmfault.campaign.spec import CampaignSpec, GuestSection
from vmfault.campaign.worker import Goldens, WorkerSetup, job_timeout_s, same_goldens
from vmfault.errors import MachineError, UsageError, VmfaultError
from vmfault.experiment.records import DEFAULT_MACHINE
from vmfault.experiment.testbed import MachineSpec, RestoreMethod
from vmfault.faults.units import Budget
from vmfault.guest.image import GuestImage, ImageSpec
from vmfault.guest.workloads import idle_argv
from vmfault.machine import Accel
from vmfault.session import prepare_image
from vmfault.store import SQLiteStore
from vmfault.store.base import DuplicateExperiment

__all__ = [
    "CampaignInterruptedError",
    "CampaignProgress",
    "Prepared",
    "campaign_image",
    "campaign_machines",
    "prepare_campaign",
    "run_campaign",
    "workload_argv",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


class CampaignInterruptedError(VmfaultError):
    """The campaign was stopped (Ctrl-C or SIGTERM); its records so far are committed."""


@dataclass
class CampaignProgress:
    """Live counts for a progress display; updated after every committed record."""

    total: int
    done: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    @property
    def rate_per_s(self) -> float:
        """Experiments committed per second so far in this run."""
        return self.done / max(1e-9, time.monotonic() - self.started)


def campaign_image(spec: CampaignSpec, *, log: Callable[[str], None] | None = None) -> GuestImage:
    """The guest image with the campaign's workloads in it (built or found in the cache)."""
    image_spec = ImageSpec(user_workloads=spec.user_workloads(), arch=spec.guest.arch)
    return prepare_image(image_spec, log=log)


def _argv(table: GuestSection, name: str, image: GuestImage) -> tuple[str, ...]:
    """The command line of a `[guest]` or `[[machine]]` table's workload."""
    idle = table.idle_s
    if idle is not None:
        return idle_argv(idle)
    args = tuple(table.args) or image.workload(name).default_args
    return (name, *args)


def workload_argv(spec: CampaignSpec, image: GuestImage) -> tuple[str, ...]:
    """The workload command line of the campaign (default arguments when none are given);
    of the first machine when there are `[[machine]]` tables."""
    if spec.machine:
        return campaign_machines(spec, image)[0].argv
    return _argv(spec.guest, spec.workload_name, image)


def campaign_machines(
    spec: CampaignSpec, image: GuestImage | Sequence[str]
) -> tuple[MachineSpec, ...]:
    """The testbed of the campaign: its `[[machine]]` tables (their workloads' default
    arguments from `image`), or the one machine of `[guest]` running `image`'s workload
    (or the command line given instead of an image)."""
    guest = spec.guest
    deterministic = guest.deterministic
    accel = Accel(guest.accel)
    if not spec.machine:
        argv = (
            _argv(guest, spec.workload_name, image)
            if isinstance(image, GuestImage)
            else tuple(image)
        )
        return (MachineSpec(DEFAULT_MACHINE, argv, deterministic, accel, disks=spec.guest_disks()),)
    if not isinstance(image, GuestImage):
        raise UsageError("the machines of a campaign need its image for their workloads")
    machines = []
    for table in spec.machine:
        options: dict[str, Any] = {
            "deterministic": deterministic if table.deterministic is None else table.deterministic,
            "accel": accel if table.accel is None else Accel(table.accel),
        }
        steps = table.script_steps()
        if steps is not None:
            machines.append(MachineSpec.scripted(table.name, steps, **options))
            continue
        if table.command is not None:
            machines.append(MachineSpec(table.name, table.command, daemon=table.daemon, **options))
            continue
        argv = _argv(table, table.workload_name, image)
        machines.append(MachineSpec(table.name, argv, daemon=table.daemon, **options))
    return tuple(machines)


def _qemu_version(binary: str = "qemu-system-x86_64") -> str:
    try:
        result = subprocess.run(
            [binary, "--version"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    except OSError:
        return "unknown"
    return result.stdout.splitlines()[0] if result.stdout else "unknown"


@dataclass(frozen=True)
class Prepared:
    """A campaign ready to run: its plan, store, image, workload and machines."""

    spec: CampaignSpec
    plan: CampaignPlan
    store: SQLiteStore
    image: GuestImage
    argv: tuple[str, ...]
    machines: tuple[MachineSpec, ...]


def prepare_campaign(
    spec: CampaignSpec, db: Path, *, resume: bool, log: Callable[[str], None] | None = None
) -> Prepared:
    """Plan `spec` and open (or create) its database at `db`."""
    plan = plan_campaign(spec)
    image = campaign_image(spec, log=log)
    argv = workload_argv(spec, image)
    if resume:
        store = SQLiteStore.open(db)
    else:
        provenance = {
            "tool_version": __version__,
            "qemu_version": _qemu_version(image.arch.platform.qemu_binary),
            "image_hash": image.image_hash,
            "kernel_release": image.kernel_release,
            "campaign_file_sha256": spec.file_sha256,
            "python": platform.python_version(),
            "host": platform.node(),
        }
        store = SQLiteStore.create(
            db, campaign_name=spec.campaign.name, seed=spec.campaign.seed,
            spec_json=spec.to_json(), file_sha256=spec.file_sha256,
            total_planned=plan.total, provenance=provenance,
        )  # fmt: skip
    return Prepared(spec, plan, store, image, argv, campaign_machines(spec, image))


def _check_goldens(goldens: list[Goldens], prepared: Prepared) -> None:
    """Every worker's golden runs agree machine by machine, and with those stored (the
    first campaign run stores them)."""
    for other in goldens[1:]:
        if not same_goldens(goldens[0], other):
            raise MachineError(
                "the workload's golden runs differ between workers",
                hint="the workload must be deterministic, or use `deterministic = true`",
            )
    for machine in prepared.machines:
        first = goldens[0][machine.name]
        stored = prepared.store.golden(list(machine.argv), machine=machine.name)
        if stored is None:
            prepared.store.save_golden(first)
        elif (stored.stdout, stored.exit_status) != (first.stdout, first.exit_status):
            raise MachineError(
                "the golden run differs from the one stored in the campaign database",
                hint="resume with the same image and workload",
            )


def run_campaign(
    prepared: Prepared,
    *,
    workers: int | None = None,
    on_record: Callable[[CampaignProgress, Completed], None] | None = None,
    executor: Executor | None = None,
    cluster: Cluster | None = None,
    log: Callable[[str], None] | None = None,
) -> CampaignProgress:
    """Run every planned experiment not yet in the store; returns the final counts.

    Experiments an earlier run gave up as lost to the infrastructure (`infra-failure`)
    are run again. Without an `executor`, the runner makes its own: Dask workers on
    `cluster` if given, else `workers` local worker processes. A result for an experiment
    already stored (a duplicate) is dropped. Raises CampaignInterruptedError on Ctrl-C or
    SIGTERM (records so far are kept).
    """
    spec, plan, store = prepared.spec, prepared.plan, prepared.store
    again = store.forget_infra_failures()
    if again and log is not None:
        log(f"running again {len(again)} experiment(s) lost to the infrastructure before")
    missing = plan.missing(store.done_ids())
    progress = CampaignProgress(total=plan.total, done=plan.total - len(missing))
    progress.outcomes = store.outcome_counts()
    if not missing or _converged(prepared):
        return progress
    count = min(workers or spec.campaign.workers, len(missing))
    restore = RestoreMethod(spec.campaign.restore)
    setup = WorkerSetup(
        image_root=prepared.image.root, machines=prepared.machines,
        judge=spec.campaign.judge, network=spec.networked,
        budget_factor=_budget(spec), crash_patterns=spec.crash_patterns_path(),
        restore=restore, control=None if spec.isolation is None else spec.isolation.control,
    )  # fmt: skip
    own = executor is None
    log_path = Path(f"{store.path}.log")
    if log is not None and cluster is None and executor is None:
        how = " from the campaign's RAM template" if restore is RestoreMethod.TEMPLATE else ""
        log(f"starting {count} worker(s){how}; worker log: {log_path}")
    try:
        if executor is None and cluster is not None:
            name = hashlib.sha256(str(store.path.resolve()).encode()).hexdigest()[:12]
            executor = dask = DaskExecutor(setup, cluster, name=name, log=log)
            dask.start()
        elif executor is None:
            # Ours from the start: a failed or interrupted start closes the workers it booted.
            pin = spec.isolation is not None and spec.isolation.pin
            executor = local = LocalExecutor(
                dataclasses.replace(setup, pin_workers=count if pin else 0),
                workers=count, log=log_path, job_timeout_s=0.0, notify=log,
            )  # fmt: skip
            local.start()
            local.job_timeout_s = _job_timeout(local.goldens, spec.campaign.hang_budget)
        _check_goldens(executor.goldens, prepared)
        jobs = (
            Job(i, (planned := plan.experiment(i)).spec, planned.seed, planned.index,
                planned.stratum.name)
            for i in plan.interleaved(missing)
        )  # fmt: skip
        for done in executor.run(jobs):
            try:
                store.record(
                    done.job.experiment_id, done.job.stratum, done.record, worker=done.worker,
                    started_at=done.started_at, finished_at=done.finished_at,
                )  # fmt: skip
            except DuplicateExperiment:
                logger.info("experiment %d is stored already: this result dropped",
                            done.job.experiment_id)  # fmt: skip
                continue
            progress.done += 1
            name = done.record.outcome.value
            progress.outcomes[name] = progress.outcomes.get(name, 0) + 1
            if on_record is not None:
                on_record(progress, done)
            if _converged(prepared):
                if log is not None:
                    log("every interval is narrower than the margin: stopping early")
                break
    except (KeyboardInterrupt, SystemExit) as exc:
        raise CampaignInterruptedError(
            f"interrupted after {progress.done} of {progress.total} experiments",
            hint=f"resume with: vmfault campaign resume {store.path}",
        ) from exc
    finally:
        if own and executor is not None:
            executor.close()
    return progress


def _converged(prepared: Prepared) -> bool:
    """Whether a `stop_early` campaign may stop: every stratum of the plan (those without
    results too) has an interval narrower than the margin."""
    settings = prepared.spec.campaign
    if not settings.stop_early or settings.margin is None:
        return False
    found = prepared.store.counts_by_stratum()
    counts = {stratum.name: found.get(stratum.name, {}) for stratum in prepared.plan.strata}
    return should_stop(counts, margin=settings.margin, confidence=settings.confidence)


def _budget(spec: CampaignSpec) -> float | Budget:
    """The campaign's hang budget as a worker takes it: a number of golden runs, or a
    `Budget` of guest seconds."""
    budget = spec.campaign.hang_budget
    return budget.factor if budget.guest_s is None else budget


def _job_timeout(goldens: list[Goldens], budget: Budget | float) -> float:
    return job_timeout_s(goldens, budget)


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()
