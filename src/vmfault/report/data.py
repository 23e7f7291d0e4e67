"""Everything a campaign report shows, computed from a results store (no rendering, no I/O
beyond reading the store).

`build_report(store)` reads the store once (campaign info, golden run, outcome counts, one
pass over the analysis rows) and returns a `CampaignReport` of frozen dataclasses. Rates and
intervals come from `vmfault.report.summary.summarize`, the function behind
`vmfault campaign status`, fed the same store counts: the report's numbers are those of
`vmfault campaign status --json` for the same confidence and method.

Conventions: rates and interval bounds are fractions in [0, 1]; `not-injected` experiments are
listed but never counted (as in every vmfault statistic); a *failure* is `sdc`, `detected`,
`crash` or `hang`, and failure rates are over counted outcomes (`vmm-error` included in the
denominator, as in the outcome rates). Latencies keep the unit they were recorded in. The
false-positive rate of control runs (target `none`) is the summary's
(`vmfault.report.summary.FalsePositive`): there every counted outcome but benign is a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import shlex
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any, Protocol

from vmfault.classify import Activation, LatencyUnit, Outcome, latency_histogram
from vmfault.errors import UsageError
from vmfault.experiment.records import DEFAULT_MACHINE, GoldenRun
from vmfault.faults import DISK_FAULTS, REGISTER_GROUPS
from vmfault.faults.model import REGISTER_SETS
from vmfault.faults.units import parse_duration_s
from vmfault.guest.workloads import BUILTIN_WORKLOADS, idle_argv
from vmfault.report.reactions import ReactionGroup, group_reactions
from vmfault.report.summary import (
    CONTROL_TARGET,
    FalsePositive,
    Summary,
    control_strata,
    summarize,
    with_isolation,
    with_testbed,
)
from vmfault.stats import IntervalMethod, Rate, rate
from vmfault.store import CampaignInfo

__all__ = [
    "COUNTED_OUTCOMES",
    "DYNAMIC_INDEX_COLUMN",
    "FAILURE_OUTCOMES",
    "OP_COLUMN",
    "PROGRESS_BINS",
    "PROGRESS_LABELS",
    "STORM_FLIPS_COLUMN",
    "STORM_TIME_COLUMN",
    "ActivationRow",
    "Breakdown",
    "CampaignReport",
    "CauseCount",
    "Disks",
    "Distribution",
    "Example",
    "Family",
    "HeatMap",
    "InstructionFaults",
    "LatencyHistogram",
    "NotInjectedReason",
    "OutcomeRate",
    "ProgressHistogram",
    "Provenance",
    "ReportRows",
    "ReportSource",
    "Storms",
    "assemble_report",
    "build_report",
    "campaign_golden",
    "golden_text",
    "reason_kind",
    "replay_command",
]

COUNTED_OUTCOMES: tuple[str, ...] = tuple(o.value for o in Outcome if o.counts)
"""Outcome classes that count in statistics, in `Outcome` order."""
FAILURE_OUTCOMES: tuple[str, ...] = (
    Outcome.SDC.value,
    Outcome.DETECTED.value,
    Outcome.CRASH.value,
    Outcome.HANG.value,
)
"""Outcome classes a failure rate counts as failures."""

OP_COLUMN = "op"
"""Analysis column of an instruction fault's operation type (`fadd`, `cmp`, ...)."""
DYNAMIC_INDEX_COLUMN = "dynamic_index"
"""Analysis column of an instruction fault's dynamic instance (1 = first execution)."""
STORM_FLIPS_COLUMN = "flips"
"""Analysis column of the number of flips a storm experiment delivered."""
STORM_TIME_COLUMN = "storm_s"
"""Analysis column of how long a storm ran, in guest seconds."""
DISK_FAULT_COLUMN = "disk_fault"
"""Analysis column of a disk fault's kind (`bad-block`, ...)."""
REQUESTS_FAULTED_COLUMN = "requests_faulted"
"""Analysis column of the requests a disk fault failed, delayed or held (or, for a
corruption, the reads that returned the corrupted bytes)."""

GOLDEN_TEXT_MAX_CHARS = 2_000
"""Longest golden stdout or stderr kept for display; longer text is cut and marked."""
MAX_DISCRETE_BINS = 12
"""Up to this many distinct values are shown one per bin; more are grouped in equal ranges."""
RANGE_BINS = 10
"""Number of equal-width bins for a numeric column with many distinct values."""
PROGRESS_BINS = 10
"""Bins of the `progress` histogram: bin i holds [i/10, (i+1)/10), the last also 1."""

PROGRESS_LABELS: tuple[str, ...] = tuple(
    f"{10 * i}\u2013{10 * (i + 1)}%" for i in range(PROGRESS_BINS)
)
"""The bins of the `progress` histogram, as percentages of the golden execution."""

