"""Campaign files: loading, one-line errors, the JSON round trip and the schema."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from vmfault.campaign import (
    CampaignSpec,
    FaultFamily,
    campaign_json_schema,
    load_campaign,
)
from vmfault.errors import UsageError
from vmfault.faults import BitModel, Context, FaultSpec, Target, Trigger, TriggerKind
from vmfault.guest.workloads import UserWorkload
from vmfault.machine.config import Accel

EXAMPLE = """\
[campaign]
name = "checksum-registers"
seed = 1
experiments = 500
workers = 2

[guest]
workload = "checksum"
deterministic = false

[[faults]]
target = "register:gpr"
bits = 1
trigger = "time"
"""


def write(tmp_path: Path, text: str, name: str = "campaign.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> UsageError:
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as caught:
        load_campaign(path)
    error = caught.value
    assert "\n" not in error.one_line()
    assert error.message.startswith(f"{path}: ")
    assert error.hint
    return error


def test_the_example_campaign_loads(tmp_path: Path) -> None:
    path = write(tmp_path, EXAMPLE)
    spec = load_campaign(path)
    assert spec.campaign.name == "checksum-registers"
    assert (spec.campaign.seed, spec.campaign.experiments, spec.campaign.workers) == (1, 500, 2)
    assert spec.campaign.margin is None
    assert (spec.campaign.confidence, spec.campaign.budget, spec.campaign.stop_early) == (
        0.95,
        2.0,
        False,
    )
    assert spec.guest.workload == "checksum"
    assert spec.guest.builtin
    assert spec.guest.accel is Accel.TCG
    assert spec.workload_name == "checksum"
    assert spec.user_workload() is None
    assert spec.source == path.resolve()
    assert spec.file_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    (family,) = spec.faults
    assert family.name == "register:gpr"
    assert family.fault_spec() == FaultSpec(
        Target.parse("register:gpr"), BitModel(count=1), Trigger(TriggerKind.TIME), Context.ANY
    )
    assert family.fault_spec() is family.fault_spec()


def test_margin_and_every_option(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mine.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / "patterns.toml").write_text("")
    spec = load_campaign(
        write(
            tmp_path,
            """\
[campaign]
name = "fp.exponent_1"
margin = 0.03
confidence = 0.99
stop_early = true
budget = 5
restore = "loadvm"

[guest]
workload = "work/mine.c"
args = ["--size", "64"]
deterministic = true
accel = "auto"
crash_patterns = "patterns.toml"

[[faults]]
name = "exponent"
target = "register:xmm0"
bits = "52-62"
trigger = "icount:1000"
context = "user"
experiments = 50

