"""Instruction-result faults on real guests: F-SEFI's documented results, IEEE-754 checks,
process awareness, several faults per run, campaigns."""

from __future__ import annotations

import json
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmfault.arch import Arch
from vmfault.classify import Outcome
from vmfault.experiment.pipeline import Experimenter
from vmfault.experiment.records import InstructionInjection
from vmfault.faults import BitModel, FaultSpec, InstructionFault
from vmfault.guest.image import GuestImage, ImageSpec, UserWorkload
from vmfault.profile.workload import profile_instructions
from vmfault.session import prepare_image

pytestmark = pytest.mark.vm

FORKING_C = """
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((noipa)) double accumulate(int n)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += 0.5;
    return sum;
}

int main(void)
{
    pid_t child = fork();
    if (child == 0) {
        printf("child %.1f\\n", accumulate(7));
        return 0;
    }
    usleep(20000); /* the child, at the same addresses, sums first */
    double mine = accumulate(5);
    waitpid(child, NULL, 0);
    printf("parent %.1f\\n", mine);
    return 0;
}
"""


FOO_CODE = {
    Arch.X86_64: {"fadd": "addsd xmm0, xmm1", "cmp": "cmp dword ptr [rbp - 4], 9"},
    Arch.AARCH64: {"fadd": "fadd d0, d0, d1", "cmp": "cmp w0, #9"},
}
"""How gcc -O0 compiles foo.c's add and loop test on each architecture."""
ZERO_FLAG = {Arch.X86_64: ("eflags", 6), Arch.AARCH64: ("cpsr", 30)}
"""The flags register and its Z bit."""


