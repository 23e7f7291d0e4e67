"""Binomial confidence intervals: Wilson and Clopper-Pearson against textbook values."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest

from vmfault.stats import (
    IntervalMethod,
    Rate,
    clopper_pearson,
    normal_quantile,
    outcome_rates,
    rate,
    runtime_equivalence,
    wilson,
)


def wilson_closed_form(k: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval written out as in the textbooks (Agresti & Coull, 1998)."""
    z = NormalDist().inv_cdf(1 - (1 - confidence) / 2)
    p = k / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n), (centre + spread) / (1 + z * z / n)


def binomial_tail_at_least(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def binomial_tail_at_most(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (5, 10, 0.2366, 0.7634),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (81, 263, 0.2553, 0.3662),
    ],
)
def test_wilson_known_values(k: int, n: int, low: float, high: float) -> None:
    interval = wilson(k, n)
    assert (round(interval.low, 4), round(interval.high, 4)) == (low, high)
    closed_low, closed_high = wilson_closed_form(k, n, 0.95)
    assert interval.low == pytest.approx(max(0.0, closed_low), abs=1e-12)
    assert interval.high == pytest.approx(min(1.0, closed_high), abs=1e-12)
    assert interval.method is IntervalMethod.WILSON


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        (5, 10, 0.1871, 0.8129),
        (0, 10, 0.0, 0.3085),
        (10, 10, 0.6915, 1.0),
        (81, 263, 0.2527, 0.3676),
    ],
)
def test_clopper_pearson_known_values(k: int, n: int, low: float, high: float) -> None:
    interval = clopper_pearson(k, n)
    assert (round(interval.low, 4), round(interval.high, 4)) == (low, high)
    assert interval.method is IntervalMethod.CLOPPER_PEARSON


@pytest.mark.parametrize(("k", "n"), [(5, 10), (1, 7), (3, 40), (39, 40)])
def test_clopper_pearson_bounds_solve_the_binomial_tails(k: int, n: int) -> None:
    """The exact interval's definition: each bound leaves alpha/2 in one binomial tail."""
    interval = clopper_pearson(k, n, confidence=0.95)
    assert binomial_tail_at_least(k, n, interval.low) == pytest.approx(0.025, abs=1e-8)
    assert binomial_tail_at_most(k, n, interval.high) == pytest.approx(0.025, abs=1e-8)


def test_clopper_pearson_edges_have_closed_forms() -> None:
    assert clopper_pearson(0, 10).high == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-9)
    assert clopper_pearson(10, 10).low == pytest.approx(0.025 ** (1 / 10), abs=1e-9)
    assert clopper_pearson(0, 10).low == 0.0
    assert clopper_pearson(10, 10).high == 1.0


@pytest.mark.parametrize("method", list(IntervalMethod))
def test_no_trials_is_the_whole_unit_interval(method: IntervalMethod) -> None:
    empty = rate(0, 0, method=method)
    assert (empty.low, empty.high, empty.rate, empty.half_width) == (0.0, 1.0, 0.0, 0.5)


@pytest.mark.parametrize("method", list(IntervalMethod))
def test_all_or_nothing_touch_the_ends(method: IntervalMethod) -> None:
    assert rate(0, 25, method=method).low == 0.0
    assert rate(25, 25, method=method).high == 1.0


def test_wider_at_higher_confidence_and_narrower_with_more_trials() -> None:
    assert wilson(30, 100, confidence=0.99).half_width > wilson(30, 100).half_width
    assert wilson(300, 1000).half_width < wilson(30, 100).half_width
    assert clopper_pearson(30, 100).half_width > wilson(30, 100).half_width


def test_large_counts_are_fast_and_agree() -> None:
    exact = clopper_pearson(400_000, 1_000_000)
    score = wilson(400_000, 1_000_000)
    assert exact.low == pytest.approx(score.low, abs=1e-5)
    assert exact.high == pytest.approx(score.high, abs=1e-5)


# Bounds the hand-written incomplete beta function and bisection gave (exact to 1e-10)
# before scipy.stats.beta.ppf replaced them: the same numbers.
@pytest.mark.parametrize(
    ("k", "n", "confidence", "low", "high"),
    [
        (5, 10, 0.95, 0.1870860284252558, 0.8129139715747442),
        (0, 10, 0.95, 0.0, 0.30849710779148154),
        (81, 263, 0.95, 0.2527367456059437, 0.3676219226035755),
        (1, 1000, 0.99, 5.012523615732789e-06, 0.007406286924378946),
        (81, 263, 0.9, 0.2610557460284326, 0.3581784955749754),
        (3, 7, 0.8, 0.16963841739925556, 0.7213979513908271),
    ],
)
def test_clopper_pearson_gives_the_numbers_of_the_former_beta_search(
    k: int, n: int, confidence: float, low: float, high: float
) -> None:
    interval = clopper_pearson(k, n, confidence=confidence)
    assert interval.low == pytest.approx(low, abs=1e-9)
    assert interval.high == pytest.approx(high, abs=1e-9)


