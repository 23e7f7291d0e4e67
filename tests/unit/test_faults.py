"""Fault descriptions: parsing the target, bits and trigger spellings, and seeded choices."""

from __future__ import annotations

import json

import pytest

from vmfault.errors import UsageError
from vmfault.faults import (
    BitMode,
    BitModel,
    FaultSpec,
    Plan,
    Target,
    TargetKind,
    Trigger,
    TriggerKind,
    choose_bits,
    choose_in_ranges,
    plan,
    rng_for,
)
from vmfault.faults.schedule import Schedule, Storm


@pytest.mark.parametrize(
    ("text", "kind", "name"),
    [
        ("register:rip", TargetKind.REGISTER, "rip"),
        ("register:GPR", TargetKind.REGISTER, "gpr"),
        ("register:xmm15", TargetKind.REGISTER, "xmm15"),
        ("memory:ram", TargetKind.MEMORY, "ram"),
        ("memory:process", TargetKind.MEMORY, "process"),
        ("memory:0x1234000", TargetKind.MEMORY, "0x1234000"),
        ("memory", TargetKind.MEMORY, "ram"),
        ("memory:0x1000-0x2000, 0x3000-0x4000", TargetKind.MEMORY, "0x1000-0x2000,0x3000-0x4000"),
        ("memory:@checksum_values+0x10", TargetKind.MEMORY, "@checksum_values+0x10"),
        ("kernel-code:hot", TargetKind.KERNEL_CODE, "hot"),
        ("kernel-code:ksys_write", TargetKind.KERNEL_CODE, "ksys_write"),
    ],
)
def test_target_spellings(text: str, kind: TargetKind, name: str) -> None:
    target = Target.parse(text)
    assert (target.kind, target.name) == (kind, name)
    assert Target.parse(target.spelling) == target


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("register:rzz", "unknown register 'rzz'"),
        ("register:cr3", "read-only"),
        ("memory:heap", "invalid memory target"),
        ("memory:0x2000-0x1000", "invalid memory target"),
        ("memory:0x1000-", "invalid memory target"),
        ("cache:l1", "invalid target"),
        ("register:", "invalid target"),
    ],
)
def test_bad_targets_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        Target.parse(text)
    assert caught.value.hint


def test_memory_ranges() -> None:
    target = Target.parse("memory:0x1000000-0x1100000")
    assert target.ranges == ((0x1000000, 0x1100000),)
    assert target.address is None
    assert Target.parse("memory:kernel-text").ranges == ()
    assert Target.parse("memory:0x1000").ranges == ()


def test_storm_and_period_specs() -> None:
    storm = Storm(10, Schedule.parse("10ms"))
    spec = FaultSpec(Target.parse("memory:kernel-data"), storm=storm, period_s=0.5)
    data = spec.to_json()
    assert data["storm"]["interval"] == "10ms" and data["period_s"] == 0.5
    for target in ("register:rax", "memory:@checksum_values", "memory:0x1000"):
        with pytest.raises(UsageError, match="a storm needs a memory region"):
            FaultSpec(Target.parse(target), storm=storm)
    with pytest.raises(UsageError, match="one random bit"):
        FaultSpec(Target.parse("memory:ram"), BitModel.parse(2), storm=storm)
    with pytest.raises(UsageError, match="schedule is its trigger"):
        FaultSpec(Target.parse("memory:ram"), trigger=Trigger.parse("time:1ms"), storm=storm)
    with pytest.raises(UsageError, match="not positive"):
        FaultSpec(Target.parse("memory:ram"), period_s=0.0)
    with pytest.raises(UsageError, match="period does not apply"):
        FaultSpec(Target.parse("instruction:fadd"), period_s=1.0)


def test_groups_expand() -> None:
    assert Target.parse("register:pointer").registers() == ("rip", "rsp", "rbp")
    assert len(Target.parse("register:gpr").registers()) == 16
    assert "xmm7" in Target.parse("register:all").registers()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, BitModel()),
        (2, BitModel(count=2)),
        ("59", BitModel(positions=(59,))),
        ("7,3", BitModel(positions=(3, 7))),
        ("52-62", BitModel(low=52, high=62)),
        ("k2,52-62", BitModel(count=2, low=52, high=62)),
        ("burst:4", BitModel(mode=BitMode.BURST, count=4)),
        ("stuck1:100i,3", BitModel(mode=BitMode.STUCK_1, positions=(3,), hold_instructions=100)),
        ("stuck0", BitModel(mode=BitMode.STUCK_0)),
        ("value:0xff", BitModel(mode=BitMode.VALUE, value=0xFF)),
    ],
)
def test_bit_models(text: str | int | None, expected: BitModel) -> None:
    assert BitModel.parse(text) == expected


