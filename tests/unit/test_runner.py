"""The campaign runner with a fake executor and a real SQLite store: no image, no QEMU."""

from __future__ import annotations

import dataclasses
import io
import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import vmfault.campaign.runner as runner_module
from vmfault.campaign import CampaignSpec, load_campaign, plan_campaign
from vmfault.campaign.executor import Completed, Job
from vmfault.campaign.runner import (
    CampaignInterruptedError,
    CampaignProgress,
    Prepared,
    campaign_machines,
    run_campaign,
)
from vmfault.campaign.worker import Goldens, WorkerSetup, read_message, write_message
from vmfault.classify import Outcome
from vmfault.errors import MachineError
from vmfault.experiment.pipeline import build_record, infra_failure_record, vmm_error_record
from vmfault.experiment.records import (
    DEFAULT_MACHINE,
    ExperimentRecord,
    GoldenRun,
    MachineRun,
    RegisterInjection,
    TriggerPoint,
)
from vmfault.experiment.testbed import MachineSpec
from vmfault.guest.image import GuestImage
from vmfault.report.summary import summarize, summary_tables
from vmfault.store import SQLiteStore

ARGV = ("checksum", "4096")
STARTED_AT = 1_714_560_000.0
CAMPAIGN_TOML = """\
[campaign]
name = "runner-test"
seed = 11
experiments = 10

[guest]
workload = "checksum"

[[faults]]
name = "a"
target = "register:gpr"

[[faults]]
name = "b"
target = "register:rip"

[[faults]]
name = "c"
target = "register:rsp"
"""
TOML_ORDER = [0, 4, 7, 1, 5, 8, 2, 6, 9, 3]
"""Experiments 0-3 (a), 4-6 (b) and 7-9 (c), round-robin over the strata."""


# --------------------------------------------------------------------- records and goldens


def golden_run(
    machine: str = DEFAULT_MACHINE, argv: tuple[str, ...] = ARGV, **changes: Any
) -> GoldenRun:
    """A fault-free run of `argv` on `machine`."""
    golden = GoldenRun(
        machine=machine, argv=argv, stdout=b"checksum: 0xdeadbeef\n", stderr=b"",
        exit_code=0, signal=None, guest_s=0.5, host_s=1.0,
    )  # fmt: skip
    return dataclasses.replace(golden, **changes)


def same_goldens(workers: int, **changes: Any) -> list[Goldens]:
    """`workers` workers with the same golden run of the one machine."""
    return [{DEFAULT_MACHINE: golden_run(**changes)} for _ in range(workers)]


def vmm_reason(job: Job) -> str:
    """The reason the fake gives for a VMM failure in `job`."""
    return f"worker-1 exited during experiment {job.experiment_id}"


def make_record(job: Job, outcome: Outcome) -> ExperimentRecord:
    """The record of `job` with `outcome`, made as the pipeline makes records."""
    if outcome is Outcome.VMM_ERROR:
        return vmm_error_record(job.spec, seed=job.seed, index=job.index, reason=vmm_reason(job))
    if outcome is Outcome.INFRA_FAILURE:
        return infra_failure_record(job.spec, seed=job.seed, index=job.index,
                                    reason="lost to the infrastructure on 3 attempts")  # fmt: skip
    held = outcome is not Outcome.NOT_INJECTED
    mask = 1 << job.index % 64
    injection = RegisterInjection(
        target=job.spec.target.spelling, location="rax", register="rax", width=64, mask=mask,
        before=0x1234, after=0x1234 ^ mask, readback=0x1234 ^ mask if held else 0x1234,
        injected=held, reason="" if held else "the trigger was not reached",
        trigger=TriggerPoint(spec="time:0.1s", time_s=0.1),
    )  # fmt: skip
    run = MachineRun(
        machine=DEFAULT_MACHINE, outcome=outcome, exit_status=0,
        reason=f"{outcome.value} in experiment {job.experiment_id}",
    )  # fmt: skip
    return build_record(job.spec, seed=job.seed, index=job.index, injections=[injection],
                        machines=[run], judged=DEFAULT_MACHINE)  # fmt: skip