def test_normal_quantile_is_the_former_one() -> None:
    assert normal_quantile(0.95) == pytest.approx(1.9599639845400536, abs=1e-12)
    assert normal_quantile(0.9) == pytest.approx(1.6448536269514715, abs=1e-12)


def test_rate_value_and_json() -> None:
    found = rate(81, 263, method=IntervalMethod.CLOPPER_PEARSON, confidence=0.9)
    assert found.rate == pytest.approx(81 / 263)
    assert found.half_width == pytest.approx((found.high - found.low) / 2)
    data = json.loads(json.dumps(found.to_json()))
    assert data["method"] == "clopper-pearson"
    assert (data["successes"], data["trials"], data["confidence"]) == (81, 263, 0.9)


@pytest.mark.parametrize(("k", "n"), [(-1, 3), (4, 3)])
def test_impossible_counts_are_refused(k: int, n: int) -> None:
    with pytest.raises(ValueError, match="successes"):
        wilson(k, n)
    with pytest.raises(ValueError, match="successes"):
        Rate(k, n, 0.0, 1.0, IntervalMethod.WILSON, 0.95)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 1.5])
def test_confidence_must_be_a_fraction(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        wilson(1, 2, confidence=confidence)
    with pytest.raises(ValueError, match="confidence"):
        clopper_pearson(1, 2, confidence=confidence)


def test_normal_quantile() -> None:
    assert normal_quantile(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert normal_quantile(0.99) == pytest.approx(2.575829, abs=1e-6)


def test_outcome_rates_leave_out_the_not_injected() -> None:
    rates = outcome_rates({"benign": 70, "crash": 20, "sdc": 10, "not-injected": 50})
    assert list(rates) == ["benign", "sdc", "crash"]
    assert {name: r.trials for name, r in rates.items()} == dict.fromkeys(rates, 100)
    assert rates["crash"].rate == pytest.approx(0.2)
    assert rates["crash"] == wilson(20, 100)


def test_outcome_rates_method_and_empty_classes() -> None:
    rates = outcome_rates(
        {"hang": 0, "benign": 3}, confidence=0.9, method=IntervalMethod.CLOPPER_PEARSON
    )
    assert rates["hang"] == clopper_pearson(0, 3, confidence=0.9)
    assert outcome_rates({"not-injected": 4}) == {}


def test_outcome_rates_refuse_unknown_classes_and_negative_counts() -> None:
    with pytest.raises(ValueError, match="unknown outcome 'oops'"):
        outcome_rates({"oops": 1})
    with pytest.raises(ValueError, match="negative"):
        outcome_rates({"benign": -1})


def test_equivalent_runtimes_give_a_narrow_interval_around_one() -> None:
    import random

    draw = random.Random(1)
    faulted = [1.0 + draw.gauss(0, 0.01) for _ in range(30)]
    baseline = [1.0 + draw.gauss(0, 0.01) for _ in range(10)]
    found = runtime_equivalence(faulted, baseline, margin=0.05, seed=3)
    assert found.ratio is not None and found.low is not None and found.high is not None
    assert found.low <= found.ratio <= found.high
    assert found.low > 0.95 and found.high < 1.05
    assert found.equivalent is True
    assert runtime_equivalence(faulted, baseline, margin=0.05, seed=3) == found  # repeatable
    data = found.to_json()
    assert data["method"] == "bootstrap-median-ratio"
    assert data["interval"] == [found.low, found.high]
    assert data["runs"] == {"faulted": 30, "baseline": 10}


def test_slower_runtimes_are_not_equivalent() -> None:
    found = runtime_equivalence([1.3, 1.2, 1.25, 1.28], [1.0, 1.01, 0.99, 1.0], margin=0.05)
    assert found.ratio == pytest.approx(1.265)
    assert found.low is not None and found.low > 1.05
    assert found.equivalent is False


def test_an_interval_wider_than_the_margin_is_no_equivalence() -> None:
    """Noisy runtimes with equal medians: the interval crosses the margin, so no verdict of
    equivalence (an equivalence test never passes for want of evidence)."""
    faulted = [0.6, 1.0, 1.4, 0.7, 1.3, 1.0, 0.8, 1.2]
    baseline = [0.5, 1.0, 1.5, 0.9, 1.1]
    found = runtime_equivalence(faulted, baseline, margin=0.05)
    assert found.ratio == pytest.approx(1.0)
    assert found.equivalent is False


def test_identical_runtimes_give_the_exact_ratio() -> None:
    found = runtime_equivalence([5.0] * 4, [5.0] * 3, margin=0.01)
    assert (found.ratio, found.low, found.high, found.equivalent) == (1.0, 1.0, 1.0, True)


def test_too_few_runs_give_no_verdict() -> None:
    found = runtime_equivalence([1.0, 1.0], [1.0, 1.1, 0.9], margin=0.05)
    assert (found.ratio, found.low, found.equivalent) == (None, None, None)
    assert found.to_json()["interval"] is None


@pytest.mark.parametrize("margin", [0.0, 1.0, -0.1])
def test_the_margin_is_a_ratio_in_the_open_unit_interval(margin: float) -> None:
    with pytest.raises(ValueError, match="margin"):
        runtime_equivalence([1.0] * 3, [1.0] * 3, margin=margin)
