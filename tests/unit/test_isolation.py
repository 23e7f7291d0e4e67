"""Isolation campaigns without a VM: the [isolation] table, the baseline stratum and its
order, the control's records in the store, the verdict of `campaign status`, pinning, and
the page-table entries `memory:page-table` draws from."""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from vmfault.campaign.planner import plan_campaign
from vmfault.campaign.spec import CampaignSpec, load_campaign
from vmfault.campaign.worker import WorkerSetup, _Worker, pinned_machines
from vmfault.classify import Outcome
from vmfault.errors import MachineError, UsageError
from vmfault.experiment.isolation import console_difference
from vmfault.experiment.kinds import kind_name
from vmfault.experiment.kinds.pagetable import ENTRY_BITS, default_bit
from vmfault.experiment.records import (
    BASELINE_STRATUM,
    ControlInjection,
    ExperimentRecord,
    IsolationRun,
    MachineRun,
    PageTableInjection,
)
from vmfault.experiment.testbed import MachineSpec
from vmfault.faults import FaultSpec
from vmfault.machine.pagetable import table_entries
from vmfault.report.isolation import isolation_summary
from vmfault.report.summary import control_strata, store_summary
from vmfault.stats import IntervalMethod
from vmfault.store.sqlite import SQLiteStore

MACHINES = """
[campaign]
name = "iso"
seed = 7
experiments = 40
network = false

[[machine]]
name = "target"
workload = "checksum"

[[machine]]
name = "control"
workload = "matmul"
"""

FAULTS = """
[[faults]]
name = "page-table"
target = "memory:page-table"
machine = "target"

[[faults]]
target = "memory:process"
machine = "target"
"""


def campaign(
    tmp_path: Path, isolation: str, faults: str = FAULTS, machines: str = MACHINES
) -> CampaignSpec:
    path = tmp_path / "iso.toml"
    path.write_text(machines + faults + "\n[isolation]\n" + isolation + "\n")
    return load_campaign(path)


def usage_line(tmp_path: Path, isolation: str, **options: str) -> str:
    with pytest.raises(UsageError) as caught:
        campaign(tmp_path, isolation, **options)
    line = caught.value.message
    assert "\n" not in line
    return f"{line} ({caught.value.hint})"


def test_the_example_loads_and_plans_forty_experiments_ten_fault_free() -> None:
    spec = load_campaign(Path(__file__).parents[2] / "examples" / "isolation.toml")
    assert spec.isolation is not None and spec.isolation.control == "control"
    plan = plan_campaign(spec)
    assert plan.total == 40
    assert {s.name: s.count for s in plan.strata} == {
        "page-table": 15,
        "memory": 15,
        BASELINE_STRATUM: 10,
    }
    baseline = plan.stratum(BASELINE_STRATUM).family.fault_spec()
    assert baseline.control and baseline.machine == "target"


@pytest.mark.parametrize(
    ("isolation", "expected"),
    [
        ('control = "nosuch"', "isolation.control: no machine 'nosuch' to be the control"),
        ('control = "control"\nmargin = 1.5', "isolation.margin: out of range"),
        ('control = "control"\nmargin = 0.0', "allowed: 0 < margin < 1"),
        ('control = "control"\nbaseline = 1.0', "allowed: 0 <= baseline < 1"),
        ('control = "control"\nbaseline = -0.1', "isolation.baseline: out of range"),
        ('control = "control"\nruntime = "instructions"', "needs a deterministic control"),
    ],
)
def test_bad_isolation_tables_are_one_line(tmp_path: Path, isolation: str, expected: str) -> None:
    assert expected in usage_line(tmp_path, isolation)


def test_isolation_needs_two_machines(tmp_path: Path) -> None:
    one = MACHINES.split('[[machine]]\nname = "control"', maxsplit=1)[0]
    line = usage_line(
        tmp_path, 'control = "target"', machines=one, faults='[[faults]]\ntarget = "none"\n'
    )
    assert "needs two or more [[machine]] tables" in line


