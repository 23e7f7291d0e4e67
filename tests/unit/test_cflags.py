"""Users' compiler flags: parsing, where they go among vmfault's, the image hash, the
campaign and config files, the command line's early errors, and the check that a named
function ever ran (the symptom of a function inlined into its caller)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import MappingProxyType
from typing import cast

import pytest

import vmfault.experiment.kinds.instruction as instruction_module
from tests.toolchain import compile_c
from tests.unit.test_guest_image import fake_kernel, needs_toolchain
from vmfault.campaign import CampaignSpec, campaign_json_schema, load_campaign
from vmfault.cli import _load_config, main
from vmfault.errors import ImageError, MachineError, UsageError
from vmfault.experiment.kinds.instruction import InstructionKind
from vmfault.experiment.testbed import GuestMachine
from vmfault.faults import FaultSpec
from vmfault.faults.instructions import Instruction, decode
from vmfault.guest.binary import WorkloadBinary
from vmfault.guest.image import ImageInputs, ImageSpec, build_image
from vmfault.guest.workloads import (
    DEFAULT_OPTIMISATION,
    WORKLOAD_LINK_FLAGS,
    SourceKind,
    UserWorkload,
    WorkloadInput,
    check_cflags,
    parse_cflags,
    plan_workloads,
    user_c_flags,
)
from vmfault.profile.workload import InstructionProfile

PROGRAM = "int main(void) { return 0; }\n"
INLINED = (
    "function horner never executed in the golden run: probably inlined into its caller or "
    "never called; compile with --cflags -O0, or mark it __attribute__((noinline))"
)


# ---------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        ("-O0 -fno-inline", ("-O0", "-fno-inline")),
        ("  -O1\t-g  ", ("-O1", "-g")),
        ("-DGREETING='\"hello world\"'", ('-DGREETING="hello world"',)),
        ("-DN=3 -include stdio.h", ("-DN=3", "-include", "stdio.h")),
        ("-O0; rm -rf ~", ("-O0;", "rm", "-rf", "~")),  # words for gcc, never a shell
        (["-O0", "-DMSG=a b"], ("-O0", "-DMSG=a b")),
        ("", ()),
        ([], ()),
    ],
)
def test_cflags_split_like_a_shell_without_one(
    value: str | list[str], flags: tuple[str, ...]
) -> None:
    assert parse_cflags(value) == flags


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('-O0 "-DX', "--cflags: no closing quotation in"),
        ("-O0 -c", "--cflags: -c stops gcc before it links an executable"),
        ("-E", "-E stops gcc before it links"),
        ("-fsyntax-only", "-fsyntax-only stops gcc"),
        ("-shared", "-shared makes a shared library"),
        ("-o /tmp/elsewhere", "-o names the output file"),
        ("-o/tmp/elsewhere", "-o/tmp/elsewhere names the output file"),
        ("--help", "--help makes gcc print its settings"),
        ("-print-search-dirs", "makes gcc print its settings"),
        (["-O0", ""], "'' is not a flag"),
        (["-O0", "a\0b"], "is not a flag"),
        ([1], "expected a string or an array of strings"),
        (3, "expected a string or an array of strings, got 3"),
    ],
)
def test_bad_cflags_are_one_usage_error(value: object, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_cflags(value, label="--cflags")
    line = caught.value.one_line()
    assert message in line and "\n" not in line
    assert line.startswith("--cflags: ")


def test_user_flags_follow_the_link_flags_and_replace_the_default_level() -> None:
    assert user_c_flags() == (*WORKLOAD_LINK_FLAGS, DEFAULT_OPTIMISATION)
    assert user_c_flags(("-O0",)) == (*WORKLOAD_LINK_FLAGS, "-O0")
    assert user_c_flags(("-Os", "-g")) == (*WORKLOAD_LINK_FLAGS, "-Os", "-g")
    assert user_c_flags(("-fno-inline",)) == (
        *WORKLOAD_LINK_FLAGS,
        DEFAULT_OPTIMISATION,
        "-fno-inline",
    )
    # A flag the user repeats from vmfault's comes last, where gcc takes it from.
    assert user_c_flags(("-no-pie", "-O3"))[-2:] == ("-no-pie", "-O3")


# ---------------------------------------------------------------------------- hashing


def _user(tmp_path: Path, *cflags: str, name: str = "poly.c") -> WorkloadInput:
    source = tmp_path / name
    source.write_text(PROGRAM)
    return plan_workloads([UserWorkload(source.stem, source, cflags=cflags)])[-1]


def test_cflags_are_part_of_the_workload_fingerprint(tmp_path: Path) -> None:
    default = _user(tmp_path)
    assert (default.flags, default.cflags) == ((*WORKLOAD_LINK_FLAGS, "-O2"), ())
    variants = {
        flags: _user(tmp_path, *flags).fingerprint()
        for flags in [("-O0",), ("-O0", "-fno-inline"), ("-fno-inline", "-O0"), ("-O1",)]
    }
    assert len({default.fingerprint(), *variants.values()}) == 1 + len(variants)
    assert _user(tmp_path, "-O0").fingerprint() == variants[("-O0",)]  # stable
    o0 = _user(tmp_path, "-O0")
    assert (o0.flags, o0.cflags) == ((*WORKLOAD_LINK_FLAGS, "-O0"), ("-O0",))
    # The default level spelt out is the same gcc command line: the same binary, one image.
    assert _user(tmp_path, "-O2").fingerprint() == default.fingerprint()


def test_cflags_change_the_image_hash(tmp_path: Path) -> None:
    base = ImageInputs(
        kernel_source=tmp_path / "k.deb", kernel_sha256="a" * 64, kernel_kind="debian",
        modules=(), agent_source=b"int main(void) { for (;;); }",
        workloads=(*plan_workloads(), _user(tmp_path)), gcc_version="gcc 12",
        busybox=Path("/bin/busybox"), busybox_sha256="b" * 64, initrd=None, initrd_sha256="",
        disk=None,
    )  # fmt: skip
    digests = {
        cflags: dataclasses.replace(
            base, workloads=(*base.workloads[:-1], _user(tmp_path, *cflags))
        ).digest()
        for cflags in [(), ("-O0",), ("-O0", "-fno-inline")]
    }
    assert digests[()] == base.digest()
    assert len(set(digests.values())) == len(digests)


def test_a_binary_takes_no_cflags(tmp_path: Path) -> None:
    source = tmp_path / "hello.c"
    source.write_text(PROGRAM)
    binary = compile_c(source, tmp_path / "hello", "-static")
    with pytest.raises(UsageError, match="hello is a binary, which is not compiled"):
        plan_workloads([UserWorkload("hello", binary, cflags=("-O0",))])
    with pytest.raises(UsageError, match="-c stops gcc"):
        plan_workloads([UserWorkload("hello", source, cflags=("-c",))])


# ---------------------------------------------------------------------------- gcc


@pytest.mark.parametrize(
    ("cflags", "first_line"),
    [
        (("-Onope",), "argument to"),
        (("-fnope",), "unrecognized command-line option"),
        (("-Wl,--nope",), "unrecognized option '--nope'"),
        (("-lnope",), "cannot find -lnope"),
        (("O0",), "cannot find O0"),
    ],
)
def test_flags_gcc_rejects_name_its_first_error_line(
    tmp_path: Path, cflags: tuple[str, ...], first_line: str
) -> None:
    item = _user(tmp_path, *cflags)
    with pytest.raises(UsageError) as caught:
        check_cflags(item)
    line = caught.value.one_line().replace("\u2018", "'").replace("\u2019", "'")
    assert line.startswith(f"gcc rejects the cflags of poly ({' '.join(cflags)}): ")
    assert first_line in line and "\n" not in line
    assert "collect2" not in line  # the linker's own line, not gcc's summary of it


def test_flags_that_compile_are_not_blamed(tmp_path: Path) -> None:
    check_cflags(_user(tmp_path, "-O0", "-fno-inline"))
    check_cflags(_user(tmp_path))  # no cflags: nothing to probe


@needs_toolchain
def test_a_build_with_bad_flags_stops_first_with_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "poly.c"
    source.write_text(PROGRAM)
    kernel = fake_kernel(tmp_path / "vmlinux")
    spec = ImageSpec(
        kernel=kernel, user_workloads=(UserWorkload("poly", source, cflags=("-Onope",)),)
    )
    with pytest.raises(UsageError, match=r"^gcc rejects the cflags of poly \(-Onope\): "):
        build_image(spec, cache_root=tmp_path / "cache")
    assert not (tmp_path / "cache" / "images").exists()  # found before any other work
    source.write_text("int main(void) { return }\n")  # the source at fault: as before
    spec = ImageSpec(kernel=kernel, user_workloads=(UserWorkload("poly", source, cflags=("-O0",)),))
    with pytest.raises(ImageError, match=r"gcc failed on poly\.c"):
        build_image(spec, cache_root=tmp_path / "cache")


# ---------------------------------------------------------------------------- campaign files

CAMPAIGN = """\
[campaign]
name = "poly"
experiments = 2