def benign(job: Job) -> Outcome:
    """Every experiment benign: every interval narrows as fast as it can."""
    return Outcome.BENIGN


def varied(job: Job) -> Outcome:
    """Outcomes that differ from one experiment to the next."""
    choices = (Outcome.BENIGN, Outcome.SDC, Outcome.CRASH, Outcome.NOT_INJECTED, Outcome.HANG)
    return choices[job.experiment_id % len(choices)]


# --------------------------------------------------------------------- the fake executor


@dataclass
class FakeExecutor:
    """An `Executor` without workers: takes `workers` jobs at a time from the runner and
    answers them in `order` (as sent by default) with real records.

    With a `store`, it checks on taking each result back that the runner committed the
    one before. `limit` ends the run after that many results; `interrupt_after` raises
    `interrupt` after that many.
    """

    goldens: list[Goldens]
    store: SQLiteStore | None = None
    outcome: Callable[[Job], Outcome] = benign
    workers: int = 1
    order: Callable[[list[Job]], list[Job]] | None = None
    limit: int | None = None
    interrupt_after: int | None = None
    interrupt: type[BaseException] = KeyboardInterrupt
    jobs: list[Job] = field(default_factory=list)
    yielded: list[int] = field(default_factory=list)
    records: dict[int, ExperimentRecord] = field(default_factory=dict)
    closed: int = 0

    @property
    def sent(self) -> list[int]:
        """The experiment ids of the jobs taken, in the order taken."""
        return [job.experiment_id for job in self.jobs]

    def run(self, jobs: Iterable[Job]) -> Iterator[Completed]:
        """Answer `jobs`, batch by batch, checking each commit."""
        pending = iter(jobs)
        while batch := list(itertools.islice(pending, self.workers)):
            self.jobs.extend(batch)
            for job in self.order(batch) if self.order is not None else batch:
                if len(self.yielded) == self.limit:
                    return
                if len(self.yielded) == self.interrupt_after:
                    raise self.interrupt
                before = self._done()
                done = self._complete(job)
                self.yielded.append(job.experiment_id)
                yield done
                if self.store is not None:
                    after = self._done()
                    assert after == before | {job.experiment_id}, (
                        f"experiment {job.experiment_id} was not committed alone before the "
                        f"next result was taken: {sorted(after - before)}"
                    )

    def close(self) -> None:
        """Count the calls (the runner must not close an executor it was given)."""
        self.closed += 1

    def _done(self) -> set[int]:
        return set() if self.store is None else self.store.done_ids()

    def _complete(self, job: Job) -> Completed:
        record = make_record(job, self.outcome(job))
        self.records[job.experiment_id] = record
        started = STARTED_AT + job.experiment_id
        worker = f"fake-{len(self.yielded) % self.workers}"
        return Completed(job, record, worker, started, started + 0.5)


# --------------------------------------------------------------------- prepared campaigns


def make_spec(*, strata: int = 3, **campaign: Any) -> CampaignSpec:
    """A campaign of `strata` register fault families a, b, c ... (10 experiments unless
    `campaign` sizes it otherwise)."""
    settings = {"name": "runner-test", "seed": 11, **campaign}
    if "margin" not in settings:
        settings.setdefault("experiments", 10)
    targets = ("register:gpr", "register:rip", "register:rsp")
    return CampaignSpec.model_validate({
        "campaign": settings,
        "guest": {"workload": "checksum"},
        "faults": [{"name": "abc"[i], "target": targets[i]} for i in range(strata)],
    })  # fmt: skip