def test_a_fault_aimed_at_the_control_needs_check(tmp_path: Path) -> None:
    aimed = FAULTS + '[[faults]]\nname = "aimed"\ntarget = "register:rip"\nmachine = "control"\n'
    line = usage_line(tmp_path, 'control = "control"', faults=aimed)
    assert "faults[2].machine: this fault goes to the control 'control'" in line
    assert 'set machine = "target"' in line and "check = true" in line
    spec = campaign(tmp_path, 'control = "control"\ncheck = true', faults=aimed)
    assert spec.isolation is not None and spec.isolation.check


def test_a_fault_without_machine_goes_to_the_first_machine(tmp_path: Path) -> None:
    first_is_control = MACHINES.replace('"target"', '"other"').replace('"control"', '"target"')
    first_is_control = first_is_control.replace('"other"', '"control"')
    line = usage_line(
        tmp_path, 'control = "control"', machines=first_is_control,
        faults='[[faults]]\ntarget = "register:gpr"\n',
    )  # fmt: skip
    assert "faults[0].machine: this fault goes to the control" in line


def test_the_control_cannot_be_the_judge(tmp_path: Path) -> None:
    judged = MACHINES.replace("network = false", 'network = false\njudge = "control"')
    assert "cannot be the judge" in usage_line(tmp_path, 'control = "control"', machines=judged)


def test_a_family_named_baseline_is_refused(tmp_path: Path) -> None:
    named = FAULTS.replace('name = "page-table"', 'name = "baseline"')
    assert "the stratum of the baseline" in usage_line(
        tmp_path, 'control = "control"', faults=named
    )


def test_the_baseline_is_interleaved_at_random_and_repeatably(tmp_path: Path) -> None:
    plan = plan_campaign(campaign(tmp_path, 'control = "control"\nbaseline = 0.25'))
    order = plan.interleaved()
    assert sorted(order) == list(range(40))
    assert order == plan_campaign(campaign(tmp_path, 'control = "control"')).interleaved()
    baseline = set(plan.stratum(BASELINE_STRATUM).ids)
    positions = [i for i, e in enumerate(order) if e in baseline]
    assert positions != list(range(30, 40))  # not all at the end
    assert min(positions) < 20 < max(positions)
    resumed = plan.interleaved([7, 3, 33, 12])  # a resume keeps the first run's order
    assert resumed == [e for e in order if e in {7, 3, 33, 12}]


def test_baseline_share_of_families_with_their_own_counts(tmp_path: Path) -> None:
    counted = FAULTS.replace('machine = "target"', 'machine = "target"\nexperiments = 15')
    plan = plan_campaign(campaign(tmp_path, 'control = "control"\nbaseline = 0.25', faults=counted))
    assert plan.stratum(BASELINE_STRATUM).count == 10  # 0.25 of 40: 10 for 30 faulted
    none = plan_campaign(campaign(tmp_path, 'control = "control"\nbaseline = 0.0'))
    assert [s.name for s in none.strata] == ["page-table", "memory:process"]


def test_the_baseline_is_a_control_stratum() -> None:
    spec = {"faults": [{"target": "register:gpr"}], "isolation": {"control": "c", "baseline": 0.2}}
    assert control_strata(spec) == (BASELINE_STRATUM,)
    spec["isolation"] = {"control": "c", "baseline": 0.0}
    assert control_strata(spec) == ()


