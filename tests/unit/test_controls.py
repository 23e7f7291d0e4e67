"""Control runs (target `none`): the target, the options it refuses, campaign families, the
plan, the kind and its record."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, cast

import pytest

from vmfault.campaign import load_campaign
from vmfault.campaign.planner import plan_campaign
from vmfault.errors import UsageError
from vmfault.experiment.kinds import KINDS, kind_name
from vmfault.experiment.kinds.control import ControlKind
from vmfault.experiment.records import (
    INJECTION_TYPES,
    ControlInjection,
    TriggerPoint,
    injection_from_fields,
)
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine
from vmfault.faults import BitModel, Context, FaultSpec, OptionError, Target, TargetKind, Trigger
from vmfault.faults.schedule import Schedule, Storm
from vmfault.faults.select import plan

# ---------------------------------------------------------------------------- the target


def test_none_is_a_target_without_a_name() -> None:
    target = Target.parse("none")
    assert (target.kind, target.name, target.spelling) == (TargetKind.NONE, "", "none")
    assert Target.parse(" none ") == target == Target.parse(target.spelling)
    assert TargetKind("none") is TargetKind.NONE
    assert "none" in Target.ALLOWED
    assert (target.address, target.ranges, target.registers(), target.op) == (None, (), (), None)


@pytest.mark.parametrize("text", ["none:", "none:rax", "none:0x1000"])
def test_a_control_target_names_nothing(text: str) -> None:
    with pytest.raises(UsageError, match="a control run names nothing") as caught:
        Target.parse(text)
    assert "none" in caught.value.hint


# ---------------------------------------------------------------------------- the options

CONTROL_RULES: list[tuple[dict[str, Any], str]] = [
    ({"bits": 1}, "bits"),
    ({"bits": "stuck1"}, "bits"),
    ({"trigger": "time"}, "trigger"),
    ({"trigger": "exec:main"}, "trigger"),
    ({"context": "user"}, "context"),
    ({"context": Context.KERNEL}, "context"),
    ({"flips": 3}, "flips"),
    ({"flips": 3, "interval": "1ms"}, "flips"),
    ({"interval": "1ms"}, "interval"),
    ({"rate": 1.0, "compression": 1e9}, "rate"),
    ({"rate_unit": "per-gib-month"}, "rate_unit"),
    ({"compression": 1e9}, "compression"),
    ({"op": "fadd"}, "op"),
    ({"function": "main"}, "function"),
    ({"instance": 3}, "instance"),
    ({"start_index": 2}, "start_index"),
    ({"max_dic": 9}, "max_dic"),
    ({"faults_per_run": 2}, "faults_per_run"),
    ({"bit_range": "52-62"}, "bit_range"),
    ({"probability": 0.5}, "probability"),
    ({"bits": 1, "trigger": "time", "op": "fadd"}, "bits"),  # the first given is named
]


@pytest.mark.parametrize(("options", "key"), CONTROL_RULES)
def test_a_control_run_refuses_every_fault_option(options: dict[str, Any], key: str) -> None:
    with pytest.raises(OptionError) as caught:
        FaultSpec.from_options(target="none", **options)
    error = caught.value
    assert error.key == key
    assert error.message == (
        f'{key} does not apply to a control run (target = "none" injects nothing)'
    )
    assert error.hint == f"remove {key}, or choose a target to fault"
    assert len(error.one_line().splitlines()) == 1


def test_the_control_rules_spell_options_as_the_caller_does() -> None:
    def cli(key: str) -> str:
        return "--" + key.replace("_", "-")

    with pytest.raises(OptionError) as caught:
        FaultSpec.from_options(target="none", faults_per_run=2, spell=cli)
    assert caught.value.key == "faults_per_run"
    assert caught.value.message.startswith("--faults-per-run does not apply to a control run")
    assert '--target = "none"' in caught.value.message
    assert caught.value.hint == "remove --faults-per-run, or choose a target to fault"


def test_a_control_run_takes_a_period_and_a_machine() -> None:
    plain = FaultSpec.from_options(target="none")
    assert plain == FaultSpec(Target(TargetKind.NONE, ""))
    assert plain.control and not FaultSpec(Target.parse("register:rip")).control
    assert (plain.bits, plain.trigger, plain.context) == (BitModel(), Trigger(), Context.ANY)
    assert (plain.storm, plain.instruction, plain.period_s, plain.machine) == (None,) * 4
    assert plain.to_json()["target"] == "none"
    assert FaultSpec.from_options(target="none", context="any") == plain  # "any" is unset
    timed = FaultSpec.from_options(target="none", period="1s", machine="server")
    assert (timed.period_s, timed.machine) == (1.0, "server")
    with pytest.raises(OptionError, match="invalid period") as caught:
        FaultSpec.from_options(target="none", period="0s")
    assert caught.value.key == "period"


@pytest.mark.parametrize(
    ("changes", "what"),
    [
        ({"bits": BitModel(count=2)}, "bits"),
        ({"trigger": Trigger.parse("time:1ms")}, "trigger"),
        ({"context": Context.USER}, "context"),
        ({"storm": Storm(2, Schedule.parse("1ms"))}, "storm"),
    ],
)
def test_a_control_spec_built_directly_holds_no_fault(changes: dict[str, Any], what: str) -> None:
    with pytest.raises(UsageError, match=re.escape(f"{what} does not apply")):
        FaultSpec(Target.parse("none"), **changes)


# ---------------------------------------------------------------------------- campaigns

CAMPAIGN = """\
[campaign]
name = "c"
experiments = 10

