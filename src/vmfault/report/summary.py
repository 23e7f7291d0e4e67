"""What a campaign found so far: counts and rates with intervals, overall and per stratum.

`store_summary` reads them from a store, `Summary.to_json` is `vmfault campaign status
--json`, and `summary_tables` are the tables `campaign status` prints.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from rich.table import Table

from vmfault.classify import Outcome
from vmfault.stats import IntervalMethod, Rate, outcome_rates
from vmfault.store.base import CampaignInfo

__all__ = ["CountSource", "Summary", "store_summary", "summarize", "summary_tables"]

_ORDER = [o.value for o in Outcome]


@dataclass(frozen=True)
class Summary:
    """Counts per outcome class and their rates, overall and for every stratum.

    Rates are over counted outcomes (`not-injected` is reported but never counted).
    """

    name: str
    total: int
    done: int
    outcomes: Mapping[str, int]
    rates: Mapping[str, Rate]
    strata: Mapping[str, tuple[int, Mapping[str, int], Mapping[str, Rate]]]
    method: IntervalMethod
    confidence: float

    def to_json(self) -> dict[str, Any]:
        """`vmfault campaign status --json`: total, done, outcomes, intervals, strata."""

        def intervals(rates: Mapping[str, Rate]) -> dict[str, list[float]]:
            return {name: [r.low, r.high] for name, r in rates.items()}

        return {
            "campaign": self.name,
            "total": self.total,
            "done": self.done,
            "outcomes": dict(self.outcomes),
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
        }


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
) -> Summary:
    """Rates with intervals from outcome counts (overall and per stratum)."""
    counted = {k: v for k, v in overall.items() if k != Outcome.NOT_INJECTED.value}
    strata = {}
    for stratum, counts in by_stratum.items():
        stratum_counted = {k: v for k, v in counts.items() if k != Outcome.NOT_INJECTED.value}
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
    """The summary of everything `store` holds so far."""
    info = store.campaign_info()
    return summarize(
        info.name,
        info.total_planned,
        store.outcome_counts(),
        store.counts_by_stratum(),
        confidence=confidence,
        method=method,
    )


def summary_tables(summary: Summary) -> list[Table]:
    """The tables `vmfault campaign status` prints: overall, then per stratum."""
    method = f"{summary.method.value}, {summary.confidence:.0%}"
    overall = Table(title=f"{summary.name}: {summary.done} of {summary.total} experiments")
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
    return [overall, strata]
