"""Dynamically linked workloads bring their interpreter and libraries into the initramfs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.toolchain import compile_c as build
from vmfault.errors import ImageError
from vmfault.guest.initramfs import EntryKind, guest_entries
from vmfault.guest.runtime import elf_interpreter, runtime_files

SQRT = (
    '#include <math.h>\n#include <stdio.h>\nint main(int c, char **v) { printf("%f", sqrt(c)); }\n'
)


def compile_c(tmp_path: Path, name: str, *flags: str) -> Path:
    source = tmp_path / "prog.c"
    source.write_text(SQRT)
    return build(source, tmp_path / name, *flags, libraries=("-lm",))


def test_a_dynamic_binary_needs_its_interpreter_and_libraries(tmp_path: Path) -> None:
    binary = compile_c(tmp_path, "dynamic")
    interpreter = elf_interpreter(binary)
    assert interpreter is not None and "ld-linux" in interpreter
    files = {f.guest_path: f for f in runtime_files(binary)}
    assert interpreter in files
    names = {Path(path).name for path in files}
    assert {"libc.so.6", "libm.so.6"} <= names
    assert all(f.host_path.is_file() and f.guest_path.startswith("/") for f in files.values())


def test_a_static_binary_needs_nothing(tmp_path: Path) -> None:
    binary = compile_c(tmp_path, "static", "-static")
    assert elf_interpreter(binary) is None
    assert runtime_files(binary) == ()


def test_runtime_files_land_at_their_paths_with_parent_directories() -> None:
    entries = guest_entries(
        agent=b"a",
        busybox=b"b",
        workloads=[("prog", b"p")],
        modules=[],
        runtime=[("/lib/x86_64-linux-gnu/libc.so.6", b"libc"), ("/lib64/ld.so", b"ld")],
    )
    by_path = {entry.path: entry for entry in entries}
    assert by_path["lib/x86_64-linux-gnu/libc.so.6"].data == b"libc"
    assert by_path["lib/x86_64-linux-gnu"].kind is EntryKind.DIRECTORY
    assert by_path["lib"].kind is EntryKind.DIRECTORY
    assert by_path["lib64/ld.so"].kind is EntryKind.FILE


def test_a_missing_file_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="cannot read"):
        runtime_files(tmp_path / "absent")
