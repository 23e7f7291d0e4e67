"""F-SEFI configurations become campaign files; instruction fault families validate."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from vmfault.campaign.sefi import parse_sefi_ini, sefi_campaign_toml
from vmfault.campaign.spec import CampaignSpec, load_campaign
from vmfault.errors import UsageError
from vmfault.faults import BitMode, InstructionFault
from vmfault.session.process import AT_BASE, AT_ENTRY, parse_auxv

REFERENCE = """
[general]
SEFI_support_fault_fadd = yes
SEFI_support_fault_fmul = yes
SEFI_support_fault_cmp = yes
SEFI_support_fault_xor = no
SEFI_support_fault_sarl = yes
SEFI_support_fault_idivl = no
SEFI_support_fault_imul = no
SEFI_support_dynamic_probability = no
SEFI_support_range_start = 52
SEFI_support_range_end = 62
; how many bits to flip (capped at the size of the range)
SEFI_support_number_of_bits_to_flip = 2
SEFI_support_fault_probability = 0
SEFI_support_start_index_fadd = 3
SEFI_support_max_dic = 100

[host configuration]
SEFI_host_sym_table_directory = tracecap/symbol_table_foo
"""


def test_an_fsefi_configuration_maps_onto_instruction_families() -> None:
    config = parse_sefi_ini(REFERENCE)
    assert config.ops == ("fadd", "fmul", "cmp", "sar")
    assert (config.bit_low, config.bit_high, config.bits) == (52, 62, 2)
    assert config.probability is None
    assert config.start_index["fadd"] == 4  # F-SEFI counts from 0, vmfault from 1
    assert config.start_index["fmul"] == 1
    text = sefi_campaign_toml(
        config, workload="foo", function="myaddfunc", runs=25, name="sefi-foo"
    )
    spec = CampaignSpec.model_validate(tomllib.loads(text))
    assert spec.campaign.experiments == 100
    families = {family.name: family.fault_spec() for family in spec.faults}
    assert list(families) == ["fadd@myaddfunc", "fmul@myaddfunc", "cmp@myaddfunc", "sar@myaddfunc"]
    fadd = families["fadd@myaddfunc"]
    assert fadd.instruction == InstructionFault("fadd", "myaddfunc", start_index=4, max_dic=100)
    assert (fadd.bits.count, fadd.bits.low, fadd.bits.high) == (2, 52, 62)
    cmp = families["cmp@myaddfunc"]  # the flags: their status flags, not bits 52-62
    assert (cmp.bits.low, cmp.bits.high, cmp.bits.count) == (None, None, 2)


def test_the_probability_mode_and_the_shipped_reference(tmp_path: Path) -> None:
    config = parse_sefi_ini(REFERENCE.replace("probability = 0", "probability = 5"))
    assert config.probability == 0.05
    text = sefi_campaign_toml(config, workload="foo", function=None, runs=4, name="p")
    spec = CampaignSpec.model_validate(tomllib.loads(text))
    assert all(f.fault_spec().instruction.probability == 0.05 for f in spec.faults)  # type: ignore[union-attr]
    every = REFERENCE.replace("= no", "= yes").replace("probability = yes", "probability = no")
    out = tmp_path / "campaign.toml"
    out.write_text(sefi_campaign_toml(parse_sefi_ini(every), workload="foo", runs=2, name="s",
                                      function="myaddfunc"))  # fmt: skip
    assert [f.op for f in load_campaign(out).faults] == [
        "fadd", "fmul", "cmp", "xor", "sar", "idiv", "imul"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("SEFI_support_range_start = 52", "SEFI_support_range_start = 70"), "bit range 70-62"),
        (("fault_fadd = yes", "fault_fadd = maybe"), "is not yes or no"),
        (("probability = no", "probability = yes"), "with a probability of 0"),
        (("number_of_bits_to_flip = 2", "number_of_bits_to_flip = 0"), "flips nothing"),
        (("[general]", "[other]"), "no [general] section"),
        (("max_dic = 100", "max_dic = 2"), "start index of fadd"),
    ],
)
def test_bad_configurations_say_which_key(change: tuple[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        parse_sefi_ini(REFERENCE.replace(*change))


def test_no_enabled_op_is_an_error() -> None:
    with pytest.raises(UsageError, match="no op is enabled"):
        parse_sefi_ini("[general]\nSEFI_support_fault_fadd = no\n")


BASE = """
[campaign]
name = "i"
experiments = 4
[guest]
workload = "foo"
[[faults]]
"""


def family(text: str) -> CampaignSpec:
    return CampaignSpec.model_validate(tomllib.loads(BASE + text))


def test_instruction_families_build_instruction_specs() -> None:
    spec = family(
        'target = "instruction"\nop = "fadd"\nfunction = "myaddfunc"\nbits = 3\n'
        'bit_range = "40-62"\nfaults_per_run = 2\nmax_dic = 8\n'
    )
    fault = spec.faults[0].fault_spec()
    assert spec.faults[0].name == "instruction:fadd@myaddfunc"
    assert fault.instruction == InstructionFault("fadd", "myaddfunc", max_dic=8, faults_per_run=2)
    assert (fault.bits.count, fault.bits.low, fault.bits.high) == (3, 40, 62)
    short = family('target = "instruction:sarl@solve"\nbits = "59"\n').faults[0].fault_spec()
    assert short.instruction == InstructionFault("sar", "solve")
    assert short.bits.positions == (59,) and short.bits.mode is BitMode.FLIP


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('target = "instruction"\n', "missing op"),
        ('target = "instruction"\nop = "fad"\n', "unknown instruction class 'fad'"),
        ('target = "register:rip"\nop = "fadd"\n', "op applies only to target"),
        ('target = "instruction"\nop = "fadd"\ntrigger = "time"\n', "trigger does not apply"),
        (
            'target = "instruction"\nop = "fadd"\nprobability = 0.1\nfaults_per_run = 2\n',
            "replaces",
        ),
        ('target = "instruction"\nop = "fadd"\nbits = "59"\nbit_range = "50-60"\n', "bit_range a"),
        ('target = "instruction"\nop = "fadd"\nbit_range = "62-50"\n', "runs backwards"),
        ('target = "instruction"\nop = "fadd"\nprobability = 0\n', "probability"),
        ('target = "instruction:fadd@f"\nop = "fmul"\n', "disagree with target"),
    ],
)
def test_bad_instruction_families_are_one_line(text: str, message: str, tmp_path: Path) -> None:
    path = tmp_path / "campaign.toml"
    path.write_text(BASE + text)
    with pytest.raises(UsageError, match=message) as error:
        load_campaign(path)
    assert "\n" not in error.value.one_line()
    assert str(path) in error.value.message


def test_auxv_from_a_new_stack() -> None:
    words = [2, 0x7FF0, 0x7FF8, 0, 0x7F00, 0, AT_BASE, 0, AT_ENTRY, 0x10001234, 0, 0]
    assert parse_auxv(words) == {AT_BASE: 0, AT_ENTRY: 0x10001234}
    with pytest.raises(ValueError, match="does not end"):
        parse_auxv(words[:-2])


def test_import_sefi_writes_a_campaign_file(tmp_path: Path) -> None:
    ini = tmp_path / "SEFI_conf.ini"
    ini.write_text(REFERENCE)
    out = tmp_path / "campaigns" / "sefi.toml"
    out.parent.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "vmfault", "campaign", "import-sefi", str(ini),
         "--workload", "foo", "--function", "myaddfunc", "--runs", "10", "-o", str(out)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    spec = load_campaign(out)
    assert spec.campaign.name == "sefi-foo-myaddfunc" and spec.campaign.experiments == 40
    assert [f.op for f in spec.faults] == ["fadd", "fmul", "cmp", "sar"]
    bad = subprocess.run(
        [sys.executable, "-m", "vmfault", "campaign", "import-sefi", str(tmp_path / "none.ini"),
         "--workload", "foo"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
