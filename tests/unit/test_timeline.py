"""Timelines and probes of golden runs: shares, idle stretches, where a context's moments lie."""

from __future__ import annotations

import pytest

from vmfault.classify import Observation, Outcome, classify
from vmfault.experiment.records import GoldenRun
from vmfault.faults.model import Context
from vmfault.faults.timeline import Activity, Probes, Slice, Timeline

W, U, K, IDLE = Activity.WORKLOAD, Activity.USER, Activity.KERNEL, Activity.IDLE


def timeline(*pieces: tuple[float, Activity]) -> Timeline:
    """Slices of the given lengths, one after another."""
    slices, at = [], 0.0
    for span, activity in pieces:
        slices.append(Slice(at, at + span, activity))
        at += span
    return Timeline(tuple(slices))


def test_activities_match_the_contexts_a_fault_asks_for() -> None:
    assert W.matches(Context.USER) and not U.matches(Context.USER)
    assert K.matches(Context.KERNEL) and IDLE.matches(Context.KERNEL)
    assert not W.matches(Context.KERNEL)
    assert all(a.matches(Context.ANY) for a in Activity)


def test_shares_and_the_longest_idle_stretch() -> None:
    line = timeline((0.2, K), (0.3, IDLE), (0.1, IDLE), (0.4, W), (0.25, IDLE))
    assert line.duration_s == pytest.approx(1.25)
    assert line.share(Context.USER) == pytest.approx(0.4 / 1.25)
    assert line.share(Context.KERNEL) == pytest.approx(0.85 / 1.25)
    assert line.longest_idle_s() == pytest.approx(0.4)  # the two idle slices in a row
    assert timeline((0.5, W)).longest_idle_s() == 0.0
    assert Timeline(()).share(Context.USER) == 0.0


def test_a_timeline_is_scaled_to_the_length_of_runs_without_halts() -> None:
    line = timeline((0.2, K), (0.6, W)).scaled(0.4)
    assert line.duration_s == pytest.approx(0.4)
    spans = [value for s in line.slices for value in (s.start_s, s.end_s)]
    assert spans == pytest.approx([0.0, 0.1, 0.1, 0.4])


def test_probes_place_a_moment_among_the_moments_of_its_context() -> None:
    # The workload runs in user mode in the second half only: user looks at 0.5 .. 0.9.
    looks = [(f / 10, K) for f in range(5)] + [(f / 10, W) for f in range(5, 10)]
    probes = Probes(tuple(looks))
    assert probes.share(Context.USER) == 0.5 and probes.hits(Context.USER) == 5
    # Six knots 0, .5, .6, .7, .8, .9, 1 split the user time into 6 equal parts.
    assert probes.fraction_of(Context.USER, 0.0) == 0.0
    assert probes.fraction_of(Context.USER, 0.5) == pytest.approx(1 / 6)
    assert probes.fraction_of(Context.USER, 0.65) == pytest.approx(2.5 / 6)
    assert probes.fraction_of(Context.USER, 1.0) == 1.0
    # Every moment of a context the probes never saw keeps its plain fraction.
    assert Probes(tuple(looks[:5])).fraction_of(Context.USER, 0.3) == 0.3
    # Monotonic, from 0 to 1.
    values = [probes.fraction_of(Context.USER, f / 100) for f in range(101)]
    assert values == sorted(values) and values[0] == 0.0 and values[-1] == 1.0


def test_probes_keep_the_last_looks_and_round_trip() -> None:
    probes = Probes(((0.1, W), (0.2, K)))
    more = probes.with_look(0.3, IDLE, keep=2)
    assert more.looks == ((0.2, K), (0.3, IDLE))
    assert Probes.from_json(more.to_json()) == more
    with pytest.raises(TypeError):
        Probes.from_json({"looks": "nope"})


def test_span_and_typical_length_of_a_golden_run() -> None:
    golden = GoldenRun("guest", ("w",), b"", b"", 0, None, 0.1, 0.12)
    assert golden.span_s == golden.typical_s == 0.12  # no run restored yet
    timed = GoldenRun("guest", ("w",), b"", b"", 0, None, 0.1, 0.12, restored_s=(0.3, 0.1, 0.2))
    assert timed.span_s == 0.3  # the longest: a shorter run draws its late moments again
    assert timed.typical_s == 0.2
    assert GoldenRun("g", ("w",), b"", b"", 0, None, 0.1, 0.1, restored_s=(0.1, 0.3)).typical_s == (
        pytest.approx(0.2)
    )


def test_a_stall_is_a_hang_with_its_rule_in_the_reason() -> None:
    golden = GoldenRun("guest", ("w",), b"ok\n", b"", 0, None, 0.1, 0.1)
    stalled = Observation(injected=True, finished=False, timed_out=True, stalled_s=0.05)
    verdict = classify(golden, stalled)
    assert verdict.outcome is Outcome.HANG
    assert verdict.reason.startswith("stalled: the vCPU sat idle for 0.05 s")
    assert "longer than any idle stretch of the golden run" in verdict.reason
    # Inside a failure-rate period a stall is no benign run that went on: it is a hang.
    in_period = Observation(injected=True, finished=False, timed_out=True, stalled_s=0.05,
                            period_s=1.0)  # fmt: skip
    assert classify(golden, in_period).outcome is Outcome.HANG
