"""Disk faults without a VM: which options combine, what the policy does to requests, the
records and their JSON, the kernel's reactions, the report's disk section."""

from __future__ import annotations

import errno
import json
import random
import tomllib
from pathlib import Path

import pytest

from vmfault.campaign.spec import CampaignSpec
from vmfault.classify import Activation, Observation, Outcome, classify
from vmfault.errors import UsageError
from vmfault.experiment.kinds.disk import DiskPolicy, merge_sectors
from vmfault.experiment.records import (
    DISK_COLUMNS,
    DiskInjection,
    DiskRequest,
    ExperimentRecord,
    GoldenRun,
    MachineRun,
    TriggerPoint,
    disk_columns,
    injection_from_fields,
)
from vmfault.faults import (
    DiskFault,
    FaultSpec,
    OptionError,
    SectorChoice,
    Sectors,
    TriggerKind,
    plan,
)
from vmfault.machine.nbd import TapAction, TapOp, TapRequest
from vmfault.report.data import ReportRows
from vmfault.stats import IntervalMethod
from vmfault.store import SQLiteStore


def options(**given: object) -> FaultSpec:
    return FaultSpec.from_options(**given)  # type: ignore[arg-type]


def test_disk_options_make_a_disk_fault() -> None:
    spec = options(target="disk:read-error@data", errno="enospc", probability=0.5,
                   trigger="request:5", sectors="2048-2055", once=True)  # fmt: skip
    assert spec.disk == DiskFault("read-error", "data", Sectors(SectorChoice.RANGE, 2048, 2055),
                                  "ENOSPC", probability=0.5, once=True)  # fmt: skip
    assert (spec.trigger.kind, spec.trigger.count) == (TriggerKind.REQUEST, 5)
    assert spec.to_json()["disk"] == {
        "fault": "read-error", "disk": "data", "sectors": "2048-2055", "errno": "ENOSPC",
        "delay_s": 0.0, "jitter_s": 0.0, "probability": 0.5, "once": True,
    }  # fmt: skip
    latency = options(target="disk:latency", disk="log", delay="20ms", jitter="5ms")
    assert latency.disk is not None and latency.target.spelling == "disk:latency@log"
    assert (latency.disk.delay_s, latency.disk.jitter_s) == (0.02, 0.005)
    assert options(target="disk:latency").disk == DiskFault("latency", delay_s=0.05)
    default = options(target="disk:bad-block")
    assert default.disk == DiskFault("bad-block")
    assert default.disk is not None and default.disk.sectors.choice is SectorChoice.TOUCHED
    flush = options(target="disk:flush-error")
    assert flush.disk is not None and flush.disk.sectors.choice is SectorChoice.ANY
    corrupt = options(target="disk:corrupt", bits="k2", trigger="exec:fsync")
    assert corrupt.bits.count == 2
    assert Sectors.parse("0x800").spelling == "2048" and Sectors.parse("any").spelling == "any"


@pytest.mark.parametrize(
    ("given", "key", "message"),
    [
        ({"target": "disk:bad-blok"}, "target", "unknown disk fault 'bad-blok'"),
        ({"target": "disk:read-error", "errno": "EFOO"}, "errno", "unknown errno 'EFOO'"),
        ({"target": "disk:latency", "errno": "EIO"}, "errno", "does not apply to disk:latency"),
        ({"target": "disk:flush-error", "sectors": "1-2"}, "sectors", "carries no sectors"),
        ({"target": "disk:read-error", "sectors": "5-2"}, "sectors", "invalid sectors '5-2'"),
        ({"target": "disk:read-error", "delay": "1ms"}, "delay", "only disk:latency"),
        ({"target": "disk:corrupt", "probability": 0.5}, "probability", "stored data"),
        ({"target": "disk:corrupt", "once": True}, "once", "stored data"),
        ({"target": "disk:stall", "bits": "3"}, "bits", "apply to disk:corrupt"),
        ({"target": "disk:corrupt", "trigger": "request:2"}, "trigger", "guest halted"),
        ({"target": "disk:read-error", "context": "user"}, "context", "disk faults"),
        ({"target": "disk:read-error", "flips": 3}, "flips", "disk faults"),
        ({"target": "disk:write-error@a", "disk": "b"}, "disk", "disagrees"),
        ({"target": "disk:read-error", "probability": 1.5}, "probability", "is outside"),
        ({"target": "register:rip", "sectors": "1"}, "sectors", "only to disk faults"),
        ({"target": "none", "errno": "EIO"}, "errno", "only to disk faults"),
        ({"target": "register:rip", "trigger": "request:2"}, "trigger", "disk faults only"),
    ],
)
def test_disk_options_that_do_not_combine(given: dict[str, object], key: str, message: str) -> None:
    with pytest.raises(OptionError, match=message) as caught:
        options(**given)
    assert caught.value.key == key


