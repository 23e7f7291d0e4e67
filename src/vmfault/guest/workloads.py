"""Workloads: the programs the guest runs, built in or brought by the user, and their toolchain.

Every workload compiled here is a static executable of the guest's architecture (x86-64 or
aarch64, `vmfault.arch`) linked at 0x10000000, away from
busybox (0x400000) and the agent (0x30000000), so an address says which program it belongs
to. A user's binary may also be a PIE or dynamically linked: its interpreter and libraries
then go into the image (`vmfault.guest.runtime`).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from types import MappingProxyType

from vmfault.arch import DEFAULT_ARCH, Arch
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
    "cflags_not_compiled",
    "check_cflags",
    "check_static_elf",
    "compile_c",
    "disk_required",
    "gcc_version",
    "idle_argv",
    "parse_cflags",
    "plan_workloads",
    "user_c_flags",
    "validate_workload_name",
]

GUEST_WORKLOAD_DIR = "/w"
WORKLOAD_LINK_FLAGS: tuple[str, ...] = ("-static", "-no-pie", "-Wl,-Ttext-segment=0x10000000")
"""Compiler flags for every workload; the optimisation level is added per workload."""
AGENT_CFLAGS: tuple[str, ...] = ("-static", "-O2", "-no-pie", "-Wl,-Ttext-segment=0x30000000")
DEFAULT_OPTIMISATION = "-O2"
"""The optimisation level of a user's C workload unless their cflags give one."""

_DATA = "data"
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
_PT_INTERP = 3
_CFLAGS_HINT = 'give gcc options, e.g. "-O0 -fno-inline"'
_CFLAGS_PROBE = b"int main(void) { return 0; }\n"
"""A program any working set of flags compiles: when it fails too, the flags are at fault."""
_NO_EXECUTABLE = "stops gcc before it links an executable"
_PRINTS_ONLY = "makes gcc print its settings instead of compiling"
_REFUSED_CFLAGS: Mapping[str, str] = MappingProxyType(
    {
        "-c": _NO_EXECUTABLE,
        "-S": _NO_EXECUTABLE,
        "-E": _NO_EXECUTABLE,
        "-M": _NO_EXECUTABLE,
        "-MM": _NO_EXECUTABLE,
        "-fsyntax-only": _NO_EXECUTABLE,
        "-r": "makes a relocatable object, not an executable",
        "-shared": "makes a shared library, not an executable",
        "-###": _PRINTS_ONLY,
        "--version": _PRINTS_ONLY,
        "-dumpversion": _PRINTS_ONLY,
        "-dumpfullversion": _PRINTS_ONLY,
        "-dumpmachine": _PRINTS_ONLY,
        "-dumpspecs": _PRINTS_ONLY,
    }
)
"""Flags that would leave no executable, with why: refused before gcc runs."""
_REFUSED_CFLAG_PREFIXES: tuple[tuple[str, str], ...] = (
    ("-o", "names the output file, which is vmfault's to name"),
    ("--help", _PRINTS_ONLY),
    ("--target-help", _PRINTS_ONLY),
    ("-print-", _PRINTS_ONLY),
)


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
    """A workload the user brings: a `.c` file (compiled like the built-ins) or a static binary.

    `cflags` are gcc flags of the user's own for a `.c` file (see `user_c_flags`); a binary
    takes none.
    """

    name: str
    path: Path
    args: tuple[str, ...] = ()
    cflags: tuple[str, ...] = ()


@dataclass(frozen=True)
class BuiltinWorkload:
    """A workload shipped with vmfault: its C source in the package and how it is compiled."""

    name: str
    source_name: str
    optimisation: str
    default_args: tuple[str, ...]
    description: str
    needs_disk: bool = False
    """Whether it works on a disk of the guest's (/dev/vda unless told another)."""


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
                "netecho",
                "netecho.c",
                DEFAULT_OPTIMISATION,
                (),
                "checksummed request/response over the network: --serve (a daemon) or "
                "--connect HOST --count N [--udp]; a mismatch or a timeout exits non-zero",
            ),
            BuiltinWorkload(
                "crc32",
                "crc32.c",
                DEFAULT_OPTIMISATION,
                (),
                "CRC-32 (IEEE) over a deterministic buffer (--size BYTES)",
            ),
            BuiltinWorkload(
                "diskio",
                "diskio.c",
                DEFAULT_OPTIMISATION,
                (),
                "checksummed 4 KiB blocks written to a raw disk with O_DIRECT (--blocks N, "
                "default 256), synced, read back and verified (--no-verify: a digest); an I/O "
                "error or a mismatch names its block and exits non-zero",
                needs_disk=True,
            ),
            BuiltinWorkload(
                "fsio",
                "fsio.c",
                DEFAULT_OPTIMISATION,
                (),
                "files through an ext2 file system made on the disk (--files N, --size BYTES), "
                "synced, read back and verified (--no-verify: a digest)",
                needs_disk=True,
            ),
        )
    }
)


