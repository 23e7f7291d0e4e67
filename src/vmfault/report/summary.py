"""What a campaign found so far: counts and rates with intervals, overall and per stratum,
and the false-positive rate of its control runs.

`store_summary` reads them from a store, `Summary.to_json` is `vmfault campaign status
--json`, and `summary_tables` are the tables `campaign status` prints. Control strata are
the fault families whose target is `none` (`control_strata`, from the campaign spec the
store keeps): they inject nothing, so every counted outcome of theirs but benign is a false
positive of the classification or of the testbed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from rich.markup import escape
from rich.table import Table

from vmfault.classify import Outcome
from vmfault.report.testbed import LINK_COUNTS, MachineOutcomes, NetworkTotals, testbed_totals
from vmfault.stats import IntervalMethod, Rate, outcome_rates
from vmfault.stats import rate as rate_of
from vmfault.store.base import CampaignInfo

__all__ = [
    "CONTROL_TARGET",
    "CountSource",
    "FalsePositive",
    "Summary",
    "control_strata",
    "store_summary",
    "summarize",
    "summary_tables",
    "with_testbed",
]

_ORDER = [o.value for o in Outcome]
_NOT_COUNTED = frozenset(o.value for o in Outcome if not o.counts)
"""not-injected and infra-failure: reported, never counted."""
CONTROL_TARGET = "none"
"""The target of a control family (`vmfault.faults.model.TargetKind.NONE`)."""


@dataclass(frozen=True)
class FalsePositive:
    """The false-positive rate: control runs that did not come out benign.

    `rate` is failures (every counted outcome but benign: sdc, detected, crash, hang and
    vmm-error) over runs (the control strata's counted outcomes; not-injected ones are
    never counted), with its interval at the summary's method and confidence.
    """

    strata: tuple[str, ...]
    """The control strata, in campaign-file order."""
    rate: Rate

    @property
    def runs(self) -> int:
        """Counted control runs."""
        return self.rate.trials

    @property
    def failures(self) -> int:
        """Counted control runs that did not come out benign."""
        return self.rate.successes

    def to_json(self) -> dict[str, Any]:
        """`campaign status --json`'s `false_positive`: runs, failures, rate, interval, strata."""
        return {
            "runs": self.runs,
            "failures": self.failures,
            "rate": self.rate.rate,
            "interval": [self.rate.low, self.rate.high],
            "strata": list(self.strata),
        }


def control_strata(spec: object) -> tuple[str, ...]:
    """The names of the control strata (target `none`) of a campaign spec in its JSON form
    (`CampaignInfo.spec`), in file order; () when it has none or is not a campaign spec.
    A family without a name is named by its target, as campaign files default it."""
    faults = spec.get("faults") if isinstance(spec, dict) else None
    if not isinstance(faults, list):
        return ()
    names: list[str] = []
    for family in faults:
        if not isinstance(family, dict):
            continue
        target = family.get("target")
        if isinstance(target, str) and target.strip() == CONTROL_TARGET:
            name = family.get("name")
            names.append(name if isinstance(name, str) and name else CONTROL_TARGET)
    return tuple(dict.fromkeys(names))


def _false_positive(
    controls: Collection[str],
    by_stratum: Mapping[str, Mapping[str, int]],
    confidence: float,
    method: IntervalMethod,
) -> FalsePositive | None:
    if not controls:
        return None
    runs = failures = 0
    for name in controls:
        counts = by_stratum.get(name, {})
        counted = sum(n for k, n in counts.items() if k not in _NOT_COUNTED)
        runs += counted
        failures += counted - counts.get(Outcome.BENIGN.value, 0)
    found = rate_of(failures, runs, confidence=confidence, method=method)
    return FalsePositive(tuple(controls), found)