_REGISTER_ORDER = {name: i for i, name in enumerate(REGISTER_GROUPS["all"])}
for _registers in REGISTER_SETS.values():  # then other architectures' registers
    for _name in _registers.groups["all"]:
        _REGISTER_ORDER.setdefault(_name, len(_REGISTER_ORDER))
_UNKNOWN_CAUSE = "unknown"
_NO_REASON = "no reason recorded"
_NUMBER = re.compile(r"(?<![\w.])(?:(0[xX][0-9a-fA-F]+)|\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
"""A hex value (group 1) or a decimal number that does not end a name (`xmm3`, `r8` stay)."""


def reason_kind(reason: str) -> str:
    """`reason` with its hex values as `0xN` and its other numbers as `N`, so that reasons
    differing only in a time, a count or an address are one kind: "the workload ended before
    the trigger at 0.1612 s" -> "the workload ended before the trigger at N s"."""
    return _NUMBER.sub(lambda found: "0xN" if found.group(1) else "N", reason)


class ReportSource(Protocol):
    """What a report reads from a results store (`SQLiteStore` provides it)."""

    def campaign_info(self) -> CampaignInfo:
        """The campaign row and its provenance."""
        ...

    def golden(self, argv: Sequence[str], *, machine: str = DEFAULT_MACHINE) -> GoldenRun | None:
        """The stored golden run of `argv` on `machine`, or None."""
        ...

    def outcome_counts(self, *, stratum: str | None = None) -> dict[str, int]:
        """Experiments per outcome value, every Outcome present."""
        ...

    def counts_by_stratum(self) -> dict[str, dict[str, int]]:
        """`outcome_counts` of every recorded stratum."""
        ...

    def rows(self) -> Iterator[dict[str, object]]:
        """One analysis row per experiment, by experiment id."""
        ...


@dataclass(frozen=True)
class Family:
    """One `[[faults]]` table of the campaign file: a stratum."""

    name: str
    target: str
    bits: str
    """The bit model as written (`1` random bit when unset)."""
    trigger: str
    context: str
    experiments: int | None
    """The family's own experiment count, or None when it shares the campaign's."""


@dataclass(frozen=True)
class Provenance:
    """Where the results come from: campaign, tool, QEMU, guest image, workload."""

    campaign: str
    seed: int
    created_at: str
    """UTC, ISO 8601, when the database was created."""
    total_planned: int
    campaign_file: str | None
    """The campaign file's path when it was run, if recorded."""
    campaign_file_sha256: str
    tool_version: str
    qemu_version: str
    image_hash: str
    kernel_release: str
    host: str
    python: str
    workload: str
    args: tuple[str, ...]
    deterministic: bool
    accel: str
    budget: float | None
    """Hang budget in golden-run durations."""
    schema_version: int
    families: tuple[Family, ...]
    other: tuple[tuple[str, str], ...]
    """Provenance entries not named above, sorted by key."""


@dataclass(frozen=True)
class OutcomeRate:
    """One outcome class: its count and, unless it is `not-injected`, its rate and interval."""

    outcome: str
    count: int
    rate: Rate | None


@dataclass(frozen=True)
class Distribution:
    """Outcome counts and rates of the whole campaign (`stratum` None) or of one stratum.

    `outcomes` lists every outcome class in `Outcome` order, zero counts included.
    """

    stratum: str | None
    done: int
    """Recorded experiments, not-injected ones included."""
    counted: int
    """Recorded experiments whose outcome counts (done minus not-injected)."""
    outcomes: tuple[OutcomeRate, ...]
    failure: Rate
    """sdc + detected + crash + hang over counted, with its interval."""

    def count(self, outcome: str) -> int:
        """The count of `outcome` (0 if absent)."""
        return next((o.count for o in self.outcomes if o.outcome == outcome), 0)

    def rate(self, outcome: str) -> Rate | None:
        """The rate of `outcome`, or None for `not-injected` or an unknown class."""
        return next((o.rate for o in self.outcomes if o.outcome == outcome), None)


@dataclass(frozen=True)
class Breakdown:
    """Counted outcomes of the experiments sharing one value of something (a register, a bit
    position, an op type, a range of dynamic indices, ...).

    `counts` has every class of COUNTED_OUTCOMES, in order, zeros included.
    """

    key: str
    counts: Mapping[str, int]
    failure: Rate

    @property
    def total(self) -> int:
        """Counted experiments in this group."""
        return sum(self.counts.values())


@dataclass(frozen=True)
class HeatMap:
    """Outcomes per faulted location (register, or memory target) and bit position.

    `cells[r][b]` holds the counted outcomes of row `rows[r]` at bit `b` (0 = least
    significant), for b < `bits`; bits at or above `widths[r]` do not exist in that row. An
    experiment that flipped several bits counts once at each of them (`multi_bit` says how
    many did).
    """

    rows: tuple[str, ...]
    widths: tuple[int, ...]
    bits: int
    cells: tuple[tuple[Breakdown, ...], ...]
    multi_bit: int

    def cell(self, row: str, bit: int) -> Breakdown:
        """The cell of `row` at `bit`; KeyError/IndexError if there is none."""
        return self.cells[self.rows.index(row)][bit]


@dataclass(frozen=True)
class CauseCount:
    """One crash cause: how often, its share of crashes, and per stratum."""

    cause: str
    count: int
    share: Rate
    """count over all crashes, with its interval."""
    by_stratum: Mapping[str, int]
    first_experiment: int


@dataclass(frozen=True)
class LatencyHistogram:
    """Crash latencies of one unit in Gigan's buckets (`LATENCY_LABELS`, all present)."""

    unit: str
    """`instructions`, `guest-ns` or `wall-ns`."""
    buckets: Mapping[str, int]
    count: int
    minimum: int
    median: float
    maximum: int


@dataclass(frozen=True)
class ActivationRow:
    """Activation of the injected experiments of one stratum (not-injected ones left out).

    `counts` has every `Activation` value, in order, zeros included.
    """

    stratum: str
    counts: Mapping[str, int]

    @property
    def total(self) -> int:
        """Injected experiments of the stratum."""
        return sum(self.counts.values())

    @property
    def recorded(self) -> bool:
        """Whether a watchpoint told masked from not-activated for this stratum."""
        return bool(
            self.counts[Activation.MASKED.value] or self.counts[Activation.NOT_ACTIVATED.value]
        )


@dataclass(frozen=True)
class ProgressHistogram:
    """Where one stratum's faults landed: counted (injected) experiments per tenth of the
    golden execution, from their `progress` (0..1)."""

    stratum: str
    counts: tuple[int, ...]
    """PROGRESS_BINS counts: bin i holds progress in [i/10, (i+1)/10); progress 1 (the
    very end of the execution) counts in the last bin."""
    outside: int = 0
    """Experiments whose progress lies outside [0, 1] (not binned)."""

    @property
    def total(self) -> int:
        """Binned experiments."""
        return sum(self.counts)


@dataclass(frozen=True)
class NotInjectedReason:
    """One kind of reason faults could not be placed (`reason_kind`): how often, per stratum,
    and the first such reason verbatim."""

    reason: str
    """The reason with its numbers as `N` and its hex values as `0xN`."""
    count: int
    by_stratum: Mapping[str, int]
    """Experiments per stratum, strata sorted by name."""
    example: str
    """The first recorded reason of this kind, verbatim."""
    first_experiment: int


@dataclass(frozen=True)
class InstructionFaults:
    """Outcomes of instruction-result faults per operation type and per dynamic index."""

    by_op: tuple[Breakdown, ...]
    by_dynamic_index: tuple[Breakdown, ...]


@dataclass(frozen=True)
class Storms:
    """Outcomes of storm experiments per number of flips and per storm duration (guest s)."""

    by_flips: tuple[Breakdown, ...]
    by_time: tuple[Breakdown, ...]


@dataclass(frozen=True)
class Disks:
    """Disk faults: outcomes per kind of fault, activation per kind, outcomes per number of
    requests faulted, and the requests faulted in all (injected experiments)."""

    by_fault: tuple[Breakdown, ...]
    activation: tuple[ActivationRow, ...]
    """One row per kind of disk fault (its `stratum` is the kind)."""
    by_requests: tuple[Breakdown, ...]
    requests_faulted: int


@dataclass(frozen=True)
class Example:
    """The first recorded experiment of one crash cause (or of one other failure outcome)."""

    outcome: str
    cause: str | None
    experiment_id: int
    stratum: str
    location: str
    bits: tuple[int, ...]
    """Flipped bit positions of the first injection, least significant first."""
    reason: str
    evidence: str
    """The console line, event or output line behind the outcome, verbatim."""
    latency_value: int | None
    latency_unit: str | None
    replay: str
    """The shell command that runs the experiment again."""


@dataclass(frozen=True)
class CampaignReport:
    """One campaign's report. Optional sections are empty (or None) when the data is absent."""

    db: str
    """The database path as given."""
    provenance: Provenance
    golden: GoldenRun | None
    summary: Summary
    """What `vmfault campaign status --json` prints (`summary.to_json()`)."""
    overall: Distribution
    strata: tuple[Distribution, ...]
    not_injected: tuple[NotInjectedReason, ...]
    """Why faults could not be placed, by kind of reason, most frequent first (ties in the
    order first seen)."""
    progress: tuple[ProgressHistogram, ...]
    """Where faults landed, per stratum with a recorded progress, strata sorted by name."""
    registers: tuple[Breakdown, ...]
    """Per register, in the order of REGISTER_GROUPS['all'] (x86-64's, then aarch64's),
    then by name."""
    bit_positions: tuple[Breakdown, ...]
    """Per bit position 0..widest-1, over every location; multi-bit faults count at each bit."""
    heatmap: HeatMap | None
    crash_causes: tuple[CauseCount, ...]
    """Most frequent first."""
    crashes_without_latency: int
    latency: tuple[LatencyHistogram, ...]
    """One histogram per unit present, in `LatencyUnit` order."""
    activation: tuple[ActivationRow, ...]
    instructions: InstructionFaults | None
    storms: Storms | None
    examples: tuple[Example, ...]
    """First example of each crash cause, then of each other failure outcome."""
    disks: Disks | None = None
    vmm_reactions: tuple[ReactionGroup, ...] = ()
    """What QEMU said or did in the vmm-error experiments, grouped by message."""

    @property
    def name(self) -> str:
        """The campaign's name."""
        return self.provenance.campaign

    @property
    def false_positive(self) -> FalsePositive | None:
        """The false-positive rate of the control runs (None without a control family)."""
        return self.summary.false_positive


def replay_command(db: str, experiment_id: int) -> str:
    """`vmfault replay DB ID`, quoted for a POSIX shell."""
    return f"vmfault replay {shlex.quote(db)} {experiment_id}"


def build_report(
    store: ReportSource,
    *,
    db: str | None = None,
    confidence: float = 0.95,
    method: IntervalMethod = IntervalMethod.WILSON,
) -> CampaignReport:
    """The report of the campaign in `store`; `db` names the database in replay commands
    (default: the store's `path`)."""
    info = store.campaign_info()
    summary = summarize(
        info.name,
        info.total_planned,
        store.outcome_counts(),
        store.counts_by_stratum(),
        confidence=confidence,
        method=method,
        controls=control_strata(_spec(info)),
    )
    summary = with_testbed(summary, store.rows(), confidence=confidence, method=method)
    summary = with_isolation(summary, store, confidence=confidence)
    label = db if db is not None else str(getattr(store, "path", "campaign.db"))
    rows = ReportRows(label, confidence=confidence, method=method)
    for row in store.rows():
        rows.add(row)
    return assemble_report(info, summary, rows, golden=campaign_golden(store, info))


def assemble_report(
    info: CampaignInfo, summary: Summary, rows: ReportRows, *, golden: GoldenRun | None
) -> CampaignReport:
    """The report of a campaign from its summary (`store_summary`, the numbers of `vmfault
    campaign status`) and the analysis rows gathered in `rows`. A live view keeps its
    `ReportRows`, adds the rows recorded since, and assembles again."""
    return CampaignReport(
        db=rows.db,
        provenance=_provenance(info, _spec(info)),
        golden=golden,
        summary=summary,
        overall=_distribution(None, summary.done, summary.outcomes, summary.rates, rows.rate),
        strata=tuple(
            _distribution(name, done, counts, rates, rows.rate)
            for name, (done, counts, rates) in summary.strata.items()
        ),
        not_injected=rows.not_injected_reasons(),
        progress=rows.progress_histograms(),
        registers=rows.registers(),
        bit_positions=rows.bit_positions(),
        heatmap=rows.heatmap(),
        crash_causes=rows.crash_causes(),
        crashes_without_latency=rows.crashes_without_latency,
        latency=rows.latency(),
        activation=rows.activation_rows(),
        instructions=rows.instruction_faults(),
        storms=rows.storms(),
        examples=rows.examples(),
        disks=rows.disks(),
        vmm_reactions=tuple(group_reactions(rows.vmm_errors)),
    )


def campaign_golden(store: ReportSource, info: CampaignInfo) -> GoldenRun | None:
    """The golden run of the campaign's workload command line, if stored."""
    return _golden(store, _spec(info))


# ---------------------------------------------------------------------------- campaign info


def _spec(info: CampaignInfo) -> dict[str, Any]:
    try:
        spec = json.loads(info.spec_json)
    except ValueError:
        return {}
    return spec if isinstance(spec, dict) else {}


def _section(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    value = spec.get(name)
    return value if isinstance(value, dict) else {}


def _text(value: object, default: str = "") -> str:
    return default if value is None else str(value)


def _families(spec: Mapping[str, Any]) -> tuple[Family, ...]:
    faults = spec.get("faults")
    if not isinstance(faults, list):
        return ()
    families = []
    for entry in faults:
        if not isinstance(entry, dict):
            continue
        experiments = entry.get("experiments")
        control = _text(entry.get("target")).strip() == CONTROL_TARGET
        families.append(
            Family(
                name=_text(entry.get("name"), _text(entry.get("target"))),
                target=_text(entry.get("target")),
                bits=_text(entry.get("bits"), "none" if control else "1"),
                trigger=_text(entry.get("trigger"), "none" if control else "time"),
                context=_text(entry.get("context"), "any"),
                experiments=experiments if isinstance(experiments, int) else None,
            )
        )
    return tuple(families)


_NAMED_PROVENANCE = (
    "tool_version",
    "qemu_version",
    "image_hash",
    "kernel_release",
    "host",
    "python",
    "campaign_file_sha256",
)


def _provenance(info: CampaignInfo, spec: Mapping[str, Any]) -> Provenance:
    guest = _section(spec, "guest")
    campaign = _section(spec, "campaign")
    given = info.provenance
    args = guest.get("args")
    budget = campaign.get("budget")
    source = spec.get("source")
    return Provenance(
        campaign=info.name,
        seed=info.seed,
        created_at=info.created_at,
        total_planned=info.total_planned,
        campaign_file=None if source is None else str(source),
        campaign_file_sha256=info.file_sha256,
        tool_version=given.get("tool_version", ""),
        qemu_version=given.get("qemu_version", ""),
        image_hash=given.get("image_hash", ""),
        kernel_release=given.get("kernel_release", ""),
        host=given.get("host", ""),
        python=given.get("python", ""),
        workload=_text(guest.get("workload"))
        or (f"idle system for {_text(guest.get('idle'))}" if guest.get("idle") else ""),
        args=tuple(str(a) for a in args) if isinstance(args, list) else (),
        deterministic=bool(guest.get("deterministic", False)),
        accel=_text(guest.get("accel")),
        budget=float(budget) if isinstance(budget, int | float) else None,
        schema_version=info.schema_version,
        families=_families(spec),
        other=tuple(sorted((k, v) for k, v in given.items() if k not in _NAMED_PROVENANCE)),
    )


def _golden_argvs(spec: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """The command lines the campaign's golden run may be stored under, most likely first."""
    guest = _section(spec, "guest")
    workload = _text(guest.get("workload"))
    idle = _text(guest.get("idle"))
    if idle:
        with contextlib.suppress(UsageError):
            return [idle_argv(parse_duration_s(idle))]
    command = guest.get("command")
    if not workload and isinstance(command, list):
        return [tuple(str(a) for a in command)]  # a machine running a guest command line
    if not workload:
        return []
    name = workload if workload in BUILTIN_WORKLOADS else PurePosixPath(workload).stem
    args = guest.get("args")
    given = tuple(str(a) for a in args) if isinstance(args, list) else ()
    candidates = [(name, *given)]
    builtin = BUILTIN_WORKLOADS.get(name)
    if not given and builtin is not None:
        candidates.insert(0, (name, *builtin.default_args))
    return list(dict.fromkeys(candidates))


def _golden(store: ReportSource, spec: Mapping[str, Any]) -> GoldenRun | None:
    """The golden run of the campaign's one machine, or of the judged machine of several
    (else the first of its `[[machine]]` tables)."""
    machine, guest = DEFAULT_MACHINE, spec
    tables = [t for t in spec.get("machine") or () if isinstance(t, dict)]
    if tables:
        judge = _section(spec, "campaign").get("judge")
        table = next((t for t in tables if t.get("name") == judge), tables[0])
        machine, guest = _text(table.get("name")), {"guest": table}
    for argv in _golden_argvs(guest):
        golden = store.golden(list(argv), machine=machine)
        if golden is not None:
            return golden
    return None


def golden_text(data: bytes) -> str:
    """Golden stdout or stderr for display: decoded (invalid bytes replaced), cut to
    GOLDEN_TEXT_MAX_CHARS and marked."""
    text = data.decode("utf-8", errors="replace")
    if len(text) <= GOLDEN_TEXT_MAX_CHARS:
        return text
    return text[:GOLDEN_TEXT_MAX_CHARS] + f"\n... ({len(text) - GOLDEN_TEXT_MAX_CHARS} more)"


def _distribution(
    stratum: str | None,
    done: int,
    counts: Mapping[str, int],
    rates: Mapping[str, Rate],
    rate_of: _RateOf,
) -> Distribution:
    outcomes = tuple(
        OutcomeRate(o.value, counts.get(o.value, 0), rates.get(o.value)) for o in Outcome
    )
    counted = sum(counts.get(name, 0) for name in COUNTED_OUTCOMES)
    failures = sum(counts.get(name, 0) for name in FAILURE_OUTCOMES)
    return Distribution(stratum, done, counted, outcomes, rate_of(failures, counted))


# ---------------------------------------------------------------------------- row pass


class _RateOf:
    """A rate with the report's interval method and confidence."""

    def __init__(self, confidence: float, method: IntervalMethod) -> None:
        self.confidence = confidence
        self.method = method

    def __call__(self, successes: int, trials: int) -> Rate:
        return rate(successes, trials, confidence=self.confidence, method=self.method)


def _zero_counts() -> Counter[str]:
    return Counter(dict.fromkeys(COUNTED_OUTCOMES, 0))


def _bits_of(mask: object) -> tuple[int, ...]:
    if not isinstance(mask, str):
        return ()
    try:
        value = int(mask, 16)
    except ValueError:
        return ()
    return tuple(i for i in range(value.bit_length()) if value >> i & 1)


def _register_key(name: str) -> tuple[int, str]:
    return (_REGISTER_ORDER.get(name, len(_REGISTER_ORDER)), name)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _number_or_none(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class ReportRows:
    """Everything a report needs from the analysis rows, gathered one row at a time (one
    pass over the store). A report can be assembled from it at any moment
    (`assemble_report`) and more rows added afterwards; each row is added once.

    `db` names the database in replay commands; rates use `confidence` and `method`.
    """

    def __init__(self, db: str, *, confidence: float, method: IntervalMethod) -> None:
        self.db = db
        self.added = 0
        """Rows added so far."""
        self.rate = _RateOf(confidence, method)
        self.not_injected: dict[str, NotInjectedReason] = {}
        self.reason_strata: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.progress: defaultdict[str, list[int]] = defaultdict(lambda: [0] * PROGRESS_BINS)
        self.progress_outside: Counter[str] = Counter()
        self.by_register: defaultdict[str, Counter[str]] = defaultdict(_zero_counts)
        self.by_bit: defaultdict[int, Counter[str]] = defaultdict(_zero_counts)
        self.cells: defaultdict[tuple[str, int], Counter[str]] = defaultdict(_zero_counts)
        self.row_widths: dict[str, int] = {}
        self.multi_bit = 0
        self.causes: Counter[str] = Counter()
        self.cause_strata: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.latencies: defaultdict[str, list[int]] = defaultdict(list)
        self.crashes_without_latency = 0
        self.activation: defaultdict[str, Counter[str]] = defaultdict(
            lambda: Counter(dict.fromkeys((a.value for a in Activation), 0))
        )
        self.by_op: defaultdict[str, Counter[str]] = defaultdict(_zero_counts)
        self.dynamic: list[tuple[int, str]] = []
        self.flips: list[tuple[float, str]] = []
        self.storm_time: list[tuple[float, str]] = []
        self.disk_faults: defaultdict[str, Counter[str]] = defaultdict(_zero_counts)
        self.disk_activation: defaultdict[str, Counter[str]] = defaultdict(
            lambda: Counter(dict.fromkeys((a.value for a in Activation), 0))
        )
        self.disk_requests: list[tuple[float, str]] = []
        self.first: dict[tuple[str, str | None], Example] = {}
        self.vmm_errors: list[dict[str, object]] = []
        """What `group_reactions` needs of each vmm-error row."""

    def add(self, row: Mapping[str, object]) -> None:
        """Count one analysis row (`ResultStore.rows()`)."""
        self.added += 1
        outcome = _text(row.get("outcome"))
        if outcome == Outcome.VMM_ERROR.value:
            keys = ("experiment_id", "stratum", "outcome", "evidence", "reason", "cause")
            self.vmm_errors.append({key: row.get(key) for key in keys})
        stratum = _text(row.get("stratum"))
        if outcome == Outcome.NOT_INJECTED.value:
            self._not_injected(row, stratum)
            return
        if outcome not in COUNTED_OUTCOMES:
            return
        self._progress(row, stratum)
        self.activation[stratum][_text(row.get("activation"), Activation.UNKNOWN.value)] += 1
        self._locations(row, outcome)
        if outcome == Outcome.CRASH.value:
            self._crash(row, stratum)
        self._optional(row, outcome)
        if outcome in FAILURE_OUTCOMES:
            cause = (_text(row.get("cause")) or _UNKNOWN_CAUSE) if outcome == "crash" else None
            key = (outcome, cause)
            if key not in self.first:
                self.first[key] = self._example(row, outcome, cause, stratum)

    def _not_injected(self, row: Mapping[str, object], stratum: str) -> None:
        reason = _text(row.get("injection_reason")) or _text(row.get("reason")) or _NO_REASON
        kind = reason_kind(reason)
        self.reason_strata[kind][stratum] += 1
        known = self.not_injected.get(kind)
        if known is None:
            experiment_id = _int_or_none(row.get("experiment_id")) or 0
            known = NotInjectedReason(kind, 0, {}, reason, experiment_id)
        self.not_injected[kind] = dataclasses.replace(known, count=known.count + 1)

    def _progress(self, row: Mapping[str, object], stratum: str) -> None:
        progress = _number_or_none(row.get("progress"))
        if progress is None or math.isnan(progress):
            return
        bins = self.progress[stratum]  # made even if nothing lands inside [0, 1]
        if 0.0 <= progress <= 1.0:
            bins[min(int(progress * PROGRESS_BINS), PROGRESS_BINS - 1)] += 1
        else:
            self.progress_outside[stratum] += 1

    def _locations(self, row: Mapping[str, object], outcome: str) -> None:
        register = row.get("register")
        target = _text(row.get("target"))
        location = str(register) if register else target
        bits = _bits_of(row.get("mask"))
        width = _int_or_none(row.get("width")) or (max(bits) + 1 if bits else 0)
        if register:
            self.by_register[str(register)][outcome] += 1
        if not location or not bits:
            return
        if len(bits) > 1:
            self.multi_bit += 1
        self.row_widths[location] = max(self.row_widths.get(location, 0), width, max(bits) + 1)
        for bit in bits:
            self.by_bit[bit][outcome] += 1
            self.cells[location, bit][outcome] += 1

    def _crash(self, row: Mapping[str, object], stratum: str) -> None:
        cause = _text(row.get("cause")) or _UNKNOWN_CAUSE
        self.causes[cause] += 1
        self.cause_strata[cause][stratum] += 1
        value = _int_or_none(row.get("latency_value"))
        unit = row.get("latency_unit")
        if value is None or value < 0 or not unit:
            self.crashes_without_latency += 1
        else:
            self.latencies[str(unit)].append(value)

    def _optional(self, row: Mapping[str, object], outcome: str) -> None:
        op = row.get(OP_COLUMN)
        if op is not None and op != "":
            self.by_op[str(op)][outcome] += 1
        index = _int_or_none(row.get(DYNAMIC_INDEX_COLUMN))
        if index is not None:
            self.dynamic.append((index, outcome))
        flips = _number_or_none(row.get(STORM_FLIPS_COLUMN))
        if flips is not None:
            self.flips.append((flips, outcome))
        storm_s = _number_or_none(row.get(STORM_TIME_COLUMN))
        if storm_s is not None:
            self.storm_time.append((storm_s, outcome))
        fault = row.get(DISK_FAULT_COLUMN)
        if fault:
            self.disk_faults[str(fault)][outcome] += 1
            activation = _text(row.get("activation"), Activation.UNKNOWN.value)
            self.disk_activation[str(fault)][activation] += 1
            faulted = _int_or_none(row.get(REQUESTS_FAULTED_COLUMN)) or 0
            self.disk_requests.append((float(faulted), outcome))

    def _example(
        self, row: Mapping[str, object], outcome: str, cause: str | None, stratum: str
    ) -> Example:
        experiment_id = _int_or_none(row.get("experiment_id")) or 0
        return Example(
            outcome=outcome,
            cause=cause,
            experiment_id=experiment_id,
            stratum=stratum,
            location=_text(row.get("location")) or _text(row.get("target")),
            bits=_bits_of(row.get("mask")),
            reason=_text(row.get("reason")),
            evidence=_text(row.get("evidence")),
            latency_value=_int_or_none(row.get("latency_value")),
            latency_unit=None if row.get("latency_unit") is None else str(row["latency_unit"]),
            replay=replay_command(self.db, experiment_id),
        )

    # ------------------------------------------------------------------------ results

    def _breakdown(self, key: str, counts: Mapping[str, int]) -> Breakdown:
        ordered = {name: counts.get(name, 0) for name in COUNTED_OUTCOMES}
        failures = sum(ordered[name] for name in FAILURE_OUTCOMES)
        return Breakdown(key, MappingProxyType(ordered), self.rate(failures, sum(ordered.values())))

    def not_injected_reasons(self) -> tuple[NotInjectedReason, ...]:
        ordered = sorted(self.not_injected.values(), key=lambda r: -r.count)  # stable: first seen
        return tuple(
            dataclasses.replace(
                reason,
                by_stratum=MappingProxyType(
                    dict(sorted(self.reason_strata[reason.reason].items()))
                ),
            )
            for reason in ordered
        )

    def progress_histograms(self) -> tuple[ProgressHistogram, ...]:
        return tuple(
            ProgressHistogram(stratum, tuple(bins), self.progress_outside[stratum])
            for stratum, bins in sorted(self.progress.items())
        )

    def registers(self) -> tuple[Breakdown, ...]:
        return tuple(
            self._breakdown(name, self.by_register[name])
            for name in sorted(self.by_register, key=_register_key)
        )

    def bit_positions(self) -> tuple[Breakdown, ...]:
        if not self.by_bit:
            return ()
        widest = max(max(self.row_widths.values(), default=0), max(self.by_bit) + 1)
        return tuple(self._breakdown(str(bit), self.by_bit.get(bit, {})) for bit in range(widest))

    def heatmap(self) -> HeatMap | None:
        if not self.row_widths:
            return None
        registers = sorted(
            (name for name in self.row_widths if name in self.by_register), key=_register_key
        )
        others = sorted(name for name in self.row_widths if name not in self.by_register)
        rows = (*registers, *others)
        widths = tuple(self.row_widths[name] for name in rows)
        bits = max(widths)
        cells = tuple(
            tuple(self._breakdown(str(bit), self.cells.get((name, bit), {})) for bit in range(bits))
            for name in rows
        )
        return HeatMap(rows, widths, bits, cells, self.multi_bit)

    def crash_causes(self) -> tuple[CauseCount, ...]:
        total = sum(self.causes.values())
        ordered = sorted(self.causes.items(), key=lambda item: (-item[1], item[0]))
        return tuple(
            CauseCount(
                cause=cause,
                count=count,
                share=self.rate(count, total),
                by_stratum=MappingProxyType(dict(sorted(self.cause_strata[cause].items()))),
                first_experiment=self.first[(Outcome.CRASH.value, cause)].experiment_id,
            )
            for cause, count in ordered
        )

    def latency(self) -> tuple[LatencyHistogram, ...]:
        known = [u.value for u in LatencyUnit]
        units = sorted(self.latencies, key=lambda u: (known.index(u) if u in known else 99, u))
        histograms = []
        for unit in units:
            values = self.latencies[unit]
            histograms.append(
                LatencyHistogram(
                    unit=unit,
                    buckets=MappingProxyType(latency_histogram(values)),
                    count=len(values),
                    minimum=min(values),
                    median=float(statistics.median(values)),
                    maximum=max(values),
                )
            )
        return tuple(histograms)

    def activation_rows(self) -> tuple[ActivationRow, ...]:
        return tuple(
            ActivationRow(stratum, MappingProxyType(dict(self.activation[stratum])))
            for stratum in sorted(self.activation)
        )

    def _binned(self, pairs: Sequence[tuple[float, str]], *, integer: bool) -> list[Breakdown]:
        values = sorted({value for value, _ in pairs})
        groups: dict[str, Counter[str]] = {}
        if len(values) <= MAX_DISCRETE_BINS:
            for value in values:
                groups[_number_label(value, integer)] = _zero_counts()
            for value, outcome in pairs:
                groups[_number_label(value, integer)][outcome] += 1
        else:
            low, high = values[0], values[-1]
            step = (high - low) / RANGE_BINS
            if integer:
                step = max(1.0, float(-(-(high - low + 1) // RANGE_BINS)))
            edges = [low + step * i for i in range(RANGE_BINS + 1)]
            labels = [_range_label(edges[i], edges[i + 1], integer) for i in range(RANGE_BINS)]
            for label in labels:
                groups[label] = _zero_counts()
            for value, outcome in pairs:
                position = min(int((value - low) // step), RANGE_BINS - 1)
                groups[labels[position]][outcome] += 1
            groups = {k: v for k, v in groups.items() if sum(v.values())}
        return [self._breakdown(key, counts) for key, counts in groups.items()]

    def instruction_faults(self) -> InstructionFaults | None:
        if not self.by_op and not self.dynamic:
            return None
        by_op = tuple(self._breakdown(op, self.by_op[op]) for op in sorted(self.by_op))
        dynamic = [(float(index), outcome) for index, outcome in self.dynamic]
        return InstructionFaults(by_op, tuple(self._binned(dynamic, integer=True)))

    def storms(self) -> Storms | None:
        if not self.flips and not self.storm_time:
            return None
        return Storms(
            tuple(self._binned(self.flips, integer=True)),
            tuple(self._binned(self.storm_time, integer=False)),
        )

    def disks(self) -> Disks | None:
        if not self.disk_faults:
            return None
        order = {name: i for i, name in enumerate(DISK_FAULTS)}
        faults = sorted(self.disk_faults, key=lambda name: (order.get(name, 99), name))
        return Disks(
            by_fault=tuple(self._breakdown(name, self.disk_faults[name]) for name in faults),
            activation=tuple(
                ActivationRow(name, MappingProxyType(dict(self.disk_activation[name])))
                for name in faults
            ),
            by_requests=tuple(self._binned(self.disk_requests, integer=True)),
            requests_faulted=int(sum(n for n, _ in self.disk_requests)),
        )

    def examples(self) -> tuple[Example, ...]:
        crashes = [self.first[(Outcome.CRASH.value, cause.cause)] for cause in self.crash_causes()]
        others = [
            self.first[(outcome, None)]
            for outcome in FAILURE_OUTCOMES
            if outcome != Outcome.CRASH.value and (outcome, None) in self.first
        ]
        return (*crashes, *others)


def _number_label(value: float, integer: bool) -> str:
    return str(int(value)) if integer else f"{value:g}"


def _range_label(low: float, high: float, integer: bool) -> str:
    if integer:
        return f"{int(low)}-{int(high) - 1}"
    return f"{low:.3g}-{high:.3g}"
