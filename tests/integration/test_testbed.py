"""A testbed of two machines: booted together, restored together, faults aimed at one of them,
and a record that says which machine the fault went to and what each machine did."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vmfault.classify import Outcome
from vmfault.errors import UsageError
from vmfault.experiment.pipeline import Experimenter
from vmfault.experiment.records import RegisterInjection
from vmfault.experiment.testbed import MachineSpec, Testbed
from vmfault.faults import FaultSpec
from vmfault.guest.image import GuestImage

pytestmark = pytest.mark.vm

A = MachineSpec("a", ("checksum",))
B = MachineSpec("b", ("crc32",))


@pytest.fixture(scope="module")
def pair(image: GuestImage) -> Iterator[Experimenter]:
    """Two machines running different workloads, judged by the worst outcome."""
    with Experimenter(Testbed(image, [A, B])) as experimenter:
        yield experimenter


def test_each_machine_has_its_own_golden_run(pair: Experimenter) -> None:
    goldens = pair.testbed.goldens
    assert set(goldens) == {"a", "b"}
    assert goldens["a"].output.startswith("checksum: 0x")
    assert goldens["b"].output.startswith("crc32: 0x")
    for name, golden in goldens.items():
        assert golden.machine == name and golden.exit_status == 0
        assert golden.host_s > 0 and golden.guest_s > 0


@pytest.mark.parametrize(("target", "bystander"), [("a", "b"), ("b", "a")])
def test_a_fault_goes_to_the_machine_it_names(
    pair: Experimenter, target: str, bystander: str
) -> None:
    spec = FaultSpec.from_options(
        target="register:rip", bits="40", trigger="exec:main", machine=target
    )
    record = pair.run(spec, seed=1)
    injection = record.injection
    assert isinstance(injection, RegisterInjection) and injection.injected, record.reason
    assert injection.machine == target
    runs = {run.machine: run for run in record.machines}
    assert set(runs) == {"a", "b"}
    assert runs[target].outcome is Outcome.CRASH, runs[target].reason
    # The other machine ran its workload untouched, restored from the same snapshot.
    assert runs[bystander].outcome is Outcome.BENIGN, runs[bystander].reason
    assert runs[bystander].output == pair.testbed.goldens[bystander].output
    # Judged by the worst outcome: the faulted machine's crash is the experiment's.
    assert record.judged == target and record.outcome is Outcome.CRASH
    assert record.to_json()["machines"][bystander]["outcome"] == "benign"


def test_restores_keep_the_machines_apart(pair: Experimenter) -> None:
    crash = FaultSpec.from_options(target="register:rip", bits="40", trigger="exec:main",
                                   machine="a")  # fmt: skip
    quiet = FaultSpec.from_options(target="memory:0x7f00000", trigger="exec:main", machine="b")
    first = pair.run(crash, seed=2)
    after = pair.run(quiet, seed=2)
    assert first.outcome is Outcome.CRASH
    # The crash of machine a in one experiment leaves nothing behind in the next one.
    assert {run.machine: run.outcome for run in after.machines} == {
        "a": Outcome.BENIGN,
        "b": Outcome.BENIGN,
    }


def test_a_named_judge_decides_the_outcome(image: GuestImage) -> None:
    with Experimenter(Testbed(image, [A, B], judge="b")) as experimenter:
        spec = FaultSpec.from_options(
            target="register:rip", bits="40", trigger="exec:main", machine="a"
        )
        record = experimenter.run(spec, seed=1)
    assert record.injection.machine == "a"
    assert record.judged == "b" and record.outcome is Outcome.BENIGN, record.reason
    assert {run.machine: run.outcome for run in record.machines}["a"] is Outcome.CRASH


def test_a_machine_that_does_not_exist_is_a_usage_error(pair: Experimenter) -> None:
    spec = FaultSpec.from_options(target="register:rip", machine="c")
    with pytest.raises(UsageError, match="no machine 'c'"):
        pair.run(spec, seed=1)