@dataclass(frozen=True)
class WorkloadInput:
    """A workload before it is built: everything that decides its binary, for hashing.

    `content` is the C source (BUILTIN, C_SOURCE) or the executable itself (BINARY).
    `flags` are every gcc flag it is compiled with; `cflags` the user's own among them
    (last in `flags`, so already in the fingerprint).
    """

    name: str
    kind: SourceKind
    content: bytes
    flags: tuple[str, ...]
    default_args: tuple[str, ...]
    description: str
    origin: Path | None
    cflags: tuple[str, ...] = ()

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


def disk_required(name: str, disks: int) -> None:
    """UsageError if the built-in workload `name` works on a disk and the guest has none."""
    builtin = BUILTIN_WORKLOADS.get(name)
    if builtin is not None and builtin.needs_disk and disks == 0:
        raise UsageError(
            f"{name} works on a disk, and the guest has none",
            hint="add one: --disk data:64M (campaign files: a [[guest.disks]] table)",
        )


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


def _toolchain_hint(arch: Arch) -> str:
    return f"run `make setup` (or `apt-get install {' '.join(arch.platform.toolchain_packages)}`)"


def check_static_elf(path: Path, *, dynamic: bool = False, arch: Arch = DEFAULT_ARCH) -> None:
    """ImageError unless `path` is an ELF executable of `arch` without a program
    interpreter (with `dynamic`, one with an interpreter passes too on x86-64: its runtime
    files go along; aarch64 guests have no host libraries to take)."""
    machine = "x86-64" if arch is Arch.X86_64 else arch.value
    try:
        with path.open("rb") as stream:
            header = stream.read(64)
            if len(header) < 64 or header[:4] != b"\x7fELF":
                raise ImageError(
                    f"{path} is not an ELF executable",
                    hint=f"pass a C source file (.c) or a static {machine} Linux executable",
                )
            if header[4] != 2 or header[5] != 1:
                raise ImageError(
                    f"{path} is not a 64-bit little-endian ELF file",
                    hint=f"build it for {machine} Linux",
                )
            e_type, e_machine = struct.unpack_from("<HH", header, 16)
            if e_machine != arch.platform.elf_machine or e_type not in (2, 3):
                raise ImageError(
                    f"{path} is not an {machine} executable (e_machine {e_machine}, "
                    f"e_type {e_type})",
                    hint=f"build it for {machine} Linux, or choose its guest architecture (--arch)",
                )
            if e_type == 3 and arch is not Arch.X86_64:
                raise ImageError(
                    f"{path} is position-independent: PIE executables run only on x86-64 "
                    f"guests, not {arch.value}",
                    hint="link it with -static -no-pie",
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
        if p_type == _PT_INTERP and arch is not Arch.X86_64:
            raise ImageError(
                f"{path} is dynamically linked: dynamic executables run only on x86-64 "
                f"guests, not {arch.value}",
                hint="link it with -static",
            )


def _gcc(arch: Arch = DEFAULT_ARCH) -> str:
    name = arch.platform.gcc
    gcc = shutil.which(name)
    if gcc is None:
        raise ImageError(f"{name} is not installed", hint=_toolchain_hint(arch))
    return gcc


def gcc_version(arch: Arch = DEFAULT_ARCH) -> str:
    """The first line of `gcc --version` (of `arch`'s compiler), part of every image's hash."""
    result = subprocess.run(
        [_gcc(arch), "--version"], capture_output=True, text=True, check=False, timeout=60
    )
    if result.returncode != 0 or not result.stdout:
        raise ImageError(f"{arch.platform.gcc} --version failed", hint=_toolchain_hint(arch))
    return result.stdout.splitlines()[0].strip()


def _run_gcc(
    source: Path, output: Path, flags: Sequence[str], arch: Arch = DEFAULT_ARCH
) -> subprocess.CompletedProcess[str]:
    # An argument vector, never a shell: a user's flag is one argument, whatever it holds.
    return subprocess.run(
        [_gcc(arch), *flags, "-o", str(output), str(source)],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def compile_c(
    source: Path, output: Path, flags: Sequence[str], *, arch: Arch = DEFAULT_ARCH
) -> None:
    """Compiles one C file into `output` with `gcc <flags>` (`arch`'s compiler); ImageError
    with gcc's messages."""
    result = _run_gcc(source, output, flags, arch)
    if result.returncode != 0:
        messages = result.stderr.strip()
        hint = _toolchain_hint(arch) if "cannot find -lc" in messages else "fix the C source"
        raise ImageError(f"gcc failed on {source.name}:\n{messages}", hint=hint)


def parse_cflags(value: object, *, label: str = "") -> tuple[str, ...]:
    """A user's gcc flags from one string (split by `shlex.split`, as a POSIX shell would
    split it; no shell ever runs it) or a list of strings, each one flag.

    UsageError, its message led by `label`, for an unbalanced quote, a value of another
    type, an empty flag or one with a NUL, and a flag that would leave no executable
    (`-c`, `-E`, `-shared`, ...) or names the output (`-o`). Whether gcc accepts the rest is
    learnt only by compiling (`check_cflags`).
    """
    lead = f"{label}: " if label else ""
    if isinstance(value, str):
        try:
            flags = shlex.split(value)
        except ValueError as exc:  # shlex's only error: an unbalanced quote or escape
            raise UsageError(
                f"{lead}{str(exc).lower()} in {value!r}", hint="close the quote"
            ) from None
    elif isinstance(value, list | tuple) and all(isinstance(flag, str) for flag in value):
        flags = list(value)
    else:
        raise UsageError(
            f"{lead}expected a string or an array of strings, got {value!r}", hint=_CFLAGS_HINT
        )
    for flag in flags:
        if not flag or "\0" in flag:
            raise UsageError(f"{lead}{flag!r} is not a flag", hint=_CFLAGS_HINT)
        why = _REFUSED_CFLAGS.get(flag) or next(
            (why for prefix, why in _REFUSED_CFLAG_PREFIXES if flag.startswith(prefix)), None
        )
        if why is not None:
            raise UsageError(f"{lead}{flag} {why}", hint="remove it from the flags")
    return tuple(flags)


def user_c_flags(cflags: Sequence[str] = ()) -> tuple[str, ...]:
    """Every gcc flag of a user's C workload: `WORKLOAD_LINK_FLAGS`, the default `-O2` unless
    `cflags` give an optimisation level of their own, then `cflags`, last, so they win over
    vmfault's (gcc takes the last of conflicting flags)."""
    optimised = any(flag.startswith("-O") for flag in cflags)
    return (*WORKLOAD_LINK_FLAGS, *(() if optimised else (DEFAULT_OPTIMISATION,)), *cflags)


def _first_error(stderr: str) -> str:
    """gcc's first error line: the first naming an error (not collect2's summary, which only
    says that ld failed), else the first that is not a warning or a note."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        if "error" in line.lower() and not line.startswith("collect2:"):
            return line
    for line in lines:
        if not re.search(r"\b(warning|note):", line):
            return line
    return lines[0] if lines else "gcc failed without a message"


def check_cflags(item: WorkloadInput, *, arch: Arch = DEFAULT_ARCH) -> None:
    """UsageError with gcc's first error line unless `item`'s flags compile and link an
    empty program (then the user's cflags, not any source, are at fault); one gcc run of
    some 50 ms. Nothing to check for an item without cflags."""
    if not item.cflags:
        return
    with tempfile.TemporaryDirectory(prefix="vmfault-cflags-") as scratch:
        source = Path(scratch) / "probe.c"
        source.write_bytes(_CFLAGS_PROBE)
        result = _run_gcc(source, Path(scratch) / "probe", item.flags, arch)
    if result.returncode != 0:
        raise UsageError(
            f"gcc rejects the cflags of {item.name} ({shlex.join(item.cflags)}): "
            f"{_first_error(result.stderr)}",
            hint="fix or remove the flag",
        )


def cflags_not_compiled(name: str, kind: SourceKind) -> UsageError:
    """The error for cflags given to a workload that is not a user's C file."""
    if kind is SourceKind.BINARY:
        return UsageError(
            f"cflags apply only to a C source, and {name} is a binary, which is not compiled",
            hint="give its .c file, or build the binary with the flags you want",
        )
    return UsageError(
        f"cflags apply only to a user's C source, and {name} is a built-in workload, "
        "built with fixed flags",
        hint="copy its source into a .c file of your own to build it with other flags",
    )


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


def _user_input(user: UserWorkload, arch: Arch) -> WorkloadInput:
    validate_workload_name(user.name)
    path = user.path.expanduser().resolve()
    if not path.is_file():
        raise UsageError(
            f"workload file {user.path} does not exist", hint="pass a .c file or a static binary"
        )
    cflags = parse_cflags(user.cflags)
    if path.suffix == ".c":
        return WorkloadInput(
            name=user.name,
            kind=SourceKind.C_SOURCE,
            content=path.read_bytes(),
            flags=user_c_flags(cflags),
            default_args=tuple(user.args),
            description=f"user workload compiled from {path.name}",
            origin=path,
            cflags=cflags,
        )
    if cflags:
        raise cflags_not_compiled(path.name, SourceKind.BINARY)
    check_static_elf(path, dynamic=True, arch=arch)
    return WorkloadInput(
        name=user.name,
        kind=SourceKind.BINARY,
        content=path.read_bytes(),
        flags=(),
        default_args=tuple(user.args),
        description=f"user binary {path.name}",
        origin=path,
    )


def plan_workloads(
    user_workloads: Sequence[UserWorkload] = (), *, arch: Arch = DEFAULT_ARCH
) -> tuple[WorkloadInput, ...]:
    """The built-ins followed by the user's workloads, validated, in a stable order.

    Raises UsageError for a bad or duplicate name (including one that shadows a built-in) or a
    missing file, and ImageError for a binary that is not an executable of `arch`.
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
        planned.append(_user_input(user, arch))
    return tuple(planned)