def test_console_difference_ignores_timestamps_and_blank_lines() -> None:
    golden = "[    1.000] matmul: n=176 checksum=-4.02\r\n\r\n"
    assert console_difference(golden, "[    2.500] matmul: n=176 checksum=-4.02\r\n") == ""
    assert console_difference(golden, "[ 3.1] Oops: general protection fault\n") == (
        "Oops: general protection fault"
    )
    noise = (
        "[    7.3] clocksource: Long readout interval, skipping watchdog check: cs_nsec: "
        "2139274890 wd_nsec: 2136133500\n[ 7.4] hrtimer: interrupt took 3210 ns\n"
    )
    assert console_difference(golden, noise) == ""  # the host's load, not a fault
    stall = (
        "[ 9.1] rcu: INFO: rcu_preempt self-detected stall on CPU\n[ 9.1] rcu: \t0-...!: (1 "
        "ticks this GP)\n[ 9.2] Call Trace:\n[ 9.3] matmul: n=176 checksum=-4.02\n"
    )
    assert console_difference(golden, stall) == ""  # the report, to the next known line
    assert console_difference(golden, stall + "[ 9.4] WARNING: CPU: 0 PID: 1\n") == (
        "WARNING: CPU: 0 PID: 1"
    )


def test_machines_are_pinned_to_cores_of_their_own_when_there_are_enough() -> None:
    machines = (MachineSpec("target", ("checksum",)), MachineSpec("control", ("matmul",)))
    setup = WorkerSetup(image_root=Path("/nonexistent"), machines=machines, pin_workers=1)
    assert [m.host_cpus for m in pinned_machines(setup, [0, 1])] == [(0,), (1,)]
    second = WorkerSetup(image_root=Path("/x"), machines=machines, pin_workers=2, slot=1)
    assert [m.host_cpus for m in pinned_machines(second, [0, 1, 2, 3])] == [(2,), (3,)]
    assert [m.host_cpus for m in pinned_machines(second, [0, 1])] == [(), ()]  # too few
    unpinned = WorkerSetup(image_root=Path("/x"), machines=machines)
    assert pinned_machines(unpinned, [0, 1, 2, 3]) == machines


def run_of(i: int, *, baseline: bool, vcpu_s: float, violation: str = "") -> IsolationRun:
    return IsolationRun(
        machine="control", baseline=baseline, vcpu_s=vcpu_s, guest_s=vcpu_s * 1.2,
        host_s=vcpu_s * 1.5, violation=violation, evidence="segfault at 0" if violation else "",
        load_1m=2.0 + i / 10, host_cpus=(1,),
    )  # fmt: skip


SPEC = {
    "campaign": {"seed": 3},
    "faults": [
        {"name": "page-table", "target": "memory:page-table", "machine": "target"},
        {"name": "aimed", "target": "register:rip", "machine": "control"},
    ],
    "isolation": {"control": "control", "margin": 0.05, "baseline": 0.25, "runtime": "vcpu"},
}


def test_the_verdict_counts_violations_and_tests_runtimes_within_the_margin() -> None:
    draw = random.Random(5)
    runs = [(i, "page-table", run_of(i, baseline=False, vcpu_s=draw.gauss(0.17, 0.003)))
            for i in range(20)]  # fmt: skip
    runs += [(20 + i, BASELINE_STRATUM, run_of(i, baseline=True, vcpu_s=draw.gauss(0.17, 0.003)))
             for i in range(8)]  # fmt: skip
    runs += [(30, "aimed", run_of(0, baseline=False, vcpu_s=0.01, violation="crash")),
             (31, "aimed", run_of(0, baseline=False, vcpu_s=0.5))]  # fmt: skip
    found = isolation_summary(SPEC, runs, confidence=0.95, counts_by_stratum={"aimed": {"x": 2}})
    assert found is not None
    data = found.to_json()
    assert data["violations"] == 1 and data["examples"][0]["aimed"] is True
    assert data["baseline_violations"] == 0
    assert data["examples"][0]["evidence"] == "segfault at 0"
    assert data["runs"] == {"checked": 30, "faulted": 20, "baseline": 8}  # aimed runs left out
    low, high = data["interval"]
    assert low <= data["runtime_ratio"] <= high
    assert data["equivalent"] is (low >= 0.95 and high <= 1.05)
    assert data["method"] == "bootstrap-median-ratio" and data["level"] == 0.9
    assert data["check"] == {"strata": ["aimed"], "experiments": 2, "caught": 1}
    assert data["host_load"]["min"] == 2.0 and data["host_cpus"] == [1]


