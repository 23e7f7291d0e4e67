"""Device and VMM faults on real guests: virtio requests corrupted at the guest's kick and
stray device-register writes reach QEMU, whose reactions are vmm-error with its words;
bit flips in QEMU's own memory and threads are read back, a QEMU that dies of one is
vmm-error with its signal, and campaigns of both complete with every record classified and
no QEMU left."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import leaked_qemu_processes
from tests.integration.test_campaign import wait_for
from vmfault.classify import Outcome
from vmfault.errors import UsageError
from vmfault.experiment.pipeline import Experimenter
from vmfault.experiment.records import DeviceInjection, ExperimentRecord, VmmInjection
from vmfault.faults import FaultSpec
from vmfault.guest.image import GuestImage
from vmfault.machine.disks import fresh_disk

pytestmark = pytest.mark.vm

DISKIO = ["diskio", "--blocks", "32"]


@pytest.fixture(scope="module")
def diskio(image: GuestImage) -> Iterator[Experimenter]:
    """One experimenter on diskio over a fresh 8 MiB virtio disk."""
    with Experimenter.single(
        image, DISKIO, disks=[fresh_disk("data", "8M")], budget_factor=4.0
    ) as experimenter:
        yield experimenter


def device_injection(record: ExperimentRecord) -> DeviceInjection:
    injection = record.injection
    assert isinstance(injection, DeviceInjection), injection
    assert injection.injected, injection.reason
    return injection


def test_virtio_blk_requests_are_corrupted_and_qemu_reactions_are_vmm_errors(
    diskio: Experimenter,
) -> None:
    fault = FaultSpec.from_options(target="device:virtio-blk")
    records = [diskio.run(fault, seed=1, index=i) for i in range(5)]
    for record in records:
        injection = device_injection(record)
        assert injection.device == "virtio-blk" and injection.queue == 0
        assert injection.part in ("descriptor", "header")
        assert injection.readback == injection.after != injection.before
        assert injection.trigger.spec.startswith("kick:virtio-blk#")
        assert record.outcome is not Outcome.NOT_INJECTED
        if record.outcome is Outcome.VMM_ERROR:
            assert record.evidence.startswith("QEMU: "), record.evidence
            assert record.cause in ("qemu-error", "device-broken")
            assert injection.reaction == record.evidence
            assert injection.guest_outcome in {o.value for o in Outcome}  # kept beside it
        else:
            assert injection.reaction == "" and injection.guest_outcome == record.outcome.value
    reactions = [r for r in records if r.outcome is Outcome.VMM_ERROR]
    assert reactions, [(r.outcome, r.injection.location) for r in records]
    assert any("broken" in r.evidence or "qemu-system" in r.evidence for r in reactions)


def test_stray_register_writes_go_to_the_named_device_and_are_read_back(
    diskio: Experimenter,
) -> None:
    for target, device in (("device:serial", "serial"), ("device:mmio", None)):
        fault = FaultSpec.from_options(target=target)
        for index in range(3):
            record = diskio.run(fault, seed=2, index=index)
            injection = device_injection(record)
            assert injection.part == "register" and injection.readback is not None
            assert injection.device != "isa-debugcon"  # vmfault's own channel, never faulted
            if device is not None:
                assert injection.device == device and injection.space == "io"
                assert 0x3F8 <= (injection.address or 0) < 0x400
            assert record.outcome is not Outcome.NOT_INJECTED


def test_a_stray_pvpanic_write_is_a_panic_qemu_reports(diskio: Experimenter) -> None:
    # pvpanic reads 0x3 (the events it supports); flipping bit 1 writes 0x1: "panicked".
    fault = FaultSpec.from_options(target="device:pvpanic", bits="1")
    record = diskio.run(fault, seed=3, index=0)
    injection = device_injection(record)
    assert (injection.before, injection.after, injection.address) == (0x3, 0x1, 0x505)
    assert (record.outcome, record.cause, record.evidence) == (
        Outcome.CRASH, "panic", "GUEST_PANICKED",
    )  # fmt: skip


def test_a_device_the_machine_does_not_have_is_refused(diskio: Experimenter) -> None:
    fault = FaultSpec.from_options(target="device:virtio-net")
    with pytest.raises(UsageError, match="has no virtio-net device"):
        diskio.run(fault, seed=1, index=0)


def test_vmm_memory_flips_never_touch_guest_ram_and_read_back(diskio: Experimenter) -> None:
    ram = [r for r in diskio.machine.memory_map() if r.kind in ("ram", "rom")]
    for target in ("vmm:heap", "vmm:data"):
        fault = FaultSpec.from_options(target=target)
        record = diskio.run(fault, seed=4, index=0)
        if not diskio.testbed.alive:
            pytest.skip("QEMU died of the flip; the campaign test covers that")
        injection = record.injection
        assert isinstance(injection, VmmInjection) and injection.injected, injection.reason
        assert injection.readback == injection.after != injection.before
        assert injection.region == target.split(":")[1] and injection.host_address is not None
        host = [diskio.machine.hmp(f"gpa2hva {r.start:#x}") for r in ram]
        assert all(f"{injection.host_address:#x}" not in text for text in host)
        assert record.outcome is not Outcome.NOT_INJECTED


def test_a_qemu_that_dies_of_a_register_fault_is_a_vmm_error_with_its_signal(
    image: GuestImage,
) -> None:
    # A register of one of QEMU's threads set to zero kills QEMU in about one run in five
    # here; each death ends its testbed, so this goes on until one (30 tries at most).
    fault = FaultSpec.from_options(target="vmm:registers", bits="value:0")
    before = set(leaked_qemu_processes())  # the module's diskio machine may be running
    death: ExperimentRecord | None = None
    with Experimenter.single(image, ["checksum"]) as experimenter:
        for index in range(30):
            record = experimenter.run(fault, seed=9, index=index)
            injection = record.injection
            assert isinstance(injection, VmmInjection) and injection.thread and injection.tid
            if not experimenter.testbed.alive:
                death = record
                break
    assert death is not None, "no register set to zero killed QEMU in 30 runs"
    assert death.outcome is Outcome.VMM_ERROR, death.reason
    assert death.cause is not None and death.cause.startswith("SIG"), death.cause
    assert death.evidence.startswith(f"QEMU: killed by {death.cause}"), death.evidence
    assert death.injection.injected and death.injection.after == 0
    assert set(leaked_qemu_processes()) <= before


CAMPAIGNS = {
    "device": """
