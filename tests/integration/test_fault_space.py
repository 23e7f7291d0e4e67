"""The fault space as the campaign says: faults land over the whole execution, context faults
in their context, memory:process over the workload's life; a stalled guest is a hang at once."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scipy import stats

from vmfault.classify import Outcome
from vmfault.experiment.pipeline import Experimenter
from vmfault.faults import FaultSpec
from vmfault.guest.image import GuestImage, ImageSpec, UserWorkload
from vmfault.session import prepare_image

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def checksum(image: GuestImage) -> Iterator[Experimenter]:
    """One experimenter on checksum, restored per experiment."""
    with Experimenter.single(image, ["checksum"]) as experimenter:
        yield experimenter


def test_the_golden_run_is_timed_from_the_snapshot(checksum: Experimenter) -> None:
    golden = checksum.golden
    assert len(golden.restored_s) >= 3
    assert all(0.2 * golden.host_s < s < 5 * golden.host_s for s in golden.restored_s)
    assert golden.span_s == max(golden.restored_s)
    timeline = checksum.testbed.machine().timeline
    assert timeline is not None and len(timeline.slices) > 10
    assert timeline.duration_s == pytest.approx(golden.typical_s)


@pytest.mark.parametrize(
    ("options", "expect"),
    [
        ({"target": "register:rip", "bits": "40", "context": "user"}, Outcome.CRASH),
        ({"target": "memory:ram"}, None),
    ],
)
def test_faults_land_with_hardly_any_not_injected(
    checksum: Experimenter, options: dict[str, Any], expect: Outcome | None
) -> None:
    spec = FaultSpec.from_options(**options)
    records = [checksum.run(spec, seed=21, index=i) for i in range(20)]
    missed = [r.reason for r in records if r.outcome is Outcome.NOT_INJECTED]
    assert len(missed) <= 1, missed
    placed = [r for r in records if r.outcome is not Outcome.NOT_INJECTED]
    for record in placed:
        progress = record.injection.trigger.progress
        assert progress is not None and 0.0 <= progress <= 1.0
        if spec.context.value == "user":
            assert record.injection.trigger.user_mode
    if expect is not None:  # a rip flip in the workload's own code: nearly always a crash
        crashed = sum(r.outcome is expect for r in placed)
        assert crashed >= 0.8 * len(placed), [r.reason for r in placed]


def test_memory_process_faults_cover_the_workload_life_uniformly(checksum: Experimenter) -> None:
    spec = FaultSpec.from_options(target="memory:process")
    records = [checksum.run(spec, seed=5, index=i) for i in range(40)]
    missed = [r.reason for r in records if r.outcome is Outcome.NOT_INJECTED]
    assert len(missed) <= 1, missed
    progress = [r.injection.trigger.progress for r in records if r.injection.injected]
    landed = [p for p in progress if p is not None]
    assert len(landed) == len(progress)
    assert stats.kstest(landed, "uniform").pvalue > 0.01, sorted(landed)


BLOCKING_C = """
#include <stdio.h>
#include <unistd.h>
volatile unsigned long block = 0;
int main(void) {
    unsigned long i, x = 0;
    for (i = 0; i < 3000000; i++) x += i;
    if (block) pause();   /* a corrupted flag: the workload waits for a signal forever */
    printf("%lu\\n", x);
    return 0;
}
"""


def test_a_guest_left_idle_is_a_hang_long_before_its_budget(tmp_path: Path) -> None:
    source = tmp_path / "blocking.c"
    source.write_text(BLOCKING_C)
    image = prepare_image(ImageSpec(user_workloads=(UserWorkload("blocking", source),)))
    with Experimenter.single(image, ["blocking"], budget_factor=30.0) as experimenter:
        budget = 30.0 * experimenter.golden.typical_s
        spec = FaultSpec.from_options(target="memory:@block", bits="0", trigger="exec:main")
        record = experimenter.run(spec, seed=1)
    assert record.injection.injected, record.reason
    assert record.outcome is Outcome.HANG
    assert record.reason.startswith("stalled: the vCPU sat idle"), record.reason
    assert record.phases_s["observe"] < budget / 3


@pytest.mark.parametrize("budget", ["0", "-1"])
def test_a_budget_that_is_not_positive_is_one_line_exit_2(image: GuestImage, budget: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vmfault", "inject", "-w", "checksum", "--target",
         "register:rip", "--budget", budget],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "hang budget" in lines[0], result.stderr