class Campaigns:
    """Prepares campaigns in a temporary directory, as `prepare_campaign` does but without
    building an image, and closes their stores."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stores: list[SQLiteStore] = []

    def image(self) -> GuestImage:
        """A guest image of paths that need not exist (nothing boots)."""
        root = self.root / "image"
        return GuestImage(
            root=root, image_hash="0" * 16, kernel=root / "vmlinux", initrd=root / "initrd",
            kernel_release="6.1.0-test-amd64", agent_binary=root / "agent", workloads={},
            disk=None,
        )  # fmt: skip

    def prepare(
        self, spec: CampaignSpec, *, machines: tuple[MachineSpec, ...] | None = None
    ) -> Prepared:
        """`spec` planned, with a new store (`campaign.db`) and the machines running ARGV."""
        plan = plan_campaign(spec)
        store = self._keep(
            SQLiteStore.create(
                self.root / "campaign.db", campaign_name=spec.campaign.name,
                seed=spec.campaign.seed, spec_json=spec.to_json(),
                file_sha256=spec.file_sha256, total_planned=plan.total,
                provenance={"tool_version": "test", "image_hash": "0" * 16},
            )
        )  # fmt: skip
        chosen = campaign_machines(spec, ARGV) if machines is None else machines
        return Prepared(spec, plan, store, self.image(), ARGV, chosen)

    def reopen(self, prepared: Prepared) -> Prepared:
        """`prepared` with its store closed and opened again (as `campaign resume` does)."""
        prepared.store.close()
        return dataclasses.replace(
            prepared, store=self._keep(SQLiteStore.open(prepared.store.path))
        )

    def _keep(self, store: SQLiteStore) -> SQLiteStore:
        self.stores.append(store)
        return store

    def close(self) -> None:
        """Close every store."""
        for store in self.stores:
            store.close()


@pytest.fixture
def campaigns(tmp_path: Path) -> Iterator[Campaigns]:
    made = Campaigns(tmp_path)
    yield made
    made.close()


def prefill(prepared: Prepared, ids: Iterable[int]) -> None:
    """Record experiments `ids` (benign) as an earlier run would have."""
    for i in ids:
        planned = prepared.plan.experiment(i)
        job = Job(i, planned.spec, planned.seed, planned.index, planned.stratum.name)
        prepared.store.record(
            i, planned.stratum.name, make_record(job, Outcome.BENIGN), worker="earlier",
            started_at=STARTED_AT, finished_at=STARTED_AT + 1.0,
        )  # fmt: skip


# --------------------------------------------------------------------- every experiment once


def test_every_experiment_is_sent_once_interleaved_and_committed_in_turn(
    campaigns: Campaigns, tmp_path: Path
) -> None:
    """Loaded from TOML: each experiment is sent once, round-robin over the strata, with
    its planned fault, seed and index; each record is committed before the next result
    is taken, and the progress counts follow the store."""
    path = tmp_path / "campaign.toml"
    path.write_text(CAMPAIGN_TOML)
    prepared = campaigns.prepare(load_campaign(path))
    plan, store = prepared.plan, prepared.store
    fake = FakeExecutor(same_goldens(1), store=store, outcome=varied)
    seen: list[tuple[int, int, dict[str, int]]] = []

    def on_record(progress: CampaignProgress, done: Completed) -> None:
        assert store.has(done.job.experiment_id)
        seen.append((progress.done, store.count(), dict(progress.outcomes)))

    progress = run_campaign(prepared, executor=fake, on_record=on_record)

    assert fake.sent == TOML_ORDER == plan.interleaved()
    for job in fake.jobs:
        planned = plan.experiment(job.experiment_id)
        assert (job.spec, job.seed, job.index, job.stratum) == (
            planned.spec, plan.seed, job.experiment_id, planned.stratum.name,
        )  # fmt: skip
    assert fake.yielded == TOML_ORDER
    assert store.done_ids() == set(range(10))
    assert [(done, count) for done, count, _ in seen] == [(n, n) for n in range(1, 11)]
    assert seen[-1][2] == store.outcome_counts()
    assert (progress.total, progress.done) == (10, 10)
    assert progress.outcomes == store.outcome_counts()
    assert progress.outcomes["not-injected"] == 2
    for i in range(10):
        assert store.load(i) == fake.records[i]
    rows = {int(str(row["experiment_id"])): row for row in store.rows()}
    assert {i: rows[i]["stratum"] for i in (0, 3, 4, 6, 7, 9)} == {
        0: "a", 3: "a", 4: "b", 6: "b", 7: "c", 9: "c",
    }  # fmt: skip
    assert fake.closed == 0


def test_results_out_of_order_are_each_committed_under_their_own_stratum(
    campaigns: Campaigns,
) -> None:
    """Four workers answering each batch last job first: every result is committed in
    turn, under its own id and stratum."""
    prepared = campaigns.prepare(make_spec())
    store = prepared.store
    fake = FakeExecutor(same_goldens(4), store=store, outcome=varied, workers=4,
                        order=lambda batch: batch[::-1])  # fmt: skip

    progress = run_campaign(prepared, executor=fake)

    assert fake.sent == TOML_ORDER
    assert fake.yielded == [1, 7, 4, 0, 6, 2, 8, 5, 3, 9]
    assert progress.done == store.count() == 10
    assert progress.outcomes == store.outcome_counts()
    for row in store.rows():
        i = int(str(row["experiment_id"]))
        assert row["stratum"] == prepared.plan.stratum_of(i).name
        assert store.load(i) == fake.records[i]


# --------------------------------------------------------------------- resume


def test_resume_sends_only_the_missing_experiments(campaigns: Campaigns) -> None:
    """A store holding some experiments gets only the others, still interleaved."""
    prepared = campaigns.prepare(make_spec())
    prefill(prepared, [0, 4, 5, 9])
    fake = FakeExecutor(same_goldens(1), store=prepared.store)
    first: list[int] = []

    def on_record(progress: CampaignProgress, done: Completed) -> None:
        first.append(progress.done)

    progress = run_campaign(prepared, executor=fake, on_record=on_record)

    assert fake.sent == [1, 6, 7, 2, 8, 3] == prepared.plan.interleaved([1, 2, 3, 6, 7, 8])
    assert first[0] == 5
    assert progress.done == 10
    assert prepared.store.done_ids() == set(range(10))
    assert progress.outcomes == prepared.store.outcome_counts()


def test_a_run_cut_short_resumes_with_exactly_the_rest(campaigns: Campaigns) -> None:
    """An executor that ends after four results leaves six; reopened, the store gets those
    six and no other."""
    prepared = campaigns.prepare(make_spec())
    short = FakeExecutor(same_goldens(1), store=prepared.store, limit=4)
    progress = run_campaign(prepared, executor=short)
    assert progress.done == 4
    assert prepared.store.done_ids() == set(TOML_ORDER[:4])

    resumed = campaigns.reopen(prepared)
    rest = FakeExecutor(same_goldens(1), store=resumed.store)
    progress = run_campaign(resumed, executor=rest)

    assert rest.sent == [2, 5, 8, 3, 6, 9] == resumed.plan.interleaved(TOML_ORDER[4:])
    assert progress.done == 10
    assert resumed.store.done_ids() == set(range(10))


def test_a_finished_campaign_sends_nothing(campaigns: Campaigns) -> None:
    """Every experiment stored: nothing is sent and the counts are the store's."""
    prepared = campaigns.prepare(make_spec())
    prefill(prepared, range(10))
    fake = FakeExecutor(same_goldens(1), store=prepared.store)

    progress = run_campaign(prepared, executor=fake)

    assert fake.jobs == []
    assert (progress.total, progress.done) == (10, 10)
    assert progress.outcomes == prepared.store.outcome_counts()
    assert progress.outcomes["benign"] == 10