def test_a_slower_control_is_not_equivalent() -> None:
    runs = [(i, "page-table", run_of(i, baseline=False, vcpu_s=0.2 + i / 1000)) for i in range(10)]
    runs += [(10 + i, BASELINE_STRATUM, run_of(i, baseline=True, vcpu_s=0.17 + i / 1000))
             for i in range(5)]  # fmt: skip
    found = isolation_summary(SPEC, runs, confidence=0.95)
    assert found is not None and found.equivalence.equivalent is False
    assert isolation_summary({"faults": []}, runs, confidence=0.95) is None


def control_record(i: int, isolation: IsolationRun) -> ExperimentRecord:
    injection = ControlInjection(machine="target")
    runs = (
        MachineRun("target", Outcome.BENIGN, "identical"),
        MachineRun("control", Outcome.BENIGN, "identical"),
    )
    return ExperimentRecord(index=i, seed=3, spec={"target": "none"}, injections=(injection,),
                            machines=runs, judged="target", isolation=isolation)  # fmt: skip


def test_the_store_keeps_the_control_run_and_status_reads_the_verdict(tmp_path: Path) -> None:
    spec = {**SPEC, "campaign": {"name": "iso", "seed": 3}}
    with SQLiteStore.create(
        tmp_path / "iso.db", campaign_name="iso", seed=3, spec_json=json.dumps(spec),
        file_sha256="0" * 64, total_planned=8, provenance={},
    ) as store:  # fmt: skip
        for i in range(8):
            baseline = i % 2 == 0
            run = run_of(i, baseline=baseline, vcpu_s=0.17 + (i % 3) / 1000)
            stratum = BASELINE_STRATUM if baseline else "page-table"
            store.record(i, stratum, control_record(i, run), worker="w", started_at=1.0,
                         finished_at=2.0)  # fmt: skip
        loaded = store.load(3)
        assert loaded is not None and loaded == control_record(3, loaded.isolation)  # type: ignore[arg-type]
        assert loaded.isolation == run_of(3, baseline=False, vcpu_s=0.17)
        assert loaded.injection == ControlInjection(machine="target")  # nothing leaks in
        assert [i for i, _, _ in store.isolation_runs()] == list(range(8))
        summary = store_summary(store, confidence=0.95, method=IntervalMethod.WILSON)
    data = summary.to_json()
    assert data["isolation"]["violations"] == 0
    assert data["isolation"]["runs"] == {"checked": 8, "faulted": 4, "baseline": 4}
    assert data["false_positive"]["strata"] == [BASELINE_STRATUM]


def test_isolation_run_json_round_trip() -> None:
    run = run_of(2, baseline=True, vcpu_s=0.2)
    assert IsolationRun.from_json(json.loads(json.dumps(run.to_json()))) == run


# -- memory:page-table ---------------------------------------------------------------

P, RW, US, PS = 1, 2, 4, 1 << 7