def vmfault(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def foo(arch_image: GuestImage) -> Iterator[Experimenter]:
    """One long-lived experimenter on F-SEFI's foo.c (restored per experiment), on each
    architecture."""
    with Experimenter.single(arch_image, ["foo"]) as experimenter:
        yield experimenter


def to_bits(value: float) -> int:
    return int(struct.unpack("<Q", struct.pack("<d", value))[0])


def from_bits(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<Q", bits))[0])


def foo_output(op: str, instance: int, bit: int) -> str:
    """foo.c's output, computed in IEEE-754 doubles, with `bit` of the `instance`-th result
    of `op` flipped (Python floats are IEEE-754 doubles, like SSE2's)."""
    data = 1.0
    for i in range(1, 11):
        data *= 1.1
        if op == "fmul" and i == instance:
            data = from_bits(to_bits(data) ^ 1 << bit)
    lines = [f"fmul output : {data:.10f}"]
    for i in range(1, 11):
        data += 1.1
        if op == "fadd" and i == instance:
            data = from_bits(to_bits(data) ^ 1 << bit)
    lines.append(f"fadd output : {data:.10f}")
    return "\n".join(lines) + "\n"


def test_profile_of_myaddfunc_is_fsefis(arch_image: GuestImage, arch: Arch) -> None:
    where = ("--workload", "foo", "--function", "myaddfunc", "--arch", arch.value)
    result = vmfault("profile", *where, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["classes"]["fadd"] == 10
    assert data["classes"]["cmp"] == 11
    assert data["classes"]["fmul"] == 0
    listing = data["instructions"]
    adds = [item for item in listing.values() if item["disassembly"] == FOO_CODE[arch]["fadd"]]
    assert len(adds) == 1 and adds[0]["count"] == 10
    assert sum(item["count"] for item in listing.values()) == data["classes"]["all"]
    human = vmfault("profile", *where)
    assert human.returncode == 0, human.stderr
    assert "[PROFILE] fadd: 10, fmul: 0, xor:0, cmp:11 sarl:0 idivl:0 imul:0" in human.stdout


def test_the_documented_injection_prints_fsefis_line(arch_image: GuestImage, arch: Arch) -> None:
    result = vmfault(
        "inject", "--workload", "foo", "--function", "myaddfunc", "--op", "fadd",
        "--instance", "5", "--bits", "59", "--arch", arch.value, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert "fadd output : 2754157841571327825859331172157156753408.0000000000" in (
        data["output"].splitlines()
    )
    fsefi = data["instruction"]
    assert fsefi["before"] == pytest.approx(8.0937424601)
    assert fsefi["after"] == pytest.approx(2.754157841571328e39)
    assert fsefi["op"] == "fadd" and fsefi["instance"] == 5 and fsefi["function"] == "myaddfunc"
    assert fsefi["disassembly"] == FOO_CODE[arch]["fadd"] and fsefi["bits"] == [59]
    assert fsefi["mask"] == "0x0800000000000000" and fsefi["process"] == "foo"
    assert isinstance(fsefi["pid"], int)
    assert data["outcome"] == "sdc"


@pytest.mark.parametrize(
    ("op", "function", "instance", "bit"),
    [("fmul", "mymulfunc", 3, 60), ("fmul", "mymulfunc", 10, 52), ("fadd", "myaddfunc", 1, 55)],
)
def test_result_flips_match_ieee754_arithmetic(
    foo: Experimenter, op: str, function: str, instance: int, bit: int
) -> None:
    fault = InstructionFault(op, function, instance=instance)
    record = foo.run(FaultSpec.of_instruction(fault, BitModel.parse(str(bit))), seed=1)
    injection = record.injection
    assert injection.injected, record.reason
    assert injection.before is not None and injection.after == injection.before ^ 1 << bit
    assert record.output == foo_output(op, instance, bit)
    assert record.outcome is Outcome.SDC


def test_cmp_results_are_the_flags(foo: Experimenter) -> None:
    arch = foo.testbed.image.arch
    flags, zero = ZERO_FLAG[arch]
    fault = InstructionFault("cmp", "myaddfunc", instance=11)
    record = foo.run(FaultSpec.of_instruction(fault, BitModel.parse(str(zero))), seed=1)
    injection = record.injection
    assert isinstance(injection, InstructionInjection)
    assert injection.register == flags and injection.injected
    assert injection.disassembly == FOO_CODE[arch]["cmp"]
    assert record.outcome is not Outcome.NOT_INJECTED


def test_several_faults_in_one_run_are_all_recorded(foo: Experimenter) -> None:
    fault = InstructionFault("fadd", "myaddfunc", faults_per_run=3)
    spec = FaultSpec.of_instruction(fault, BitModel(count=2, low=52, high=62))
    record = foo.run(spec, seed=7, index=2)
    injections = record.injections
    assert len(injections) == 3
    assert all(isinstance(i, InstructionInjection) for i in injections)
    instances = [i.instance or 0 for i in injections if isinstance(i, InstructionInjection)]
    assert instances == sorted(instances) and all(1 <= n <= 10 for n in instances)
    for injection in injections:
        assert injection.injected
        assert len(injection.to_json()["mask"]) and bin(injection.mask).count("1") == 2
        assert all(52 <= p <= 62 for p in range(64) if injection.mask >> p & 1)
    assert len(record.to_json()["extra_injections"]) == 2


def test_an_instance_beyond_the_run_is_not_injected(foo: Experimenter) -> None:
    fault = InstructionFault("fadd", "myaddfunc", instance=11)
    record = foo.run(FaultSpec.of_instruction(fault), seed=1)
    assert record.outcome is Outcome.NOT_INJECTED
    assert "executed 10 fadd instances" in record.reason


@pytest.fixture(scope="module")
def forking(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    source = tmp_path_factory.mktemp("forking") / "forking.c"
    source.write_text(FORKING_C)
    return prepare_image(ImageSpec(user_workloads=(UserWorkload("forking", source),)))


def test_another_process_at_the_same_addresses_is_not_counted(forking: GuestImage) -> None:
    profile = profile_instructions(forking, ["forking"], function="accumulate")
    assert profile.output == "child 3.5\nparent 2.5\n"
    assert profile.count("fadd") == 5  # the parent's five adds; the child's seven are not its
    fault = InstructionFault("fadd", "accumulate", instance=5)
    with Experimenter.single(forking, ["forking"]) as experimenter:
        record = experimenter.run(FaultSpec.of_instruction(fault, BitModel.parse("62")), seed=1)
    assert record.injection.injected, record.reason
    assert record.injection.before == to_bits(2.5)  # the parent's fifth sum, not the child's
    assert record.output == "child 3.5\nparent 0.0\n"


CAMPAIGN = """
[campaign]
name = "instructions"
seed = 5
experiments = 8
workers = 1

[guest]
workload = "foo"

[[faults]]
name = "fadd-two-bits"
target = "instruction"
op = "fadd"
function = "myaddfunc"
bits = 2
bit_range = "52-62"
faults_per_run = 2
experiments = 4

[[faults]]
name = "fmul-probability"
target = "instruction"
op = "fmul"
function = "mymulfunc"
probability = 0.4
experiments = 4
"""


def test_a_campaign_of_instruction_faults(image: GuestImage, tmp_path: Path) -> None:
    (tmp_path / "campaign.toml").write_text(CAMPAIGN)
    db = tmp_path / "results.db"
    result = vmfault("campaign", "run", "campaign.toml", "--db", str(db), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["done"] == 8
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT e.stratum, i.experiment_id, i.ordinal, i.mask, i.trigger, i.injected "
            "FROM injection AS i JOIN experiment AS e USING (experiment_id)"
        ).fetchall()
        outcomes = dict(conn.execute("SELECT experiment_id, class FROM outcome").fetchall())
    two_bits = [r for r in rows if r[0] == "fadd-two-bits"]
    assert {r[2] for r in two_bits} == {0, 1}  # two injections per run, both stored
    for _, _, _, mask, trigger, injected in two_bits:
        bits = [p for p in range(64) if int(mask, 16) >> p & 1]
        assert injected and len(bits) == 2 and all(52 <= p <= 62 for p in bits)
        assert trigger.startswith("fadd#")
    per_run: dict[int, int] = {}
    for stratum, experiment, _, _, trigger, _ in rows:
        if stratum == "fmul-probability" and trigger.startswith("fmul#"):
            per_run[experiment] = per_run.get(experiment, 0) + 1
    assert sum(per_run.values()) >= 4  # about 0.4 x 10 instances x 4 runs
    assert len(outcomes) == 8
    assert all(outcomes[e] != "not-injected" for e in per_run)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--function", "myadfunc", "--op", "fadd"], "closest: myaddfunc"),
        (["--function", "myaddfunc", "--op", "fad"], "unknown instruction class 'fad'"),
        (["--op", "fadd", "--target", "register:rip"], '--op applies only to --target = "instr'),
        (["--op", "fadd", "--instance", "fifth"], "invalid instance 'fifth'"),
    ],
)
def test_bad_instruction_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    result = vmfault("inject", "--workload", "foo", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_stripped_binary_says_so(tmp_path: Path) -> None:
    source = Path(__file__).parents[2] / "src" / "vmfault" / "guest" / "data" / "workloads"
    binary = tmp_path / "foo-s"
    subprocess.run(
        ["gcc", "-static", "-O0", "-s", "-o", str(binary), str(source / "foo.c")], check=True
    )
    result = vmfault("profile", "--workload", str(binary), "--function", "myaddfunc")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "vmfault: error: foo-s is stripped: it has no symbol table "
        "(build it without -s and do not strip it)"
    ]


@pytest.fixture(scope="module")
def position_independent(tmp_path_factory: pytest.TempPathFactory) -> GuestImage:
    """foo.c as a dynamically linked PIE and as a static PIE (user binaries)."""
    directory = tmp_path_factory.mktemp("pie")
    source = Path(__file__).parents[2] / "src" / "vmfault" / "guest" / "data" / "workloads"
    builds = {"foo-dynamic": [], "foo-static-pie": ["-static-pie"]}
    for name, flags in builds.items():
        subprocess.run(
            ["gcc", "-O0", *flags, "-o", str(directory / name), str(source / "foo.c")],
            check=True,
        )
    users = tuple(UserWorkload(name, directory / name) for name in builds)
    return prepare_image(ImageSpec(user_workloads=users))


@pytest.mark.parametrize("name", ["foo-dynamic", "foo-static-pie"])
def test_pie_and_dynamic_binaries_give_the_documented_results(
    position_independent: GuestImage, name: str
) -> None:
    profile = profile_instructions(position_independent, [name], function="myaddfunc")
    assert (profile.count("fadd"), profile.count("cmp")) == (10, 11)
    assert profile.load_base != 0  # learnt at run time from the process's auxiliary vector
    fault = InstructionFault("fadd", "myaddfunc", instance=5)
    with Experimenter.single(position_independent, [name]) as experimenter:
        record = experimenter.run(FaultSpec.of_instruction(fault, BitModel.parse("59")), seed=1)
    assert record.output == foo_output("fadd", 5, 59)
    injection = record.injection
    assert isinstance(injection, InstructionInjection)
    assert injection.instruction is not None and injection.instruction < 0x100000