# --------------------------------------------------------------------- stopping early
# margin = 0.2 sizes each stratum at 25 experiments; with every outcome benign, a stratum's
# Wilson half-widths at 95% are 0.217 after 5 results and 0.195 after 6.


def test_stop_early_stops_once_every_stratum_is_narrow_enough_and_not_before(
    campaigns: Campaigns,
) -> None:
    """Interleaved over two strata, the campaign stops at the 12th result (6 each)."""
    prepared = campaigns.prepare(make_spec(strata=2, margin=0.2, stop_early=True))
    fake = FakeExecutor(same_goldens(1), store=prepared.store)

    progress = run_campaign(prepared, executor=fake)

    assert prepared.plan.total == 50
    assert len(fake.yielded) == progress.done == prepared.store.count() == 12
    counts = prepared.store.counts_by_stratum()
    assert {name: c["benign"] for name, c in counts.items()} == {"a": 6, "b": 6}


def test_without_stop_early_a_margin_campaign_runs_whole(campaigns: Campaigns) -> None:
    """The same campaign without `stop_early` runs all 50 experiments."""
    prepared = campaigns.prepare(make_spec(strata=2, margin=0.2))
    fake = FakeExecutor(same_goldens(1), store=prepared.store)

    progress = run_campaign(prepared, executor=fake)

    assert progress.done == prepared.store.count() == 50
    assert sorted(fake.yielded) == list(range(50))


