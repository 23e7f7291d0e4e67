"""FaultSpec.from_options: the rules of which fault options combine, and their errors."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from vmfault.campaign import load_campaign
from vmfault.errors import UsageError
from vmfault.faults import (
    BitModel,
    Context,
    FaultSpec,
    InstructionFault,
    OptionError,
    Target,
    Trigger,
)
from vmfault.faults.schedule import RateUnit, Schedule, Storm

STORM: dict[str, Any] = {"target": "memory:ram", "flips": 4, "interval": "1ms"}
RATED: dict[str, Any] = {"target": "memory:ram", "flips": 4, "rate": 10.0, "compression": 1e9}
FADD: dict[str, Any] = {"target": "instruction", "op": "fadd"}

RULES: list[tuple[dict[str, Any], str, str]] = [
    # the target, and op for an instruction result
    ({}, "target", "give exactly one of target and op"),
    ({"target": "register:rzz"}, "target", "unknown register 'rzz'"),
    ({"target": "cache:l1"}, "target", "invalid target 'cache:l1'"),
    ({"target": "register:rip", "op": "fadd"}, "op", 'op applies only to target = "instruction"'),
    ({"target": "memory:ram", "function": "f"}, "function", "function applies only to target"),
    ({"target": "memory:ram", "instance": 3}, "instance", "instance applies only to target"),
    ({"target": "memory:ram", "start_index": 1}, "start_index", "start_index applies only to"),
    ({"target": "memory:ram", "max_dic": 9}, "max_dic", "max_dic applies only to target"),
    ({"target": "memory:ram", "faults_per_run": 1}, "faults_per_run", "faults_per_run applies"),
    ({"target": "memory:ram", "bit_range": "52-62"}, "bit_range", "bit_range applies only to"),
    ({"target": "memory:ram", "probability": 0.5}, "probability", "probability applies only"),
    ({"target": "instruction"}, "op", 'missing op for target = "instruction"'),
    ({"target": "instruction", "function": "f"}, "op", "missing op"),
    ({"target": "instruction", "op": "fad"}, "op", "unknown instruction class 'fad'"),
    ({"target": "instruction:fad"}, "target", "unknown instruction class 'fad'"),
    ({"target": "instruction:fadd@f", "op": "fmul"}, "op",
     "op/function disagree with target 'instruction:fadd@f'"),
    ({"target": "instruction:fadd", "function": "g"}, "op", "op/function disagree with target"),
    # instruction faults: the instance is the trigger
    ({**FADD, "trigger": "time"}, "trigger",
     "trigger does not apply to instruction faults (the instance is the trigger)"),
    ({"op": "fadd", "context": "user"}, "context", "context does not apply to instruction faults"),
    ({**FADD, "period": "1s"}, "period",
     "interval, rate and period do not apply to instruction faults"),
    ({**FADD, "flips": 3, "interval": "1ms"}, "interval", "interval, rate and period do not"),
    ({**FADD, "flips": 3, "rate": 1.0, "compression": 1e9}, "rate", "interval, rate and period"),
    ({**FADD, "instance": 0}, "instance", "instance 0 is not a dynamic instance"),
    ({**FADD, "start_index": 0}, "start_index", "start index 0 is below 1"),
    ({**FADD, "start_index": 5, "max_dic": 3}, "max_dic",
     "maximum dynamic count 3 is below the start index 5"),
    ({**FADD, "faults_per_run": 0}, "faults_per_run", "faults per run 0 is below 1"),
    ({**FADD, "probability": 1.5}, "probability", "probability 1.5 is outside (0, 1]"),
    ({**FADD, "probability": 0.1, "faults_per_run": 2}, "probability",
     "probability mode replaces a fixed number of faults per run"),
    ({**FADD, "probability": 0.1, "instance": 2}, "probability", "probability mode replaces"),
    ({**FADD, "instance": 3, "faults_per_run": 2}, "faults_per_run",
     "a fixed instance is one fault per run"),
    # instruction bits
    ({**FADD, "bit_range": "62-50"}, "bit_range", "bit range '62-50' runs backwards"),
    ({**FADD, "bit_range": "high"}, "bit_range", "invalid bit_range 'high'"),
    ({**FADD, "bits": "59", "bit_range": "50-60"}, "bit_range",
     "bits names bit positions and bit_range a range"),
    ({**FADD, "bits": "x"}, "bits", "invalid bits 'x'"),
    ({**FADD, "bits": "130"}, "bits", "bit 130 is out of range for an instruction result"),
    ({**FADD, "bits": 2, "bit_range": "100-140"}, "bit_range", "bit 140 is out of range"),
    # storms
    ({"target": "memory:ram", "flips": 3}, "flips", "flips needs interval or rate"),
    ({"target": "memory:ram", "rate_unit": "per-gib-month"}, "rate_unit",
     "rate_unit applies only with rate"),
    ({"target": "memory:ram", "compression": 1e9}, "compression",
     "compression applies only with rate"),
    ({"target": "memory:ram", "interval": "1ms"}, "flips", "missing flips for a storm"),
    ({"target": "memory:ram", "rate": 1.0, "compression": 1e9}, "flips", "missing flips"),
    ({**STORM, "rate_unit": "fit-per-mbit"}, "rate_unit", "rate_unit applies only with rate"),
    ({**STORM, "compression": 1e9}, "compression", "compression applies only with rate"),
    ({**STORM, "rate": 1.0}, "rate", "give interval or rate, not both"),
    ({**RATED, "compression": None}, "compression", "missing compression for rate"),
    ({**STORM, "bits": 1}, "bits",
     "bits does not apply to a storm (one random bit per flip, on its schedule)"),
    ({**STORM, "trigger": "time"}, "trigger", "trigger does not apply to a storm"),
    ({**STORM, "context": Context.USER}, "context", "context does not apply to a storm"),
    ({**STORM, "flips": 0}, "flips", "a storm needs at least one flip, not 0"),
    ({**RATED, "rate": 0.0}, "rate", "rate 0 is not positive"),
    ({**RATED, "compression": -1.0}, "compression", "compression -1 is not positive"),
    ({**STORM, "interval": "soon"}, "interval", "invalid interval 'soon'"),
    ({**RATED, "rate_unit": "per-year"}, "rate_unit", "invalid rate_unit 'per-year'"),
    ({**STORM, "target": "memory:0x1000"}, "target", "a storm needs a memory region"),
    ({**STORM, "target": "memory:@values"}, "target", "a storm needs a memory region"),
    ({**STORM, "target": "register:rax"}, "target", "a storm needs a memory region"),
    # period, and the single-fault options
    ({"target": "memory:ram", "period": "0s"}, "period", "invalid period '0s': not longer than 0"),
    ({"target": "memory:ram", "period": "soon"}, "period", "invalid duration 'soon'"),
    ({"target": "register:eflags", "bits": "40"}, "bits",
     "bit 40 is out of range for register eflags (32 bits)"),
    ({"target": "memory:ram", "bits": 0}, "bits", "invalid bit count '0'"),
    ({"target": "register:rip", "trigger": "soon"}, "trigger", "invalid trigger 'soon'"),
    ({"target": "register:rip", "context": "root"}, "context", "invalid context 'root'"),
]  # fmt: skip


@pytest.mark.parametrize(("options", "key", "message"), RULES)
def test_each_rule_names_its_option(options: dict[str, Any], key: str, message: str) -> None:
    with pytest.raises(OptionError, match=re.escape(message)) as caught:
        FaultSpec.from_options(**options)
    assert caught.value.key == key
    assert caught.value.hint
    assert isinstance(caught.value, UsageError)


VALID: list[tuple[dict[str, Any], FaultSpec]] = [
    (
        {"target": "register:gpr", "bits": 1, "trigger": "time:20ms", "context": "user"},
        FaultSpec(
            Target.parse("register:gpr"), BitModel(count=1), Trigger.parse("time:20ms"),
            Context.USER,
        ),
    ),
    (
        {"target": "memory:0x1234000", "bits": "burst:4", "context": Context.ANY},
        FaultSpec(Target.parse("memory:0x1234000"), BitModel.parse("burst:4")),
    ),
    (
        {"target": "kernel-code:hot", "trigger": "exec:ksys_write#2"},
        FaultSpec(Target.parse("kernel-code:hot"), trigger=Trigger.parse("exec:ksys_write#2")),
    ),
    (
        {**FADD, "function": "f", "bits": 3, "bit_range": "40-62", "faults_per_run": 2,
         "max_dic": 8},
        FaultSpec.of_instruction(
            InstructionFault("fadd", "f", max_dic=8, faults_per_run=2),
            BitModel(count=3, low=40, high=62),
        ),
    ),
    (
        {"op": "sarl", "function": "solve", "instance": 5, "bits": "59"},
        FaultSpec.of_instruction(
            InstructionFault("sar", "solve", instance=5), BitModel.parse("59")
        ),
    ),
    (
        {"target": "instruction:fadd@f", "op": "FADD", "function": "f", "probability": 0.05},
        FaultSpec.of_instruction(InstructionFault("fadd", "f", probability=0.05)),
    ),
    (
        {"target": "memory:kernel-data", "flips": 10, "interval": "10ms", "period": "0.2s"},
        FaultSpec(
            Target.parse("memory:kernel-data"), storm=Storm(10, Schedule.parse("10ms")),
            period_s=0.2,
        ),
    ),
    (
        {"target": "memory:0x1000000-0x1100000", "flips": 3, "rate": 1000.0,
         "rate_unit": "per-gib-month", "compression": 1e9},
        FaultSpec(
            Target.parse("memory:0x1000000-0x1100000"),
            storm=Storm(3, rate=1000.0, rate_unit=RateUnit.PER_GIB_MONTH, compression=1e9),
        ),
    ),
    (
        {**RATED, "target": "memory:process", "context": "any"},
        FaultSpec(
            Target.parse("memory:process"),
            storm=Storm(4, rate=10.0, rate_unit=RateUnit.FIT_PER_MBIT, compression=1e9),
        ),
    ),
    (
        {"target": "memory", "period": "1s"},
        FaultSpec(Target.parse("memory:ram"), period_s=1.0),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("options", "expected"), VALID)
def test_valid_options_build_the_spec_of_the_constructors(
    options: dict[str, Any], expected: FaultSpec
) -> None:
    assert FaultSpec.from_options(**options) == expected


def test_machine_passes_through_and_shows_in_json_only_when_set() -> None:
    plain = FaultSpec.from_options(target="register:rip")
    assert plain.machine is None and "machine" not in plain.to_json()
    assert plain.to_json() == FaultSpec(Target.parse("register:rip")).to_json()
    for options in ({"target": "register:rip"}, STORM, FADD):
        spec = FaultSpec.from_options(**options, machine="server")
        assert spec.machine == "server"
        assert spec.to_json()["machine"] == "server"


def cli(key: str) -> str:
    return "--" + key.replace("_", "-")


@pytest.mark.parametrize(
    ("options", "message", "hint"),
    [
        ({"target": "memory:ram", "rate_unit": "per-gib-month"},
         "--rate-unit applies only with --rate", "remove --rate-unit, or set --rate"),
        ({}, "give exactly one of --target and --op", "--op fadd for an instruction result"),
        ({**STORM, "rate": 1.0}, "give --interval or --rate, not both", "physical rate"),
        ({"op": "fadd", "period": "1s"},
         "--interval, --rate and --period do not apply to instruction faults", "memory target"),
        ({"op": "fadd", "trigger": "time"}, "--trigger does not apply to instruction faults",
         "remove --trigger"),
        ({"op": "fadd", "probability": 0.1, "faults_per_run": 2}, "probability mode",
         "give --probability, or --faults-per-run / --instance, not both"),
        ({"target": "memory:ram", "period": "0s"}, "invalid period '0s'", "e.g. --period 1s"),
        ({"target": "memory:heap", "flips": 3, "interval": "10ms"}, "invalid region 'heap'",
         "kernel-text"),
        ({"target": "memory:ram", "flips": 3}, "give exactly one of --interval and --rate",
         "--interval"),
    ],
)  # fmt: skip
def test_spell_changes_how_options_are_named(
    options: dict[str, Any], message: str, hint: str
) -> None:
    with pytest.raises(OptionError) as caught:
        FaultSpec.from_options(**options, spell=cli)
    assert message in caught.value.message
    assert hint in caught.value.hint
    with pytest.raises(OptionError) as plain:
        FaultSpec.from_options(**options)
    assert plain.value.key == caught.value.key
    assert "--" not in plain.value.message + plain.value.hint


CAMPAIGN = """\
[campaign]
name = "c"
experiments = 2

[guest]
workload = "checksum"

[[faults]]
"""


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ('target = "instruction"\nop = "fadd"\ncontext = "user"\n',
         "faults[0].context: context does not apply to instruction faults"),
        ('target = "instruction"\nop = "fadd"\nprobability = 0.1\nfaults_per_run = 2\n',
         "faults[0].probability: probability mode replaces"),
        ('target = "memory:ram"\nflips = 2\nrate = 5\ncompression = 1e9\nrate_unit = "x"\n',
         "faults[0].rate_unit: not an allowed value"),
        ('target = "memory:0x1000"\nflips = 2\ninterval = "1ms"\n',
         "faults[0].target: a storm needs a memory region"),
    ],
)  # fmt: skip
def test_the_campaign_loader_points_at_the_key(tmp_path: Path, family: str, expected: str) -> None:
    path = tmp_path / "campaign.toml"
    path.write_text(CAMPAIGN + family)
    with pytest.raises(UsageError) as caught:
        load_campaign(path)
    assert f"campaign.toml: {expected}" in caught.value.message