[[faults]]
target = "memory:ram"
bits = "burst:4"
""",
        )
    )
    assert (spec.campaign.margin, spec.campaign.confidence, spec.campaign.budget) == (
        0.03,
        0.99,
        5.0,
    )
    assert spec.campaign.restore == "loadvm"
    assert spec.guest.args == ("--size", "64")
    assert spec.guest.accel is Accel.AUTO
    assert not spec.guest.builtin
    assert spec.workload_name == "mine"
    assert spec.user_workload() == UserWorkload(
        "mine", tmp_path.resolve() / "work" / "mine.c", ("--size", "64")
    )
    assert spec.crash_patterns_path() == tmp_path.resolve() / "patterns.toml"
    exponent, ram = spec.faults
    assert (exponent.name, exponent.experiments, exponent.context) == ("exponent", 50, Context.USER)
    assert exponent.fault_spec().bits == BitModel(low=52, high=62)
    assert exponent.fault_spec().trigger == Trigger(TriggerKind.INSTRUCTIONS, instructions=1000)
    assert ram.name == "memory:ram"


def test_json_round_trip_rebuilds_the_same_spec(tmp_path: Path) -> None:
    spec = load_campaign(write(tmp_path, EXAMPLE.replace("bits = 1", 'bits = "k2,0-31"')))
    text = spec.to_json()
    json.loads(text)
    again = CampaignSpec.from_json(text)
    assert again == spec
    assert again.faults[0].fault_spec() == spec.faults[0].fault_spec()
    assert again.source == spec.source
    assert again.file_sha256 == spec.file_sha256


def test_toml_dict_holds_only_what_a_campaign_file_holds(tmp_path: Path) -> None:
    spec = load_campaign(write(tmp_path, EXAMPLE))
    tables = spec.to_toml_dict()
    assert set(tables) == {"campaign", "guest", "faults"}
    assert "margin" not in tables["campaign"]
    assert tables["faults"] == [
        {
            "name": "register:gpr",
            "target": "register:gpr",
            "bits": 1,
            "trigger": "time",
            "context": "any",
        }
    ]
    rebuilt = CampaignSpec.model_validate(tables)
    assert rebuilt == spec.model_copy(update={"source": None, "file_sha256": ""})


def test_from_json_reports_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^stored campaign: campaign: expected a table"):
        CampaignSpec.from_json('{"campaign": 1}')


def test_from_json_does_not_need_the_files(tmp_path: Path) -> None:
    (tmp_path / "mine.c").write_text("int main(void) { return 0; }\n")
    spec = load_campaign(write(tmp_path, EXAMPLE.replace('"checksum"', '"mine.c"')))
    (tmp_path / "mine.c").unlink()
    assert CampaignSpec.from_json(spec.to_json()) == spec


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path: Path) -> None:
    error = load_error(tmp_path, EXAMPLE.replace("workers = 2", "wrokers = 2"))
    assert ": campaign.wrokers: unknown key (allowed: name, seed, experiments, margin," in (
        error.message
    )
    assert error.hint == "did you mean 'workers'?"


def test_unknown_key_in_a_fault_family(tmp_path: Path) -> None:
    error = load_error(tmp_path, EXAMPLE + "bitz = 3\n")
    assert "faults[0].bitz: unknown key (allowed: name, target, bits, trigger, context" in (
        error.message
    )
    assert "more)" not in error.message


@pytest.mark.parametrize("key", ["source", "file_sha256", "extra"])
def test_unknown_top_level_key(tmp_path: Path, key: str) -> None:
    error = load_error(tmp_path, f'{key} = "x"\n' + EXAMPLE)
    assert f": {key}: unknown key (allowed: campaign, dask, faults, guest, machine, slurm)" in (
        error.message
    )


def test_wrong_type(tmp_path: Path) -> None:
    error = load_error(tmp_path, EXAMPLE.replace("workers = 2", 'workers = "two"'))
    assert error.message.endswith(': campaign.workers: expected an integer (got "two")')


BAD_VALUES = [
    ("workers = 2", "workers = 65", "campaign.workers: out of range (got 65; "
     "allowed: 1 <= workers <= 64)"),
    ("workers = 2", "budget = 1", "campaign.budget: out of range (got 1; allowed: budget > 1"),
    ("experiments = 500", "experiments = 0", "campaign.experiments: out of range (got 0; "
     "allowed: experiments >= 1)"),
    ("experiments = 500", "margin = 0.5", "campaign.margin: out of range (got 0.5; "
     "allowed: 0 < margin < 0.5)"),
    ("workers = 2", "confidence = 0.2", "campaign.confidence: out of range (got 0.2; "
     "allowed: 0.5 <= confidence <= 0.9999)"),
    ("workers = 2", "stop_early = 1", "campaign.stop_early: expected true or false (got 1)"),
    ("workers = 2", 'restore = "fast"', 'campaign.restore: not an allowed value (got "fast"; '
     "allowed: template, loadvm)"),
    ('"checksum-registers"', '"a b"', 'campaign.name: invalid name (got "a b"; '
     "allowed: letters, digits"),
    ('"checksum-registers"', '""', "campaign.name: must not be empty"),
    ("deterministic = false", 'accel = "xen"', 'guest.accel: not an allowed value (got "xen"; '
     "allowed: tcg, kvm, auto)"),
    ("deterministic = false", 'args = ["a", 3]', "guest.args[1]: expected a string (got 3)"),
    ('trigger = "time"', 'context = "root"', 'faults[0].context: not an allowed value '
     '(got "root"; allowed: user, kernel, any)'),
    ("bits = 1", "bits = 1.5", "faults[0].bits: expected an integer or a string (got 1.5)"),
    ("bits = 1", "bits = true", "faults[0].bits: expected an integer or a string (got true)"),
    ("bits = 1", "bits = 0", "faults[0].bits: invalid bit count '0' (allowed: a count >= 1)"),
    ("bits = 1", 'bits = "x"', "faults[0].bits: invalid bits 'x' (allowed: N, N,M, LOW-HIGH"),
    ('trigger = "time"', 'trigger = "soon"', "faults[0].trigger: invalid trigger 'soon' "
     "(allowed: time,"),
    ('trigger = "time"', "experiments = 0", "faults[0].experiments: out of range (got 0; "
     "allowed: experiments >= 1)"),
]  # fmt: skip


@pytest.mark.parametrize(("old", "new", "expected"), BAD_VALUES)
def test_bad_values_are_named_with_what_is_allowed(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in EXAMPLE
    error = load_error(tmp_path, EXAMPLE.replace(old, new))
    assert f"campaign.toml: {expected}" in error.message
    assert "more)" not in error.message


def test_bit_out_of_range_for_the_register(tmp_path: Path) -> None:
    text = EXAMPLE.replace(
        'target = "register:gpr"\nbits = 1', 'target = "register:eflags"\nbits = "40"'
    )
    error = load_error(tmp_path, text)
    assert error.message.endswith(
        ': faults[0].bits: bit 40 is out of range for register eflags (32 bits) (got "40")'
    )
    assert error.hint == "use bits 0-31"


def test_unknown_register(tmp_path: Path) -> None:
    error = load_error(tmp_path, EXAMPLE.replace("register:gpr", "register:rzz"))
    assert ": faults[0].target: unknown register 'rzz'" in error.message
    assert "gpr" in error.hint


def test_unknown_target_kind_lists_the_allowed_targets(tmp_path: Path) -> None:
    error = load_error(tmp_path, EXAMPLE.replace("register:gpr", "cache:l1"))
    assert ": faults[0].target: invalid target 'cache:l1' (allowed: register:NAME" in error.message


def test_missing_workload(tmp_path: Path) -> None:
    error = load_error(tmp_path, EXAMPLE.replace('"checksum"', '"nothere.c"'))
    assert ": guest.workload: missing workload: no built-in workload or file 'nothere.c'" in (
        error.message
    )
    assert "checksum" in error.hint


def test_workload_paths_are_relative_to_the_campaign_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    campaign_dir = tmp_path / "sub"
    campaign_dir.mkdir()
    (campaign_dir / "mine.c").write_text("int main(void) { return 0; }\n")
    monkeypatch.chdir(campaign_dir)
    error = load_error(tmp_path, EXAMPLE.replace('"checksum"', '"mine.c"'))
    assert "missing workload" in error.message
    found = load_campaign(write(campaign_dir, EXAMPLE.replace('"checksum"', '"mine.c"')))
    assert found.user_workload() == UserWorkload("mine", campaign_dir.resolve() / "mine.c", ())


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("checksum.c", "workload file 'checksum.c' has the name of the built-in workload"),
        ("my prog.c", "invalid workload name 'my prog'"),
    ],
)
def test_user_workload_names_must_be_usable(tmp_path: Path, file: str, expected: str) -> None:
    (tmp_path / file).write_text("int main(void) { return 0; }\n")
    error = load_error(tmp_path, EXAMPLE.replace('"checksum"', f'"{file}"'))
    assert f": guest.workload: {expected}" in error.message


def test_missing_crash_pattern_file(tmp_path: Path) -> None:
    text = EXAMPLE.replace("deterministic = false", 'crash_patterns = "nope.toml"')
    error = load_error(tmp_path, text)
    assert ": guest.crash_patterns: missing crash pattern file 'nope.toml'" in error.message


def test_invalid_toml_names_line_and_column(tmp_path: Path) -> None:
    error = load_error(tmp_path, EXAMPLE.replace("seed = 1", "seed = = 1"))
    assert error.message.endswith(": line 3, column 8: invalid TOML: invalid value")


def test_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read campaign file"):
        load_campaign(tmp_path / "absent.toml")
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'[campaign]\nname = "caf\xe9"\n')
    with pytest.raises(UsageError, match="not UTF-8"):
        load_campaign(path)


HEAD, _, FAULTS = EXAMPLE.partition("[[faults]]")
CAMPAIGN_ONLY = HEAD.partition("[guest]")[0]
MISSING = [
    (EXAMPLE.replace('name = "checksum-registers"\n', ""), "campaign.name: missing required key"),
    (EXAMPLE.replace('target = "register:gpr"\n', ""), "faults[0].target: missing required key"),
    (CAMPAIGN_ONLY + "[[faults]]" + FAULTS, "guest: missing required table [guest]"),
    (HEAD, "faults: missing required table [[faults]]"),
    (HEAD + "[faults]" + FAULTS, "faults: expected an array of tables"),
    ("faults = []\n" + HEAD, "faults: needs at least one [[faults]] table"),
]


@pytest.mark.parametrize(("text", "expected"), MISSING)
def test_missing_keys_and_tables(tmp_path: Path, text: str, expected: str) -> None:
    error = load_error(tmp_path, text)
    assert f"campaign.toml: {expected}" in error.message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("experiments = 500", "", "campaign: missing experiments or margin"),
        ("seed = 1", "margin = 0.03", "campaign: give experiments or margin, not both"),
        ("workers = 2", "stop_early = true", "campaign.stop_early: stop_early needs margin"),
        ('"time"', '"icount"', "faults[0].trigger: an icount trigger needs deterministic = true"),
    ],
)
def test_inconsistent_settings(tmp_path: Path, old: str, new: str, expected: str) -> None:
    error = load_error(tmp_path, EXAMPLE.replace(old, new))
    assert f"campaign.toml: {expected}" in error.message


def test_fault_family_names_must_be_unique(tmp_path: Path) -> None:
    error = load_error(tmp_path, EXAMPLE + '\n[[faults]]\ntarget = "register:GPR"\nbits = "k2"\n')
    assert "faults[1].name: duplicate fault family name 'register:gpr' (also faults[0])" in (
        error.message
    )
    named = EXAMPLE + '\n[[faults]]\nname = "gpr-double"\ntarget = "register:gpr"\nbits = "k2"\n'
    assert len(load_campaign(write(tmp_path, named)).faults) == 2


def test_shared_experiments_must_cover_every_family(tmp_path: Path) -> None:
    text = EXAMPLE.replace("experiments = 500", "experiments = 1")
    text += '[[faults]]\ntarget = "register:rip"\n'
    error = load_error(tmp_path, text)
    assert "campaign.experiments: experiments = 1 cannot cover 2 fault families" in error.message


def test_several_problems_are_counted(tmp_path: Path) -> None:
    text = EXAMPLE.replace("workers = 2", 'workers = "two"').replace("seed = 1", 'seed = "x"')
    error = load_error(tmp_path, text)
    assert error.message.endswith(': campaign.seed: expected an integer (got "x") (and 1 more)')


def test_fault_family_validates_on_its_own() -> None:
    family = FaultFamily.model_validate({"target": "memory:0x1000", "bits": "3,7"})
    assert family.name == "memory:0x1000"
    assert family.fault_spec().bits.positions == (3, 7)
    with pytest.raises(ValueError, match="unknown register"):
        FaultFamily.model_validate({"target": "register:nope"})
    with pytest.raises(ValueError, match="frozen"):
        family.target = "register:rip"


def test_json_schema_describes_the_file() -> None:
    schema = campaign_json_schema()
    assert set(schema["properties"]) == {"campaign", "guest", "machine", "faults", "dask", "slurm"}
    assert set(schema["required"]) == {"campaign", "faults"}  # [guest] or [[machine]]
    section = schema["$defs"]["CampaignSection"]
    assert section["additionalProperties"] is False
    assert section["properties"]["workers"]["maximum"] == 64
    assert set(schema["$defs"]["FaultFamily"]["properties"]) == {
        "name",
        "target",
        "bits",
        "trigger",
        "context",
        "experiments",
        "op",
        "function",
        "instance",
        "start_index",
        "max_dic",
        "faults_per_run",
        "bit_range",
        "probability",
        "flips",
        "interval",
        "rate",
        "rate_unit",
        "compression",
        "period",
        "disk",
        "sectors",
        "errno",
        "delay",
        "jitter",
        "once",
        "machine",
        "link",
        "direction",
        "burst",
        "where",
        "bandwidth",
        "groups",
    }
    assert set(schema["$defs"]["DiskEntry"]["properties"]) == {"name", "size", "image"}
    json.dumps(schema)


STORMS = """\
[campaign]
name = "storms"
experiments = 6