def test_stop_early_waits_for_a_stratum_without_results(campaigns: Campaigns) -> None:
    """Twenty workers whose stratum-a results all come first: a converges at 6 results
    while b has none, which must not stop the campaign; it stops when b has 6."""
    prepared = campaigns.prepare(make_spec(strata=2, margin=0.2, stop_early=True))
    fake = FakeExecutor(same_goldens(1), store=prepared.store, workers=20,
                        order=lambda batch: sorted(batch, key=lambda job: job.stratum))  # fmt: skip

    progress = run_campaign(prepared, executor=fake)

    assert progress.done == 16
    counts = prepared.store.counts_by_stratum()
    assert {name: c["benign"] for name, c in counts.items()} == {"a": 10, "b": 6}


def test_resuming_a_campaign_that_stopped_early_runs_nothing(campaigns: Campaigns) -> None:
    """A campaign that stopped early has converged: resuming it sends no experiment."""
    prepared = campaigns.prepare(make_spec(strata=2, margin=0.2, stop_early=True))
    run_campaign(prepared, executor=FakeExecutor(same_goldens(1), store=prepared.store))
    assert prepared.store.count() == 12

    resumed = campaigns.reopen(prepared)
    again = FakeExecutor(same_goldens(1), store=resumed.store)
    progress = run_campaign(resumed, executor=again)

    assert again.jobs == []
    assert progress.done == resumed.store.count() == 12


# --------------------------------------------------------------------- golden runs


def test_the_first_run_stores_every_machines_golden_run(campaigns: Campaigns) -> None:
    """Two machines, two workers: each machine's golden run is stored with its timing."""
    server_argv, client_argv = ("checksum", "4096"), ("checksum", "16")
    machines = (MachineSpec("server", server_argv), MachineSpec("client", client_argv))
    prepared = campaigns.prepare(make_spec(), machines=machines)
    goldens: list[Goldens] = [
        {
            "server": golden_run("server", server_argv, host_s=1.5),
            "client": golden_run("client", client_argv, stdout=b"checksum: 0x10\n", host_s=0.25),
        }
        for _ in range(2)
    ]
    fake = FakeExecutor(goldens, store=prepared.store, workers=2)

    run_campaign(prepared, executor=fake)

    server = prepared.store.golden(list(server_argv), machine="server")
    client = prepared.store.golden(list(client_argv), machine="client")
    assert server is not None and client is not None
    assert (server.stdout, server.exit_status, server.host_s) == (
        b"checksum: 0xdeadbeef\n", 0, 1.5,
    )  # fmt: skip
    assert (client.stdout, client.exit_status, client.host_s) == (b"checksum: 0x10\n", 0, 0.25)
    assert prepared.store.golden(list(client_argv), machine="server") is None
    assert prepared.store.count() == 10


@pytest.mark.parametrize(
    "changes",
    [{"stdout": b"checksum: 0xbad\n"}, {"exit_code": 1}, {"exit_code": None, "signal": "SIGSEGV"}],
)
def test_workers_whose_golden_runs_differ_are_refused(
    campaigns: Campaigns, changes: dict[str, Any]
) -> None:
    """A worker whose golden run differs in output or exit status: MachineError, nothing
    sent, nothing stored."""
    prepared = campaigns.prepare(make_spec())
    goldens = [*same_goldens(2), {DEFAULT_MACHINE: golden_run(**changes)}]
    fake = FakeExecutor(goldens, store=prepared.store, workers=3)

    with pytest.raises(MachineError, match="differ between workers") as caught:
        run_campaign(prepared, executor=fake)

    assert "deterministic" in caught.value.hint
    assert fake.jobs == []
    assert prepared.store.count() == 0
    assert prepared.store.golden(list(ARGV)) is None