[guest]
workload = "{workload}"
{cflags}

[[faults]]
target = "instruction"
op = "fadd"
function = "horner"
"""


def _campaign(tmp_path: Path, cflags: str, workload: str = "poly.c") -> Path:
    (tmp_path / "poly.c").write_text(PROGRAM)
    path = tmp_path / "campaign.toml"
    path.write_text(CAMPAIGN.format(workload=workload, cflags=cflags))
    return path


@pytest.mark.parametrize(
    ("line", "flags"),
    [
        ('cflags = "-O0 -fno-inline"', ("-O0", "-fno-inline")),
        ('cflags = ["-O0", "-DMSG=a b"]', ("-O0", "-DMSG=a b")),
        ("", ()),
    ],
)
def test_campaign_cflags_reach_the_workload_and_the_stored_spec(
    tmp_path: Path, line: str, flags: tuple[str, ...]
) -> None:
    spec = load_campaign(_campaign(tmp_path, line))
    assert spec.guest.cflags == flags
    user = spec.user_workload()
    assert user is not None and user.cflags == flags
    stored = json.loads(spec.to_json())
    assert stored["guest"]["cflags"] == list(flags)  # the campaign's provenance
    assert CampaignSpec.from_json(spec.to_json()) == spec
    assert CampaignSpec.model_validate(spec.to_toml_dict()).guest.cflags == flags


@pytest.mark.parametrize(
    ("workload", "line", "message"),
    [
        ("poly.c", 'cflags = "-O0 \\"x"', "guest.cflags: no closing quotation"),
        ("poly.c", 'cflags = "-c"', "guest.cflags: -c stops gcc"),
        ("poly.c", "cflags = 3", "guest.cflags: expected a string or an array of strings"),
        ("checksum", 'cflags = "-O0"', "guest.cflags: cflags apply only to a user's C source"),
        ("hello", 'cflags = "-O0"', "guest.cflags: cflags apply only to a C source, and hello"),
    ],
)
def test_campaign_cflags_errors_are_one_line(
    tmp_path: Path, workload: str, line: str, message: str
) -> None:
    (tmp_path / "hello").write_bytes(b"\x7fELF")
    with pytest.raises(UsageError) as caught:
        load_campaign(_campaign(tmp_path, line, workload))
    text = caught.value.one_line()
    assert message in text and "\n" not in text


def test_idle_campaigns_take_no_cflags(tmp_path: Path) -> None:
    path = _campaign(tmp_path, 'cflags = "-O0"')
    path.write_text(path.read_text().replace('workload = "poly.c"', 'idle = "1s"'))
    with pytest.raises(UsageError, match=r"guest\.cflags: cflags do not apply to the idle system"):
        load_campaign(path)


def test_the_schema_allows_a_string_or_an_array() -> None:
    cflags = campaign_json_schema()["$defs"]["GuestSection"]["properties"]["cflags"]
    assert {"type": "string"} in cflags["anyOf"]
    json.dumps(cflags)


# ---------------------------------------------------------------------------- command line


def test_config_workloads_take_cflags(tmp_path: Path) -> None:
    (tmp_path / "poly.c").write_text(PROGRAM)
    config = tmp_path / "workloads.toml"
    config.write_text(
        '[[workload]]\npath = "poly.c"\ncflags = "-O0 -fno-inline"\n'
        '[[workload]]\nname = "other"\npath = "poly.c"\ncflags = ["-O1"]\n'
        '[[workload]]\nname = "plain"\npath = "poly.c"\n'
    )
    assert [w.cflags for w in _load_config(config)] == [("-O0", "-fno-inline"), ("-O1",), ()]
    config.write_text('[[workload]]\npath = "poly.c"\ncflags = "-O0 \'"\n')
    with pytest.raises(UsageError, match=r"workload\[0\]: cflags: no closing quotation"):
        _load_config(config)


def _fails(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "checksum", "--cflags", "-O0"], "checksum is a built-in workload, built with"),
        (["inject", "-w", "foo", "--op", "fadd", "--cflags=-O0"], "foo is a built-in workload"),
        (["profile", "-w", "crc32", "--cflags", "-O1 -g"], "crc32 is a built-in workload"),
        (
            ["storm", "-w", "matmul", "--interval", "5ms", "--cflags", "-O0"],
            "matmul is a built-in workload",
        ),
        (
            ["storm", "--idle", "1s", "--interval", "5ms", "--cflags", "-O0"],
            "--cflags do not apply to the idle",
        ),
        (["run", "./poly.c", "--cflags", '-O0 "x'], "--cflags: no closing quotation"),
        (["run", "./poly.c", "--cflags", "-c"], "--cflags: -c stops gcc"),
        (["run", "other", "--cflags", "-O0"], "set cflags in its [[workload]] table"),
        (["profile", "-w", "./hello", "--cflags", "-O0"], "hello is a binary, which is not"),
    ],
)
def test_cflags_the_command_cannot_use_fail_at_once(
    argv: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "poly.c").write_text(PROGRAM)
    compile_c(tmp_path / "poly.c", tmp_path / "hello", "-static")
    line = _fails(argv, capsys)
    assert line.startswith("vmfault: error: ") and message in line, line


# ---------------------------------------------------------------------------- never executed


def _profile(function: str | None, executed: int) -> InstructionProfile:
    return InstructionProfile(
        workload="poly", argv=("poly",), function=function, spans=((0x1000, 0x1040),),
        classes=MappingProxyType({"fadd": 0, "all": executed}), instructions=(),
    )  # fmt: skip


def test_a_function_that_never_ran_is_one_line_naming_the_cause() -> None:
    _profile("horner", 12).require_executed()
    with pytest.raises(UsageError) as caught:
        _profile("horner", 0).require_executed(SourceKind.C_SOURCE)
    assert caught.value.one_line() == INLINED
    with pytest.raises(UsageError, match="build the binary with -O0"):
        _profile("horner", 0).require_executed(SourceKind.BINARY)
    with pytest.raises(UsageError, match=r"profile the whole executable \(no --function\)"):
        _profile("horner", 0).require_executed(SourceKind.BUILTIN)
    with pytest.raises(MachineError, match="executed none of its instructions"):
        _profile(None, 0).require_executed()


STATIC_HORNER = """
static double horner(const double *c, int n, double x)
{
    double y = 0.0;
    for (int i = n - 1; i >= 0; i--)
        y = y * x + c[i];
    return y;
}

