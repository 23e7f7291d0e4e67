"""Flip schedules, regions and the radiation rate model."""

from __future__ import annotations

import statistics

import pytest

from vmfault.errors import UsageError
from vmfault.faults.schedule import (
    RateModel,
    RateUnit,
    Schedule,
    ScheduleKind,
    Storm,
    parse_region,
)
from vmfault.faults.select import rng_for


def test_fixed_uniform_and_poisson_schedules() -> None:
    rng = rng_for(3, 0, "storm")
    assert Schedule.parse("10ms").gaps(3, rng) == [0.01, 0.01, 0.01]
    uniform = Schedule.parse("5ms..50ms")
    assert uniform.kind is ScheduleKind.UNIFORM
    assert all(0.005 <= g <= 0.05 for g in uniform.gaps(200, rng))
    poisson = Schedule.parse("poisson:200")
    gaps = poisson.gaps(5000, rng)
    assert statistics.mean(gaps) == pytest.approx(1 / 200, rel=0.05)
    assert poisson.mean_gap_s == pytest.approx(0.005)
    assert Schedule.parse(poisson.describe()) == poisson
    assert Schedule.parse(uniform.describe()) == uniform


@pytest.mark.parametrize("text", ["", "soon", "0ms", "-5ms", "50ms..5ms", "poisson:", "poisson:-1"])
def test_bad_intervals_are_one_line_errors(text: str) -> None:
    with pytest.raises(UsageError, match="invalid interval") as caught:
        Schedule.parse(text)
    assert "poisson:RATE" in caught.value.hint


def test_regions() -> None:
    assert parse_region("ram") == ("ram", ())
    assert parse_region("0x1000-0x2000,0x5000-0x6000") == (
        "custom",
        ((0x1000, 0x2000), (0x5000, 0x6000)),
    )
    for bad in ("heap", "0x2000-0x1000", "0x10"):
        with pytest.raises(UsageError, match="invalid region"):
            parse_region(bad)


def test_rate_model_fit_per_mbit() -> None:
    # 1,000 FIT/Mbit over 128 MiB: 1073.741824 Mbit * 1000 / 1e9 upsets per hour.
    model = RateModel(1000.0, RateUnit.FIT_PER_MBIT, 128 * 2**20, compression=1e9)
    per_hour = 128 * 2**20 * 8 / 1e6 * 1000 / 1e9
    assert model.upsets_per_real_second() == pytest.approx(per_hour / 3600)
    schedule = model.schedule()
    assert schedule.rate_per_s == pytest.approx(per_hour / 3600 * 1e9)
    assert model.real_world_s(0.5) == pytest.approx(5e8)


def test_rate_model_per_gib_month() -> None:
    model = RateModel(2.0, RateUnit.PER_GIB_MONTH, 2**30, compression=1.0)
    assert model.upsets_per_real_second() == pytest.approx(2.0 / (30 * 24 * 3600))
    with pytest.raises(UsageError, match="zero"):
        RateModel(0.0, RateUnit.PER_GIB_MONTH, 2**30, compression=1.0).schedule()


def test_storm_schedule_from_an_interval_or_a_rate() -> None:
    fixed = Storm(5, Schedule.parse("10ms"))
    assert fixed.resolve(2**20) == (Schedule.parse("10ms"), None)
    assert fixed.describe() == "5 x 10ms"
    rated = Storm(3, rate=1000.0, rate_unit=RateUnit.FIT_PER_MBIT, compression=1e9)
    schedule, model = rated.resolve(128 * 2**20)
    assert model == RateModel(1000.0, RateUnit.FIT_PER_MBIT, 128 * 2**20, 1e9)
    assert schedule == model.schedule()
    assert rated.to_json()["compression"] == 1e9


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of interval and rate"),
        ({"schedule": Schedule.parse("1ms"), "rate": 5.0, "compression": 1.0}, "exactly one"),
        ({"rate": 5.0}, "positive compression"),
        ({"rate": -5.0, "compression": 1.0}, "not positive"),
    ],
)
def test_bad_storms(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Storm(4, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="at least one flip"):
        Storm(0, Schedule.parse("1ms"))