def test_the_disk_a_fault_goes_to() -> None:
    sizes = {"data": 32768}
    assert DiskFault("bad-block").disk_of(sizes) == "data"
    assert DiskFault("bad-block", sectors=Sectors.parse("32767")).disk_of(sizes) == "data"
    for fault, sizes_given, message in [
        (DiskFault("bad-block"), {}, "needs a disk"),
        (DiskFault("bad-block"), {"a": 8, "b": 8}, "which disk"),
        (DiskFault("bad-block", "c"), {"a": 8}, "no disk named 'c'"),
        (DiskFault("bad-block", sectors=Sectors.parse("32760-32768")), sizes, "outside disk"),
    ]:
        with pytest.raises(UsageError, match=message):
            fault.disk_of(sizes_given)


def test_plan_of_disk_faults() -> None:
    failing = plan(options(target="disk:bad-block"), seed=1, index=0, golden_duration_s=1.0,
                   golden_instructions=None)  # fmt: skip
    assert (failing.width, failing.bits.mask) == (0, 0) and failing.trigger_time_s is not None
    corrupting = plan(options(target="disk:corrupt", bits="3"), seed=1, index=0,
                      golden_duration_s=1.0, golden_instructions=None)  # fmt: skip
    assert (corrupting.width, corrupting.bits.mask) == (64, 8)
    counted = plan(options(target="disk:stall", trigger="request:3"), seed=1, index=0,
                   golden_duration_s=1.0, golden_instructions=None)  # fmt: skip
    assert counted.trigger_time_s is None


def request(number: int, op: TapOp, sector: int, sectors: int = 8) -> TapRequest:
    return TapRequest(number, op, sector * 512, sectors * 512, 1000.0 + number)


def test_policy_fails_the_requests_that_reach_its_sectors() -> None:
    fault = DiskFault("bad-block", sectors=Sectors.parse("20-23"))
    policy = DiskPolicy(fault, first=20, last=23, from_request=2, rng=random.Random(1))
    decisions = [
        policy(request(1, TapOp.READ, 16)),  # before the Nth request
        policy(request(2, TapOp.READ, 8)),  # sectors 8-15: elsewhere
        policy(request(3, TapOp.READ, 16)),  # 16-23: reaches 20-23
        policy(request(4, TapOp.FLUSH, 0, 0)),  # no sectors
        policy(request(5, TapOp.WRITE, 23, 1)),
    ]
    assert [d.action for d in decisions] == [TapAction.PASS, TapAction.PASS, TapAction.FAIL,
                                             TapAction.PASS, TapAction.FAIL]  # fmt: skip
    assert decisions[2].errno == errno.EIO
    assert (policy.seen, policy.faulted, dict(policy.counts)) == (2, 2, {"failed": 2})
    assert [(r.number, r.op, r.sector, r.sectors, r.errno) for r in policy.requests] == [
        (3, "read", 16, 8, "EIO"), (5, "write", 23, 1, "EIO"),
    ]  # fmt: skip
    assert policy.first_faulted_s == 1003.0


def test_policy_once_probability_latency_and_stall() -> None:
    once = DiskPolicy(DiskFault("write-error", once=True, errno="EROFS"), first=None, last=None,
                      rng=random.Random(1))  # fmt: skip
    actions = [once(request(n, TapOp.WRITE, n)).action for n in range(1, 4)]
    assert actions == [TapAction.FAIL, TapAction.PASS, TapAction.PASS]
    assert once.requests[0].errno == "EROFS" and once.faulted == 1 and once.seen == 3
    rng = random.Random(7)
    chosen = [rng.random() < 0.3 for _ in range(200)]
    sometimes = DiskPolicy(DiskFault("read-error", probability=0.3), first=None, last=None,
                           rng=random.Random(7))  # fmt: skip
    got = [sometimes(request(n, TapOp.READ, 0)).action is TapAction.FAIL for n in range(1, 201)]
    assert got == chosen and 0 < sum(got) < 200
    slow = DiskPolicy(DiskFault("latency", delay_s=0.02, jitter_s=0.005), first=None, last=None,
                      rng=random.Random(3))  # fmt: skip
    delays = [slow(request(n, TapOp.READ, 0)).delay_s for n in range(1, 50)]
    assert all(0.015 <= d <= 0.025 for d in delays) and len(set(delays)) > 1
    stall = DiskPolicy(DiskFault("stall"), first=None, last=None, rng=random.Random(3))
    assert stall(request(1, TapOp.FLUSH, 0, 0)).action is TapAction.HOLD
    stall.ended = True
    assert stall(request(2, TapOp.READ, 0)).action is TapAction.PASS


