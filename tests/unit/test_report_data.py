"""The report's data and `vmfault campaign status`: every number from a store of hand-made
records, checked against counts and interval bounds worked out by hand."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from typer.testing import CliRunner

from vmfault.classify import Activation, Latency, LatencyUnit, Outcome
from vmfault.cli import app, main
from vmfault.experiment.records import (
    DEFAULT_MACHINE,
    ExperimentRecord,
    GoldenRun,
    Injection,
    MachineRun,
    MemoryInjection,
    RegisterInjection,
    TriggerPoint,
)
from vmfault.report.data import (
    COUNTED_OUTCOMES,
    DYNAMIC_INDEX_COLUMN,
    OP_COLUMN,
    STORM_FLIPS_COLUMN,
    STORM_TIME_COLUMN,
    CampaignReport,
    build_report,
    replay_command,
)
from vmfault.report.summary import Summary, store_summary, summary_tables
from vmfault.stats import IntervalMethod, Rate
from vmfault.store import CampaignInfo, SQLiteStore

SPEC = {
    "campaign": {"name": "hand-made", "seed": 5, "experiments": 14, "budget": 3.0},
    "guest": {
        "workload": "checksum",
        "args": ["--self-check"],
        "deterministic": False,
        "accel": "tcg",
    },
    "faults": [
        {"name": "regs", "target": "register:all", "bits": None, "context": "user"},
        {"name": "mem", "target": "memory:process", "bits": 1, "trigger": "time"},
    ],
    "source": "/campaigns/hand-made.toml",
}
PROVENANCE = {
    "tool_version": "0.1.0",
    "qemu_version": "QEMU emulator version 7.2.22",
    "image_hash": "24b859ee6b8583b6",
    "kernel_release": "6.1.0-56-amd64",
    "campaign_file_sha256": "ab" * 32,
    "host": "bench-1",
    "python": "3.11.7",
    "extra_key": "extra value",
}
HOSTILE = '<script>alert("x")</script> segfault at 0 ip 0 sp 0 http://evil.example/x'


def register_fault(register: str, mask: int, width: int = 64) -> Injection:
    return RegisterInjection(
        target="register:all",
        location=register,
        width=width,
        mask=mask,
        mode="flip",
        injected=True,
        register=register,
        before=0,
        after=mask,
        readback=mask,
        trigger=TriggerPoint(spec="time", time_s=0.1, user_mode=True),
    )


def memory_fault(bit: int) -> Injection:
    return MemoryInjection(
        target="memory:process",
        location="0x10001000",
        width=64,
        mask=1 << bit,
        mode="flip",
        injected=True,
        address=0x7000000,
        virtual=0x10001000,
        trigger=TriggerPoint(spec="time"),
    )


def not_placed(target: str, reason: str) -> Injection:
    return Injection(
        target=target, location="", width=64, mask=1, mode="flip", injected=False, reason=reason
    )


def record(
    index: int,
    injection: Injection,
    outcome: Outcome,
    *,
    cause: str | None = None,
    evidence: str = "",
    latency: Latency | None = None,
    activation: Activation | None = None,
) -> ExperimentRecord:
    if activation is None:
        activation = (
            Activation.NOT_ACTIVATED
            if outcome is Outcome.NOT_INJECTED
            else Activation.UNKNOWN
            if outcome is Outcome.BENIGN
            else Activation.MANIFESTED
        )
    run = MachineRun(
        machine="guest",
        outcome=outcome,
        reason=f"reason {index}",
        cause=cause,
        evidence=evidence,
        output="checksum: 0x1\n",
        exit_status=0,
    )
    return ExperimentRecord(
        index=index,
        seed=5,
        spec={"target": injection.target},
        injections=(injection,),
        machines=(run,),
        latency=latency,
        activation=activation,
    )


WALL = LatencyUnit.WALL_NS
INSTR = LatencyUnit.INSTRUCTIONS
EXPERIMENTS: list[tuple[str, ExperimentRecord]] = [
    ("regs", record(0, register_fault("rax", 1 << 63), Outcome.CRASH, cause="SIGSEGV",
                    evidence=HOSTILE, latency=Latency(1_500, INSTR))),
    ("regs", record(1, register_fault("rax", 1 << 63), Outcome.BENIGN)),
    ("regs", record(2, register_fault("rbx", 1), Outcome.SDC, evidence="checksum: 0x2")),
    ("regs", record(3, register_fault("rbx", 0x21), Outcome.DETECTED,
                    evidence="checksum: DETECTED", latency=Latency(700, WALL))),
    ("regs", record(4, register_fault("xmm1", 1 << 127, 128), Outcome.CRASH, cause="page-fault",
                    evidence="BUG: unable to handle page fault", latency=Latency(5_000_000, WALL))),
    ("regs", record(5, register_fault("rip", 1 << 40), Outcome.CRASH, cause="page-fault",
                    evidence="Oops", latency=Latency(2_500, INSTR))),
    ("regs", record(6, register_fault("rcx", 1 << 3), Outcome.HANG)),
    ("regs", record(7, register_fault("rcx", 1 << 3), Outcome.VMM_ERROR)),
    ("regs", record(8, not_placed("register:all", "the workload exited before the trigger"),
                    Outcome.NOT_INJECTED)),
    ("mem", record(9, memory_fault(12), Outcome.BENIGN, activation=Activation.NOT_ACTIVATED)),
    ("mem", record(10, memory_fault(12), Outcome.BENIGN, activation=Activation.MASKED)),
    ("mem", record(11, memory_fault(12), Outcome.CRASH, cause="SIGSEGV")),
    ("mem", record(12, not_placed("memory:process", "the workload process is not running"),
                   Outcome.NOT_INJECTED)),
    ("mem", record(13, not_placed("memory:process", "the workload process is not running"),
                   Outcome.NOT_INJECTED)),
]  # fmt: skip


COUNTS: dict[str, dict[str, int]] = {
    "overall": {"benign": 3, "sdc": 1, "detected": 1, "crash": 4, "hang": 1, "vmm-error": 1,
                "not-injected": 3},
    "regs": {"benign": 1, "sdc": 1, "detected": 1, "crash": 3, "hang": 1, "vmm-error": 1,
             "not-injected": 1},
    "mem": {"benign": 2, "crash": 1, "not-injected": 2},
}  # fmt: skip
"""Outcomes of EXPERIMENTS, counted by hand (classes with no experiment left out)."""
COUNTED = {"overall": 11, "regs": 8, "mem": 3}
"""Experiments that count in rates: all but the not-injected ones."""
WILSON_95 = {
    (0, 3): (0.0, 0.5615),
    (1, 3): (0.0615, 0.7923),
    (2, 3): (0.2077, 0.9385),
    (1, 8): (0.0224, 0.4709),
    (3, 8): (0.1368, 0.6943),
    (1, 11): (0.0162, 0.3774),
    (3, 11): (0.0975, 0.5656),
    (4, 11): (0.1517, 0.6462),
    (7, 11): (0.3538, 0.8483),
}
"""Wilson 95 % score intervals of k out of n, worked out apart from vmfault (z = 1.959964):
(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
WILSON_90 = {(4, 11): (0.1751, 0.6060), (3, 11): (0.1147, 0.5205), (2, 3): (0.2535, 0.9217)}
"""The same at 90 % (z = 1.644854)."""
CLOPPER_PEARSON_90 = {
    (4, 11): (0.1351, 0.6502),
    (3, 11): (0.0788, 0.5644),
    (2, 3): (0.1354, 0.9830),
}
"""Exact 90 % intervals: the p where P(X >= k) and P(X <= k) are 5 %, from binomial sums."""
COUNTED_OUTCOMES_IN_ORDER = ["benign", "sdc", "detected", "crash", "hang", "vmm-error"]
BOUND = 1e-4
"""Hand-worked bounds are rounded to 4 decimals."""


def check_interval(rate: Rate, k: int, n: int, bounds: tuple[float, float]) -> None:
    assert (rate.successes, rate.trials) == (k, n)
    assert [rate.low, rate.high] == pytest.approx(list(bounds), abs=BOUND)


def make_store(path: Path, experiments: Sequence[tuple[str, ExperimentRecord]]) -> SQLiteStore:
    store = SQLiteStore.create(
        path,
        campaign_name="hand-made",
        seed=5,
        spec_json=json.dumps(SPEC),
        file_sha256="ab" * 32,
        total_planned=20,
        provenance=PROVENANCE,
    )
    store.save_golden(
        GoldenRun(
            machine="guest",
            argv=("checksum", "--self-check"),
            stdout=b"checksum: 0x1\n",
            stderr=b"",
            exit_code=0,
            signal=None,
            guest_s=0.2,
            host_s=0.25,
        )
    )
    for experiment_id, (stratum, rec) in enumerate(experiments):
        store.record(
            experiment_id, stratum, rec, worker="w0", started_at=1.0e9, finished_at=1.0e9 + 1
        )
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    with make_store(tmp_path / "my campaign.db", EXPERIMENTS) as opened:
        yield opened


@pytest.fixture
def report(store: SQLiteStore) -> CampaignReport:
    return build_report(store)


# ---------------------------------------------------------------------------- numbers


def check_status_json(data: dict[str, Any], part: str) -> None:
    """One part ("overall" or a stratum) of `campaign status --json` against the hand counts
    and Wilson 95 % bounds; every counted class has a rate, even one no experiment had."""
    counts, counted = COUNTS[part], COUNTED[part]
    assert data["outcomes"] == counts
    assert list(data["outcomes"]) == [o for o in [*COUNTED_OUTCOMES_IN_ORDER, "not-injected"]
                                      if o in counts]  # fmt: skip
    rates, intervals = data["rates"], data["intervals"]
    assert isinstance(rates, dict) and isinstance(intervals, dict)
    assert list(rates) == list(intervals) == COUNTED_OUTCOMES_IN_ORDER
    for outcome in COUNTED_OUTCOMES_IN_ORDER:
        k = counts.get(outcome, 0)
        assert rates[outcome] == pytest.approx(k / counted)
        assert intervals[outcome] == pytest.approx(list(WILSON_95[k, counted]), abs=BOUND)


def test_summary_is_what_campaign_status_prints(report: CampaignReport) -> None:
    data = report.summary.to_json()
    assert (data["campaign"], data["total"], data["done"]) == ("hand-made", 20, 14)
    assert (data["method"], data["confidence"]) == ("wilson", 0.95)
    check_status_json(data, "overall")
    assert list(data["strata"]) == ["mem", "regs"]
    for stratum in ("mem", "regs"):
        check_status_json(data["strata"][stratum], stratum)
    assert data["strata"]["mem"]["done"] == 5
    assert data["strata"]["regs"]["done"] == 9


@pytest.mark.parametrize(
    ("method", "bounds"),
    [(IntervalMethod.WILSON, WILSON_90), (IntervalMethod.CLOPPER_PEARSON, CLOPPER_PEARSON_90)],
)
def test_every_outcome_class_has_its_count_and_rate(
    store: SQLiteStore, method: IntervalMethod, bounds: dict[tuple[int, int], tuple[float, float]]
) -> None:
    report = build_report(store, confidence=0.9, method=method)
    overall = COUNTS["overall"]
    assert [(o.outcome, o.count) for o in report.overall.outcomes] == [
        (o.value, overall.get(o.value, 0)) for o in Outcome
    ]
    for o in report.overall.outcomes:
        if not Outcome(o.outcome).counts:
            assert o.rate is None
            continue
        assert o.rate is not None and (o.rate.method, o.rate.confidence) == (method, 0.9)
        assert (o.rate.successes, o.rate.trials) == (o.count, 11)
    by_name = {o.outcome: o.rate for o in report.overall.outcomes if o.rate is not None}
    check_interval(by_name["crash"], 4, 11, bounds[4, 11])
    check_interval(by_name["benign"], 3, 11, bounds[3, 11])
    assert (report.overall.done, report.overall.counted) == (14, 11)
    assert report.overall.failure.successes == 7  # 4 crashes, sdc, detected, hang
    assert report.overall.failure.trials == 11


def test_strata_have_their_counts_and_rates(report: CampaignReport) -> None:
    assert [d.stratum for d in report.strata] == ["mem", "regs"]
    for dist in report.strata:
        assert dist.stratum is not None
        counts = COUNTS[dist.stratum]
        assert {o.outcome: o.count for o in dist.outcomes if o.count} == counts
        for outcome in COUNTED_OUTCOMES_IN_ORDER:
            k = counts.get(outcome, 0)
            rate = dist.rate(outcome)
            assert rate is not None
            check_interval(rate, k, COUNTED[dist.stratum], WILSON_95[k, COUNTED[dist.stratum]])
    mem = report.strata[0]
    assert (mem.done, mem.counted, mem.count("crash"), mem.failure.successes) == (5, 3, 1, 1)
    regs = report.strata[1]
    assert (regs.done, regs.counted, regs.count("crash"), regs.failure.successes) == (9, 8, 3, 6)
    check_interval(report.overall.failure, 7, 11, WILSON_95[7, 11])


def test_not_injected_reasons_are_counted_most_frequent_first(report: CampaignReport) -> None:
    assert [(r.reason, r.count, dict(r.by_stratum), r.first_experiment)
            for r in report.not_injected] == [
        ("the workload process is not running", 2, {"mem": 2}, 12),
        ("the workload exited before the trigger", 1, {"regs": 1}, 8),
    ]  # fmt: skip
    assert [r.example for r in report.not_injected] == [r.reason for r in report.not_injected]


# ---------------------------------------------------------------------------- locations


def test_registers_in_canonical_order_with_counts(report: CampaignReport) -> None:
    assert [b.key for b in report.registers] == ["rax", "rbx", "rcx", "rip", "xmm1"]
    rax = report.registers[0]
    assert list(rax.counts) == list(COUNTED_OUTCOMES)
    assert dict(rax.counts) == {"benign": 1, "sdc": 0, "detected": 0, "crash": 1, "hang": 0,
                                "vmm-error": 0}  # fmt: skip
    assert (rax.total, rax.failure.successes, rax.failure.trials) == (2, 1, 2)
    rcx = report.registers[2]
    assert (rcx.counts["hang"], rcx.counts["vmm-error"], rcx.failure.successes) == (1, 1, 1)


def test_heatmap_rows_widths_and_cells(report: CampaignReport) -> None:
    heat = report.heatmap
    assert heat is not None
    assert heat.rows == ("rax", "rbx", "rcx", "rip", "xmm1", "memory:process")
    assert heat.widths == (64, 64, 64, 64, 128, 64)
    assert heat.bits == 128
    assert [len(row) for row in heat.cells] == [128] * 6
    assert heat.multi_bit == 1
    cell = heat.cell("rax", 63)
    assert (cell.counts["benign"], cell.counts["crash"], cell.failure.rate) == (1, 1, 0.5)
    assert heat.cell("rbx", 0).counts["sdc"] == 1
    assert heat.cell("rbx", 0).counts["detected"] == 1
    assert heat.cell("rbx", 5).counts["detected"] == 1
    assert heat.cell("xmm1", 127).counts["crash"] == 1
    memory = heat.cell("memory:process", 12)
    assert (memory.total, memory.counts["benign"], memory.counts["crash"]) == (3, 2, 1)
    assert heat.cell("rax", 0).total == 0


def test_bit_positions_cover_the_widest_location(report: CampaignReport) -> None:
    bits = report.bit_positions
    assert [b.key for b in bits] == [str(i) for i in range(128)]
    assert bits[0].counts["sdc"] == 1 and bits[0].counts["detected"] == 1
    assert bits[12].total == 3
    assert bits[63].total == 2
    assert sum(b.total for b in bits) == 11 + 1  # one two-bit fault counts at both bits


# ---------------------------------------------------------------------------- crashes


def test_crash_causes_shares_and_first_examples(report: CampaignReport) -> None:
    causes = report.crash_causes
    assert [(c.cause, c.count, c.first_experiment) for c in causes] == [
        ("SIGSEGV", 2, 0),
        ("page-fault", 2, 4),
    ]
    assert all(c.share.trials == 4 and c.share.rate == 0.5 for c in causes)
    assert dict(causes[0].by_stratum) == {"mem": 1, "regs": 1}
    assert dict(causes[1].by_stratum) == {"regs": 2}


def test_crash_latency_keeps_units_apart(report: CampaignReport) -> None:
    by_unit = {h.unit: h for h in report.latency}
    assert list(by_unit) == ["instructions", "wall-ns"]
    instructions = by_unit["instructions"]
    assert (instructions.count, instructions.minimum, instructions.maximum) == (2, 1_500, 2_500)
    assert instructions.median == 2_000
    assert instructions.buckets["<=2K"] == 1 and instructions.buckets["<=3K"] == 1
    assert sum(instructions.buckets.values()) == 2
    wall = by_unit["wall-ns"]
    assert wall.count == 1 and wall.buckets["<=10M"] == 1  # the detected one is no crash
    assert report.crashes_without_latency == 1


def test_activation_only_where_a_watchpoint_told(report: CampaignReport) -> None:
    rows = {row.stratum: row for row in report.activation}
    assert rows["mem"].recorded and not rows["regs"].recorded
    assert dict(rows["mem"].counts) == {
        "not-activated": 1,
        "masked": 1,
        "manifested": 1,
        "unknown": 0,
    }
    assert rows["regs"].total == 8  # the not-injected experiment is left out


def test_examples_carry_evidence_verbatim_and_a_replay_command(
    report: CampaignReport, store: SQLiteStore
) -> None:
    keys = [(e.outcome, e.cause, e.experiment_id) for e in report.examples]
    assert keys == [
        ("crash", "SIGSEGV", 0),
        ("crash", "page-fault", 4),
        ("sdc", None, 2),
        ("detected", None, 3),
        ("hang", None, 6),
    ]
    first = report.examples[0]
    assert first.evidence == HOSTILE
    assert (first.location, first.bits, first.stratum) == ("rax", (63,), "regs")
    assert (first.latency_value, first.latency_unit) == (1_500, "instructions")
    assert first.replay == f"vmfault replay '{store.path}' 0"
    assert report.examples[3].bits == (0, 5)


def test_replay_command_is_quoted_for_the_shell() -> None:
    assert replay_command("results/demo.db", 42) == "vmfault replay results/demo.db 42"
    assert replay_command("a b;rm x.db", 1) == "vmfault replay 'a b;rm x.db' 1"


def test_db_label_replaces_the_path(store: SQLiteStore) -> None:
    report = build_report(store, db="results/x.db")
    assert report.db == "results/x.db"
    assert [e.replay for e in report.examples] == [
        f"vmfault replay results/x.db {i}" for i in (0, 4, 2, 3, 6)
    ]


# ---------------------------------------------------------------------------- provenance


def test_provenance_and_golden_run(report: CampaignReport) -> None:
    info = report.provenance
    assert (info.campaign, info.seed, info.total_planned) == ("hand-made", 5, 20)
    assert info.campaign_file == "/campaigns/hand-made.toml"
    assert info.qemu_version == "QEMU emulator version 7.2.22"
    assert (info.image_hash, info.kernel_release) == ("24b859ee6b8583b6", "6.1.0-56-amd64")
    assert (info.workload, info.args, info.deterministic, info.budget) == (
        "checksum",
        ("--self-check",),
        False,
        3.0,
    )
    assert [(f.name, f.target, f.bits, f.trigger, f.context) for f in info.families] == [
        ("regs", "register:all", "1", "time", "user"),
        ("mem", "memory:process", "1", "time", "any"),
    ]
    assert info.other == (("extra_key", "extra value"),)
    golden = report.golden
    assert golden is not None
    assert golden.argv == ("checksum", "--self-check")
    assert (golden.stdout, golden.exit_status, golden.host_s) == (b"checksum: 0x1\n", 0, 0.25)


def test_no_golden_run_stored_gives_none(tmp_path: Path) -> None:
    with SQLiteStore.create(
        tmp_path / "g.db",
        campaign_name="g",
        seed=1,
        spec_json=json.dumps({"guest": {"workload": "checksum", "args": []}}),
        file_sha256="00",
        total_planned=1,
        provenance={},
    ) as store:
        report = build_report(store)
    assert report.golden is None
    assert report.provenance.families == ()
    assert report.provenance.tool_version == ""


def test_an_empty_campaign_has_a_report(tmp_path: Path) -> None:
    with make_store(tmp_path / "empty.db", []) as store:
        report = build_report(store)
    assert report.summary.done == 0
    assert [(o.outcome, o.count) for o in report.overall.outcomes] == [
        (o.value, 0) for o in Outcome
    ]
    assert report.overall.failure.trials == 0
    assert report.strata == ()
    assert report.heatmap is None and report.registers == () and report.bit_positions == ()
    assert report.crash_causes == () and report.latency == () and report.examples == ()
    assert report.activation == () and report.instructions is None and report.storms is None
    assert report.not_injected == () and report.progress == ()
    assert report.false_positive is None


# ---------------------------------------------------------------------------- optional sections


class WithColumns:
    """A store whose rows carry extra analysis columns (as later schema versions will)."""

    def __init__(self, store: SQLiteStore, extra: dict[int, dict[str, object]]) -> None:
        self.store = store
        self.extra = extra
        self.path = store.path

    def campaign_info(self) -> CampaignInfo:
        return self.store.campaign_info()

    def golden(self, argv: Sequence[str], *, machine: str = DEFAULT_MACHINE) -> GoldenRun | None:
        return self.store.golden(argv, machine=machine)

    def outcome_counts(self, *, stratum: str | None = None) -> dict[str, int]:
        return self.store.outcome_counts(stratum=stratum)

    def counts_by_stratum(self) -> dict[str, dict[str, int]]:
        return self.store.counts_by_stratum()

    def rows(self) -> Iterator[dict[str, object]]:
        for row in self.store.rows():
            experiment_id = row["experiment_id"]
            assert isinstance(experiment_id, int)
            yield {**row, **self.extra.get(experiment_id, {})}


def test_instruction_and_storm_sections_are_absent_without_their_columns(
    report: CampaignReport,
) -> None:
    assert report.instructions is None
    assert report.storms is None


def test_instruction_faults_per_op_and_dynamic_index(tmp_path: Path) -> None:
    many = [
        ("ops", record(i, register_fault("rax", 1 << i % 64), Outcome.BENIGN)) for i in range(30)
    ]
    extra: dict[int, dict[str, object]] = {
        i: {OP_COLUMN: "fadd" if i % 2 else "cmp", DYNAMIC_INDEX_COLUMN: 1 + 7 * i}
        for i in range(30)
    }
    with make_store(tmp_path / "ops.db", many) as store:
        report = build_report(WithColumns(store, extra))
    data = report.instructions
    assert data is not None
    assert [(b.key, b.total) for b in data.by_op] == [("cmp", 15), ("fadd", 15)]
    assert len(data.by_dynamic_index) == 10
    assert [b.total for b in data.by_dynamic_index] == [3] * 10
    assert [b.key for b in data.by_dynamic_index][:2] == ["1-21", "22-42"]
    assert report.storms is None


def test_few_distinct_dynamic_indices_get_one_bin_each(store: SQLiteStore) -> None:
    extra: dict[int, dict[str, object]] = {i: {DYNAMIC_INDEX_COLUMN: i % 3 + 1} for i in range(14)}
    data = build_report(WithColumns(store, extra)).instructions
    assert data is not None and data.by_op == ()
    assert [b.key for b in data.by_dynamic_index] == ["1", "2", "3"]


def test_storms_per_number_of_flips_and_duration(store: SQLiteStore) -> None:
    extra: dict[int, dict[str, object]] = {
        i: {STORM_FLIPS_COLUMN: 1 + i % 4, STORM_TIME_COLUMN: 0.01 * i} for i in range(14)
    }
    storms = build_report(WithColumns(store, extra)).storms
    assert storms is not None
    assert [b.key for b in storms.by_flips] == ["1", "2", "3", "4"]
    assert sum(b.total for b in storms.by_flips) == 11
    assert sum(b.total for b in storms.by_time) == 11
    assert all(b.failure.trials == b.total for b in storms.by_time)


# ---------------------------------------------------------------------------- campaign status

STATUS_ROWS = [
    ["benign", "3", "27.3%", "[9.7%, 56.6%]"],
    ["sdc", "1", "9.1%", "[1.6%, 37.7%]"],
    ["detected", "1", "9.1%", "[1.6%, 37.7%]"],
    ["crash", "4", "36.4%", "[15.2%, 64.6%]"],
    ["hang", "1", "9.1%", "[1.6%, 37.7%]"],
    ["vmm-error", "1", "9.1%", "[1.6%, 37.7%]"],
    ["not-injected", "3", "-", "-"],
    ["mem", "5", "benign 2 67% [21%, 94%]; crash 1 33% [6%, 79%]; not-injected 2"],
    ["regs", "9", "benign 1 12% [2%, 47%]; sdc 1 12% [2%, 47%]; detected 1 12% [2%, 47%]; "
     "crash 3 38% [14%, 69%]; hang 1 12% [2%, 47%]; vmm-error 1 12% [2%, 47%]; not-injected 1"],
]  # fmt: skip
"""The rows `campaign status` prints for EXPERIMENTS: the hand counts and Wilson 95 % bounds
above, as percentages (overall to 0.1 %, per stratum to 1 %)."""
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def table_rows(text: str) -> list[list[str]]:
    """The body rows of the tables rich printed, as stripped cells."""
    lines = ANSI.sub("", text).splitlines()
    return [[cell.strip() for cell in line.split("│")[1:-1]] for line in lines if "│" in line]


def render(summary: Summary) -> str:
    console = Console(width=300, color_system=None)
    with console.capture() as captured:
        for table in summary_tables(summary):
            console.print(table)
    return captured.get()


@pytest.fixture
def campaign_db(tmp_path: Path) -> Path:
    """A closed campaign database holding EXPERIMENTS."""
    path = tmp_path / "status.db"
    with make_store(path, EXPERIMENTS):
        pass
    return path


def campaign_status(*args: str) -> str:
    result = CliRunner().invoke(app, ["campaign", "status", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_campaign_status_prints_counts_rates_and_intervals(campaign_db: Path) -> None:
    output = ANSI.sub("", campaign_status(str(campaign_db)))
    assert "hand-made: 14 of 20 experiments" in output
    assert "interval (wilson, 95%)" in output and "per stratum (wilson, 95%)" in output
    assert table_rows(output) == [*STATUS_ROWS, VMM_REACTION_ROW]
    assert "VMM reactions (vmm-error), grouped by message" in output


VMM_REACTION_ROW = ["1", "reason N", "", "regs 1", "7"]
"""The one vmm-error of EXPERIMENTS (no evidence: its reason), as `campaign status` groups it."""


def test_campaign_status_json(campaign_db: Path) -> None:
    data = json.loads(campaign_status(str(campaign_db), "--json"))
    assert (data["campaign"], data["total"], data["done"]) == ("hand-made", 20, 14)
    assert (data["method"], data["confidence"]) == ("wilson", 0.95)
    check_status_json(data, "overall")
    assert {name: part["done"] for name, part in data["strata"].items()} == {"mem": 5, "regs": 9}
    for stratum in ("mem", "regs"):
        check_status_json(data["strata"][stratum], stratum)


def test_campaign_status_takes_the_confidence_and_the_method(campaign_db: Path) -> None:
    options = ("--confidence", "0.9", "--method", "clopper-pearson")
    data = json.loads(campaign_status(str(campaign_db), "--json", *options))
    assert (data["method"], data["confidence"]) == ("clopper-pearson", 0.9)
    assert data["intervals"]["crash"] == pytest.approx([0.1351, 0.6502], abs=BOUND)
    assert data["intervals"]["benign"] == pytest.approx([0.0788, 0.5644], abs=BOUND)
    mem = data["strata"]["mem"]["intervals"]["benign"]
    assert mem == pytest.approx(list(CLOPPER_PEARSON_90[2, 3]), abs=BOUND)
    output = ANSI.sub("", campaign_status(str(campaign_db), *options))
    assert "interval (clopper-pearson, 90%)" in output
    rows = table_rows(output)
    assert ["crash", "4", "36.4%", "[13.5%, 65.0%]"] in rows
    assert rows[7][:2] == ["mem", "5"] and "benign 2 67% [14%, 98%]" in rows[7][2]


def test_campaign_status_of_a_missing_database_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["campaign", "status", str(tmp_path / "none.db")])
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no campaign database at" in err


def test_store_summary_reads_the_store_with_the_method_asked(store: SQLiteStore) -> None:
    summary = store_summary(store, confidence=0.9, method=IntervalMethod.WILSON)
    assert (summary.name, summary.total, summary.done) == ("hand-made", 20, 14)
    assert dict(summary.outcomes) == COUNTS["overall"]
    check_interval(summary.rates["crash"], 4, 11, WILSON_90[4, 11])
    check_interval(summary.rates["benign"], 3, 11, WILSON_90[3, 11])
    done, counts, rates = summary.strata["mem"]
    assert (done, dict(counts)) == (5, COUNTS["mem"])
    check_interval(rates["benign"], 2, 3, WILSON_90[2, 3])
    assert "interval (wilson, 90%)" in render(summary)


def test_summary_of_an_empty_campaign(tmp_path: Path) -> None:
    with make_store(tmp_path / "empty.db", []) as store:
        summary = store_summary(store, confidence=0.95, method=IntervalMethod.WILSON)
    data = summary.to_json()
    assert (data["done"], data["outcomes"], data["strata"]) == (0, {}, {})
    assert data["rates"] == dict.fromkeys(COUNTED_OUTCOMES_IN_ORDER, 0.0)
    assert data["intervals"] == {name: [0.0, 1.0] for name in COUNTED_OUTCOMES_IN_ORDER}
    text = render(summary)
    assert "hand-made: 0 of 20 experiments" in text
    assert table_rows(text) == []
