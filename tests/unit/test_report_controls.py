"""The false-positive rate of control runs, where faults landed, and why faults were not
placed: `campaign status`, its JSON, the report's data, the HTML page and the figures, from a
store of hand-made records with every number worked out by hand."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from tests.unit.test_report_data import (
    ANSI,
    PROVENANCE,
    memory_fault,
    not_placed,
    record,
    register_fault,
    table_rows,
)
from tests.unit.test_report_html import assert_self_contained, parse
from vmfault.classify import Outcome
from vmfault.cli import app
from vmfault.experiment.records import (
    ControlInjection,
    ExperimentRecord,
    GoldenRun,
    Injection,
    TriggerPoint,
)
from vmfault.report import build_report, render_html, report_command
from vmfault.report.data import PROGRESS_BINS, PROGRESS_LABELS, CampaignReport, reason_kind
from vmfault.report.summary import control_strata, store_summary, summarize
from vmfault.stats import IntervalMethod
from vmfault.store import SQLiteStore

IDLE = "<i>idle</i> control"
"""A control stratum whose name is markup: it must show escaped."""
SPEC: dict[str, Any] = {
    "campaign": {"name": "controlled", "seed": 3, "experiments": 30, "budget": 3.0},
    "guest": {"workload": "checksum", "args": [], "deterministic": False, "accel": "tcg"},
    "faults": [
        {"name": "regs", "target": "register:gpr", "context": "user"},
        {"name": "mem", "target": "memory:process"},
        {"target": "none", "experiments": 9},  # no name: named by its target, as files are
        {"name": IDLE, "target": " none ", "experiments": 4},
    ],
}
ENDED = "the workload ended before the trigger at {} s"
QMP = "QMP command failed: <b>stop</b> timed out after 5 s"


def landed(register: str, progress: float | None) -> Injection:
    """A register fault that landed at `progress` of the golden execution."""
    fault = register_fault(register, 1 << 3)
    return dataclasses.replace(fault, trigger=TriggerPoint(spec="time", progress=progress))


def landed_in_memory(progress: float) -> Injection:
    fault = memory_fault(12)
    return dataclasses.replace(fault, trigger=TriggerPoint(spec="time", progress=progress))


def placed_nowhere(target: str, reason: str, progress: float | None = None) -> Injection:
    fault = not_placed(target, reason)
    return dataclasses.replace(fault, trigger=TriggerPoint(spec="time", progress=progress))


B, S, C, V, N = Outcome.BENIGN, Outcome.SDC, Outcome.CRASH, Outcome.VMM_ERROR, Outcome.NOT_INJECTED
EXPERIMENTS: list[tuple[str, Injection, Outcome]] = [
    ("regs", landed("rax", 0.05), B),                                      # 0: bin 0
    ("regs", landed("rbx", 0.95), C),                                      # 1: bin 9
    ("regs", landed("rcx", 1.0), S),                                       # 2: the end: bin 9
    ("regs", landed("rdx", 0.1), B),                                       # 3: bin 1
    ("regs", landed("rsi", None), B),                                      # 4: no progress
    ("regs", landed("rdi", 1.25), B),                                      # 5: outside [0, 1]
    ("regs", placed_nowhere("register:gpr", ENDED.format("0.1612")), N),  # 6
    ("regs", placed_nowhere("register:gpr", "read back 0x7f, wrote 0xff", 0.3), N),  # 7
    ("regs", placed_nowhere("register:gpr", ENDED.format("0.2003")), N),  # 8
    ("mem", landed_in_memory(0.5), C),                                     # 9: bin 5
    ("mem", landed_in_memory(0.55), B),                                    # 10: bin 5
    ("mem", placed_nowhere("memory:process", ENDED.format("0.0420")), N),  # 11
    *(("none", ControlInjection(injected=True), B) for _ in range(7)),     # 12-18
    ("none", ControlInjection(injected=True), S),                          # 19
    ("none", ControlInjection(reason=QMP), N),                             # 20: never counted
    *((IDLE, ControlInjection(injected=True), B) for _ in range(3)),       # 21-23
    (IDLE, ControlInjection(injected=True), V),                            # 24
]  # fmt: skip

FALSE_POSITIVE = {"runs": 12, "failures": 2}
"""Counted control runs: 8 of `none` (7 benign, an sdc; the not-injected one is not counted)
and 4 of IDLE (3 benign, a vmm-error): 2 are not benign."""
WILSON_95 = (0.0470, 0.4480)
"""Wilson 95 % bounds of 2 of 12 (z = 1.959964): (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²))
/ (1 + z²/n)."""
WILSON_90 = (0.0568, 0.3992)
"""The same at 90 % (z = 1.644854)."""
CLOPPER_PEARSON_90 = (0.0305, 0.4381)
"""Exact 90 % bounds of 2 of 12: the p where P(X >= 2) and P(X <= 2) are 5 %."""
BOUND = 1e-4
PROGRESS = {
    "mem": ((0, 0, 0, 0, 0, 2, 0, 0, 0, 0), 0),
    "regs": ((1, 1, 0, 0, 0, 0, 0, 0, 0, 2), 1),
}
"""Per stratum with a progress: counts per tenth of the golden execution, and how many lie
outside [0, 1]; not-injected faults are left out, and control runs record no progress."""


def make_store(path: Path, spec: dict[str, Any] = SPEC) -> SQLiteStore:
    store = SQLiteStore.create(
        path,
        campaign_name="controlled",
        seed=3,
        spec_json=json.dumps(spec),
        file_sha256="cd" * 32,
        total_planned=30,
        provenance=PROVENANCE,
    )
    store.save_golden(
        GoldenRun(
            machine="guest",
            argv=("checksum",),
            stdout=b"checksum: 0x1\n",
            stderr=b"",
            exit_code=0,
            signal=None,
            guest_s=0.2,
            host_s=0.25,
        )
    )
    for experiment_id, (stratum, injection, outcome) in enumerate(EXPERIMENTS):
        rec: ExperimentRecord = record(
            experiment_id, injection, outcome, cause="SIGSEGV" if outcome is C else None
        )
        store.record(
            experiment_id, stratum, rec, worker="w0", started_at=1.0e9, finished_at=1.0e9 + 1
        )
    return store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "controlled.db"
    make_store(path).close()
    return path


@pytest.fixture
def store(db: Path) -> Iterator[SQLiteStore]:
    with SQLiteStore.open_readonly(db) as opened:
        yield opened


@pytest.fixture
def report(store: SQLiteStore) -> CampaignReport:
    return build_report(store, db="results/controlled.db")


# ---------------------------------------------------------------------------- the summary


def test_control_strata_come_from_the_spec_in_file_order() -> None:
    assert control_strata(SPEC) == ("none", IDLE)
    assert control_strata({"faults": [{"target": "register:rip"}]}) == ()
    assert control_strata({"faults": "none"}) == control_strata(None) == control_strata([]) == ()
    twice = {"faults": [{"target": "none"}, {"target": "none", "name": ""}]}
    assert control_strata(twice) == ("none",)


@pytest.mark.parametrize(
    ("confidence", "method", "bounds"),
    [
        (0.95, IntervalMethod.WILSON, WILSON_95),
        (0.9, IntervalMethod.WILSON, WILSON_90),
        (0.9, IntervalMethod.CLOPPER_PEARSON, CLOPPER_PEARSON_90),
    ],
)
def test_the_false_positive_rate_of_the_control_strata(
    store: SQLiteStore, confidence: float, method: IntervalMethod, bounds: tuple[float, float]
) -> None:
    summary = store_summary(store, confidence=confidence, method=method)
    found = summary.false_positive
    assert found is not None
    assert found.strata == ("none", IDLE)
    assert (found.runs, found.failures) == (12, 2)
    assert (found.rate.successes, found.rate.trials) == (2, 12)
    assert found.rate.rate == pytest.approx(2 / 12)
    assert (found.rate.method, found.rate.confidence) == (method, confidence)
    assert [found.rate.low, found.rate.high] == pytest.approx(list(bounds), abs=BOUND)
    data = summary.to_json()["false_positive"]
    assert data == {
        "runs": 12,
        "failures": 2,
        "rate": pytest.approx(2 / 12),
        "interval": pytest.approx(list(bounds), abs=BOUND),
        "strata": ["none", IDLE],
    }


def test_no_control_family_no_false_positive_rate(tmp_path: Path) -> None:
    spec = {**SPEC, "faults": SPEC["faults"][:2]}
    with make_store(tmp_path / "plain.db", spec) as store:
        summary = store_summary(store, confidence=0.95, method=IntervalMethod.WILSON)
    assert summary.false_positive is None
    assert summary.to_json()["false_positive"] is None


def test_a_control_stratum_without_runs_yet_has_an_empty_rate() -> None:
    summary = summarize("c", 10, {"benign": 2}, {"regs": {"benign": 2}}, controls=("none",))
    found = summary.false_positive
    assert found is not None
    assert (found.runs, found.failures, found.rate.rate) == (0, 0, 0.0)
    assert (found.rate.low, found.rate.high) == (0.0, 1.0)


def test_every_counted_outcome_but_benign_is_a_false_positive() -> None:
    counts = {"benign": 4, "sdc": 1, "detected": 1, "crash": 1, "hang": 1, "vmm-error": 1,
              "not-injected": 5}  # fmt: skip
    summary = summarize("c", 14, counts, {"none": counts}, controls=("none",))
    found = summary.false_positive
    assert found is not None
    assert (found.runs, found.failures) == (9, 5)


# ---------------------------------------------------------------------------- campaign status


def campaign_status(*args: str) -> str:
    result = CliRunner().invoke(app, ["campaign", "status", *args], env={"COLUMNS": "300"})
    assert result.exit_code == 0, (result.output, result.exception)
    return result.output


def test_campaign_status_shows_the_false_positive_rate_first(db: Path) -> None:
    output = ANSI.sub("", campaign_status(str(db)))
    lines = output.splitlines()
    first = next(i for i, line in enumerate(lines) if "false-positive rate" in line)
    outcomes = next(i for i, line in enumerate(lines) if "controlled: 25 of 30" in line)
    assert first < outcomes
    assert "interval (wilson, 95%)" in lines[first + 2]
    rows = table_rows(output)
    assert rows[0] == [f"none, {IDLE}", "12", "2", "16.7%", "[4.7%, 44.8%]"]
    assert rows[1][:2] == ["benign", "15"]  # 4 regs, 1 mem, 7 none, 3 idle


def test_campaign_status_json_carries_the_false_positive_rate(db: Path) -> None:
    data = json.loads(campaign_status(str(db), "--json"))
    assert list(data).index("false_positive") < list(data).index("outcomes")
    found = data["false_positive"]
    assert found == {
        "runs": 12,
        "failures": 2,
        "rate": pytest.approx(2 / 12),
        "interval": pytest.approx(list(WILSON_95), abs=BOUND),
        "strata": ["none", IDLE],
    }
    assert data["strata"]["none"]["outcomes"] == {"benign": 7, "sdc": 1, "not-injected": 1}
    options = ("--confidence", "0.9", "--method", "clopper-pearson")
    exact = json.loads(campaign_status(str(db), "--json", *options))["false_positive"]
    assert exact["interval"] == pytest.approx(list(CLOPPER_PEARSON_90), abs=BOUND)


# ---------------------------------------------------------------------------- report data


def test_the_report_carries_the_summary_false_positive_rate(report: CampaignReport) -> None:
    found = report.false_positive
    assert found is not None and found == report.summary.false_positive
    assert (found.runs, found.failures) == (12, 2)
    assert [found.rate.low, found.rate.high] == pytest.approx(list(WILSON_95), abs=BOUND)
    families = {f.name: f for f in report.provenance.families}
    assert (families["none"].target, families["none"].bits, families["none"].trigger) == (
        "none",
        "none",
        "none",
    )
    assert families["regs"].bits == "1"


def test_progress_histograms_per_stratum(report: CampaignReport) -> None:
    assert PROGRESS_BINS == 10 and len(PROGRESS_LABELS) == 10
    assert PROGRESS_LABELS[0] == "0\u201310%" and PROGRESS_LABELS[-1] == "90\u2013100%"
    found = {h.stratum: (h.counts, h.outside) for h in report.progress}
    assert found == PROGRESS
    assert [h.stratum for h in report.progress] == ["mem", "regs"]
    assert [h.total for h in report.progress] == [2, 4]


def test_a_stratum_whose_progress_is_all_outside_still_has_a_histogram(tmp_path: Path) -> None:
    path = tmp_path / "late.db"
    with make_store(path) as store:
        late = record(99, landed("rax", 1.5), B)
        store.record(99, "late", late, worker="w0", started_at=1.0, finished_at=2.0)
        hist = {h.stratum: h for h in build_report(store).progress}["late"]
    assert (hist.counts, hist.outside, hist.total) == ((0,) * 10, 1, 0)


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (ENDED.format("0.1612"), ENDED.format("N")),
        ("read back 0x7f, wrote 0xFF", "read back 0xN, wrote 0xN"),
        ("the user context was not reached in 400 tries", "the user context was not reached "
         "in N tries"),
        ("trigger instruction too far to reach by stepping (123456)",
         "trigger instruction too far to reach by stepping (N)"),
        ("exec:main#5 at @values+0x10", "exec:main#N at @values+0xN"),
        ("xmm3 and r8 of ksys_write kept, 1.5e-3 and 20ms not", "xmm3 and r8 of ksys_write "
         "kept, N and Nms not"),
        ("no number here", "no number here"),
    ],
)  # fmt: skip
def test_reason_kinds_replace_numbers_and_hex_values(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def test_not_injected_reasons_are_grouped_by_kind(report: CampaignReport) -> None:
    found = [
        (r.reason, r.count, dict(r.by_stratum), r.example, r.first_experiment)
        for r in report.not_injected
    ]
    assert found == [
        (ENDED.format("N"), 3, {"mem": 1, "regs": 2}, ENDED.format("0.1612"), 6),
        ("read back 0xN, wrote 0xN", 1, {"regs": 1}, "read back 0x7f, wrote 0xff", 7),
        (
            "QMP command failed: <b>stop</b> timed out after N s",
            1,
            {"none": 1},
            QMP,
            20,
        ),
    ]


# ---------------------------------------------------------------------------- the page


def table_cells(page: str, table_id: str) -> list[list[str]]:
    """The body rows of the table `table_id`, as the cells' text (tags stripped)."""
    found = re.search(rf'<table id="{re.escape(table_id)}"[^>]*>(.*?)</table>', page, re.S)
    assert found is not None, table_id
    body = found.group(1).split("<tbody>", 1)[1]
    return [
        [re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    ]


def test_the_page_shows_the_false_positive_rate_first(report: CampaignReport) -> None:
    page = render_html([report])
    assert_self_contained(page)
    cards = re.findall(r'<div class="card"><div class="k">(.*?)</div>', page)
    assert cards[:2] == ["false-positive rate", "experiments"]
    assert '<div class="v">16.7%</div>' in page
    assert "[4.7%, 44.8%] · 2 of 12 control runs not benign" in page
    parsed = parse(page)
    assert parsed.ids.index("false-positive") < parsed.ids.index("provenance")
    assert "&lt;i&gt;idle&lt;/i&gt; control" in page and IDLE not in page


def test_the_page_has_a_progress_histogram_per_stratum(report: CampaignReport) -> None:
    page = render_html([report])
    assert "progress" in parse(page).ids
    for stratum in ("mem", "regs"):
        assert f'aria-label="Where the faults of stratum {stratum} landed"' in page
    rows = table_cells(page, "progress-counts")
    assert rows == [
        [name, str(sum(counts)), *(str(n) for n in counts), str(outside)]
        for name, (counts, outside) in sorted(PROGRESS.items())
    ]
    assert (
        "Stratum regs: where its 4 faults landed, per tenth of the golden execution, 1 outside"
        in page
    )


def test_the_page_groups_not_injected_reasons_with_an_example(report: CampaignReport) -> None:
    page = render_html([report])
    rows = parse(page).tables["not-injected"]
    assert [(row["data-reason"], row["data-count"]) for row in rows if row] == [
        (ENDED.format("N"), "3"),
        ("read back 0xN, wrote 0xN", "1"),
        ("QMP command failed: <b>stop</b> timed out after N s", "1"),
    ]
    cells = table_cells(page, "not-injected")
    assert cells[0] == [ENDED.format("N"), "3", "1", "0", "2",
                        ENDED.format("0.1612") + "experiment 6"]  # fmt: skip
    assert "<b>stop</b>" not in page and "&lt;b&gt;stop&lt;/b&gt;" in page


def test_a_comparison_pairs_the_new_sections(report: CampaignReport, tmp_path: Path) -> None:
    spec = {**SPEC, "faults": SPEC["faults"][:2]}
    with make_store(tmp_path / "plain.db", spec) as store:
        other = build_report(store, db="results/plain.db")
    page = render_html([report, other])
    assert_self_contained(page)
    ids = parse(page).ids
    assert "a-progress-counts" in ids and "b-progress-counts" in ids
    assert "A: controlled: false-positive rate" in page
    assert "B: controlled: false-positive rate" not in page


def test_the_figures_include_where_faults_landed(db: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written: Sequence[Path] = report_command([db], tmp_path / "fig", "svg")
    names = [p.name for p in written]
    assert names[:2] == ["fig-outcomes.svg", "fig-progress.svg"]
    assert written[1].read_bytes().startswith(b"<?xml")
    both = report_command([db, db], tmp_path / "cmp", "svg")
    assert tmp_path / "cmp-progress.svg" in both
