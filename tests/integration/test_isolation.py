"""Isolation campaigns on real guests: faults in a target machine while a control machine
runs beside it. A small campaign of page-table and memory faults keeps the control to its
golden run and gives a runtime verdict with its interval; a validation campaign that aims
faults at the control (`check = true`) shows the check fires."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import leaked_qemu_processes
from vmfault.guest.image import GuestImage

pytestmark = pytest.mark.vm

MACHINES = """
[campaign]
name = "{name}"
seed = 3
experiments = {experiments}
workers = 1
network = false

[[machine]]
name = "target"
workload = "checksum"

[[machine]]
name = "control"
workload = "matmul"

[isolation]
control = "control"
margin = 0.05
"""

FAULTS = """
baseline = 0.25

[[faults]]
name = "page-table"
target = "memory:page-table"
machine = "target"

[[faults]]
name = "memory"
target = "memory:process"
machine = "target"
"""

AIMED = """
baseline = 0.0
check = true

[[faults]]
name = "page-table"
target = "memory:page-table"
machine = "target"
experiments = 1

[[faults]]
name = "aimed"
target = "register:rip"    # a null instruction pointer in the control's main: it must crash
bits = "value:0x0"
trigger = "exec:main"
machine = "control"
experiments = 2
"""


def vmfault(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args],
        capture_output=True, text=True, timeout=600, check=False, cwd=cwd,
    )  # fmt: skip


def run_campaign(tmp_path: Path, name: str, experiments: int, body: str) -> dict[str, Any]:
    """Run the campaign, then return `campaign status --json`."""
    path = tmp_path / f"{name}.toml"
    path.write_text(MACHINES.format(name=name, experiments=experiments) + body)
    db = tmp_path / f"{name}.db"
    done = vmfault("campaign", "run", str(path), "--db", str(db), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    status = vmfault("campaign", "status", str(db), "--json", cwd=tmp_path)
    assert status.returncode == 0, status.stderr
    data: dict[str, Any] = json.loads(status.stdout)
    shown = vmfault("campaign", "status", str(db), cwd=tmp_path)
    assert "isolation of control" in shown.stdout
    report = tmp_path / f"{name}.html"
    made = vmfault("report", str(db), "-o", str(report), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    data["html"] = report.read_text()
    return data


def test_faults_in_the_target_leave_the_control_alone(image: GuestImage, tmp_path: Path) -> None:
    data = run_campaign(tmp_path, "isolated", 16, FAULTS)
    assert data["done"] == 16
    isolation = data["isolation"]
    assert isolation["violations"] == 0, isolation["examples"]
    placed = 12 - data["outcomes"].get("not-injected", 0)  # a fault not placed: no runtime
    assert isolation["runs"] == {"checked": 16, "faulted": placed, "baseline": 4}
    assert data["strata"]["baseline"]["outcomes"] == {"benign": 4}  # the baseline is benign
    assert data["false_positive"]["failures"] == 0
    low, high = isolation["interval"]
    assert low <= isolation["runtime_ratio"] <= high
    assert isinstance(isolation["equivalent"], bool)
    assert isolation["equivalent"] == (low >= 0.95 and high <= 1.05)
    assert isolation["method"] == "bootstrap-median-ratio" and isolation["runtime"] == "vcpu"
    assert isolation["host_load"]["min"] <= isolation["host_load"]["max"]
    if len(os.sched_getaffinity(0)) >= 2:  # a core for each of the two machines: pinned
        assert len(isolation["host_cpus"]) == 1
    machines = data["machines"]
    assert machines["control"]["outcomes"].get("benign") == 16
    assert "The control&#x27;s runtimes" in data["html"] or "The control's runtimes" in data["html"]
    assert not leaked_qemu_processes()


def test_a_fault_aimed_at_the_control_is_a_violation(image: GuestImage, tmp_path: Path) -> None:
    data = run_campaign(tmp_path, "aimed", 3, AIMED)
    isolation = data["isolation"]
    assert isolation["check"] == {"strata": ["aimed"], "experiments": 2, "caught": 2}
    assert isolation["violations"] == 2
    for example in isolation["examples"]:
        assert example["aimed"] and example["stratum"] == "aimed"
        assert "control's run was crash" in example["reason"]
        assert example["evidence"]  # the console line or signal behind it
    assert data["strata"]["aimed"]["outcomes"] == {"vmm-error": 2}  # recorded as vmm-error
    assert "Every isolation violation" in data["html"]
    assert not leaked_qemu_processes()
