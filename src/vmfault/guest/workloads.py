"""Workloads: the programs the guest runs, built in or brought by the user, and their toolchain.

Every workload compiled here is a static x86-64 executable linked at 0x10000000, away from
busybox (0x400000) and the agent (0x30000000), so an address says which program it belongs
to. A user's binary may also be a PIE or dynamically linked: its interpreter and libraries
then go into the image (`vmfault.guest.runtime`).
"""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from vmfault.errors import ImageError, UsageError

__all__ = [
    "AGENT_CFLAGS",
    "BUILTIN_WORKLOADS",
    "GUEST_WORKLOAD_DIR",
    "WORKLOAD_LINK_FLAGS",
    "BuiltinWorkload",
    "SourceKind",
    "UserWorkload",
    "Workload",
    "WorkloadInput",
    "agent_source",
    "builtin_source",
    "builtin_workload_names",
    "check_static_elf",
    "compile_c",
    "gcc_version",
    "idle_argv",
    "plan_workloads",
    "validate_workload_name",
]

GUEST_WORKLOAD_DIR = "/w"
WORKLOAD_LINK_FLAGS: tuple[str, ...] = ("-static", "-no-pie", "-Wl,-Ttext-segment=0x10000000")
"""Compiler flags for every workload; the optimisation level is added per workload."""
AGENT_CFLAGS: tuple[str, ...] = ("-static", "-O2", "-no-pie", "-Wl,-Ttext-segment=0x30000000")
DEFAULT_OPTIMISATION = "-O2"

_DATA = "data"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
_TOOLCHAIN_HINT = "run `make setup` (or `apt-get install gcc libc6-dev`)"
_EM_X86_64 = 62
_PT_INTERP = 3


class SourceKind(Enum):
    """Where a workload binary comes from."""

    BUILTIN = "builtin"
    C_SOURCE = "c"
    BINARY = "binary"


@dataclass(frozen=True)
class Workload:
    """A workload inside a built image.

    `guest_path` is where it lives in the guest (`/w/<name>`); `host_binary` is the identical
    ELF on the host (for symbols and disassembly); `source` is its C source in the image, or
    None for a user's binary. `default_args` follow argv[0] when no arguments are given.
    """

    name: str
    guest_path: str
    host_binary: Path
    default_args: tuple[str, ...]
    description: str
    source: Path | None
    source_kind: SourceKind = SourceKind.BUILTIN

    def argv(self, args: Sequence[str] | None = None) -> tuple[str, ...]:
        """The full argv for one run: the name, then `args` or else the default arguments."""
        return (self.name, *(self.default_args if args is None else args))


@dataclass(frozen=True)
class UserWorkload:
    """A workload the user brings: a `.c` file (compiled like the built-ins) or a static binary."""

    name: str
    path: Path
    args: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuiltinWorkload:
    """A workload shipped with vmfault: its C source in the package and how it is compiled."""

    name: str
    source_name: str
    optimisation: str
    default_args: tuple[str, ...]
    description: str


BUILTIN_WORKLOADS: Mapping[str, BuiltinWorkload] = MappingProxyType(
    {
        w.name: w
        for w in (
            BuiltinWorkload(
                "checksum",
                "checksum.c",
                DEFAULT_OPTIMISATION,
                (),
                "LCG-filled uint64 array folded into a checksum over several rounds; "
                "--self-check compares against a shadow copy and exits 3 on a mismatch",
            ),
            BuiltinWorkload(
                "foo",
                "foo.c",
                "-O0",
                (),
                "F-SEFI's foo.c: ten multiplies (mymulfunc) and ten adds (myaddfunc) of 1.1, "
                "compiled -O0 so the adds are addsd and the loop test a cmp",
            ),
            BuiltinWorkload(
                "matmul",
                "matmul.c",
                DEFAULT_OPTIMISATION,
                (),
                "double-precision N x N matrix multiply on deterministic inputs (--size N)",
            ),
            BuiltinWorkload(
                "crc32",
                "crc32.c",
                DEFAULT_OPTIMISATION,
                (),
                "CRC-32 (IEEE) over a deterministic buffer (--size BYTES)",
            ),
        )
    }
)


@dataclass(frozen=True)
class WorkloadInput:
    """A workload before it is built: everything that decides its binary, for hashing.

    `content` is the C source (BUILTIN, C_SOURCE) or the executable itself (BINARY).
    """

    name: str
    kind: SourceKind
    content: bytes
    flags: tuple[str, ...]
    default_args: tuple[str, ...]
    description: str
    origin: Path | None

    def fingerprint(self) -> str:
        """A sha256 over every field that changes the built workload or how it is run."""
        digest = hashlib.sha256()
        for part in (self.name, self.kind.value, *self.flags, "\0", *self.default_args):
            digest.update(part.encode() + b"\0")
        digest.update(hashlib.sha256(self.content).digest())
        return digest.hexdigest()


def idle_argv(seconds: float) -> tuple[str, ...]:
    """The command line of the idle system: nothing but a sleep of `seconds` (the kernel and
    its idle tasks run; a fault in them shows as a panic, an oops or a sleep that never ends)."""
    return ("/bin/busybox", "sleep", f"{seconds:g}")


def builtin_workload_names() -> tuple[str, ...]:
    """Names of the built-in workloads, sorted."""
    return tuple(sorted(BUILTIN_WORKLOADS))