@dataclass(frozen=True)
class Summary:
    """Counts per outcome class and their rates, overall and for every stratum, and the
    false-positive rate of the control strata (None without a control family).

    Rates are over counted outcomes (`not-injected` and `infra-failure`, experiments lost
    to the infrastructure on every attempt, are reported but never counted); the overall
    counts include the control runs.
    """

    name: str
    total: int
    done: int
    outcomes: Mapping[str, int]
    rates: Mapping[str, Rate]
    strata: Mapping[str, tuple[int, Mapping[str, int], Mapping[str, Rate]]]
    method: IntervalMethod
    confidence: float
    false_positive: FalsePositive | None = None
    machines: tuple[MachineOutcomes, ...] = ()
    """Every machine's outcomes, when the testbed has several machines."""
    network: NetworkTotals | None = None
    """The frames on the testbed's network (None without one)."""

    @property
    def infra_failures(self) -> int:
        """Experiments given up as lost to the infrastructure (`campaign resume` reruns them)."""
        return self.outcomes.get(Outcome.INFRA_FAILURE.value, 0)

    def to_json(self) -> dict[str, Any]:
        """`vmfault campaign status --json`: total, done, the false-positive rate (null
        without a control family), outcomes, intervals, strata, infra_failures; with several
        machines `machines` (each one's outcomes and failure rate), with a network `network`."""

        def intervals(rates: Mapping[str, Rate]) -> dict[str, list[float]]:
            return {name: [r.low, r.high] for name, r in rates.items()}

        return {
            "campaign": self.name,
            "total": self.total,
            "done": self.done,
            "false_positive": None
            if self.false_positive is None
            else self.false_positive.to_json(),
            "outcomes": dict(self.outcomes),
            "infra_failures": self.infra_failures,
            "rates": {name: r.rate for name, r in self.rates.items()},
            "intervals": intervals(self.rates),
            "method": self.method.value,
            "confidence": self.confidence,
            "strata": {
                name: {
                    "done": done,
                    "outcomes": dict(counts),
                    "rates": {n: r.rate for n, r in rates.items()},
                    "intervals": intervals(rates),
                }
                for name, (done, counts, rates) in self.strata.items()
            },
            **({"machines": {m.machine: m.to_json() for m in self.machines}}
               if self.machines else {}),
            **({"network": self.network.to_json()} if self.network is not None else {}),
        }  # fmt: skip


def _sorted(counts: Mapping[str, int]) -> dict[str, int]:
    return {name: counts[name] for name in _ORDER if counts.get(name)}


def summarize(
    name: str,
    total: int,
    overall: Mapping[str, int],
    by_stratum: Mapping[str, Mapping[str, int]],
    *,
    confidence: float = 0.95,
    method: IntervalMethod = IntervalMethod.WILSON,
    controls: Collection[str] = (),
) -> Summary:
    """Rates with intervals from outcome counts (overall and per stratum); the
    false-positive rate over the strata named in `controls` (see `control_strata`)."""
    counted = {k: v for k, v in overall.items() if k not in _NOT_COUNTED}
    strata = {}
    for stratum, counts in by_stratum.items():
        stratum_counted = {k: v for k, v in counts.items() if k not in _NOT_COUNTED}
        strata[stratum] = (
            sum(counts.values()),
            _sorted(counts),
            outcome_rates(stratum_counted, confidence=confidence, method=method),
        )
    return Summary(
        name=name,
        total=total,
        done=sum(overall.values()),
        outcomes=_sorted(overall),
        rates=outcome_rates(counted, confidence=confidence, method=method),
        strata=strata,
        method=method,
        confidence=confidence,
        false_positive=_false_positive(controls, by_stratum, confidence, method),
    )


class CountSource(Protocol):
    """What a summary reads from a store."""

    def campaign_info(self) -> CampaignInfo:
        """The campaign row."""
        ...

    def outcome_counts(self) -> dict[str, int]:
        """Experiments per outcome value."""
        ...

    def counts_by_stratum(self) -> dict[str, dict[str, int]]:
        """Outcome counts per stratum."""
        ...


def store_summary(store: CountSource, *, confidence: float, method: IntervalMethod) -> Summary:
    """The summary of everything `store` holds so far (with the machines' outcomes and the
    network's frames when the store yields analysis rows)."""
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
    rows = getattr(store, "rows", None)
    if rows is None:
        return summary
    return with_testbed(summary, rows(), confidence=confidence, method=method)


def with_testbed(
    summary: Summary,
    rows: Iterable[Mapping[str, object]],
    *,
    confidence: float,
    method: IntervalMethod,
) -> Summary:
    """`summary` with the machines' outcomes (kept when there are several) and the
    network's totals, from analysis rows."""
    machines, network = testbed_totals(rows, confidence=confidence, method=method)
    return dataclasses.replace(
        summary, machines=machines if len(machines) > 1 else (), network=network
    )