[guest]
workload = "checksum"

[[faults]]
target = "register:gpr"

[[faults]]
target = "none"
experiments = 4
"""


def test_a_control_family_is_the_stratum_none(tmp_path: Path) -> None:
    path = tmp_path / "campaign.toml"
    path.write_text(CAMPAIGN)
    spec = load_campaign(path)
    control = spec.faults[1]
    assert control.name == "none"
    assert control.fault_spec() == FaultSpec.from_options(target="none")
    campaign = plan_campaign(spec)
    assert [(s.name, s.count) for s in campaign.strata] == [("register:gpr", 10), ("none", 4)]
    stored = spec.to_json()
    assert '"target":"none"' in stored and '"name":"none"' in stored


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ("bits = 1\n", "bits"),
        ('trigger = "time:2ms"\n', "trigger"),
        ('context = "kernel"\n', "context"),
        ('op = "fadd"\n', "op"),
        ('flips = 2\ninterval = "1ms"\n', "flips"),
    ],
)
def test_the_campaign_loader_points_at_the_refused_key(
    tmp_path: Path, extra: str, key: str
) -> None:
    path = tmp_path / "campaign.toml"
    path.write_text(CAMPAIGN + extra)
    with pytest.raises(UsageError) as caught:
        load_campaign(path)
    message = caught.value.message
    assert len(message.splitlines()) == 1
    assert f"campaign.toml: faults[1].{key}: {key} does not apply to a control run" in message


def test_a_named_target_of_none_is_refused_by_the_loader(tmp_path: Path) -> None:
    path = tmp_path / "campaign.toml"
    path.write_text(CAMPAIGN.replace('target = "none"', 'target = "none:rax"'))
    with pytest.raises(UsageError, match=r"faults\[1\]\.target: a control run names nothing"):
        load_campaign(path)


def test_a_control_plan_chooses_nothing() -> None:
    spec = FaultSpec.from_options(target="none")
    chosen = plan(spec, seed=3, index=7, golden_duration_s=0.5, golden_instructions=10_000)
    assert (chosen.register, chosen.width, chosen.bits.mask, chosen.bits.positions) == (
        None,
        0,
        0,
        (),
    )
    assert (chosen.trigger_time_s, chosen.trigger_instructions) == (None, None)
    assert (chosen.seed, chosen.index, chosen.spec) == (3, 7, spec)


# ---------------------------------------------------------------------------- the kind


class FakeMachine:
    name = "server"


class FakeExperiment:
    """The part of an `Experiment` the control kind touches."""

    def __init__(self) -> None:
        self.marked = 0

    def mark_injected(self) -> None:
        self.marked += 1


def test_the_registry_has_the_control_kind() -> None:
    assert KINDS["none"] is ControlKind
    assert kind_name(FaultSpec.from_options(target="none")) == "none"
    assert ControlKind.latency is False and ControlKind.attempts == 1


def test_the_control_kind_injects_nothing_at_the_snapshot() -> None:
    kind = ControlKind(cast(GuestMachine, FakeMachine()))
    fake = FakeExperiment()
    experiment = cast(Experiment, fake)
    assert kind.trigger(experiment) == ""
    injected = kind.inject(experiment)
    assert fake.marked == 1  # evidence and timing count from the snapshot
    assert (injected.summary, injected.restart) == (None, False)
    (injection,) = injected.injections
    assert injection == ControlInjection(machine="server", injected=True)
    assert (injection.target, injection.mode, injection.injected) == ("none", "none", True)
    assert injection.trigger == TriggerPoint(spec="none")
    assert injection.trigger.progress is None
    missed = kind.not_injected(experiment, "QMP command failed")
    assert (missed.injected, missed.reason, missed.machine) == (
        False,
        "QMP command failed",
        "server",
    )


def test_a_control_injection_is_a_record_kind_of_its_own() -> None:
    injection = ControlInjection(injected=True)
    assert INJECTION_TYPES["control"] is ControlInjection
    assert injection.kind == "control"
    data = injection.to_json()
    assert (data["kind"], data["target"], data["mode"], data["trigger"]) == (
        "control",
        "none",
        "none",
        "none",
    )
    assert (data["injected"], data["progress"], data["mask"], data["before"]) == (
        True,
        None,
        "0x0",
        None,
    )
    fault = injection.fault_json()
    assert (fault["bits"], fault["location"], fault["injected"]) == ([], "", True)
    assert injection_from_fields("control", injection.fields()) == injection


def test_a_trigger_point_reads_as_one_line_naming_the_pc() -> None:
    # People read `pc` on every architecture; the record's JSON keeps its `rip` field.
    point = TriggerPoint(spec="time:0.0123s", time_s=0.0123, rip=0x401136, user_mode=True,
                         progress=0.43)  # fmt: skip
    assert point.describe() == "time:0.0123s, pc 0x401136 in user mode, 43% of the run"
    assert TriggerPoint(spec="exec:fold#3", rip=0xFFFF800008010000, user_mode=False).describe() == (
        "exec:fold#3, pc 0xffff800008010000 in kernel mode"
    )
    assert TriggerPoint().describe() == "no trigger"