def test_policy_watches_a_corrupted_word() -> None:
    offset = 40 * 512 + 16
    policy = DiskPolicy(DiskFault("corrupt"), first=40, last=40, rng=random.Random(1),
                        word=(offset, offset + 8))  # fmt: skip
    assert policy(request(1, TapOp.READ, 32, 8)).action is TapAction.PASS  # sectors 32-39
    assert policy(request(2, TapOp.READ, 40, 8)).action is TapAction.PASS
    assert policy(request(3, TapOp.WRITE, 40, 1)).action is TapAction.PASS
    assert policy(request(4, TapOp.READ, 40, 8)).action is TapAction.PASS
    assert dict(policy.counts) == {"corrupted": 1, "overwrote": 1}
    assert policy.faulted == 1


def test_merge_sectors() -> None:
    assert merge_sectors([(8, 15), (0, 7), (20, 21), (21, 30)]) == ((0, 15), (20, 30))


def disk_record() -> ExperimentRecord:
    injection = DiskInjection(
        target="disk:corrupt", location="data (vda) sector 28 byte 384", width=64, mask=1 << 28,
        mode="flip", before=0x1234, after=0x1234 ^ 1 << 28, readback=0x1234 ^ 1 << 28,
        injected=True, trigger=TriggerPoint(spec="exec:fsync#1", time_s=0.2, progress=0.5),
        disk="data", device="vda", fault="corrupt", first_sector=28, last_sector=28,
        offset=28 * 512 + 384, requests_seen=2, requests_faulted=1,
        counts={"corrupted": 1, "overwrote": 1},
        requests=(DiskRequest(number=9, op="read", sector=24, sectors=8, action="corrupted",
                              after_s=0.01),
                  DiskRequest(number=12, op="write", sector=24, sectors=8, action="overwrote",
                              after_s=0.03)),
    )  # fmt: skip
    run = MachineRun(
        "guest",
        Outcome.DETECTED,
        "exit status 3 (the workload reported an error)",
        evidence="diskio: DETECTED mismatch in block 3 (sector 28) at byte 2435",
    )
    spec = json.loads(json.dumps(options(target="disk:corrupt").to_json()))
    return ExperimentRecord(index=0, seed=1, spec=spec,
                            injections=(injection,), machines=(run,),
                            activation=Activation.MANIFESTED)  # fmt: skip


def test_disk_record_json_and_fields_round_trip() -> None:
    record = disk_record()
    injection = record.injection
    assert isinstance(injection, DiskInjection)
    fields = json.loads(json.dumps(injection.fields()))
    assert injection_from_fields("disk", fields) == injection
    data = record.to_json()
    assert data["fault"]["before"] == "0x1234" and data["fault"]["mask"] == "0x10000000"
    assert data["disk"]["sectors"] == "28" and data["disk"]["offset"] == hex(28 * 512 + 384)
    assert data["disk"]["requests"][0] == {"number": 9, "op": "read", "sector": 24, "sectors": 8,
                                           "action": "corrupted", "errno": None, "delay_s": None,
                                           "after_s": 0.01}  # fmt: skip
    wanted = {"disk", "fault", "first_sector", "last_sector", "errno", "requests_faulted"}
    columns = disk_columns({k: v for k, v in fields.items() if k in wanted})
    assert columns == {"disk": "data", "disk_fault": "corrupt", "sector_first": 28,
                       "sector_last": 28, "errno": None, "requests_faulted": 1}  # fmt: skip
    assert disk_columns(None) == dict.fromkeys(DISK_COLUMNS)
    assert disk_columns({"op": "fadd"}) == dict.fromkeys(DISK_COLUMNS)


def test_disk_record_in_the_store(tmp_path: Path) -> None:
    record = disk_record()
    golden = GoldenRun(machine="guest", argv=("diskio",), stdout=b"ok\n", stderr=b"",
                       exit_code=0, signal=None, guest_s=0.5, host_s=0.5)  # fmt: skip
    with SQLiteStore.create(tmp_path / "c.db", campaign_name="c", seed=1, spec_json="{}",
                            file_sha256="", total_planned=1, provenance={}) as store:  # fmt: skip
        store.save_golden(golden)
        store.record(0, "disk:corrupt", record, worker="w", started_at=1.0, finished_at=2.0)
        assert store.load(0) == record
        row = next(store.rows())
    assert (row["disk"], row["disk_fault"], row["sector_first"], row["requests_faulted"]) == (
        "data", "corrupt", 28, 1,
    )  # fmt: skip
    assert row["mask"] == "0x10000000" and row["injected"] is True