def test_a_stored_golden_run_that_differs_is_refused(campaigns: Campaigns) -> None:
    """The workers agree with each other but not with the stored golden run: MachineError,
    nothing sent, the stored run kept."""
    prepared = campaigns.prepare(make_spec())
    prepared.store.save_golden(golden_run(stdout=b"checksum: 0x0ld\n"))
    fake = FakeExecutor(same_goldens(2), store=prepared.store, workers=2)

    with pytest.raises(MachineError, match="stored in the campaign database"):
        run_campaign(prepared, executor=fake)

    assert fake.jobs == []
    stored = prepared.store.golden(list(ARGV))
    assert stored is not None and stored.stdout == b"checksum: 0x0ld\n"


def test_a_matching_stored_golden_run_passes(campaigns: Campaigns) -> None:
    """A stored golden run with the same output and exit status (other timing) passes and
    is kept as it was."""
    prepared = campaigns.prepare(make_spec())
    prepared.store.save_golden(golden_run(host_s=9.5))
    fake = FakeExecutor(same_goldens(2), store=prepared.store, workers=2)

    progress = run_campaign(prepared, executor=fake)

    assert progress.done == 10
    stored = prepared.store.golden(list(ARGV))
    assert stored is not None and stored.host_s == 9.5


# --------------------------------------------------------------------- interruption


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
def test_an_interrupt_keeps_the_records_and_the_callers_executor(
    campaigns: Campaigns, interrupt: type[BaseException]
) -> None:
    """Ctrl-C (or SIGTERM's SystemExit) after three results: CampaignInterruptedError
    with the resume hint, three records kept, the executor given left open."""
    prepared = campaigns.prepare(make_spec())
    store = prepared.store
    fake = FakeExecutor(same_goldens(1), store=store, interrupt_after=3, interrupt=interrupt)

    with pytest.raises(CampaignInterruptedError) as caught:
        run_campaign(prepared, executor=fake)

    assert caught.value.message == "interrupted after 3 of 10 experiments"
    assert caught.value.hint == f"resume with: vmfault campaign resume {store.path}"
    assert isinstance(caught.value.__cause__, interrupt)
    assert store.done_ids() == set(TOML_ORDER[:3])
    assert fake.closed == 0


class FakeLocal(FakeExecutor):
    """Stands in for `LocalExecutor` in the runner: made with its arguments, started and
    closed. The class settings say how: `boot` the workers' golden runs, `fail` raised on
    start, `interrupt_at` the results before a KeyboardInterrupt."""

    made: list[FakeLocal] = []
    boot: list[Goldens] = []
    fail: BaseException | None = None
    interrupt_at: int | None = None

    def __init__(self, setup: WorkerSetup, *, workers: int, log: Path, job_timeout_s: float,
                 notify: Callable[[str], None] | None = None) -> None:  # fmt: skip
        super().__init__([], workers=workers, interrupt_after=FakeLocal.interrupt_at)
        self.setup, self.log, self.job_timeout_s = setup, log, job_timeout_s
        FakeLocal.made.append(self)

    def start(self) -> None:
        """Boot the fake workers: their golden runs, or `fail`."""
        if FakeLocal.fail is not None:
            raise FakeLocal.fail
        self.goldens = list(FakeLocal.boot)


@pytest.fixture
def fake_local(monkeypatch: pytest.MonkeyPatch) -> type[FakeLocal]:
    monkeypatch.setattr(runner_module, "LocalExecutor", FakeLocal)
    monkeypatch.setattr(FakeLocal, "made", [])
    monkeypatch.setattr(FakeLocal, "boot", same_goldens(2, host_s=5.0))
    monkeypatch.setattr(FakeLocal, "fail", None)
    monkeypatch.setattr(FakeLocal, "interrupt_at", None)
    return FakeLocal


