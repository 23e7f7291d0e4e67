"""Binomial confidence intervals for outcome rates, and runtime equivalence (pure, no I/O).

Every rate vmfault reports carries its interval and the name of the method behind it:
Wilson's score interval (no continuity correction) or the exact Clopper-Pearson interval.
Rates and bounds are fractions in [0, 1]; confidence is a fraction such as 0.95. The
quantiles come from scipy.stats (`norm.ppf` for Wilson's z, `beta.ppf` for the exact
bounds). `runtime_equivalence` is the equivalence test of isolation campaigns: a bootstrap
interval (scipy.stats.bootstrap) of the ratio of two samples' medians against a margin.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from vmfault.classify import Outcome

__all__ = [
    "EQUIVALENCE_METHOD",
    "Equivalence",
    "IntervalMethod",
    "Rate",
    "clopper_pearson",
    "normal_quantile",
    "outcome_rates",
    "rate",
    "runtime_equivalence",
    "wilson",
]


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
    from scipy.stats import norm  # noqa: PLC0415 (scipy loads on first use: seconds)

    return float(norm.ppf(1 - (1 - confidence) / 2))


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
    """The exact Clopper-Pearson interval from beta quantiles (scipy.stats.beta.ppf);
    (0, 1) for 0 trials."""
    _check_counts(successes, trials)
    _check_confidence(confidence)
    if trials == 0:
        return Rate(0, 0, 0.0, 1.0, IntervalMethod.CLOPPER_PEARSON, confidence)
    tail = (1 - confidence) / 2
    from scipy.stats import beta  # noqa: PLC0415 (scipy loads on first use: seconds)

    low = 0.0 if successes == 0 else float(beta.ppf(tail, successes, trials - successes + 1))
    high = (
        1.0 if successes == trials else float(beta.ppf(1 - tail, successes + 1, trials - successes))
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


def _check_counts(successes: int, trials: int) -> None:
    if not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials, got {successes}/{trials}")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")


EQUIVALENCE_METHOD = "bootstrap-median-ratio"
"""The equivalence test of `runtime_equivalence`: a BCa bootstrap interval of the ratio of
medians (scipy.stats.bootstrap), the interval at 1 - 2 alpha, as TOST's duality has it."""
EQUIVALENCE_MIN_RUNS = 3
"""Runs each sample needs before an interval is drawn (fewer: no verdict)."""
BOOTSTRAP_RESAMPLES = 9999


@dataclass(frozen=True)
class Equivalence:
    """Runtimes under faults against fault-free runtimes: the ratio of their medians
    (faulted / baseline), its interval at `level` and the verdict against `margin`.

    The runtimes are equivalent when the whole interval lies within [1 - margin,
    1 + margin]: at `level` = 1 - 2 alpha this is an equivalence test at alpha (the two
    one-sided tests' duality). `ratio`, `low` and `high` are None, and `equivalent` is
    None, while a sample has fewer than EQUIVALENCE_MIN_RUNS runs.
    """

    ratio: float | None
    low: float | None
    high: float | None
    margin: float
    level: float
    faulted: int
    baseline: int
    method: str = EQUIVALENCE_METHOD

    @property
    def equivalent(self) -> bool | None:
        """Whether the interval lies within the margin (None: too few runs to say)."""
        if self.low is None or self.high is None:
            return None
        return 1 - self.margin <= self.low and self.high <= 1 + self.margin

    def to_json(self) -> dict[str, Any]:
        """Plain data: `runtime_ratio`, `interval` ([low, high] or null), `equivalent`,
        `method`, `margin`, `level`, `runs` (faulted and baseline)."""
        return {
            "runtime_ratio": self.ratio,
            "interval": None if self.low is None else [self.low, self.high],
            "equivalent": self.equivalent,
            "method": self.method,
            "margin": self.margin,
            "level": self.level,
            "runs": {"faulted": self.faulted, "baseline": self.baseline},
        }


def runtime_equivalence(
    faulted: Sequence[float],
    baseline: Sequence[float],
    *,
    margin: float,
    level: float = 0.90,
    seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> Equivalence:
    """The ratio of the medians of `faulted` and `baseline` runtimes (any one unit, > 0)
    with its BCa bootstrap interval at `level` (scipy.stats.bootstrap, the two samples
    resampled independently, `seed` fixing the resamples so a verdict is repeatable), and
    the verdict against `margin` (a ratio in (0, 1)). Samples without spread give the exact
    ratio as a zero-width interval; a BCa interval that cannot be drawn (degenerate
    resamples) falls back to the percentile interval."""
    if not 0.0 < margin < 1.0:
        raise ValueError(f"margin must be between 0 and 1 (exclusive), got {margin}")
    _check_confidence(level)
    import numpy as np  # noqa: PLC0415 (loads on first use, as scipy)
    from scipy.stats import bootstrap  # noqa: PLC0415 (scipy loads on first use: seconds)

    ran = np.asarray(faulted, dtype=float)
    base = np.asarray(baseline, dtype=float)

    def verdict(ratio: float | None, low: float | None, high: float | None) -> Equivalence:
        return Equivalence(ratio, low, high, margin, level, len(ran), len(base))

    if min(len(ran), len(base)) < EQUIVALENCE_MIN_RUNS or float(np.median(base)) <= 0:
        return verdict(None, None, None)
    ratio = float(np.median(ran) / np.median(base))
    if float(np.ptp(ran)) == 0.0 and float(np.ptp(base)) == 0.0:
        return verdict(ratio, ratio, ratio)

    def median_ratio(x: Any, y: Any, axis: int = -1) -> Any:
        return np.median(x, axis=axis) / np.median(y, axis=axis)

    low = high = math.nan
    for how in ("BCa", "percentile"):
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = bootstrap(
                (ran, base), median_ratio, n_resamples=resamples, vectorized=True,
                confidence_level=level, method=how, rng=np.random.default_rng(seed),
            )  # fmt: skip
        low, high = (float(found.confidence_interval.low), float(found.confidence_interval.high))
        if math.isfinite(low) and math.isfinite(high):
            break
    return verdict(ratio, min(low, ratio), max(high, ratio))