def fake_tables() -> dict[int, bytearray]:
    pages: dict[int, bytearray] = {}

    def entry(table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", pages.setdefault(table, bytearray(4096)), 8 * index, value)

    entry(0x1000, 0, 0x2000 | P | RW | US)  # user half: PML4[0] -> PDPT
    entry(0x2000, 0, 0x3000 | P | RW | US)  # PDPT[0] -> PD
    entry(0x3000, 128, 0x4000 | P | RW | US)  # PD[128] -> PT (0x10000000)
    entry(0x4000, 0, 0x100000 | P | US)  # PT[0]: a user page
    entry(0x4000, 1, 0x101000 | P | RW | US)
    entry(0x1000, 511, 0x5000 | P | RW)  # kernel half: PML4[511] -> PDPT
    entry(0x5000, 510, 0x1000000 | P | RW | PS)  # a 1 GiB kernel page... as a PDPT leaf
    return pages


def read_from(pages: dict[int, bytearray]) -> Callable[[int, int], bytes]:
    def read(address: int, size: int) -> bytes:
        page = pages.get(address & ~0xFFF, bytearray(4096))
        offset = address & 0xFFF
        return bytes(page[offset : offset + size])

    return read


def test_table_entries_lists_every_level_of_each_half() -> None:
    read = read_from(fake_tables())
    every = table_entries(0x1000, read)
    assert [(e.table, e.leaf, hex(e.virtual)) for e in every] == [
        ("PML4", False, "0x0"),
        ("PDPT", False, "0x0"),
        ("PD", False, "0x10000000"),
        ("PT", True, "0x10000000"),
        ("PT", True, "0x10001000"),
        ("PML4", False, "0xffffff8000000000"),
        ("PDPT", True, "0xffffffff80000000"),
    ]
    assert every[3].address == 0x4000 and every[4].address == 0x4008
    user = table_entries(0x1000, read, upper=False)
    kernel = table_entries(0x1000, read, lower=False)
    assert [e.upper_half for e in user] == [False] * 5
    assert [e.upper_half for e in kernel] == [True] * 2
    assert table_entries(0x1000, read, lower=False, upper=False) == []


def test_page_table_faults_have_their_kind_and_default_bits() -> None:
    spec = FaultSpec.from_options(target="memory:page-table", context="kernel")
    assert kind_name(spec) == "page-table"
    rng = random.Random(0)
    drawn = {default_bit(rng) for _ in range(2000)}
    assert drawn == set(ENTRY_BITS)
    assert not drawn & {9, 10, 11, 52, 62}
    with pytest.raises(UsageError, match="storm needs a memory region"):
        FaultSpec.from_options(target="memory:page-table", flips=3, interval="1ms")
    injection = PageTableInjection(target="memory:page-table", level="PT", space="user",
                                   leaf=True, entries=12)  # fmt: skip
    assert injection.to_json()["kind"] == "page-table"
    assert injection.fields()["level"] == "PT"


class _Testbed:
    def __init__(self, machines: list[SimpleNamespace]) -> None:
        self.machines = machines
        self.alive = True

    def __iter__(self) -> Iterator[SimpleNamespace]:
        return iter(self.machines)


class _DeadVm:
    """A QEMU that died by itself (SIGSEGV) during the experiment."""

    alive = False
    pid = 4242
    qemu_output = "qemu: fatal: something broke"
    exit_code = -11
    qemu_log = None

    def close(self) -> None:
        pass


class _LiveVm(_DeadVm):
    alive = True


class _FailingExperimenter:
    """An experimenter whose run fails the way a dead QEMU makes it fail."""

    def __init__(self, dead: str) -> None:
        self.testbed = _Testbed([
            SimpleNamespace(name=name, vm=_DeadVm() if name == dead else _LiveVm())
            for name in ("control", "target")
        ])  # fmt: skip

    def run(self, spec: FaultSpec, *, seed: int, index: int) -> ExperimentRecord:
        raise MachineError("QEMU of machine control exited (status -11)")

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("dead", "violation"), [("control", True), ("target", False)])
def test_a_control_qemu_that_dies_is_a_violation(dead: str, violation: bool) -> None:

    machines = (MachineSpec("target", ("checksum",)), MachineSpec("control", ("matmul",)))
    worker = _Worker.__new__(_Worker)
    worker.setup = WorkerSetup(image_root=Path("/x"), machines=machines, control="control")
    worker.experimenter = _FailingExperimenter(dead)  # type: ignore[assignment]
    spec = FaultSpec.from_options(target="memory:page-table", machine="target")
    record = worker.run(spec, 3, 1)
    assert record.outcome is Outcome.VMM_ERROR
    assert "killed by SIGSEGV" in record.evidence
    if violation:
        assert record.isolation is not None and record.isolation.machine == "control"
        assert record.isolation.violation.startswith("the control's QEMU failed")
    else:
        assert record.isolation is None
