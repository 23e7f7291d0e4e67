"""Disk faults on real guests: bad blocks, errors and corruption reach diskio through QEMU's
block layer, are recorded request by request, and never outlive their experiment."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmfault.classify import Activation, Outcome
from vmfault.experiment.pipeline import Experimenter
from vmfault.experiment.records import DiskInjection, ExperimentRecord
from vmfault.faults import FaultSpec
from vmfault.guest.image import GuestImage
from vmfault.machine.disks import fresh_disk

pytestmark = pytest.mark.vm

BLOCKS = 32
"""diskio's blocks: it reads and writes sectors 0 .. 8 * BLOCKS - 1 of the disk."""


@pytest.fixture(scope="module")
def diskio(image: GuestImage) -> Iterator[Experimenter]:
    """One experimenter on diskio over a fresh 8 MiB disk (restored per experiment)."""
    disks = [fresh_disk("data", "8M")]
    argv = ["diskio", "--blocks", str(BLOCKS)]
    with Experimenter.single(image, argv, disks=disks, budget_factor=4.0) as experimenter:
        yield experimenter


def disk_injection(record: ExperimentRecord) -> DiskInjection:
    injection = record.injection
    assert isinstance(injection, DiskInjection), injection
    assert injection.injected, injection.reason
    return injection


def test_a_bad_block_diskio_touches_is_detected_with_its_sector(diskio: Experimenter) -> None:
    assert diskio.golden.disks == {"data": "vda"}
    fault = FaultSpec.from_options(target="disk:bad-block", trigger="request:1")
    for index in range(2):
        record = diskio.run(fault, seed=5, index=index)
        injection = disk_injection(record)
        sector = injection.first_sector
        assert sector is not None and sector == injection.last_sector
        assert 0 <= sector < 8 * BLOCKS  # a touched sector: diskio reads or writes it
        assert (record.outcome, record.activation) == (Outcome.DETECTED, Activation.MANIFESTED)
        failed = [r for r in injection.requests if r.action == "failed"]
        assert failed and injection.requests_faulted == len(failed) == injection.counts["failed"]
        first = failed[0]
        assert first.sector <= sector < first.sector + first.sectors and first.errno == "EIO"
        assert record.cause == "io-error"
        assert f"sector {first.sector} " in record.evidence  # the kernel's line
        assert f"(sector {first.sector})" in record.stderr  # diskio's own report
        assert record.latency is not None


def test_bad_blocks_diskio_never_touches_are_benign_and_not_activated(
    diskio: Experimenter,
) -> None:
    fault = FaultSpec.from_options(target="disk:bad-block", sectors="12000-12287",
                                   trigger="request:1")  # fmt: skip
    record = diskio.run(fault, seed=5, index=0)
    injection = disk_injection(record)
    assert (injection.first_sector, injection.last_sector) == (12000, 12287)
    assert (record.outcome, record.activation) == (Outcome.BENIGN, Activation.NOT_ACTIVATED)
    assert (injection.requests_seen, injection.requests_faulted, injection.requests) == (0, 0, ())


def test_a_corruption_is_read_back_and_detected_by_verification(diskio: Experimenter) -> None:
    fault = FaultSpec.from_options(target="disk:corrupt", trigger="exec:fsync", bits="3")
    record = diskio.run(fault, seed=2, index=0)
    injection = disk_injection(record)
    assert injection.before is not None and injection.after == injection.before ^ 8
    assert injection.readback == injection.after
    assert injection.offset is not None and injection.first_sector == injection.offset // 512
    assert (record.outcome, record.activation) == (Outcome.DETECTED, Activation.MANIFESTED)
    assert injection.counts.get("corrupted", 0) >= 1
    assert f"(sector {injection.first_sector})" in record.evidence  # diskio names it


def test_write_errors_carry_their_errno_once(diskio: Experimenter) -> None:
    fault = FaultSpec.from_options(target="disk:write-error", sectors="any", errno="ENOSPC",
                                   trigger="request:40", once=True)  # fmt: skip
    record = diskio.run(fault, seed=3, index=0)
    injection = disk_injection(record)
    assert record.outcome is Outcome.DETECTED
    assert injection.counts == {"failed": 1}
    (failed,) = injection.requests
    assert (failed.op, failed.errno) == ("write", "ENOSPC") and failed.number >= 40
    assert record.to_json()["disk"]["requests"][0]["errno"] == "ENOSPC"


def test_latency_delays_the_requests_it_reaches(diskio: Experimenter) -> None:
    fault = FaultSpec.from_options(target="disk:latency", sectors="any", delay="4ms",
                                   probability=0.2, trigger="request:1")  # fmt: skip
    record = diskio.run(fault, seed=4, index=0)
    injection = disk_injection(record)
    delayed = [r for r in injection.requests if r.action == "delayed"]
    assert delayed and all(r.delay_s == 0.004 for r in delayed)
    assert injection.requests_faulted == injection.counts["delayed"]
    assert injection.requests_seen > injection.requests_faulted  # the others passed
    assert record.activation is not Activation.NOT_ACTIVATED


CAMPAIGN = """
[campaign]
name = "disks"
seed = 3
experiments = 9
budget = 4.0

[guest]
workload = "diskio"
args = ["--blocks", "32", "--no-verify"]

[[guest.disks]]
name = "data"
size = "8M"

[[faults]]
name = "corrupt"
target = "disk:corrupt"
trigger = "exec:fsync"
experiments = 3

[[faults]]
name = "write"
target = "disk:write-error"
sectors = "any"
probability = 0.5
experiments = 3

[[faults]]
target = "none"
experiments = 4
"""


def test_a_campaign_of_corruption_write_errors_and_controls(
    image: GuestImage, tmp_path: Path
) -> None:
    path = tmp_path / "disks.toml"
    path.write_text(CAMPAIGN)
    db = tmp_path / "disks.db"
    run = [sys.executable, "-m", "vmfault", "campaign", "run", str(path), "--db", str(db)]
    result = subprocess.run(run, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    export = tmp_path / "disks.csv"
    exported = subprocess.run(
        [sys.executable, "-m", "vmfault", "campaign", "export", str(db), "-o", str(export)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(export.open()))
    by_stratum: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_stratum.setdefault(row["stratum"], []).append(row)
    # Every control run is benign: no write of another experiment leaked into its disk
    # (diskio's first line digests the blocks as it found them).
    assert [r["outcome"] for r in by_stratum["none"]] == ["benign"] * 4
    assert all(r["disk"] == "" for r in by_stratum["none"])
    corrupt = by_stratum["corrupt"]
    assert {r["outcome"] for r in corrupt} == {"sdc"}  # --no-verify: silent
    assert all(r["disk_fault"] == "corrupt" and r["sector_first"] != "" for r in corrupt)
    for row in by_stratum["write"]:
        assert row["disk_fault"] == "write-error" and row["errno"] == "EIO"
        faulted = int(row["requests_faulted"])
        assert (row["outcome"] == "benign") == (faulted == 0)
    summary = subprocess.run(
        [sys.executable, "-m", "vmfault", "campaign", "status", str(db), "--json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert json.loads(summary.stdout)["false_positive"]["failures"] == 0
    report = tmp_path / "disks.html"
    made = subprocess.run(
        [sys.executable, "-m", "vmfault", "report", str(db), "-o", str(report)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "Disk faults" in report.read_text()