[guest]
idle = "0.5s"

[[faults]]
target = "memory:kernel-data"
flips = 10
interval = "10ms"
period = "0.2s"

[[faults]]
target = "memory:0x1000000-0x1100000"
flips = 3
rate = 1000
rate_unit = "per-gib-month"
compression = 1e9

[[faults]]
target = "memory"
period = "1s"
"""


def test_storm_period_and_idle_families(tmp_path: Path) -> None:
    spec = load_campaign(write(tmp_path, STORMS))
    assert spec.guest.idle_s == 0.5 and spec.workload_name == "idle"
    assert spec.user_workload() is None
    storm, rated, period = (family.fault_spec() for family in spec.faults)
    assert [family.name for family in spec.faults] == [
        "storm:kernel-data", "storm:0x1000000-0x1100000", "memory:ram",
    ]  # fmt: skip
    assert storm.storm is not None and storm.storm.flips == 10 and storm.period_s == 0.2
    assert rated.storm is not None and rated.storm.compression == 1e9
    assert period.storm is None and period.period_s == 1.0
    assert CampaignSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("flips = 10\n", ""), "faults[0].flips: missing flips for a storm"),
        (('interval = "10ms"\n', ""), "faults[0].flips: flips needs interval or rate"),
        (('interval = "10ms"', 'interval = "soon"'), "faults[0].interval: invalid interval"),
        (('period = "0.2s"', 'period = "0s"'), "faults[0].period: a period must be longer"),
        (("compression = 1e9\n", ""), "faults[1].compression: missing compression"),
        (('interval = "10ms"', 'interval = "10ms"\nbits = 2'), "faults[0].bits: bits does not"),
        (('idle = "0.5s"', 'idle = "0.5s"\nworkload = "checksum"'), "give workload or idle"),
        (('idle = "0.5s"', "deterministic = false"), "guest.workload: missing workload"),
        (('idle = "0.5s"', 'idle = "never"'), "guest.idle: invalid duration"),
    ],
)
def test_bad_storm_families_are_one_line(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    old, new = change
    assert old in STORMS
    error = load_error(tmp_path, STORMS.replace(old, new, 1))
    assert message in error.message, error.message
