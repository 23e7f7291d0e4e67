"""Workload registry, user workload validation and static-ELF detection."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.toolchain import compile_c
from vmfault.errors import ImageError, UsageError
from vmfault.guest.workloads import (
    BUILTIN_WORKLOADS,
    WORKLOAD_LINK_FLAGS,
    SourceKind,
    UserWorkload,
    Workload,
    agent_source,
    builtin_source,
    builtin_workload_names,
    check_static_elf,
    plan_workloads,
    validate_workload_name,
)

HELLO = '#include <stdio.h>\nint main(void) { puts("hi"); return 0; }\n'


def _compile(tmp_path: Path, name: str, *flags: str) -> Path:
    source = tmp_path / "hello.c"
    source.write_text(HELLO)
    return compile_c(source, tmp_path / name, *flags)


def test_builtin_registry() -> None:
    assert builtin_workload_names() == (
        "checksum", "crc32", "diskio", "foo", "fsio", "matmul", "netecho",
    )  # fmt: skip
    for name in builtin_workload_names():
        source = builtin_source(name).decode()
        assert "int main" in source
        assert BUILTIN_WORKLOADS[name].description
    assert BUILTIN_WORKLOADS["foo"].optimisation == "-O0"
    assert "vmfault_hook_started" in agent_source().decode()


def test_foo_is_the_fsefi_program() -> None:
    source = builtin_source("foo").decode()
    assert 'printf("fmul output : %.10f\\n", data);' in source
    assert "for (i = 0; i < 10; i++) output += 1.1;" in source


def test_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(UsageError) as caught:
        builtin_source("nope")
    assert "checksum" in caught.value.hint


@pytest.mark.parametrize("name", ["", ".", "..", "-x", "a/b", "a b", "x" * 65])
def test_bad_workload_names(name: str) -> None:
    with pytest.raises(UsageError):
        validate_workload_name(name)


@pytest.mark.parametrize("name", ["prog", "my_prog-2", "v1.2", "c++", "_x", "x" * 64])
def test_good_workload_names(name: str, tmp_path: Path) -> None:
    validate_workload_name(name)
    source = tmp_path / "mine.c"
    source.write_text(HELLO)
    planned = plan_workloads([UserWorkload(name, source)])[-1]
    assert (planned.name, planned.kind, planned.origin) == (
        name,
        SourceKind.C_SOURCE,
        source.resolve(),
    )


def test_plan_orders_builtins_then_user_workloads(tmp_path: Path) -> None:
    source = tmp_path / "mine.c"
    source.write_text(HELLO)
    planned = plan_workloads([UserWorkload("mine", source, ("-n", "3"))])
    assert [w.name for w in planned] == [*builtin_workload_names(), "mine"]
    mine = planned[-1]
    assert mine.kind is SourceKind.C_SOURCE
    assert mine.default_args == ("-n", "3")
    assert mine.flags[: len(WORKLOAD_LINK_FLAGS)] == WORKLOAD_LINK_FLAGS
    assert mine.origin == source.resolve()


def test_plan_rejects_duplicates_and_missing_files(tmp_path: Path) -> None:
    source = tmp_path / "mine.c"
    source.write_text(HELLO)
    with pytest.raises(UsageError, match="already taken"):
        plan_workloads([UserWorkload("checksum", source)])
    with pytest.raises(UsageError, match="already taken"):
        plan_workloads([UserWorkload("a", source), UserWorkload("a", source)])
    with pytest.raises(UsageError, match="does not exist"):
        plan_workloads([UserWorkload("a", tmp_path / "missing.c")])


def test_fingerprint_covers_name_content_args_and_flags(tmp_path: Path) -> None:
    source = tmp_path / "mine.c"
    source.write_text(HELLO)
    base = plan_workloads([UserWorkload("mine", source)])[-1]
    renamed = plan_workloads([UserWorkload("other", source)])[-1]
    with_args = plan_workloads([UserWorkload("mine", source, ("1",))])[-1]
    source.write_text(HELLO + "\n")
    edited = plan_workloads([UserWorkload("mine", source)])[-1]
    fingerprints = {w.fingerprint() for w in (base, renamed, with_args, edited)}
    assert len(fingerprints) == 4


def test_static_binary_is_accepted(tmp_path: Path) -> None:
    binary = _compile(tmp_path, "hello_static", "-static")
    check_static_elf(binary)
    planned = plan_workloads([UserWorkload("hello", binary, ("x",))])[-1]
    assert planned.kind is SourceKind.BINARY
    assert planned.content == binary.read_bytes()


def test_dynamic_binary_is_not_static_but_is_a_workload(tmp_path: Path) -> None:
    binary = _compile(tmp_path, "hello_dynamic")
    with pytest.raises(ImageError) as caught:
        check_static_elf(binary)
    assert "-static" in caught.value.hint
    check_static_elf(binary, dynamic=True)
    planned = plan_workloads([UserWorkload("hello", binary)])[-1]
    assert planned.kind is SourceKind.BINARY


def test_non_elf_files_are_rejected(tmp_path: Path) -> None:
    script = tmp_path / "run.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    with pytest.raises(ImageError, match="not an ELF"):
        check_static_elf(script)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ImageError):
        check_static_elf(empty)


def test_workload_argv_uses_defaults_only_without_arguments() -> None:
    workload = Workload(
        name="matmul",
        guest_path="/w/matmul",
        host_binary=Path("matmul"),
        default_args=("--size", "8"),
        description="",
        source=None,
    )
    assert workload.argv() == ("matmul", "--size", "8")
    assert workload.argv([]) == ("matmul",)
    assert workload.argv(["--size", "4"]) == ("matmul", "--size", "4")
