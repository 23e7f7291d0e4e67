"""The local executor's handling of lost experiments, with real worker processes that speak
the worker protocol without QEMU (`fake_worker.py`), and the retry policy alone."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_runner import make_spec
from vmfault.campaign import plan_campaign
from vmfault.campaign.executor import MAX_ATTEMPTS, Attempts, Completed, Job, LocalExecutor
from vmfault.campaign.worker import WorkerSetup
from vmfault.classify import Outcome
from vmfault.experiment.testbed import MachineSpec, RestoreMethod

FAKE_WORKER = Path(__file__).with_name("fake_worker.py")


def jobs(count: int = 8) -> list[Job]:
    """The first `count` experiments of a three-stratum campaign, in plan order."""
    plan = plan_campaign(make_spec(experiments=max(count, 3)))
    found = []
    for i in range(count):
        planned = plan.experiment(i)
        found.append(Job(i, planned.spec, planned.seed, planned.index, planned.stratum.name))
    return found


class Run:
    """A LocalExecutor over fake workers following a plan; its results and messages."""

    def __init__(self, tmp_path: Path, *, workers: int = 2, timeout_s: float = 30.0,
                 **plan: Any) -> None:  # fmt: skip
        marks = tmp_path / "marks"
        marks.mkdir()
        settings: dict[str, Any] = {
            "kill": {str(k): v for k, v in plan.get("kill", {}).items()},
            "lost": [str(k) for k in plan.get("lost", [])],
            "hang": [str(k) for k in plan.get("hang", [])],
            "once": plan.get("once", True),
            "marks": str(marks),
        }
        path = tmp_path / "plan.json"
        path.write_text(json.dumps(settings))
        self.messages: list[str] = []
        # Stand-in workers boot nothing: no template to make for them.
        setup = WorkerSetup(image_root=tmp_path, machines=(MachineSpec("guest", ("checksum",)),),
                            restore=RestoreMethod.LOADVM)  # fmt: skip
        self.executor = LocalExecutor(
            setup, workers=workers, log=tmp_path / "workers.log", job_timeout_s=timeout_s,
            notify=self.messages.append, program=(sys.executable, str(FAKE_WORKER), str(path)),
        )  # fmt: skip

    def __iter__(self) -> Iterator[Completed]:
        with self.executor:
            yield from self.executor.run(jobs())


def by_id(results: list[Completed]) -> dict[int, Completed]:
    ids = [done.job.experiment_id for done in results]
    assert sorted(ids) == list(range(8)), ids
    return {done.job.experiment_id: done for done in results}


def test_a_worker_killed_by_a_signal_has_its_experiment_run_again_elsewhere(
    tmp_path: Path,
) -> None:
    """SIGKILL during experiment 3: every experiment yielded once, 3 by a new worker and
    benign, no vmm-error, and the retry said why."""
    run = Run(tmp_path, kill={3: "SIGKILL"})
    results = by_id(list(run))
    assert all(done.record.outcome is Outcome.BENIGN for done in results.values())
    assert results[3].worker == "worker-3"
    (message,) = run.messages
    assert message.startswith("experiment 3 lost (worker-")
    assert "was killed by SIGKILL): running it again (attempt 2 of 3)" in message


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM", "lost"])
def test_an_experiment_lost_on_every_attempt_is_given_up_as_infra_failure(
    tmp_path: Path, how: str
) -> None:
    """Lost three times (its worker killed, or its QEMU killed from outside): one
    infra-failure record saying so, never a vmm-error; the others benign."""
    plan = {"lost": [5]} if how == "lost" else {"kill": {5: how}}
    run = Run(tmp_path, once=False, **plan)
    results = by_id(list(run))
    given_up = results[5].record
    assert given_up.outcome is Outcome.INFRA_FAILURE
    assert not given_up.outcome.counts
    assert given_up.reason.startswith(f"lost to the infrastructure on {MAX_ATTEMPTS} attempts")
    assert (f"killed by {how}" if how != "lost" else "QEMU of machine guest") in given_up.reason
    others = [done.record.outcome for i, done in results.items() if i != 5]
    assert set(others) == {Outcome.BENIGN}
    assert len(run.messages) == MAX_ATTEMPTS


def test_a_lost_answer_keeps_the_worker(tmp_path: Path) -> None:
    """A worker whose QEMU was killed from outside answers `lost` and lives on: the
    experiment runs again and no worker is replaced."""
    run = Run(tmp_path, workers=1, lost=[2])
    results = by_id(list(run))
    assert {done.worker for done in results.values()} == {"worker-1"}
    assert results[2].record.outcome is Outcome.BENIGN


def test_an_experiment_past_its_deadline_on_every_attempt_is_a_vmm_error(tmp_path: Path) -> None:
    """No answer within the deadline, three times: QEMU stops answering under this fault
    wherever it runs, which is the VMM failing (vmm-error), with each attempt as evidence."""
    run = Run(tmp_path, timeout_s=0.5, once=False, hang=[1])
    results = by_id(list(run))
    record = results[1].record
    assert record.outcome is Outcome.VMM_ERROR
    assert record.reason.startswith("QEMU gave no answer within the experiment's deadline")
    assert record.result.evidence.count("gave no answer within 0.5 s") == MAX_ATTEMPTS


def test_a_deadline_passed_once_is_run_again(tmp_path: Path) -> None:
    """Past its deadline once, then answered: benign, as if nothing happened."""
    run = Run(tmp_path, timeout_s=0.5, hang=[4])
    assert by_id(list(run))[4].record.outcome is Outcome.BENIGN


# --------------------------------------------------------------------- the policy alone


def test_attempts_mixes_of_losses_are_infrastructure() -> None:
    """Lost to a deadline, then to a signal: infra-failure, since not every attempt
    overran; the record keeps the job's fault, seed and index."""
    job = jobs(3)[0]
    said: list[str] = []
    attempts = Attempts(max_attempts=2, notify=said.append)
    assert attempts.lose(job, "worker-1 gave no answer", worker="worker-1", deadline=True) is None
    given_up = attempts.lose(job, "worker-2 was killed by SIGKILL", worker="w", deadline=False)
    assert given_up is not None
    assert given_up.record.outcome is Outcome.INFRA_FAILURE
    assert (given_up.record.seed, given_up.record.index) == (job.seed, job.index)
    assert given_up.worker == "w"
    assert said[-1].startswith("experiment 0 given up: lost to the infrastructure on 2 attempts")
