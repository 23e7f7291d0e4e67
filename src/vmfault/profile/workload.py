"""Dynamic instruction-class profiles of a workload function (F-SEFI's `profile2func`).

One golden run in a machine that logs every translation block started inside the function
(QEMU's `-d exec,cpu,nochain` with `-dfilter` on the function's addresses) gives exact
execution counts per static instruction, for the workload process only (each logged block
carries CR3); `vmfault.profile.execlog` turns the log into counts. No breakpoint stops the run, so
a function executing a million instructions profiles in seconds.

Profiles are cached beside the image (`image.root / "profiles"`), keyed by argv and
function, for campaigns that need the golden count of a class (`load_or_profile`).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vmfault.errors import MachineError, UsageError
from vmfault.faults.instructions import class_counts
from vmfault.files import cache_path, cached_json
from vmfault.guest.binary import CodeRange, WorkloadBinary
from vmfault.guest.image import GuestImage
from vmfault.guest.workloads import SourceKind
from vmfault.machine import Accel, Machine
from vmfault.profile.execlog import count_executions, log_items, parse_exec_log
from vmfault.session import GuestSession, capture_kernel_symbols
from vmfault.session.process import exec_address, run_to_exec

__all__ = [
    "PROFILE_FORMAT",
    "InstructionProfile",
    "ProfiledInstruction",
    "fsefi_profile_line",
    "load_or_profile",
    "profile_instructions",
    "profile_path",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

_NEVER_EXECUTED_FIX: Mapping[SourceKind, str] = MappingProxyType(
    {
        SourceKind.C_SOURCE: "compile with --cflags -O0, or mark it __attribute__((noinline))",
        SourceKind.BINARY: "build the binary with -O0, or mark it __attribute__((noinline))",
        SourceKind.BUILTIN: "profile the whole executable (no --function) to see what runs",
    }
)
"""What to do about a function that never ran, by where the workload comes from."""

PROFILE_FORMAT = 1
"""Version of the JSON form of a cached profile."""
PIE_LOG_RANGE = (0x1000, 0x7FFFFFFFF000)
"""What a PIE's profile logs: its load base is known only once it runs, so all user code
(the workload is the only process running then; the counts keep its own blocks)."""


def fsefi_profile_line(classes: Mapping[str, int]) -> str:
    """F-SEFI's profile log line, `[PROFILE] fadd: 10, fmul: 0, xor:0, cmp:11 sarl:0 ...`."""
    c = classes
    return (
        f"[PROFILE] fadd: {c['fadd']}, fmul: {c['fmul']}, xor:{c['xor']}, cmp:{c['cmp']} "
        f"sarl:{c['sar']} idivl:{c['idiv']} imul:{c['imul']}"
    )


