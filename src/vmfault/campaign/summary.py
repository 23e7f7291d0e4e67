"""What a campaign found so far: counts and rates with intervals, overall and per stratum."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vmfault.classify import Outcome
from vmfault.stats import IntervalMethod, Rate, outcome_rates

__all__ = ["Summary", "summarize"]

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
