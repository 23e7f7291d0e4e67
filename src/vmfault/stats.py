"""Binomial confidence intervals for outcome rates (pure, no I/O, no third-party maths).

Every rate vmfault reports carries its interval and the name of the method behind it:
Wilson's score interval (no continuity correction) or the exact Clopper-Pearson interval.
Rates and bounds are fractions in [0, 1]; confidence is a fraction such as 0.95.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from statistics import NormalDist
from typing import Any

from vmfault.classify import Outcome

__all__ = [
    "IntervalMethod",
    "Rate",
    "clopper_pearson",
    "normal_quantile",
    "outcome_rates",
    "rate",
    "regularized_beta",
    "wilson",
]

_BISECTION_TOLERANCE = 1e-10
_FRACTION_EPSILON = 1e-15
_FRACTION_TINY = 1e-300
_FRACTION_MAX_TERMS = 100_000


class IntervalMethod(StrEnum):
    """How a binomial confidence interval is computed."""

    WILSON = "wilson"
    """Wilson's score interval: close to nominal coverage, never outside [0, 1]."""
    CLOPPER_PEARSON = "clopper-pearson"
    """The exact interval from beta quantiles: conservative (coverage >= nominal)."""


@dataclass(frozen=True)
class Rate:
    """`successes` out of `trials`, with its interval [`low`, `high`] at `confidence`.

    Guarantees 0 <= successes <= trials and 0 <= low <= rate <= high <= 1.
    """

    successes: int
    trials: int
    low: float
    high: float
    method: IntervalMethod
    confidence: float

    def __post_init__(self) -> None:
        if not 0 <= self.successes <= self.trials:
            raise ValueError(f"need 0 <= successes <= trials, got {self.successes}/{self.trials}")
        if not 0.0 <= self.low <= self.high <= 1.0:
            raise ValueError(f"need 0 <= low <= high <= 1, got [{self.low}, {self.high}]")

    @property
    def rate(self) -> float:
        """successes / trials, or 0 when there are no trials."""
        return self.successes / self.trials if self.trials else 0.0

    @property
    def half_width(self) -> float:
        """Half the interval's width: the margin of error, as a fraction."""
        return (self.high - self.low) / 2

    def to_json(self) -> dict[str, Any]:
        """Plain data for records and JSON output."""
        return {
            "successes": self.successes,
            "trials": self.trials,
            "rate": self.rate,
            "low": self.low,
            "high": self.high,
            "method": self.method.value,
            "confidence": self.confidence,
        }


def normal_quantile(confidence: float) -> float:
    """The two-sided standard normal quantile z for `confidence` (1.959964 for 0.95)."""
    _check_confidence(confidence)
    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)


def wilson(successes: int, trials: int, *, confidence: float = 0.95) -> Rate:
    """Wilson's score interval, without continuity correction; (0, 1) for 0 trials."""
    _check_counts(successes, trials)
    z = normal_quantile(confidence)
    if trials == 0:
        return Rate(0, 0, 0.0, 1.0, IntervalMethod.WILSON, confidence)
    p = successes / trials
    z2 = z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    spread = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - spread)
    high = 1.0 if successes == trials else min(1.0, centre + spread)
    return Rate(successes, trials, low, high, IntervalMethod.WILSON, confidence)


def clopper_pearson(successes: int, trials: int, *, confidence: float = 0.95) -> Rate:
    """The exact Clopper-Pearson interval from beta quantiles; (0, 1) for 0 trials.

    Bounds are exact to 1e-10 (bisection on the regularized incomplete beta function).
    """
    _check_counts(successes, trials)
    _check_confidence(confidence)
    if trials == 0:
        return Rate(0, 0, 0.0, 1.0, IntervalMethod.CLOPPER_PEARSON, confidence)
    tail = (1 - confidence) / 2
    low = 0.0 if successes == 0 else _beta_quantile(tail, successes, trials - successes + 1)
    high = (
        1.0 if successes == trials else _beta_quantile(1 - tail, successes + 1, trials - successes)
    )
    return Rate(successes, trials, low, high, IntervalMethod.CLOPPER_PEARSON, confidence)


def rate(
    successes: int,
    trials: int,
    *,
    confidence: float = 0.95,
    method: IntervalMethod = IntervalMethod.WILSON,
) -> Rate:
    """`successes` out of `trials` with an interval computed by `method`."""
    if method is IntervalMethod.CLOPPER_PEARSON:
        return clopper_pearson(successes, trials, confidence=confidence)
    return wilson(successes, trials, confidence=confidence)


def outcome_rates(
    counts: Mapping[str, int],
    *,
    confidence: float = 0.95,
    method: IntervalMethod = IntervalMethod.WILSON,
) -> dict[str, Rate]:
    """The rate of each outcome class in `counts`, over the total of counted outcomes.

    Keys are `Outcome` values; `not-injected` is left out of the total and of the result.
    The result is in `Outcome` order. ValueError for an unknown class or a negative count.
    """
    counted: dict[Outcome, int] = {}
    for key, count in counts.items():
        try:
            outcome = Outcome(key)
        except ValueError:
            allowed = ", ".join(o.value for o in Outcome)
            raise ValueError(f"unknown outcome {key!r} (allowed: {allowed})") from None
        if count < 0:
            raise ValueError(f"negative count {count} for outcome {key!r}")
        if outcome.counts:
            counted[outcome] = count
    total = sum(counted.values())
    return {
        outcome.value: rate(counted[outcome], total, confidence=confidence, method=method)
        for outcome in Outcome
        if outcome in counted
    }


def regularized_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for 0 <= x <= 1 and a, b > 0."""
    if a <= 0 or b <= 0:
        raise ValueError(f"beta parameters must be positive, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    front = math.exp(log_front)
    # The continued fraction converges fast only on this side of the mean; use symmetry otherwise.
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(x, a, b) / a
    return 1.0 - front * _beta_fraction(1.0 - x, b, a) / b


def _beta_fraction(x: float, a: float, b: float) -> float:
    """The continued fraction of I_x(a, b), evaluated with the modified Lentz method."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c = 1.0
    d = 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) >= _FRACTION_TINY else _FRACTION_TINY)
    h = d
    for m in range(1, _FRACTION_MAX_TERMS + 1):
        m2 = 2 * m
        for numerator in (
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) >= _FRACTION_TINY else _FRACTION_TINY)
            c = 1.0 + numerator / c
            c = c if abs(c) >= _FRACTION_TINY else _FRACTION_TINY
            step = d * c
            h *= step
        if abs(step - 1.0) < _FRACTION_EPSILON:
            return h
    raise ArithmeticError(f"incomplete beta fraction did not converge for x={x}, a={a}, b={b}")


def _beta_quantile(probability: float, a: float, b: float) -> float:
    """The x with I_x(a, b) = probability, by bisection to 1e-10."""
    low, high = 0.0, 1.0
    while high - low > _BISECTION_TOLERANCE:
        middle = (low + high) / 2
        if regularized_beta(middle, a, b) < probability:
            low = middle
        else:
            high = middle
    return (low + high) / 2


def _check_counts(successes: int, trials: int) -> None:
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
