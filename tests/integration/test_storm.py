"""Memory fault storms: flips on a schedule in guest time, each one verified."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest

from vmfault.classify import Outcome
from vmfault.experiment import Experimenter
from vmfault.faults.schedule import Schedule
from vmfault.guest.image import GuestImage

pytestmark = pytest.mark.vm


def vmfault(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vmfault", *args], capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


def test_ten_flips_ten_ms_apart_in_guest_time(image: GuestImage) -> None:
    result = vmfault("storm", "--workload", "checksum", "--flips", "10", "--interval", "10ms",
                     "--region", "ram", "--seed", "3", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    flips = data["flips"]
    assert len(flips) == 10
    for flip in flips:
        assert flip["injected"] and flip["before"] != flip["after"]
        assert flip["readback"] == flip["after"]
    gaps = [b["time_s"] - a["time_s"] for a, b in itertools.pairwise(flips)]
    assert all(abs(gap - 0.010) <= 0.002 for gap in gaps), gaps
    # The first run after a restore shares the CPU with QEMU rebuilding its code cache.
    assert 0.008 <= flips[0]["time_s"] <= 0.015
    assert data["outcome"] in {o.value for o in Outcome}
    assert data["timing"]["max_error_s"] <= 0.002


def test_storms_in_every_region_verify_each_flip(image: GuestImage) -> None:
    with Experimenter(image, ["checksum"]) as experimenter:
        for region in ("kernel-text", "kernel-data", "process"):
            record = experimenter.run_storm(flips=3, schedule=Schedule.parse("12ms"),
                                            region=region, seed=1)  # fmt: skip
            made = [f for f in record.flips if f.injected]
            assert made, region
            for flip in made:
                assert flip.before is not None and flip.after is not None
                assert flip.before ^ flip.after == 1 << flip.bit
                assert flip.readback == flip.after
            if region == "process":
                assert all(f.virtual is not None for f in made)


def test_idle_system_storm(image: GuestImage) -> None:
    result = vmfault("storm", "--idle", "0.2s", "--flips", "5", "--interval", "poisson:100",
                     "--region", "kernel-data", "--seed", "2", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert len(data["flips"]) == 5
    assert data["outcome"] in ("benign", "crash", "hang")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--interval", "fast"], "invalid interval"),
        (["--interval", "50ms..5ms"], "invalid interval"),
        (["--interval", "10ms", "--region", "heap"], "invalid region"),
        ([], "exactly one of --interval and --rate"),
    ],
)
def test_bad_storm_input_is_one_line(args: list[str], message: str) -> None:
    result = vmfault("storm", "--workload", "checksum", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
