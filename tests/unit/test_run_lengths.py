"""Spans moments are drawn over follow the runs of late: the golden span until enough runs
reached their exit, then a quantile of theirs; a process window ends with the span."""

from __future__ import annotations

import pytest

from vmfault.experiment.testbed import RunLengths


def test_the_golden_span_until_enough_runs_are_known() -> None:
    lengths = RunLengths()
    for _ in range(RunLengths.LEAST - 1):
        lengths.note(0.9, 1.0)
    assert lengths.span_s(0.25) == 0.25
    lengths.note(0.9, 1.0)
    assert lengths.span_s(0.25) == 0.9


def test_one_stretched_run_does_not_set_the_span() -> None:
    lengths = RunLengths()
    for exit_s in [0.20, 0.21, 0.22, 0.23, 0.24, 0.25, 0.26, 0.27, 0.28, 3.0]:
        lengths.note(exit_s, 1.0)
    assert lengths.span_s(0.1) == pytest.approx(0.27)  # the 3rd quartile, not the 3 s run


def test_a_span_never_shorter_than_the_golden_runs() -> None:
    lengths = RunLengths()
    for _ in range(10):
        lengths.note(0.1, 1.0)
    assert lengths.span_s(0.25) == 0.25


def test_only_the_last_runs_count() -> None:
    lengths = RunLengths(keep=5)
    for _ in range(5):
        lengths.note(2.0, 1.0)
    for _ in range(5):
        lengths.note(0.3, 1.0)
    assert lengths.span_s(0.1) == 0.3


def test_a_process_window_ends_with_the_span() -> None:
    lengths = RunLengths()
    assert lengths.window_s(0.05, 0.25) == (0.05, 0.25)
    for _ in range(RunLengths.LEAST):
        lengths.note(0.4, 1.0)
    assert lengths.window_s(0.05, 0.25) == (0.05, 0.4)


def test_an_exec_after_the_span_gets_a_window_as_long_as_the_span() -> None:
    assert RunLengths().window_s(0.4, 0.25) == (0.4, 0.65)


def test_a_run_many_golden_spans_long_is_not_noted() -> None:
    lengths = RunLengths()
    for _ in range(10):
        lengths.note(5.0, 1.0)  # a host that stalled, not the workload's pace
    assert lengths.span_s(1.0) == 1.0