@pytest.mark.parametrize("text", ["x", "62-52", "k0", "burst:", "stuck1:10ms", "value:zz", 0])
def test_bad_bit_models(text: str | int) -> None:
    with pytest.raises(UsageError, match="invalid bit"):
        BitModel.parse(text)


def test_bit_out_of_range_for_the_register() -> None:
    with pytest.raises(UsageError, match="bit 40 is out of range for register eflags"):
        FaultSpec(Target.parse("register:eflags"), BitModel.parse("40"))
    with pytest.raises(UsageError, match="out of range for a memory word"):
        FaultSpec(Target.parse("memory:ram"), BitModel.parse("64"))
    FaultSpec(Target.parse("register:xmm0"), BitModel.parse("127"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, Trigger()),
        ("time:20ms", Trigger(time_s=0.02)),
        ("time:1.5", Trigger(time_s=1.5)),
        ("exec:main", Trigger(TriggerKind.EXECUTION, location="main")),
        ("exec:0x10001234#5", Trigger(TriggerKind.EXECUTION, location="0x10001234", count=5)),
        ("icount", Trigger(TriggerKind.INSTRUCTIONS)),
        ("icount:100000", Trigger(TriggerKind.INSTRUCTIONS, instructions=100000)),
    ],
)
def test_triggers(text: str | None, expected: Trigger) -> None:
    assert Trigger.parse(text) == expected


@pytest.mark.parametrize("text", ["soon", "time:fast", "exec:", "exec:main#0", "icount:x"])
def test_bad_triggers(text: str) -> None:
    with pytest.raises(UsageError, match="invalid trigger"):
        Trigger.parse(text)


def test_bit_choices_apply() -> None:
    rng = rng_for(1, 0, "bits")
    flip = choose_bits(BitModel.parse("59"), 64, rng)
    assert flip.positions == (59,)
    assert flip.apply(0) == 1 << 59
    burst = choose_bits(BitModel.parse("burst:4,8-15"), 64, rng)
    assert len(burst.positions) == 4
    assert burst.positions == tuple(range(burst.positions[0], burst.positions[0] + 4))
    assert burst.positions[0] >= 8 and burst.positions[-1] <= 15
    stuck = choose_bits(BitModel.parse("stuck0,0"), 8, rng)
    assert stuck.apply(0xFF) == 0xFE and stuck.apply(0xFE) == 0xFE
    value = choose_bits(BitModel.parse("value:0x1234"), 16, rng)
    assert value.apply(0xFFFF) == 0x1234
    several = choose_bits(BitModel.parse("k3,52-62"), 64, rng)
    assert len(several.positions) == 3 and all(52 <= p <= 62 for p in several.positions)


def test_plans_depend_on_seed_and_index_only() -> None:
    spec = FaultSpec(Target.parse("register:gpr"))

    def make(seed: int, index: int) -> Plan:
        return plan(spec, seed=seed, index=index, golden_duration_s=0.1, golden_instructions=None)

    assert make(7, 3) == make(7, 3)
    assert len({json.dumps([make(7, i).register, make(7, i).bits.mask]) for i in range(40)}) > 10
    first = make(7, 3)
    assert first.trigger_time_s is not None and 0 <= first.trigger_time_s <= 0.1


def test_choose_in_ranges_is_uniform_and_aligned() -> None:
    rng = rng_for(0, 0, "x")
    ranges = [(0x1000, 0x2000), (0x10000, 0x10008)]
    picks = [choose_in_ranges(ranges, rng, align=8) for _ in range(2000)]
    assert all(p % 8 == 0 for p in picks)
    assert all(0x1000 <= p < 0x2000 or p == 0x10000 for p in picks)
    assert 0x10000 in picks
    with pytest.raises(ValueError, match="no memory"):
        choose_in_ranges([(5, 6)], rng, align=8)