def _spec(info: CampaignInfo) -> object:
    """The campaign spec the store keeps, or None if its JSON is damaged."""
    try:
        spec: object = info.spec
    except ValueError:
        return None
    return spec


def summary_tables(summary: Summary) -> list[Table]:
    """The tables `vmfault campaign status` prints: the false-positive rate first (with a
    control family), then overall, then per stratum."""
    method = f"{summary.method.value}, {summary.confidence:.0%}"
    found = summary.false_positive
    tables = [] if found is None else [_false_positive_table(found, method)]
    lost = summary.infra_failures
    overall = Table(
        title=f"{summary.name}: {summary.done} of {summary.total} experiments",
        caption=None
        if not lost
        else f"infra-failure: {lost} lost to the infrastructure on every attempt, never "
        "counted; `vmfault campaign resume` runs them again",
    )
    for column in ("outcome", "count", "rate", f"interval ({method})"):
        overall.add_column(column, justify="right" if column != "outcome" else "left")
    for name, count in summary.outcomes.items():
        rate = summary.rates.get(name)
        overall.add_row(
            name,
            str(count),
            "-" if rate is None else f"{rate.rate:.1%}",
            "-" if rate is None else f"[{rate.low:.1%}, {rate.high:.1%}]",
        )
    strata = Table(title=f"per stratum ({method})")
    strata.add_column("stratum")
    strata.add_column("done", justify="right")
    strata.add_column("outcomes (rate \\[interval])")
    for name, (done, counts, rates) in summary.strata.items():
        cells = []
        for outcome, count in counts.items():
            rate = rates.get(outcome)
            interval = "" if rate is None else f" {rate.rate:.0%} [{rate.low:.0%}, {rate.high:.0%}]"
            cells.append(f"{outcome} {count}{interval}")
        strata.add_row(name, str(done), "; ".join(cells))
    return [*tables, overall, strata, *_testbed_tables(summary, method)]


def _testbed_tables(summary: Summary, method: str) -> list[Table]:
    """The per machine table (several machines) and the network's tables (a network)."""
    tables = []
    if summary.machines:
        machines = Table(title=f"per machine ({method})")
        for column in ("machine", "judged", *(o for o in _ORDER if o != "not-injected"),
                       "not benign", "interval"):  # fmt: skip
            machines.add_column(column, justify="left" if column == "machine" else "right")
        for item in summary.machines:
            r = item.failure
            machines.add_row(
                escape(item.machine), str(item.judged), *(str(n) for n in item.counts.values()),
                f"{r.rate:.1%}" if r.trials else "-", f"[{r.low:.1%}, {r.high:.1%}]",
            )  # fmt: skip
        tables.append(machines)
    network = summary.network
    if network is not None:
        links = Table(title=f"network: {network.frames} frames in {network.experiments} "
                      "experiments, per link direction")  # fmt: skip
        links.add_column("link")
        for name in LINK_COUNTS:
            links.add_column(name, justify="right")
        for link in network.links:
            links.add_row(
                escape(f"{link.source} > {link.destination}"),
                *(str(link.counts[name]) for name in LINK_COUNTS),
            )
        frames = Table(title="frames per experiment, and what network faults did")
        for column in ("stratum", "experiments", "mean", "least", "most", "dropped",
                       "corrupted", "delayed", "duplicated", "reordered"):  # fmt: skip
            frames.add_column(column, justify="left" if column == "stratum" else "right")
        for stratum in network.strata:
            frames.add_row(
                escape(stratum.stratum), str(stratum.experiments), f"{stratum.frames_mean:.0f}",
                str(stratum.frames_min), str(stratum.frames_max),
                *(str(n) for n in stratum.fault.values()),
            )  # fmt: skip
        tables += [links, frames]
    return tables


def _false_positive_table(found: FalsePositive, method: str) -> Table:
    table = Table(title="false-positive rate: control runs (target none) not benign")
    for column in ("control strata", "runs", "failures", "rate", f"interval ({method})"):
        table.add_column(column, justify="left" if column == "control strata" else "right")
    r = found.rate
    table.add_row(
        escape(", ".join(found.strata)),
        str(found.runs),
        str(found.failures),
        f"{r.rate:.1%}" if r.trials else "-",
        f"[{r.low:.1%}, {r.high:.1%}]",
    )
    return table