def test_the_runner_makes_starts_and_closes_its_own_executor(
    campaigns: Campaigns, fake_local: type[FakeLocal]
) -> None:
    """No executor given: the runner makes one with the campaign's setup and a job timeout
    of 20 budgets of the longest golden run, and closes it once."""
    prepared = campaigns.prepare(make_spec())

    progress = run_campaign(prepared, workers=2)

    (made,) = fake_local.made
    assert made.workers == 2
    assert made.setup.image_root == prepared.image.root
    assert made.setup.machines == prepared.machines
    assert made.setup.budget_factor == prepared.spec.campaign.budget == 2.0
    assert made.log == Path(f"{prepared.store.path}.log")
    assert made.job_timeout_s == 20 * 2.0 * 5.0
    assert made.closed == 1
    assert progress.done == prepared.store.count() == 10


@pytest.mark.parametrize("failure", ["start-interrupted", "start-failed", "goldens-differ",
                                     "interrupted"])  # fmt: skip
def test_the_runner_closes_its_own_executor_however_the_run_ends(
    campaigns: Campaigns, fake_local: type[FakeLocal], failure: str
) -> None:
    """The executor the runner made is closed once when its start is interrupted or fails,
    when the golden runs differ and when the run is interrupted."""
    prepared = campaigns.prepare(make_spec())
    expected: type[Exception] = CampaignInterruptedError
    if failure == "start-interrupted":
        fake_local.fail = KeyboardInterrupt()
    elif failure == "start-failed":
        fake_local.fail, expected = MachineError("worker-2 could not start"), MachineError
    elif failure == "goldens-differ":
        fake_local.boot = [*same_goldens(1), *same_goldens(1, stdout=b"other\n")]
        expected = MachineError
    else:
        fake_local.interrupt_at = 2

    with pytest.raises(expected):
        run_campaign(prepared, workers=2)

    (made,) = fake_local.made
    assert made.closed == 1
    assert prepared.store.count() == (2 if failure == "interrupted" else 0)


def test_the_executor_is_not_closed_by_a_run_that_completes(campaigns: Campaigns) -> None:
    """An executor given by the caller stays open after a whole run, for the caller to
    close (or use again)."""
    prepared = campaigns.prepare(make_spec())
    fake = FakeExecutor(same_goldens(1), store=prepared.store)
    run_campaign(prepared, executor=fake)
    assert fake.closed == 0


# --------------------------------------------------------------------- worker messages


def test_worker_messages_round_trip(campaigns: Campaigns, tmp_path: Path) -> None:
    """A worker's setup, its `ready` message and a `done` message come back equal, then
    EOFError at the end of the stream."""
    spec = make_spec()
    setup = WorkerSetup(image_root=tmp_path / "image", machines=campaign_machines(spec, ARGV),
                        budget_factor=4.0, crash_patterns=tmp_path / "crashes.toml")  # fmt: skip
    goldens = {DEFAULT_MACHINE: golden_run(instructions=123_456, pid=42)}
    planned = plan_campaign(spec).experiment(7)
    job = Job(7, planned.spec, planned.seed, planned.index, planned.stratum.name)
    record = make_record(job, Outcome.CRASH)
    stream = io.BytesIO()
    for message in (setup, ("ready", goldens), ("done", 7, record, 1.5, 2.75)):
        write_message(stream, message)
    stream.seek(0)

    assert read_message(stream) == setup
    assert read_message(stream) == ("ready", goldens)
    assert read_message(stream) == ("done", 7, record, 1.5, 2.75)
    with pytest.raises(EOFError):
        read_message(stream)


def test_worker_messages_cross_a_pipe() -> None:
    """Through a real pipe, as between the executor and a worker."""
    reader, writer = os.pipe()
    with os.fdopen(writer, "wb") as sink:
        write_message(sink, ("failed", "QEMU did not start"))
        write_message(sink, ("usage-error", 3, "no such register: zz0"))
    with os.fdopen(reader, "rb") as source:
        assert read_message(source) == ("failed", "QEMU did not start")
        assert read_message(source) == ("usage-error", 3, "no such register: zz0")
        with pytest.raises(EOFError):
            read_message(source)