[campaign]
name = "device"
seed = 1
experiments = 2
workers = 2

[guest]
workload = "diskio"
args = ["--blocks", "32"]

[[guest.disks]]
name = "data"
size = "8M"

[[faults]]
name = "virtio-blk"
target = "device:virtio-blk"
experiments = 4

[[faults]]
name = "mmio"
target = "device:mmio"

[[faults]]
name = "serial"
target = "device:serial"

[[faults]]
target = "none"
experiments = 2
""",
    "vmm": """
[campaign]
name = "vmm"
seed = 9
experiments = 2
workers = 2

[guest]
workload = "checksum"

[[faults]]
name = "registers"
target = "vmm:registers"
bits = "value:0"
experiments = 4

[[faults]]
name = "heap"
target = "vmm:heap"

[[faults]]
name = "data"
target = "vmm:data"

[[faults]]
target = "none"
experiments = 2
""",
}


@pytest.mark.parametrize("name", sorted(CAMPAIGNS))
def test_a_campaign_completes_with_every_record_classified_and_no_qemu_left(
    image: GuestImage, tmp_path: Path, name: str
) -> None:
    before = set(leaked_qemu_processes())  # the module's diskio machine may be running
    file = tmp_path / f"{name}.toml"
    file.write_text(CAMPAIGNS[name])
    run = subprocess.run(
        [sys.executable, "-m", "vmfault", "campaign", "run", str(file), "--json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    status = subprocess.run(
        [sys.executable, "-m", "vmfault", "campaign", "status", f"{name}.db", "--json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    data = json.loads(status.stdout)
    assert data["done"] == data["total"] and data["infra_failures"] == 0
    assert data["strata"]["none"]["outcomes"] == {"benign": data["strata"]["none"]["done"]}
    if name == "device":  # every request fault reached a kick of diskio's disk
        with sqlite3.connect(tmp_path / f"{name}.db") as db:
            why = db.execute(
                "SELECT i.reason FROM injection i JOIN experiment e USING (experiment_id) "
                "WHERE e.stratum = 'virtio-blk' AND i.injected = 0"
            ).fetchall()
        assert not why, why
    with sqlite3.connect(tmp_path / f"{name}.db") as db:
        rows = db.execute(
            "SELECT o.class, o.cause, o.evidence, i.kind, i.injected FROM outcome o "
            "JOIN injection i ON i.experiment_id = o.experiment_id AND i.ordinal = 0"
        ).fetchall()
    assert len(rows) == data["total"]
    for outcome, cause, evidence, kind, injected in rows:
        assert outcome in {o.value for o in Outcome if o is not Outcome.INFRA_FAILURE}
        if outcome == "vmm-error":
            assert evidence.startswith("QEMU: ") and cause, (cause, evidence)
            assert kind == name and injected  # the fault that QEMU reacted to is kept
    grouped = sum(group["count"] for group in data["vmm_reactions"])
    assert grouped == data["outcomes"].get("vmm-error", 0)
    # Workers' QEMUs end with their workers, a moment after the coordinator.
    assert wait_for(lambda: set(leaked_qemu_processes()) <= before, 30), leaked_qemu_processes()


NETWORK_CAMPAIGN = """
[campaign]
name = "net"
seed = 1
experiments = 3
workers = 1
budget = "10s"

[[machine]]
name = "server"
workload = "netecho"
args = ["--serve"]
daemon = true

[[machine]]
name = "client"
workload = "netecho"
args = ["--connect", "server", "--count", "20", "--timeout-ms", "2000"]

[[faults]]
name = "net"
target = "device:virtio-net"
machine = "client"
"""


def test_virtio_net_requests_of_a_networked_machine_are_corrupted(
    image: GuestImage, tmp_path: Path
) -> None:
    before = set(leaked_qemu_processes())  # the module's diskio machine may be running
    file = tmp_path / "net.toml"
    file.write_text(NETWORK_CAMPAIGN)
    run = subprocess.run(
        [sys.executable, "-m", "vmfault", "campaign", "run", str(file), "--json"],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    with sqlite3.connect(tmp_path / "net.db") as db:
        rows = db.execute(
            "SELECT o.class, i.kind, i.injected, i.reason, i.location, i.machine FROM outcome o "
            "JOIN injection i ON i.experiment_id = o.experiment_id AND i.ordinal = 0"
        ).fetchall()
    assert len(rows) == 3
    for outcome, kind, injected, reason, location, machine in rows:
        assert (kind, injected, machine) == ("device", 1, "client"), reason
        assert location.startswith("virtio-net queue "), location
        assert outcome != "infra-failure"
    assert wait_for(lambda: set(leaked_qemu_processes()) <= before, 30), leaked_qemu_processes()