int main(int argc, char **argv)
{
    static const double c[] = {1.0, -2.5, 0.75};
    return (int)horner(c, 3, argc * 0.5);
}
"""


def test_a_static_function_inlined_everywhere_has_no_symbol_and_says_why(tmp_path: Path) -> None:
    source = tmp_path / "poly.c"
    source.write_text(STATIC_HORNER)
    inlined = WorkloadBinary(compile_c(source, tmp_path / "o2", *user_c_flags()))
    with pytest.raises(UsageError) as caught:
        inlined.function("horner")
    assert (
        caught.value.message
        == "o2 has no function 'horner': misspelt, or inlined into every caller"
    )
    assert "--cflags -O0" in caught.value.hint
    with pytest.raises(UsageError) as caught:
        inlined.function("mainn")
    assert caught.value.hint.startswith("closest: main")
    kept = WorkloadBinary(compile_c(source, tmp_path / "o0", *user_c_flags(("-O0",))))
    assert kept.function("horner").size > 0


ADDSD = bytes.fromhex("f20f58c1")  # addsd xmm0, xmm1
RET = bytes.fromhex("c3")


class _Binary:
    def __init__(self, code: bytes) -> None:
        self.code = code

    def code_range(self, function: str | None) -> str | None:
        return function

    def decode_range(self, code: object) -> tuple[Instruction, ...]:
        return decode(self.code, 0x1000)


@dataclasses.dataclass
class _Code:
    binary: _Binary


@dataclasses.dataclass
class _Workload:
    source_kind: SourceKind


class _Image:
    def workload(self, name: str) -> _Workload:
        return _Workload(SourceKind.C_SOURCE)


@dataclasses.dataclass
class _Machine:
    """What `InstructionKind.prepare` reads of its machine."""

    code: bytes
    argv: tuple[str, ...] = ("poly",)
    deterministic: bool = False
    image: _Image = dataclasses.field(default_factory=_Image)

    def workload_code(self) -> _Code:
        return _Code(_Binary(self.code))


def _prepare(
    monkeypatch: pytest.MonkeyPatch,
    code: bytes,
    executed: int,
    *,
    function: str | None = None,
    instance: int | None = None,
) -> list[str | None]:
    """Prepare an instruction fault on a fake machine; the functions it profiled."""
    profiled: list[str | None] = []

    def load_or_profile(
        image: object, argv: object, *, function: str | None, deterministic: bool
    ) -> InstructionProfile:
        profiled.append(function)
        return _profile(function, executed)

    monkeypatch.setattr(instruction_module, "load_or_profile", load_or_profile)
    kind = InstructionKind(cast(GuestMachine, _Machine(code)))
    kind.prepare(FaultSpec.from_options(op="fadd", function=function, instance=instance))
    return profiled


def test_prepare_fails_for_a_function_that_never_ran(monkeypatch: pytest.MonkeyPatch) -> None:
    for instance in (None, 3):  # a fixed instance would never be reached either
        with pytest.raises(UsageError) as caught:
            _prepare(monkeypatch, ADDSD + RET, 0, function="horner", instance=instance)
        assert caught.value.one_line() == INLINED
    assert _prepare(monkeypatch, ADDSD + RET, 40, function="horner") == ["horner"]


def test_prepare_leaves_a_function_without_the_class_to_the_trigger(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _prepare(monkeypatch, RET, 0, function="horner") == []  # no fadd: a static fact
    assert _prepare(monkeypatch, ADDSD + RET, 0, instance=2) == []  # no function named