def _data_file(*parts: str) -> bytes:
    resource = resources.files(__package__ or "vmfault.guest").joinpath(_DATA, *parts)
    return resource.read_bytes()


def builtin_source(name: str) -> bytes:
    """The C source of a built-in workload; UsageError when there is no such workload."""
    builtin = BUILTIN_WORKLOADS.get(name)
    if builtin is None:
        raise UsageError(
            f"no built-in workload {name!r}",
            hint=f"choose one of: {', '.join(builtin_workload_names())}",
        )
    return _data_file("workloads", builtin.source_name)


def agent_source() -> bytes:
    """The C source of the guest agent."""
    return _data_file("agent.c")


def validate_workload_name(name: str) -> None:
    """UsageError unless `name` is a usable file name in the guest's /w directory."""
    if not _NAME_PATTERN.match(name) or name in (".", ".."):
        raise UsageError(
            f"invalid workload name {name!r}",
            hint="use 1-64 letters, digits, '_', '.', '+' or '-', not starting with '.' or '-'",
        )


def check_static_elf(path: Path, *, dynamic: bool = False) -> None:
    """ImageError unless `path` is an x86-64 ELF executable without a program interpreter
    (with `dynamic`, one with an interpreter passes too: its runtime files go along)."""
    try:
        with path.open("rb") as stream:
            header = stream.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF":
                raise ImageError(
                    f"{path} is not an ELF executable",
                    hint="pass a C source file (.c) or a static x86-64 Linux executable",
                )
            if header[4] != 2 or header[5] != 1:
                raise ImageError(
                    f"{path} is not a 64-bit little-endian ELF file",
                    hint="build it for x86-64 Linux",
                )
            e_type, e_machine = struct.unpack_from("<HH", header, 16)
            if e_machine != _EM_X86_64 or e_type not in (2, 3):
                raise ImageError(
                    f"{path} is not an x86-64 executable (e_machine {e_machine}, e_type {e_type})",
                    hint="build it for x86-64 Linux",
                )
            (phoff,) = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            stream.seek(phoff)
            table = stream.read(phentsize * phnum)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(table) < phentsize * phnum or phentsize < 4:
        raise ImageError(f"{path} has a truncated program header table")
    for index in range(phnum):
        (p_type,) = struct.unpack_from("<I", table, index * phentsize)
        if p_type == _PT_INTERP and not dynamic:
            raise ImageError(
                f"{path} is dynamically linked; the guest has no shared libraries",
                hint="link it with -static",
            )


def _gcc() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise ImageError("gcc is not installed", hint=_TOOLCHAIN_HINT)
    return gcc


def gcc_version() -> str:
    """The first line of `gcc --version`, part of every image's hash."""
    result = subprocess.run(
        [_gcc(), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0 or not result.stdout:
        raise ImageError("gcc --version failed", hint=_TOOLCHAIN_HINT)
    return result.stdout.splitlines()[0].strip()


def compile_c(source: Path, output: Path, flags: Sequence[str]) -> None:
    """Compiles one C file into `output` with `gcc <flags>`; ImageError with gcc's messages."""
    result = subprocess.run(
        [_gcc(), *flags, "-o", str(output), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        messages = result.stderr.strip()
        hint = _TOOLCHAIN_HINT if "cannot find -lc" in messages else "fix the C source"
        raise ImageError(f"gcc failed on {source.name}:\n{messages}", hint=hint)


def _builtin_input(builtin: BuiltinWorkload) -> WorkloadInput:
    return WorkloadInput(
        name=builtin.name,
        kind=SourceKind.BUILTIN,
        content=builtin_source(builtin.name),
        flags=(*WORKLOAD_LINK_FLAGS, builtin.optimisation),
        default_args=builtin.default_args,
        description=builtin.description,
        origin=None,
    )


def _user_input(user: UserWorkload) -> WorkloadInput:
    validate_workload_name(user.name)
    path = user.path.expanduser().resolve()
    if not path.is_file():
        raise UsageError(
            f"workload file {user.path} does not exist", hint="pass a .c file or a static binary"
        )
    if path.suffix == ".c":
        return WorkloadInput(
            name=user.name,
            kind=SourceKind.C_SOURCE,
            content=path.read_bytes(),
            flags=(*WORKLOAD_LINK_FLAGS, DEFAULT_OPTIMISATION),
            default_args=tuple(user.args),
            description=f"user workload compiled from {path.name}",
            origin=path,
        )
    check_static_elf(path, dynamic=True)
    return WorkloadInput(
        name=user.name,
        kind=SourceKind.BINARY,
        content=path.read_bytes(),
        flags=(),
        default_args=tuple(user.args),
        description=f"user binary {path.name}",
        origin=path,
    )


def plan_workloads(user_workloads: Sequence[UserWorkload] = ()) -> tuple[WorkloadInput, ...]:
    """The built-ins followed by the user's workloads, validated, in a stable order.

    Raises UsageError for a bad or duplicate name (including one that shadows a built-in) or a
    missing file, and ImageError for a binary that is not a static x86-64 executable.
    """
    planned = [_builtin_input(BUILTIN_WORKLOADS[name]) for name in builtin_workload_names()]
    seen = set(BUILTIN_WORKLOADS)
    for user in user_workloads:
        if user.name in seen:
            raise UsageError(
                f"workload name {user.name!r} is already taken",
                hint="give each user workload a name distinct from the built-ins and each other",
            )
        seen.add(user.name)
        planned.append(_user_input(user))
    return tuple(planned)
