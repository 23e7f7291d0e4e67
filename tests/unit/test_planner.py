"""The campaign planner: sample sizes, experiment numbering, seeds and the early stop."""

from __future__ import annotations

from typing import Any

import pytest

from vmfault.campaign import (
    CampaignPlan,
    CampaignSpec,
    Stratum,
    plan_campaign,
    sample_size,
    should_stop,
    stratum_converged,
)
from vmfault.faults import plan


def make_spec(campaign: dict[str, Any], *faults: dict[str, Any]) -> CampaignSpec:
    return CampaignSpec.model_validate(
        {
            "campaign": {"name": "c", **campaign},
            "guest": {"workload": "checksum"},
            "faults": list(faults) or [{"target": "register:gpr"}],
        }
    )


@pytest.mark.parametrize(("margin", "expected"), [(0.05, 385), (0.03, 1068), (0.01, 9604)])
def test_sample_size_infinite_population(margin: float, expected: int) -> None:
    assert sample_size(margin=margin, confidence=0.95) == expected


def test_sample_size_finite_population() -> None:
    # 1000 * 1.96^2 * 0.25 / (0.05^2 * 999 + 1.96^2 * 0.25) = 277.7...
    assert sample_size(margin=0.05, confidence=0.95, population=1000) == 278
    assert sample_size(margin=0.05, confidence=0.95, population=10) == 10
    assert sample_size(margin=0.01, confidence=0.95, population=1) == 1
    huge = sample_size(margin=0.05, confidence=0.95, population=10**12)
    assert huge == sample_size(margin=0.05, confidence=0.95)


def test_sample_size_shrinks_with_a_known_rate_and_grows_with_confidence() -> None:
    assert sample_size(margin=0.05, confidence=0.95, p=0.1) == 139
    assert sample_size(margin=0.05, confidence=0.99) == 664


@pytest.mark.parametrize(
    "options",
    [
        {"margin": 0.0, "confidence": 0.95},
        {"margin": 1.0, "confidence": 0.95},
        {"margin": 0.05, "confidence": 1.0},
        {"margin": 0.05, "confidence": 0.95, "p": 0.0},
        {"margin": 0.05, "confidence": 0.95, "population": 0},
    ],
)
def test_sample_size_refuses_impossible_inputs(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        sample_size(**options)


def test_experiments_are_numbered_stratum_by_stratum() -> None:
    spec = make_spec(
        {"experiments": 10, "seed": 7},
        {"target": "register:gpr"},
        {"target": "register:rip", "experiments": 4},
        {"target": "memory:ram"},
        {"target": "register:rsp", "name": "stack"},
    )
    the_plan = plan_campaign(spec)
    assert [(s.name, s.first, s.count) for s in the_plan.strata] == [
        ("register:gpr", 0, 4),
        ("register:rip", 4, 4),
        ("memory:ram", 8, 3),
        ("stack", 11, 3),
    ]
    assert the_plan.total == 14
    assert the_plan.seed == 7
    expected = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert [the_plan.stratum_of(i).index for i in range(14)] == expected
    assert the_plan.stratum("stack").ids == range(11, 14)


def test_margin_sizes_every_stratum() -> None:
    spec = make_spec(
        {"margin": 0.05},
        {"target": "register:gpr"},
        {"target": "register:rip", "experiments": 20},
    )
    the_plan = plan_campaign(spec)
    assert [s.count for s in the_plan.strata] == [385, 20]
    assert the_plan.total == 405


def test_experiment_is_fixed_by_campaign_seed_and_number() -> None:
    spec = make_spec({"experiments": 6, "seed": 3}, {"target": "register:gpr", "bits": 2})
    the_plan = plan_campaign(spec)
    planned = the_plan.experiment(5)
    assert (planned.experiment_id, planned.seed, planned.index) == (5, 3, 5)
    assert planned.spec == spec.faults[0].fault_spec()
    assert planned.stratum is the_plan.strata[0]
    chosen = planned.choose(golden_duration_s=2.0, golden_instructions=None)
    again = plan(planned.spec, seed=3, index=5, golden_duration_s=2.0, golden_instructions=None)
    assert chosen == again
    same = make_spec({"experiments": 6, "seed": 3}, {"target": "register:gpr", "bits": 2})
    other = plan_campaign(same)
    assert other.experiment(5) == planned


def test_experiments_outside_the_plan_are_refused() -> None:
    the_plan = plan_campaign(make_spec({"experiments": 3}))
    for bad in (-1, 3):
        with pytest.raises(ValueError, match="not in the plan"):
            the_plan.experiment(bad)
    with pytest.raises(KeyError):
        the_plan.stratum("nope")


def test_missing_lists_unfinished_experiments_in_order() -> None:
    the_plan = plan_campaign(make_spec({"experiments": 6}))
    assert the_plan.missing([]) == [0, 1, 2, 3, 4, 5]
    assert the_plan.missing(iter([4, 0, 2, 99])) == [1, 3, 5]
    assert the_plan.missing(range(6)) == []


def test_interleaved_order_takes_turns_between_strata() -> None:
    spec = make_spec(
        {"experiments": 7},
        {"target": "register:gpr"},
        {"target": "register:rip"},
        {"target": "memory:ram", "experiments": 1},
    )
    the_plan = plan_campaign(spec)
    assert the_plan.interleaved() == [0, 4, 7, 1, 5, 2, 6, 3]
    assert the_plan.interleaved([6, 1, 3, 7]) == [1, 6, 7, 3]


def test_plan_checks_its_numbering() -> None:
    family = make_spec({"experiments": 1}).faults[0]
    with pytest.raises(ValueError, match="follow"):
        CampaignPlan((Stratum(0, "a", family, 1, 2),), 3, 0)
    with pytest.raises(ValueError, match="hold 2 experiments"):
        CampaignPlan((Stratum(0, "a", family, 0, 2),), 3, 0)


def test_stratum_converges_once_every_class_is_narrow_enough() -> None:
    assert not stratum_converged({}, margin=0.05, confidence=0.95)
    assert not stratum_converged({"benign": 50, "crash": 50}, margin=0.05, confidence=0.95)
    assert stratum_converged({"benign": 200, "crash": 200}, margin=0.05, confidence=0.95)
    # Absent classes still need their own (0 / n) interval to be narrow.
    assert not stratum_converged({"benign": 20}, margin=0.05, confidence=0.95)
    assert stratum_converged({"benign": 100}, margin=0.05, confidence=0.95)
    assert not stratum_converged({"not-injected": 1000}, margin=0.05, confidence=0.95)


def test_should_stop_needs_every_stratum() -> None:
    narrow = {"benign": 300, "sdc": 100}
    assert should_stop({"a": narrow, "b": narrow}, margin=0.05, confidence=0.95)
    assert not should_stop({"a": narrow, "b": {}}, margin=0.05, confidence=0.95)
    assert not should_stop({"a": narrow}, margin=0.01, confidence=0.95)
    assert not should_stop({}, margin=0.05, confidence=0.95)
