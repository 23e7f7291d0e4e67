"""Control runs on real guests: nothing injected, every run benign on every built-in workload,
and a campaign with a control family reports its false-positive rate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vmfault.arch import Arch
from vmfault.classify import Outcome
from vmfault.experiment.pipeline import Experimenter
from vmfault.experiment.records import ControlInjection, TriggerPoint
from vmfault.faults import FaultSpec
from vmfault.guest.image import GuestImage
from vmfault.guest.workloads import BUILTIN_WORKLOADS

pytestmark = pytest.mark.vm

RUNS = 10
"""Control runs per workload."""


def vmfault(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )


@pytest.mark.parametrize(
    ("arch", "workload"),
    [
        *((Arch.X86_64, name) for name in ("checksum", "crc32", "foo", "matmul")),
        *((Arch.AARCH64, name) for name in ("checksum", "foo")),
    ],
    indirect=["arch"],
    ids=str,
)
def test_control_runs_are_all_benign(arch_image: GuestImage, workload: str) -> None:
    assert workload in BUILTIN_WORKLOADS
    control = FaultSpec.from_options(target="none")
    with Experimenter.single(arch_image, [workload]) as experimenter:
        records = [experimenter.run(control, seed=11, index=i) for i in range(RUNS)]
        golden = experimenter.golden
    for record in records:
        assert record.outcome is Outcome.BENIGN, (record.reason, record.evidence)
        (injection,) = record.injections
        assert isinstance(injection, ControlInjection)
        assert (injection.target, injection.mode, injection.injected) == ("none", "none", True)
        assert injection.trigger == TriggerPoint(spec="none")
        assert record.latency is None
        assert record.output == golden.output
        assert record.spec["target"] == "none"


CAMPAIGN = """
[campaign]
name = "controlled"
seed = 5
experiments = 6
workers = 2

[guest]
workload = "checksum"
args = ["--self-check"]

[[faults]]
name = "gpr"
target = "register:gpr"
context = "user"

[[faults]]
target = "none"
experiments = 8
"""


def test_a_campaign_reports_the_false_positive_rate_of_its_control_family(
    image: GuestImage, tmp_path: Path
) -> None:
    file = tmp_path / "controlled.toml"
    file.write_text(CAMPAIGN)
    run = vmfault("campaign", "run", str(file), "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["false_positive"]["runs"] == 8
    status = vmfault("campaign", "status", "controlled.db", "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)
    assert (data["total"], data["done"]) == (14, 14)
    assert data["strata"]["none"]["outcomes"] == {"benign": 8}
    found = data["false_positive"]
    assert found == {
        "runs": 8,
        "failures": 0,
        "rate": 0.0,
        "interval": [0.0, pytest.approx(0.3244, abs=1e-4)],  # Wilson 95 % of 0 in 8, by hand
        "strata": ["none"],
    }
    table = vmfault("campaign", "status", "controlled.db", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert table.stdout.index("false-positive rate") < table.stdout.index("controlled: 14 of 14")


def test_inject_takes_a_control_target(image: GuestImage, tmp_path: Path) -> None:
    result = vmfault("inject", "-w", "checksum", "--target", "none", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["outcome"] == "benign", data["reason"]
    assert (data["fault"]["target"], data["fault"]["mode"], data["trigger"]["spec"]) == (
        "none",
        "none",
        "none",
    )
    refused = vmfault("inject", "-w", "checksum", "--target", "none", "--bits", "3", cwd=tmp_path)
    assert refused.returncode == 2
    assert "--bits does not apply to a control run" in refused.stderr