@dataclass(frozen=True)
class ProfiledInstruction:
    """One static instruction: link-time address, disassembly, executions, classes."""

    address: int
    text: str
    count: int
    classes: tuple[str, ...]
    function: str | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain data (the address as a key elsewhere)."""
        return {
            "disassembly": self.text,
            "count": self.count,
            "classes": list(self.classes),
            "function": self.function,
        }


@dataclass(frozen=True)
class InstructionProfile:
    """Dynamic counts of one golden run inside `function` (None: the whole executable).

    `classes` maps every class and family to its count; `instructions` holds each static
    instruction of the function (executed or not), or for the whole executable each
    executed one. Addresses are link-time; `load_base` is where the run loaded the binary.
    """

    workload: str
    argv: tuple[str, ...]
    function: str | None
    spans: tuple[tuple[int, int], ...]
    classes: Mapping[str, int] = field(hash=False)
    instructions: tuple[ProfiledInstruction, ...]
    load_base: int = 0
    pid: int | None = None
    output: str = ""
    wall_s: float = 0.0
    """Host seconds of the logged run, from the workload's exec to its exit."""
    count_s: float = 0.0
    """Host seconds spent turning the log into counts."""
    log_bytes: int = 0

    def count(self, op: str) -> int:
        """Dynamic instances of a class or family."""
        return int(self.classes.get(op, 0))

    @property
    def fsefi_line(self) -> str:
        """F-SEFI's `[PROFILE]` line."""
        return fsefi_profile_line(self.classes)

    def require_executed(self, source: SourceKind = SourceKind.C_SOURCE) -> None:
        """Raises unless the golden run executed at least one instruction in the profiled
        code (the `all` family counts more than 0), so an all-zero profile is never taken
        for a measurement. For a function: UsageError naming it and the likely cause, with
        the fix for a workload from `source`; for the whole executable: MachineError."""
        if self.count("all") > 0:
            return
        if self.function is None:
            raise MachineError(
                f"the golden run of {self.workload} executed none of its instructions",
                hint=f"see what it does with `vmfault run {self.workload}`",
            )
        raise UsageError(
            f"function {self.function} never executed in the golden run: probably inlined "
            f"into its caller or never called; {_NEVER_EXECUTED_FIX[source]}"
        )

    def to_json(self) -> dict[str, Any]:
        """The `vmfault profile --json` object (also the cache format)."""
        return {
            "format": PROFILE_FORMAT,
            "workload": self.workload,
            "argv": list(self.argv),
            "function": self.function,
            "spans": [[f"{start:#x}", f"{end:#x}"] for start, end in self.spans],
            "classes": dict(self.classes),
            "instructions": {f"{i.address:#x}": i.to_json() for i in self.instructions},
            "load_base": f"{self.load_base:#x}",
            "pid": self.pid,
            "output": self.output,
            "wall_s": self.wall_s,
            "count_s": self.count_s,
            "log_bytes": self.log_bytes,
            "log": self.fsefi_line,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InstructionProfile:
        """Rebuild a profile from `to_json`; ValueError if it is not one."""
        if data.get("format") != PROFILE_FORMAT:
            raise ValueError(f"profile format {data.get('format')}, expected {PROFILE_FORMAT}")
        try:
            return cls(
                workload=str(data["workload"]),
                argv=tuple(data["argv"]),
                function=data["function"],
                spans=tuple((int(s, 16), int(e, 16)) for s, e in data["spans"]),
                classes=MappingProxyType({str(k): int(v) for k, v in data["classes"].items()}),
                instructions=tuple(
                    ProfiledInstruction(
                        int(address, 16),
                        str(item["disassembly"]),
                        int(item["count"]),
                        tuple(item["classes"]),
                        item.get("function"),
                    )
                    for address, item in data["instructions"].items()
                ),
                load_base=int(data.get("load_base", "0x0"), 16),
                pid=data.get("pid"),
                output=str(data.get("output", "")),
                wall_s=float(data.get("wall_s", 0.0)),
                count_s=float(data.get("count_s", 0.0)),
                log_bytes=int(data.get("log_bytes", 0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed instruction profile: {exc}") from exc


def _log_filter(binary: WorkloadBinary, code: CodeRange) -> str:
    spans = (PIE_LOG_RANGE,) if binary.pie else code.spans
    return ",".join(f"{start:#x}+{end - start:#x}" for start, end in spans)


def profile_instructions(
    image: GuestImage,
    argv: Sequence[str],
    *,
    function: str | None,
    deterministic: bool = False,
    accel: Accel = Accel.TCG,
    timeout_s: float = 300.0,
    log: Callable[[str], None] | None = None,
) -> InstructionProfile:
    """Boot, run `argv` once fault-free with block logging, and count.

    Raises UsageError for an unknown workload or function (naming the closest functions)
    or a stripped binary, MachineError if the run fails.
    """
    workload = image.workload(argv[0])
    binary = WorkloadBinary(workload.host_binary)
    code = binary.code_range(function)
    caught_at = exec_address(capture_kernel_symbols(image), image.arch.platform, binary.entry)
    with tempfile.TemporaryDirectory(prefix="vmfault-profile-") as scratch:
        log_path = Path(scratch) / "exec.log"
        session = GuestSession(image, argv, deterministic=deterministic, accel=accel)
        extra = ("-dfilter", _log_filter(binary, code), "-D", str(log_path))
        config = dataclasses.replace(session.machine.config, extra_args=extra)
        session.machine = Machine(config, name=f"profile-{argv[0]}")
        with session:
            if log is not None:
                log(f"profiling {code.name or argv[0]} in {' '.join(argv)}")
            session.start()
            vm = session.machine
            process = run_to_exec(vm, caught_at, binary.entry, timeout_s)
            begun = time.monotonic()
            vm.hmp(f"log {log_items(image.arch)}")
            result = session.finish(timeout_s=timeout_s).result
            vm.hmp("log none")
            wall_s = time.monotonic() - begun
        log_bytes = log_path.stat().st_size if log_path.exists() else 0
        counting_began = time.monotonic()
        loaded = binary.loaded(process.load_base)
        with log_path.open("rb") as stream:
            counts, seen = count_executions(
                parse_exec_log(stream, arch=image.arch), process=process.page_tables, code=loaded
            )
    count_s = time.monotonic() - counting_began
    base = process.load_base
    statics = {i.address - base: i for i in seen.values() if code.contains(i.address - base)}
    if function is not None:
        statics |= {i.address: i for i in binary.decode_range(code)}
    link_counts = {address - base: n for address, n in counts.items()}
    listed = sorted(a for a in statics if function is not None or link_counts.get(a, 0))
    instructions = tuple(
        ProfiledInstruction(
            address,
            statics[address].text,
            link_counts.get(address, 0),
            tuple(sorted(statics[address].classes)),
            function or binary.function_at(address),
        )
        for address in listed
    )
    totals = class_counts(
        [dataclasses.replace(statics[a], address=a) for a in statics],
        {a: n for a, n in link_counts.items() if a in statics},
    )
    return InstructionProfile(
        workload=argv[0],
        argv=tuple(argv),
        function=function,
        spans=code.spans,
        classes=MappingProxyType(totals),
        instructions=instructions,
        load_base=base,
        pid=result.pid,
        output=result.stdout.decode("utf-8", errors="replace"),
        wall_s=wall_s,
        count_s=count_s,
        log_bytes=log_bytes,
    )


def profile_path(image: GuestImage, argv: Sequence[str], function: str | None) -> Path:
    """Where the cached instruction profile of `function` under `argv` lives."""
    return cache_path(image.root / "profiles", "insn", [list(argv), function])


def load_or_profile(
    image: GuestImage,
    argv: Sequence[str],
    *,
    function: str | None,
    deterministic: bool = False,
    accel: Accel = Accel.TCG,
) -> InstructionProfile:
    """The cached profile of `function` under `argv`, or a new one, stored atomically."""

    def make() -> InstructionProfile:
        return profile_instructions(
            image, argv, function=function, deterministic=deterministic, accel=accel
        )

    return cached_json(
        profile_path(image, argv, function), make, decode=InstructionProfile.from_json,
        encode=InstructionProfile.to_json,
        accept=lambda cached: cached.argv == tuple(argv) and cached.function == function,
    )  # fmt: skip