@pytest.mark.parametrize("keep", [0, 2, 4, 10])
def test_read_message_raises_eoferror_on_a_truncated_stream(keep: int) -> None:
    """Cut inside the length header or inside the pickle: EOFError, not a partial object."""
    whole = io.BytesIO()
    write_message(whole, ("done", 1, "x" * 64, 1.0, 2.0))
    data = whole.getvalue()
    assert len(data) > 10
    with pytest.raises(EOFError):
        read_message(io.BytesIO(data[:keep]))


def test_a_vmm_error_is_stored_as_vmm_error_with_its_reason(campaigns: Campaigns) -> None:
    """The executor's `vmm_error_record`s are stored as `vmm-error`, their reason kept."""
    prepared = campaigns.prepare(make_spec())
    store = prepared.store

    def outcome(job: Job) -> Outcome:
        return Outcome.VMM_ERROR if job.experiment_id in (2, 5) else Outcome.BENIGN

    fake = FakeExecutor(same_goldens(1), store=store, outcome=outcome)
    progress = run_campaign(prepared, executor=fake)

    assert progress.outcomes["vmm-error"] == 2 == store.outcome_counts()["vmm-error"]
    for i in (2, 5):
        loaded = store.load(i)
        assert loaded is not None
        assert loaded.outcome is Outcome.VMM_ERROR
        assert loaded.reason == f"worker-1 exited during experiment {i}"
        assert not loaded.injection.injected
        assert loaded.injection.reason == loaded.reason
    rows = {int(str(row["experiment_id"])): row for row in store.rows()}
    assert rows[5]["outcome"] == "vmm-error"
    assert rows[5]["reason"] == "worker-1 exited during experiment 5"


# --------------------------------------------------------------------- exactly once


class Twice(FakeExecutor):
    """Yields every result twice, as Dask may after re-running a lost worker's task."""

    def run(self, jobs: Iterable[Job]) -> Iterator[Completed]:
        for done in super().run(jobs):
            yield done
            yield done


def test_a_result_given_twice_is_stored_once(campaigns: Campaigns) -> None:
    """Every experiment answered twice: each stored once, the counts those of the store."""
    prepared = campaigns.prepare(make_spec())
    fake = Twice(same_goldens(1), outcome=varied)
    progress = run_campaign(prepared, executor=fake)
    assert progress.done == prepared.store.count() == 10
    assert progress.outcomes == prepared.store.outcome_counts()
    assert sorted(int(str(row["experiment_id"])) for row in prepared.store.rows()) == list(
        range(10)
    )


def test_experiments_given_up_as_infra_failures_run_again_on_resume(
    campaigns: Campaigns,
) -> None:
    """Two experiments given up as lost to the infrastructure: stored apart, never counted
    as outcomes; a resumed run sends exactly those two and replaces their records."""
    prepared = campaigns.prepare(make_spec())

    def outcome(job: Job) -> Outcome:
        return Outcome.INFRA_FAILURE if job.experiment_id in (2, 7) else Outcome.BENIGN

    run_campaign(prepared, executor=FakeExecutor(same_goldens(1), outcome=outcome))
    counts = prepared.store.outcome_counts()
    assert (counts["infra-failure"], counts["benign"]) == (2, 8)
    summary = summarize("x", 10, counts, prepared.store.counts_by_stratum())
    assert summary.infra_failures == 2
    assert summary.rates["benign"].rate == 1.0 and summary.rates["benign"].trials == 8
    assert "infra-failure" not in summary.rates
    assert summary.to_json()["infra_failures"] == 2
    caption = str(summary_tables(summary)[0].caption)
    assert caption.startswith("infra-failure: 2 lost to the infrastructure on every attempt")

    resumed = campaigns.reopen(prepared)
    again = FakeExecutor(same_goldens(1), store=resumed.store)
    progress = run_campaign(resumed, executor=again)
    assert sorted(again.sent) == [2, 7]
    assert progress.done == resumed.store.count() == 10
    assert resumed.store.outcome_counts()["infra-failure"] == 0
    loaded = resumed.store.load(7)
    assert loaded is not None and loaded.outcome is Outcome.BENIGN