def test_kernel_reactions_name_the_sector() -> None:
    golden = GoldenRun(machine="guest", argv=("diskio",), stdout=b"ok\n", stderr=b"",
                       exit_code=0, signal=None, guest_s=0.5, host_s=0.5)  # fmt: skip
    line = "[    3.613118] I/O error, dev vda, sector 1392 op 0x0:(READ) flags 0x800 phys_seg 1"
    seen = Observation(injected=True, finished=True, stdout=b"", exit_code=4,
                       stderr=b"diskio: I/O error reading block 174 (sector 1392)\n",
                       console=f"noise\n{line}\nmore\n")  # fmt: skip
    result = classify(golden, seen)
    assert (result.outcome, result.cause, result.evidence) == (Outcome.DETECTED, "io-error", line)
    assert result.reason.endswith("the kernel reported I/O error at sector 1392")
    quiet = Observation(injected=True, finished=True, stdout=b"ok\n", exit_code=0,
                        console="EXT4-fs (vda): mounted filesystem without journal.\n")  # fmt: skip
    assert classify(golden, quiet).cause is None
    for console, cause in [
        ("Buffer I/O error on dev vda, logical block 517, lost async page write",
         "buffer-io-error"),
        ("EXT4-fs error (device vda): ext4_find_entry:1658: inode #2: comm fsio: reading",
         "fs-error"),
        ("EXT4-fs (vda): Remounting filesystem read-only", "fs-read-only"),
    ]:  # fmt: skip
        benign = Observation(injected=True, finished=True, stdout=b"ok\n", exit_code=0,
                             console=console)  # fmt: skip
        assert (classify(golden, benign).outcome, classify(golden, benign).cause) == (
            Outcome.BENIGN, cause,
        )  # fmt: skip
    oops = Observation(injected=True, finished=False, console=f"{line}\nOops: 0000 [#1]\n")
    assert classify(golden, oops).cause == "oops"  # a crash keeps its own cause


def test_report_disk_section() -> None:
    rows = ReportRows("c.db", confidence=0.95, method=IntervalMethod.WILSON)
    for outcome, activation, fault, faulted in [
        ("detected", "manifested", "bad-block", 1), ("benign", "not-activated", "bad-block", 0),
        ("sdc", "manifested", "corrupt", 2), ("benign", "unknown", None, None),
    ]:  # fmt: skip
        rows.add({"experiment_id": 1, "stratum": fault or "none", "outcome": outcome,
                  "activation": activation, "disk_fault": fault,
                  "requests_faulted": faulted})  # fmt: skip
    disks = rows.disks()
    assert disks is not None
    assert [b.key for b in disks.by_fault] == ["bad-block", "corrupt"]
    assert disks.by_fault[0].counts["detected"] == 1 and disks.by_fault[0].counts["benign"] == 1
    assert dict(disks.activation[0].counts)["not-activated"] == 1
    assert disks.requests_faulted == 3
    assert [b.key for b in disks.by_requests] == ["0", "1", "2"]


CAMPAIGN = """
[campaign]
name = "disks"
experiments = 6

[guest]
workload = "diskio"

[[guest.disks]]
name = "data"
size = "16M"

[[faults]]
target = "disk:corrupt"
trigger = "exec:fsync"

[[faults]]
target = "disk:write-error"
errno = "ENOSPC"
sectors = "any"

[[faults]]
target = "none"
"""


def test_campaign_disks(tmp_path: Path) -> None:
    spec = CampaignSpec.model_validate(tomllib.loads(CAMPAIGN))
    assert [f.name for f in spec.faults] == ["disk:corrupt", "disk:write-error", "none"]
    assert spec.guest_disks()[0].sectors == 32768
    written = DiskFault("write-error", errno="ENOSPC", sectors=Sectors(SectorChoice.ANY))
    assert spec.faults[1].fault_spec().disk == written
    for change, message in [
        (('size = "16M"', 'size = "16M"\nimage = "x.raw"'), "give size or image"),
        (('sectors = "any"', 'sectors = "40000"'), "outside disk data"),
        (('target = "disk:corrupt"', 'target = "disk:corrupt@log"'), "no disk named 'log'"),
    ]:
        text = CAMPAIGN.replace(*change)
        with pytest.raises(Exception, match=message):
            CampaignSpec.model_validate(tomllib.loads(text))
