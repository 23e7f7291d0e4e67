"""What a fault is: target, bit model and trigger, as plain serialisable data (no I/O).

Users write faults as short strings, the same on the command line and in campaign files:

- target: `register:rip`, `register:gpr`, `memory:ram`, `memory:process`, `memory:@data`
  (a symbol of the workload, translated through its page tables at the trigger),
  `memory:0x1234000`, `memory:0x1000000-0x2000000` (physical ranges, end exclusive; `memory`
  alone is `memory:ram`), `kernel-code:hot`, `kernel-code:ksys_write`;
- bits: comma-separated terms: `59` (that bit), `3,7` (those bits), `52-62` (a bit range),
  `k2` (two random bits), `burst:4` (4 adjacent bits), `stuck0`/`stuck1` (force the chosen
  bits, optionally held for a number of instructions: `stuck1:100i`), `value:0x0`
  (write a whole value); default: one random bit anywhere in the location;
- trigger: `time` (uniform over the golden run), `time:20ms`, `exec:main` or
  `exec:0x10001234#5` (the 5th execution), `icount` / `icount:100000` (guest instructions
  after the workload's start; deterministic mode only);
- instruction results: `instruction:fadd@myaddfunc` (the result of a dynamic instance of an
  instruction class inside a function; `instruction:fadd` anywhere in the application), with
  the choice of instances in an `InstructionFault`;
- control runs: `none` injects nothing (no name, no bits, no trigger, no context); its
  experiments must come out benign, and the share that does not is the campaign's
  false-positive rate;
- disk faults: `disk:bad-block`, `disk:read-error`, `disk:write-error`, `disk:flush-error`,
  `disk:latency`, `disk:stall`, `disk:corrupt`, optionally `@NAME` for the disk
  (`disk:corrupt@data`; default: the machine's only disk), with their options in a
  `DiskFault` (sectors, errno, delay, jitter, probability, once); their trigger may also
  be `request` / `request:N` (from the Nth request to the disk on).
- network faults: `network:loss|corrupt|delay|duplicate|reorder|rate|partition` act on
  frames between the machines of a testbed (`vmfault.faults.network`), on a `link`, a
  `machine`'s card or every link, from a trigger for a `period`.

Parsing raises UsageError naming the bad text and what is allowed. `FaultSpec.from_options`
builds a spec from the raw options of a campaign `[[faults]]` table or the command line and
owns the rules of which options combine; it raises `OptionError` naming the option at fault.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import errno as errno_module
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from vmfault.arch import DEFAULT_ARCH, Arch
from vmfault.errors import UsageError
from vmfault.faults.network import (
    Direction,
    NetworkFault,
    NetworkKind,
    Where,
    parse_bandwidth,
    parse_link,
)
from vmfault.faults.schedule import RateUnit, Schedule, Storm
from vmfault.faults.units import parse_duration_s, parse_ranges

__all__ = [
    "DEVICE_TARGETS",
    "DISK_FAULTS",
    "INSTRUCTION_FAMILIES",
    "INSTRUCTION_OPS",
    "MEMORY_REGIONS",
    "OP_CLASSES",
    "PAGE_TABLE",
    "REGISTER_GROUPS",
    "REGISTER_SETS",
    "REGISTER_WIDTHS",
    "SECTOR_BYTES",
    "VMM_TARGETS",
    "BitMode",
    "BitModel",
    "Context",
    "DiskFault",
    "FaultSpec",
    "InstructionFault",
    "OptionError",
    "RegisterSet",
    "SectorChoice",
    "Sectors",
    "Target",
    "TargetKind",
    "Trigger",
    "TriggerKind",
    "canonical_op",
]

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")  # fmt: skip
REGISTER_GROUPS: dict[str, tuple[str, ...]] = {
    "gpr": _GPRS,
    "pointer": ("rip", "rsp", "rbp"),
    "flags": ("eflags",),
    "sse": tuple(f"xmm{i}" for i in range(16)),
    "x87": tuple(f"st{i}" for i in range(8)),
}
REGISTER_GROUPS["all"] = (
    *_GPRS,
    "rip",
    "eflags",
    *REGISTER_GROUPS["sse"],
    *REGISTER_GROUPS["x87"],
    "mxcsr",
)
REGISTER_WIDTHS: dict[str, int] = {
    **dict.fromkeys((*_GPRS, "rip", "fs_base", "gs_base", "k_gs_base"), 64),
    **dict.fromkeys(("eflags", "mxcsr", "cs", "ss", "ds", "es", "fs", "gs"), 32),
    **dict.fromkeys(REGISTER_GROUPS["sse"], 128),
    **dict.fromkeys(REGISTER_GROUPS["x87"], 80),
}
"""Writable registers a fault may target, with their width in bits (the gdbstub's names)."""
READ_ONLY_REGISTERS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")


@dataclass(frozen=True)
class RegisterSet:
    """The registers faults may target on one architecture: groups, each register's width
    in bits (the gdbstub's names), names refused as read-only, and views: names of a bit
    field of a register (`nzcv`: bits 28-31 of `cpsr`), mapped to (register, first bit)."""

    groups: Mapping[str, tuple[str, ...]]
    widths: Mapping[str, int]
    read_only: tuple[str, ...]
    examples: str
    """Register names to suggest in an error."""
    views: Mapping[str, tuple[str, int]] = field(default_factory=dict)

    def location(self, name: str) -> tuple[str, int]:
        """The gdbstub register holding `name` and the bit `name`'s bit 0 is there."""
        return self.views.get(name, (name, 0))


_A64_GPRS = tuple(f"x{i}" for i in range(31))
_A64_SIMD = tuple(f"v{i}" for i in range(32))
REGISTER_SETS: Mapping[Arch, RegisterSet] = {
    Arch.X86_64: RegisterSet(
        REGISTER_GROUPS, REGISTER_WIDTHS, READ_ONLY_REGISTERS, "rax, rip, eflags, xmm3, st0"
    ),
    Arch.AARCH64: RegisterSet(
        groups={
            "gpr": _A64_GPRS,
            "pointer": ("pc", "sp", "x29"),
            "flags": ("nzcv",),
            "simd": _A64_SIMD,
            "all": (*_A64_GPRS, "pc", "sp", "nzcv", *_A64_SIMD, "fpsr", "fpcr"),
        },
        # The pc holds a virtual address's bits 0-55: with top-byte-ignore (Linux enables it
        # for user addresses) every branch sets bits 56-63 to copies of bit 55
        # (AArch64.BranchAddr), so the architecture never holds a pc whose top byte differs
        # and a fault there has no physical counterpart. QEMU keeps all 64 bits and fetches
        # through a tagged pc, so such a flip is benign there: measured on user-context
        # flips, bits 0-63 crashed 77-78% of experiments, bits 0-55 90%. A pc fault changes
        # bits 0-55 and leaves the top byte as it is.
        widths={
            **dict.fromkeys((*_A64_GPRS, "sp"), 64),
            "pc": 56,
            **dict.fromkeys(("cpsr", "fpsr", "fpcr"), 32),
            "nzcv": 4,
            **dict.fromkeys(_A64_SIMD, 128),
        },
        read_only=("ttbr0_el1", "ttbr1_el1", "tcr_el1", "sctlr", "vbar", "esr_el1", "far_el1"),
        examples="x0, pc, sp, nzcv, cpsr, v3, fpsr",
        views={"nzcv": ("cpsr", 28)},
    ),
}
"""The register targets of each guest architecture."""
MEMORY_REGIONS = ("ram", "kernel-text", "kernel-data", "process", "page-table")
PAGE_TABLE = "page-table"
"""The memory target of page-table entries (`memory:page-table`)."""
MEMORY_CELL_BITS = 64
"""A memory fault targets one aligned 64-bit word; its bit i lives in byte i // 8."""
OP_CLASSES: tuple[str, ...] = ("fadd", "fmul", "fsub", "fdiv", "cmp", "xor", "sar", "idiv", "imul")
"""Instruction classes: F-SEFI's seven (fadd fmul cmp xor sar idiv imul) plus fsub and fdiv."""
INSTRUCTION_FAMILIES: tuple[str, ...] = ("fp", "int-alu", "load", "store", "branch", "all")
"""Wider instruction groups, counted and faulted like the classes."""
INSTRUCTION_OPS: tuple[str, ...] = OP_CLASSES + INSTRUCTION_FAMILIES
_OP_ALIASES = {"sarl": "sar", "idivl": "idiv", "imull": "imul", "xorl": "xor", "cmpl": "cmp"}
MAX_RESULT_BITS = 128
"""The widest instruction result a fault can flip (an XMM register)."""
DISK_FAULTS: tuple[str, ...] = (
    "bad-block", "read-error", "write-error", "flush-error", "latency", "stall", "corrupt",
)  # fmt: skip
"""The kinds of disk fault (`disk:KIND`)."""
ERRNO_FAULTS: tuple[str, ...] = ("bad-block", "read-error", "write-error", "flush-error")
"""Disk faults that fail requests, with an errno."""
SECTOR_BYTES = 512
"""Bytes per sector: disk faults count sectors of 512 bytes, as the guest's kernel does."""
DEFAULT_DELAY_S = 0.05
"""The delay of `disk:latency` unless `delay` says otherwise."""
_DISK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,19}$")
DEVICE_TARGETS: tuple[str, ...] = ("virtio-blk", "virtio-net", "serial", "pvpanic", "mmio")
"""What a `device:` fault corrupts: a virtio device's requests (descriptors and request
headers at the guest's notify), or a register of the serial port, of pvpanic, or of any
device the machine has (`mmio`)."""
VMM_TARGETS: tuple[str, ...] = ("heap", "data", "registers")
"""What a `vmm:` fault corrupts in the QEMU process itself."""


class TargetKind(enum.StrEnum):
    """What kind of state a fault corrupts."""

    REGISTER = "register"
    MEMORY = "memory"
    KERNEL_CODE = "kernel-code"
    INSTRUCTION = "instruction"
    DISK = "disk"
    """A guest disk's requests or stored data, through QEMU's block layer."""
    NETWORK = "network"
    """Frames between the machines of a testbed (`network:KIND`)."""
    DEVICE = "device"
    """What the guest asks of a virtual device (`device:NAME`): requests, registers."""
    VMM = "vmm"
    """The QEMU process itself (`vmm:heap|data|registers`): its memory and threads."""
    NONE = "none"
    """A control run: nothing is corrupted (spelled `none`, without a name)."""


class Context(enum.StrEnum):
    """Whose register state a register fault corrupts."""

    USER = "user"
    """The workload process, in user mode."""
    KERNEL = "kernel"
    """The kernel (any kernel code path, on behalf of anyone)."""
    ANY = "any"
    """Whatever runs when the trigger fires."""


def _bad(what: str, text: str, allowed: str) -> UsageError:
    return UsageError(f"invalid {what} {text!r}", hint=f"allowed: {allowed}")


class OptionError(UsageError):
    """A fault option that is invalid or does not combine with the others.

    `key` is the option at fault, as `FaultSpec.from_options` names it (`rate_unit`), so that
    a caller can point at its own spelling of it.
    """

    def __init__(self, message: str, *, key: str, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.key = key


def _same(key: str) -> str:
    return key


@contextlib.contextmanager
def _option(key: str) -> Iterator[None]:
    """Turn a UsageError raised inside into an OptionError about `key`."""
    try:
        yield
    except OptionError:
        raise
    except UsageError as error:
        raise OptionError(error.message, key=key, hint=error.hint) from None


def canonical_op(text: str) -> str:
    """The instruction class or family named `text` (F-SEFI's `sarl`, `idivl` accepted);
    UsageError naming the closest names otherwise."""
    name = text.strip().lower()
    name = _OP_ALIASES.get(name, name)
    if name in INSTRUCTION_OPS:
        return name
    close = difflib.get_close_matches(name, INSTRUCTION_OPS, n=3)
    raise UsageError(
        f"unknown instruction class {text!r}",
        hint=("did you mean " + " or ".join(close) + "? " if close else "")
        + "allowed: "
        + ", ".join(INSTRUCTION_OPS),
    )


@dataclass(frozen=True)
class Target:
    """Where a fault goes: a kind and a name (register or group, region or address, function;
    empty for a control run, `none`), on a guest of `arch` (which names its registers)."""

    kind: TargetKind
    name: str
    arch: Arch = DEFAULT_ARCH

    ALLOWED = (
        "register:NAME|gpr|pointer|flags|sse|x87|all, memory:ram|kernel-text|kernel-data|"
        "process|page-table|0xADDRESS|0xSTART-0xEND[,...]|@SYMBOL[+OFFSET], "
        "kernel-code:hot|FUNCTION, "
        "instruction:OP[@FUNCTION], disk:" + "|".join(DISK_FAULTS) + "[@DISK], "
        "network:loss|corrupt|delay|duplicate|reorder|rate|partition, "
        "device:" + "|".join(DEVICE_TARGETS) + ", vmm:" + "|".join(VMM_TARGETS) + ", "
        "none (a control run)"
    )

    @classmethod
    def parse(cls, text: str, *, arch: Arch = DEFAULT_ARCH) -> Target:
        """Parse `kind:name` (registers of `arch`); UsageError for unknown kinds, registers
        or regions."""
        kind_text, _, name = text.strip().partition(":")
        if kind_text.strip() == TargetKind.MEMORY.value and not name.strip():
            name = "ram"  # `memory` alone: anywhere in RAM
        try:
            kind = TargetKind(kind_text)
        except ValueError:
            raise _bad("target", text, cls.ALLOWED) from None
        if kind is TargetKind.NONE:
            if ":" in text:
                raise UsageError(
                    f"a control run names nothing: {text.strip()!r}", hint="write the target none"
                )
            return cls(kind, "", arch)
        name = name.strip()
        if not name:
            raise _bad("target", text, cls.ALLOWED)
        if kind is TargetKind.REGISTER:
            name = name.lower()
            registers = REGISTER_SETS[arch]
            if name in registers.read_only:
                raise UsageError(
                    f"register {name} is read-only for fault injection",
                    hint="choose a general-purpose, pointer, flags or vector register",
                )
            if name not in registers.groups and name not in registers.widths:
                guest = "" if arch is DEFAULT_ARCH else f" on {arch.value} guests"
                raise UsageError(
                    f"unknown register {name!r}{guest}",
                    hint=f"use a name such as {registers.examples}, or a group: "
                    + ", ".join(registers.groups),
                )
        elif kind is TargetKind.MEMORY and name not in MEMORY_REGIONS and not name.startswith("@"):
            try:
                if "-" in name:
                    name = ",".join(f"{a:#x}-{b:#x}" for a, b in parse_ranges(name))
                else:
                    int(name, 0)
            except ValueError:
                raise _bad("memory target", text, cls.ALLOWED) from None
        elif kind is TargetKind.INSTRUCTION:
            op, _, function = name.partition("@")
            name = canonical_op(op) + (f"@{function.strip()}" if function.strip() else "")
        elif kind is TargetKind.DISK:
            fault, _, disk = name.partition("@")
            name = _disk_fault_name(fault) + (f"@{_disk_name(disk)}" if disk.strip() else "")
        elif kind is TargetKind.NETWORK:
            name = name.lower()
            if name not in NetworkKind.__members__.values():
                raise UsageError(
                    f"unknown network fault {name!r}",
                    hint="allowed: " + ", ".join(f"network:{k.value}" for k in NetworkKind),
                )
        elif kind in (TargetKind.DEVICE, TargetKind.VMM):
            name = name.lower()
            allowed = DEVICE_TARGETS if kind is TargetKind.DEVICE else VMM_TARGETS
            if name not in allowed:
                close = difflib.get_close_matches(name, allowed, n=2)
                raise UsageError(
                    f"unknown {kind.value} target {name!r}",
                    hint=(
                        "did you mean " + " or ".join(f"{kind.value}:{n}" for n in close) + "? "
                        if close
                        else ""
                    )
                    + "allowed: "
                    + ", ".join(f"{kind.value}:{n}" for n in allowed),
                )
        return cls(kind, name, arch)

    @property
    def spelling(self) -> str:
        """The text form, `kind:name` (`none` for a control run)."""
        if self.kind is TargetKind.NONE:
            return self.kind.value
        return f"{self.kind.value}:{self.name}"

    @property
    def address(self) -> int | None:
        """The explicit physical address of a `memory:0x...` target."""
        if self.kind is TargetKind.MEMORY and self.name not in MEMORY_REGIONS:
            if self.name.startswith("@") or "-" in self.name:
                return None
            return int(self.name, 0)
        return None

    @property
    def ranges(self) -> tuple[tuple[int, int], ...]:
        """The physical ranges (start, end exclusive) of a `memory:0xA-0xB[,...]` target."""
        name = self.name
        if self.kind is TargetKind.MEMORY and name not in MEMORY_REGIONS and name[:1] != "@":
            return parse_ranges(name) if "-" in name else ()
        return ()

    def registers(self) -> tuple[str, ...]:
        """The candidate registers of a register target (a group expands to its members)."""
        if self.kind is not TargetKind.REGISTER:
            return ()
        return REGISTER_SETS[self.arch].groups.get(self.name, (self.name,))

    def register_width(self, register: str) -> int:
        """The width in bits of one of `registers()`."""
        return REGISTER_SETS[self.arch].widths[register]

    @property
    def op(self) -> str | None:
        """The instruction class of an `instruction:` target."""
        return self.name.partition("@")[0] if self.kind is TargetKind.INSTRUCTION else None

    @property
    def function(self) -> str | None:
        """The function of an `instruction:OP@FUNCTION` target (None: the whole application)."""
        if self.kind is not TargetKind.INSTRUCTION:
            return None
        return self.name.partition("@")[2] or None

    @property
    def disk_fault(self) -> str | None:
        """The kind of a `disk:KIND[@DISK]` target (`bad-block`, ...)."""
        return self.name.partition("@")[0] if self.kind is TargetKind.DISK else None

    @property
    def disk(self) -> str | None:
        """The disk a `disk:KIND@DISK` target names (None: the machine's only disk)."""
        if self.kind is not TargetKind.DISK:
            return None
        return self.name.partition("@")[2] or None


def _disk_fault_name(text: str) -> str:
    """The disk fault named `text`; UsageError naming the closest ones otherwise."""
    name = text.strip().lower()
    if name in DISK_FAULTS:
        return name
    close = difflib.get_close_matches(name, DISK_FAULTS, n=2)
    raise UsageError(
        f"unknown disk fault {text!r}",
        hint=("did you mean " + " or ".join(close) + "? " if close else "")
        + "allowed: "
        + ", ".join(DISK_FAULTS),
    )


def _disk_name(text: str) -> str:
    """A disk's name as written (`data`); UsageError if it cannot be one."""
    name = text.strip()
    if not _DISK_NAME.match(name):
        raise UsageError(
            f"invalid disk name {name!r}",
            hint="disk names have 1-20 letters, digits, '_' or '-', starting with a letter",
        )
    return name


class BitMode(enum.StrEnum):
    """How the chosen bits change."""

    FLIP = "flip"
    BURST = "burst"
    STUCK_0 = "stuck-at-0"
    STUCK_1 = "stuck-at-1"
    VALUE = "value"


@dataclass(frozen=True)
class BitModel:
    """Which bits of the location change, and how.

    `positions` fixes the bits; otherwise `count` bits (or a burst of `count` adjacent
    bits) are drawn from [`low`, `high`] (inclusive; None: the whole location).
    `hold_instructions` keeps a stuck-at fault forced for that many instructions.
    """

    mode: BitMode = BitMode.FLIP
    count: int = 1
    positions: tuple[int, ...] = ()
    low: int | None = None
    high: int | None = None
    value: int | None = None
    hold_instructions: int = 0

    ALLOWED = "N, N,M, LOW-HIGH, kN, burst:N, stuck0, stuck1[:Ni], value:0xV (comma-separated)"

    @classmethod
    def parse(cls, text: str | int | None) -> BitModel:
        """Parse the bits grammar (module docstring); an int means that many random bits."""
        if text is None or text == "":
            return cls()
        if isinstance(text, int):
            if text < 1:
                raise _bad("bit count", str(text), "a count >= 1")
            return cls(count=text)
        mode, count, value, hold = BitMode.FLIP, 1, None, 0
        positions: list[int] = []
        low = high = None
        for term in (t.strip() for t in text.lower().split(",")):
            try:
                if term.isdigit():
                    positions.append(int(term))
                elif re.fullmatch(r"\d+-\d+", term):
                    low, high = (int(v) for v in term.split("-"))
                    if low > high:
                        raise ValueError
                elif re.fullmatch(r"k\d+", term):
                    count = int(term[1:])
                elif term.startswith("burst:"):
                    mode, count = BitMode.BURST, int(term[6:])
                elif term in ("stuck0", "stuck1") or term.startswith(("stuck0:", "stuck1:")):
                    mode = BitMode.STUCK_0 if term.startswith("stuck0") else BitMode.STUCK_1
                    if ":" in term:
                        hold_text = term.split(":", 1)[1]
                        if not hold_text.endswith("i"):
                            raise ValueError
                        hold = int(hold_text[:-1])
                elif term.startswith("value:"):
                    mode, value = BitMode.VALUE, int(term[6:], 0)
                else:
                    raise ValueError
            except ValueError:
                raise _bad("bits", text, cls.ALLOWED) from None
        if count < 1:
            raise _bad("bits", text, "a bit count >= 1")
        return cls(mode, count, tuple(sorted(set(positions))), low, high, value, hold)

    def check_width(self, width: int, where: str) -> None:
        """UsageError if the model names bits outside a location `width` bits wide."""
        top = max((*self.positions, self.high or 0))
        if top >= width:
            raise UsageError(
                f"bit {top} is out of range for {where} ({width} bits)",
                hint=f"use bits 0-{width - 1}",
            )
        span = (self.high if self.high is not None else width - 1) - (self.low or 0) + 1
        if not self.positions and self.mode is not BitMode.VALUE and self.count > span:
            raise UsageError(
                f"cannot choose {self.count} bits from a range of {span} in {where}",
                hint="lower the count or widen the range",
            )


class TriggerKind(enum.StrEnum):
    """When a fault fires, counted from the workload's start."""

    TIME = "time"
    EXECUTION = "exec"
    INSTRUCTIONS = "icount"
    REQUEST = "request"
    """From the Nth request to the disk on (`count`; disk faults only)."""


@dataclass(frozen=True)
class Trigger:
    """When to inject. Unset `time_s`/`instructions` mean: drawn uniformly over the golden run."""

    kind: TriggerKind = TriggerKind.TIME
    time_s: float | None = None
    location: str = ""
    count: int = 1
    instructions: int | None = None

    ALLOWED = "time, time:20ms, exec:SYMBOL|0xADDR[#N], icount, icount:N, request[:N] (disks)"

    @classmethod
    def parse(cls, text: str | None) -> Trigger:
        """Parse the trigger grammar (module docstring)."""
        if not text:
            return cls()
        kind_text, _, rest = text.strip().partition(":")
        try:
            kind = TriggerKind(kind_text)
        except ValueError:
            raise _bad("trigger", text, cls.ALLOWED) from None
        try:
            if kind is TriggerKind.TIME:
                return cls(kind, time_s=parse_duration_s(rest) if rest else None)
            if kind is TriggerKind.INSTRUCTIONS:
                return cls(kind, instructions=int(rest, 0) if rest else None)
            if kind is TriggerKind.REQUEST:
                nth = int(rest, 0) if rest else 1
                if nth < 1:
                    raise ValueError
                return cls(kind, count=nth)
            location, _, count = rest.partition("#")
            if not location or (count and int(count) < 1):
                raise ValueError
            return cls(kind, location=location, count=int(count) if count else 1)
        except (ValueError, UsageError):
            raise _bad("trigger", text, cls.ALLOWED) from None


def _check_instances(
    instance: int | None,
    start_index: int,
    max_dic: int | None,
    faults_per_run: int,
    probability: float | None,
    spell: Callable[[str], str] = _same,
) -> None:
    """OptionError unless these choose dynamic instances (see InstructionFault)."""
    if instance is not None and instance < 1:
        raise OptionError(
            f"instance {instance} is not a dynamic instance",
            key="instance",
            hint="instances count from 1 (the first execution)",
        )
    if start_index < 1:
        raise OptionError(
            f"start index {start_index} is below 1",
            key="start_index",
            hint="dynamic instances count from 1",
        )
    if max_dic is not None and max_dic < start_index:
        raise OptionError(
            f"maximum dynamic count {max_dic} is below the start index {start_index}",
            key="max_dic",
            hint=f"raise {spell('max_dic')} or lower {spell('start_index')}",
        )
    if faults_per_run < 1:
        raise OptionError(
            f"faults per run {faults_per_run} is below 1",
            key="faults_per_run",
            hint="use 1 or more",
        )
    if probability is not None:
        if not 0.0 < probability <= 1.0:
            raise OptionError(
                f"probability {probability} is outside (0, 1]",
                key="probability",
                hint="give the chance that each dynamic instance is faulted, e.g. 0.05",
            )
        if faults_per_run != 1 or instance is not None:
            raise OptionError(
                "probability mode replaces a fixed number of faults per run",
                key="probability",
                hint=f"give {spell('probability')}, or {spell('faults_per_run')} / "
                f"{spell('instance')}, not both",
            )
    if instance is not None and faults_per_run != 1:
        raise OptionError(
            "a fixed instance is one fault per run",
            key="faults_per_run",
            hint=f"give {spell('instance')}, or {spell('faults_per_run')} with "
            f"{spell('start_index')} and {spell('max_dic')}",
        )


@dataclass(frozen=True)
class InstructionFault:
    """Which dynamic instances of an instruction class get their result corrupted.

    Instances are counted from 1 in execution order, inside `function` (None: anywhere in
    the application), in the workload process only. `instance` fixes one; otherwise
    `faults_per_run` distinct instances are drawn between `start_index` and `max_dic`
    (inclusive; None: the last instance of the golden run), or, with `probability`, each
    instance in that span is faulted with that probability. F-SEFI's `batch_run -m -n`.
    """

    op: str
    function: str | None = None
    instance: int | None = None
    start_index: int = 1
    max_dic: int | None = None
    faults_per_run: int = 1
    probability: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "op", canonical_op(self.op))
        if self.function is not None and not self.function.strip():
            object.__setattr__(self, "function", None)
        _check_instances(
            self.instance, self.start_index, self.max_dic, self.faults_per_run, self.probability
        )

    @property
    def spelling(self) -> str:
        """`OP@FUNCTION`, or `OP` for the whole application."""
        return self.op + (f"@{self.function}" if self.function else "")

    @property
    def target(self) -> Target:
        """The `instruction:` target this fault corrupts."""
        return Target(TargetKind.INSTRUCTION, self.spelling)


class SectorChoice(enum.StrEnum):
    """Which sectors of a disk a disk fault goes to."""

    TOUCHED = "touched"
    """One sector the golden run read or wrote, drawn per experiment."""
    ANY = "any"
    """Every sector (one drawn per experiment, for corruption)."""
    RANGE = "range"
    """The sectors `first`..`last` (inclusive)."""


@dataclass(frozen=True)
class Sectors:
    """The sectors of a disk fault: `touched`, `any`, or a range `first`-`last` (inclusive,
    512-byte sectors from the start of the disk)."""

    choice: SectorChoice = SectorChoice.TOUCHED
    first: int = 0
    last: int = 0

    ALLOWED = "touched, any, N, A-B (512-byte sectors, inclusive)"

    @classmethod
    def parse(cls, text: str | int) -> Sectors:
        """`touched`, `any`, `2048` or `2048-2055` (decimal or 0x)."""
        if isinstance(text, int):
            text = str(text)
        word = text.strip().lower()
        if word in (SectorChoice.TOUCHED.value, SectorChoice.ANY.value):
            return cls(SectorChoice(word))
        first_text, dash, last_text = word.partition("-")
        try:
            first = int(first_text.strip(), 0)
            last = int(last_text.strip(), 0) if dash else first
        except ValueError:
            raise _bad("sectors", text, cls.ALLOWED) from None
        if not 0 <= first <= last:
            raise _bad("sectors", text, "a range A-B with 0 <= A <= B")
        return cls(SectorChoice.RANGE, first, last)

    @property
    def spelling(self) -> str:
        """`touched`, `any`, `2048` or `2048-2055`."""
        if self.choice is not SectorChoice.RANGE:
            return self.choice.value
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def errno_number(name: str) -> int:
    """The number of the errno called `name` (`EIO`, `enospc`); UsageError otherwise."""
    upper = name.strip().upper()
    number = getattr(errno_module, upper, None)
    if not isinstance(number, int) or errno_module.errorcode.get(number) is None:
        close = difflib.get_close_matches(upper, sorted(errno_module.errorcode.values()), n=3)
        raise UsageError(
            f"unknown errno {name!r}",
            hint="give an errno by name, e.g. EIO, ENOSPC, EROFS"
            + (f" (did you mean {' or '.join(close)}?)" if close else ""),
        )
    return number


@dataclass(frozen=True)
class DiskFault:
    """What a disk fault does, beyond its kind (the target `disk:KIND`).

    `fault` is the kind; `disk` the disk's name (None: the machine's only disk);
    `sectors` where it applies (not for flush-error, whose requests carry no sectors);
    `errno` (by name) what failed requests return; `delay_s` and `jitter_s` (seconds) how
    long latency holds each request (the delay plus a uniform draw in +-jitter, never
    below 0); `probability` the chance that each matching request is faulted (None: every
    one) and `once` whether only the first one is. A corruption flips `bits` of a 64-bit
    word of one sector of stored data.
    """

    fault: str
    disk: str | None = None
    sectors: Sectors = field(default_factory=Sectors)
    errno: str = "EIO"
    delay_s: float = 0.0
    jitter_s: float = 0.0
    probability: float | None = None
    once: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "fault", _disk_fault_name(self.fault))
        if self.disk is not None:
            object.__setattr__(self, "disk", _disk_name(self.disk))
        object.__setattr__(self, "errno", errno_module.errorcode[errno_number(self.errno)])
        if self.fault == "flush-error" and self.sectors != Sectors(SectorChoice.ANY):
            object.__setattr__(self, "sectors", Sectors(SectorChoice.ANY))
        if self.delay_s < 0 or self.jitter_s < 0:
            raise UsageError("a delay is never negative", hint='e.g. delay = "50ms"')
        if self.probability is not None and not 0.0 < self.probability <= 1.0:
            raise UsageError(
                f"probability {self.probability} is outside (0, 1]",
                hint="give the chance that each request is faulted, e.g. 0.1",
            )

    @property
    def fails(self) -> bool:
        """Whether the fault fails requests (with `errno`)."""
        return self.fault in ERRNO_FAULTS

    @property
    def corrupts(self) -> bool:
        """Whether the fault changes stored data instead of requests."""
        return self.fault == "corrupt"

    @property
    def target(self) -> Target:
        """The `disk:KIND[@DISK]` target of this fault."""
        return Target(TargetKind.DISK, self.fault + (f"@{self.disk}" if self.disk else ""))

    def disk_of(self, disks: Mapping[str, int]) -> str:
        """The name of the disk this fault goes to among `disks` (name -> size in sectors),
        checking that its sectors lie on it; UsageError for an unknown name, no disk, a
        choice among several, or sectors outside the disk."""
        names = ", ".join(disks) or "none"
        if self.disk is None:
            if len(disks) != 1:
                raise UsageError(
                    "a disk fault needs a disk"
                    if not disks
                    else f"which disk? the machine has {names}",
                    hint="add a disk (--disk data:64M, or [[guest.disks]])"
                    if not disks
                    else "name one: disk:KIND@NAME (campaign files: disk = NAME)",
                )
            name = next(iter(disks))
        elif self.disk not in disks:
            raise UsageError(f"no disk named {self.disk!r}", hint=f"the machine's disks: {names}")
        else:
            name = self.disk
        sectors = disks[name]
        if self.sectors.choice is SectorChoice.RANGE and self.sectors.last >= sectors:
            raise UsageError(
                f"sectors {self.sectors.spelling} lie outside disk {name} "
                f"({sectors} sectors of {SECTOR_BYTES} bytes)",
                hint=f"give sectors between 0 and {sectors - 1}",
            )
        return name

    def to_json(self) -> dict[str, Any]:
        """Plain data (sectors in their spelling)."""
        return {
            "fault": self.fault, "disk": self.disk, "sectors": self.sectors.spelling,
            "errno": self.errno, "delay_s": self.delay_s, "jitter_s": self.jitter_s,
            "probability": self.probability, "once": self.once,
        }  # fmt: skip


@dataclass(frozen=True)
class FaultSpec:
    """A fault family as the user gave it; random parts are resolved per experiment.

    Instruction-result faults (`instruction:` targets) carry their instance choice in
    `instruction`; their bits are positions in the result (checked against its width when
    the instruction is known) and their trigger is the instance itself. A control run
    (target `none`) has the default bits, trigger and context, and no storm or instruction.
    """

    target: Target
    bits: BitModel = field(default_factory=BitModel)
    trigger: Trigger = field(default_factory=Trigger)
    context: Context = Context.ANY
    instruction: InstructionFault | None = None
    storm: Storm | None = None
    """A storm of single-bit flips on a schedule instead of one fault (memory regions only)."""
    period_s: float | None = None
    """Guest seconds the system runs after the (last) flip before it is judged; None: until
    the workload ends or the hang budget runs out."""
    machine: str | None = None
    """The machine of the experiment's testbed the fault goes to; None: its default machine."""
    disk: DiskFault | None = None
    """What a disk fault (`disk:` target) does; set from the target when left out."""
    """The machine of the experiment's testbed the fault goes to; None: its default machine.
    A network fault with a machine acts on that machine's card."""
    network: NetworkFault | None = None
    """What a network fault does to frames, on which links, for how long (its period is
    `network.duration_s`; `period_s` stays None)."""

    def __post_init__(self) -> None:
        if self.period_s is not None and self.period_s <= 0:
            raise UsageError(f"period {self.period_s} s is not positive", hint="e.g. period 1s")
        if (self.target.kind is TargetKind.NETWORK) != (self.network is not None):
            raise UsageError(
                "a network fault needs a network target, and a network target its fault",
                hint="build the spec with FaultSpec.from_options",
            )
        if self.network is not None:
            if self.network.kind.value != self.target.name:
                raise UsageError(
                    f"target {self.target.spelling} is not network:{self.network.kind}"
                )
            if self.network.nic != self.machine:
                raise UsageError("a network fault on a card names the card's machine as machine")
            if self.bits != BitModel() or self.context is not Context.ANY or self.period_s:
                raise UsageError(
                    "a network fault takes no bit model, context or observation period",
                    hint="its period is how long it acts",
                )
            return
        if self.target.kind is TargetKind.NONE:
            self._check_control()
            return
        if self.target.kind is TargetKind.DISK:
            self._check_disk()
            return
        if self.disk is not None:
            raise UsageError(f"a disk fault needs a disk target, not {self.target.spelling}")
        if self.trigger.kind is TriggerKind.REQUEST:
            raise UsageError(
                "a request trigger counts a disk's requests: it applies to disk faults only",
                hint="use a time or exec trigger",
            )
        if self.storm is not None:
            self._check_storm()
            return
        if self.target.kind in (TargetKind.DEVICE, TargetKind.VMM):
            if self.instruction is not None:
                raise UsageError(f"{self.target.spelling} is not an instruction fault")
            if self.context is not Context.ANY:
                raise UsageError(
                    f"a {self.target.kind.value} fault does not wait for a CPU context",
                    hint="remove the context",
                )
        if self.target.kind is TargetKind.INSTRUCTION:
            if self.period_s is not None:
                raise UsageError(
                    "a period does not apply to instruction faults",
                    hint="use a period with register or memory faults",
                )
            op, function = self.target.op, self.target.function
            assert op is not None
            if self.instruction is None:
                object.__setattr__(self, "instruction", InstructionFault(op, function))
            elif (self.instruction.op, self.instruction.function) != (op, function):
                raise UsageError(
                    f"target {self.target.spelling} does not match the instruction fault "
                    f"{self.instruction.spelling}",
                    hint="build the spec with FaultSpec.of_instruction",
                )
            self.bits.check_width(MAX_RESULT_BITS, "an instruction result")
            return
        if self.instruction is not None:
            raise UsageError(
                f"an instruction fault needs an instruction target, not {self.target.spelling}"
            )
        for register in self.target.registers():
            self.bits.check_width(self.target.register_width(register), f"register {register}")
        if self.target.kind is not TargetKind.REGISTER:
            self.bits.check_width(MEMORY_CELL_BITS, "a memory word")

    @property
    def control(self) -> bool:
        """Whether this is a control run (target `none`): nothing is injected."""
        return self.target.kind is TargetKind.NONE

    def _check_control(self) -> None:
        changes = {
            "bits": self.bits != BitModel(),
            "trigger": self.trigger != Trigger(),
            "context": self.context is not Context.ANY,
            "storm": self.storm is not None,
            "instruction": self.instruction is not None,
            "disk": self.disk is not None,
        }
        for what, given in changes.items():
            if given:
                raise UsageError(
                    f"a control run injects nothing: {what} does not apply",
                    hint=f"remove {what}, or choose a target to fault",
                )

    def _check_storm(self) -> None:
        target = self.target
        if target.kind is not TargetKind.MEMORY or target.name.startswith("@") or (
            target.address is not None or target.name == PAGE_TABLE
        ):  # fmt: skip
            raise UsageError(
                f"a storm needs a memory region, not {target.spelling}",
                hint="use memory:ram, memory:kernel-text, memory:kernel-data, memory:process "
                "or memory:0xSTART-0xEND",
            )
        if self.bits != BitModel():
            raise UsageError(
                "a storm flips one random bit per flip: bits do not apply", hint="remove bits"
            )
        if self.trigger != Trigger():
            raise UsageError(
                "a storm's schedule is its trigger", hint="remove trigger; set interval or rate"
            )
        if self.context is not Context.ANY:
            raise UsageError(
                "a storm's flips do not wait for a context",
                hint="remove context; memory:process flips wait for the workload itself",
            )

    def _check_disk(self) -> None:
        fault, disk = self.target.disk_fault, self.target.disk
        assert fault is not None
        if self.disk is None:
            object.__setattr__(self, "disk", DiskFault(fault, disk))
        elif (self.disk.fault, self.disk.disk) != (fault, disk):
            raise UsageError(
                f"target {self.target.spelling} does not match the disk fault "
                f"{self.disk.target.spelling}",
                hint="build the spec with FaultSpec.from_options",
            )
        if self.storm is not None or self.instruction is not None:
            raise UsageError("a disk fault is neither a storm nor an instruction fault")
        if self.context is not Context.ANY:
            raise UsageError(
                "a disk fault does not wait for a CPU context", hint="remove the context"
            )
        if fault == "corrupt":
            self.bits.check_width(MEMORY_CELL_BITS, "a word of a sector")
            if self.trigger.kind is TriggerKind.REQUEST:
                raise UsageError(
                    "a corruption is made with the guest halted: a request trigger does not "
                    "apply to it",
                    hint="use a time or exec trigger",
                )
        elif self.bits != BitModel():
            raise UsageError(f"bits apply to disk:corrupt, not to disk:{fault}", hint="remove bits")

    @classmethod
    def of_instruction(cls, fault: InstructionFault, bits: BitModel | None = None) -> FaultSpec:
        """The spec of an instruction-result fault."""
        return cls(fault.target, bits or BitModel(), instruction=fault)

    @classmethod
    def from_options(
        cls,
        *,
        target: str | None = None,
        bits: int | str | None = None,
        trigger: str | None = None,
        context: Context | str | None = None,
        machine: str | None = None,
        op: str | None = None,
        function: str | None = None,
        instance: int | None = None,
        start_index: int | None = None,
        max_dic: int | None = None,
        faults_per_run: int | None = None,
        bit_range: str | None = None,
        probability: float | None = None,
        flips: int | None = None,
        interval: str | None = None,
        rate: float | None = None,
        rate_unit: RateUnit | str | None = None,
        compression: float | None = None,
        period: str | None = None,
        disk: str | None = None,
        sectors: str | int | None = None,
        errno: str | None = None,
        delay: str | None = None,
        jitter: str | None = None,
        once: bool | None = None,
        link: str | None = None,
        direction: str | None = None,
        burst: float | None = None,
        where: str | None = None,
        bandwidth: str | None = None,
        groups: Sequence[Sequence[str]] | None = None,
        spell: Callable[[str], str] = _same,
        arch: Arch = DEFAULT_ARCH,
    ) -> FaultSpec:
        """The spec that a campaign `[[faults]]` table or the command line describes.

        Options are the user's raw values; None means not given (pass None, not a default,
        for an option the user left out; `context` "any" also counts as not given). The
        target is `target`, or `instruction:OP[@FUNCTION]` from `op` and `function` when
        `target` is None or `"instruction"`. `flips` with `interval` or `rate` (and
        `compression`) makes a storm on a memory region. Registers are `arch`'s. A
        `disk:KIND` target takes `disk`, `sectors`, `errno`, `delay`, `jitter`,
        `probability`, `once`, `bits` (corrupt) and `trigger` (also `request:N`), `period`
        and `machine`. A `network:KIND` target takes the network options (`link`, `machine`,
        `direction`, `probability`, `burst`, `bits` as a number, `where`, `delay`, `jitter`,
        `bandwidth`, `groups`, `trigger`, `period`; see `vmfault.faults.network`).
        OptionError names the first option that is invalid or does not combine; messages
        spell option names with `spell`.
        """
        named = None
        stormy = flips is not None or interval is not None or rate is not None
        if target is not None and target.strip() != TargetKind.INSTRUCTION.value:
            with _option("target"):
                named = _storm_region(target, arch) if stormy else Target.parse(target, arch=arch)
        disk_options: dict[str, object] = {
            "disk": disk, "sectors": sectors, "errno": errno, "delay": delay, "jitter": jitter,
            "once": once,
        }  # fmt: skip
        network_only = {
            "link": link, "direction": direction, "burst": burst, "where": where,
            "bandwidth": bandwidth, "groups": groups,
        }  # fmt: skip
        if named is not None and named.kind is TargetKind.DISK:
            for key, option in network_only.items():
                if option is not None:
                    raise OptionError(
                        f"{spell(key)} applies only to network faults",
                        key=key,
                        hint=f'remove {spell(key)}, or set {spell("target")} = "network:KIND"',
                    )
            others = {
                "op": op, "function": function, "instance": instance,
                "start_index": start_index, "max_dic": max_dic, "faults_per_run": faults_per_run,
                "bit_range": bit_range, "flips": flips, "interval": interval, "rate": rate,
                "rate_unit": rate_unit, "compression": compression,
                "context": None if context is None or str(context).strip().lower() == "any"
                else context,
            }  # fmt: skip
            disk_fault = _disk_fault(named, disk_options, others, probability, bits, trigger, spell)
            with _option("bits"):
                model = BitModel.parse(bits)
            with _option("trigger"):
                when = Trigger.parse(trigger)
            period_s = _period_s(period, spell)
            key = "trigger" if when.kind is TriggerKind.REQUEST else "bits"
            with _option(key):
                return cls(disk_fault.target, model, when, period_s=period_s, machine=machine,
                           disk=disk_fault)  # fmt: skip
        networked_target = named is not None and named.kind is TargetKind.NETWORK
        for key, value in disk_options.items():
            if value is None:
                continue
            if key in ("delay", "jitter"):
                if networked_target:
                    continue  # network:delay takes them too
                raise OptionError(
                    f"{spell(key)} applies only to disk and network faults",
                    key=key,
                    hint=f"remove {spell(key)}, or give a disk:latency or network:delay target",
                )
            raise OptionError(
                f"{spell(key)} applies only to disk faults",
                key=key,
                hint=f"remove {spell(key)}, or give a disk:KIND target",
            )
        if target is None and op is None:
            raise OptionError(
                f"give exactly one of {spell('target')} and {spell('op')}",
                key="target",
                hint=f"{spell('target')} register:rip for a register, {spell('op')} fadd for an "
                "instruction result",
            )
        networked = {
            "link": link, "direction": direction, "burst": burst, "where": where,
            "delay": delay, "jitter": jitter, "bandwidth": bandwidth, "groups": groups,
        }  # fmt: skip
        if named is not None and named.kind is TargetKind.NETWORK:
            _check_network_options(
                {
                    "context": None if context in (None, Context.ANY, "any") else context,
                    "flips": flips, "interval": interval, "rate": rate,
                    "rate_unit": rate_unit, "compression": compression, "op": op,
                    "function": function, "instance": instance, "start_index": start_index,
                    "max_dic": max_dic, "faults_per_run": faults_per_run,
                    "bit_range": bit_range,
                },
                spell,
            )  # fmt: skip
            network = _network_fault(named, machine, bits, probability, period, networked, spell)
            with _option("trigger"):
                when = Trigger.parse(trigger)
            return cls(named, trigger=when, machine=machine, network=network)
        for key, value in networked.items():
            if value is not None:
                raise OptionError(
                    f"{spell(key)} applies only to network faults",
                    key=key,
                    hint=f'remove {spell(key)}, or set {spell("target")} = "network:KIND"',
                )
        in_context = Context.ANY if context is None else _context(context, spell)
        if named is not None and named.kind is TargetKind.NONE:
            _check_control_options(
                {
                    "bits": bits, "trigger": trigger,
                    "context": None if in_context is Context.ANY else in_context,
                    "flips": flips, "interval": interval, "rate": rate, "rate_unit": rate_unit,
                    "compression": compression, "op": op, "function": function,
                    "instance": instance, "start_index": start_index, "max_dic": max_dic,
                    "faults_per_run": faults_per_run, "bit_range": bit_range,
                    "probability": probability,
                },
                spell,
            )  # fmt: skip
            return cls(named, period_s=_period_s(period, spell), machine=machine)
        fault = None
        if named is None or named.kind is TargetKind.INSTRUCTION:
            fault = _instruction_fault(
                named, op, function, instance, start_index, max_dic, faults_per_run,
                probability, trigger, in_context, spell,
            )  # fmt: skip
        else:
            given = {
                "op": op, "function": function, "instance": instance,
                "start_index": start_index, "max_dic": max_dic, "faults_per_run": faults_per_run,
                "bit_range": bit_range, "probability": probability,
            }  # fmt: skip
            instruction_target = f'{spell("target")} = "{TargetKind.INSTRUCTION.value}"'
            for key, value in given.items():
                if value is not None:
                    raise OptionError(
                        f"{spell(key)} applies only to {instruction_target}",
                        key=key,
                        hint=f"remove {spell(key)}, or set {instruction_target}",
                    )
        storm = _storm(
            flips, interval, rate, rate_unit, compression, bits, trigger, in_context, spell
        )
        period_s = _period_s(period, spell)
        if fault is not None:
            if storm is not None or period_s is not None:
                at = "period" if storm is None else "interval" if interval is not None else "rate"
                raise OptionError(
                    f"{spell('interval')}, {spell('rate')} and {spell('period')} do not apply to "
                    "instruction faults",
                    key=at,
                    hint=f'use them with a memory target, e.g. {spell("target")} = "memory:ram"',
                )
            model = _instruction_bits(bits, bit_range, spell)
            with _option("bits" if bit_range is None else "bit_range"):
                return cls(fault.target, model, instruction=fault, machine=machine)
        assert named is not None
        if named.kind in (TargetKind.DEVICE, TargetKind.VMM) and in_context is not Context.ANY:
            raise OptionError(
                f"a {named.kind.value} fault does not wait for a CPU context",
                key="context",
                hint=f"remove {spell('context')}",
            )
        with _option("bits"):
            model = BitModel.parse(bits)
        with _option("trigger"):
            when = Trigger.parse(trigger)
        if when.kind is TriggerKind.REQUEST:
            raise OptionError(
                "a request trigger counts a disk's requests: it applies to disk faults only",
                key="trigger",
                hint=f"use {spell('trigger')} time or exec:SYMBOL",
            )
        with _option("bits" if storm is None else "target"):
            return cls(
                named, model, when, in_context, storm=storm, period_s=period_s, machine=machine
            )

    def to_json(self) -> dict[str, Any]:
        """Plain data for records and JSON output."""
        data: dict[str, Any] = {
            "target": self.target.spelling,
            "bits": asdict(self.bits) | {"mode": self.bits.mode.value},
            "trigger": asdict(self.trigger) | {"kind": self.trigger.kind.value},
            "context": self.context.value,
        }
        if self.instruction is not None:
            data["instruction"] = asdict(self.instruction)
        if self.storm is not None:
            data["storm"] = self.storm.to_json()
        if self.period_s is not None:
            data["period_s"] = self.period_s
        if self.machine is not None:
            data["machine"] = self.machine
        if self.disk is not None:
            data["disk"] = self.disk.to_json()
        if self.network is not None:
            data["network"] = self.network.to_json()
        return data


def _check_control_options(given: Mapping[str, object], spell: Callable[[str], str]) -> None:
    """OptionError naming the first of `given` (option -> raw value, None: not given) that is
    set: a control run takes no fault options (a period and a machine do apply)."""
    control = f'{spell("target")} = "{TargetKind.NONE.value}"'
    for key, value in given.items():
        if value is not None:
            raise OptionError(
                f"{spell(key)} does not apply to a control run ({control} injects nothing)",
                key=key,
                hint=f"remove {spell(key)}, or choose a target to fault",
            )


def _context(value: Context | str, spell: Callable[[str], str]) -> Context:
    try:
        return Context(value.strip().lower())
    except ValueError:
        raise OptionError(
            f"invalid {spell('context')} {value!r}",
            key="context",
            hint="allowed: " + ", ".join(Context),
        ) from None


def _instruction_fault(
    named: Target | None,
    op: str | None,
    function: str | None,
    instance: int | None,
    start_index: int | None,
    max_dic: int | None,
    faults_per_run: int | None,
    probability: float | None,
    trigger: str | None,
    context: Context,
    spell: Callable[[str], str],
) -> InstructionFault:
    """The instance choice of an instruction target (`named`, or None for bare `instruction`)."""
    if named is not None:
        with _option("op"):
            disagree = op is not None and canonical_op(op) != named.op
        if disagree or (function is not None and (function.strip() or None) != named.function):
            raise OptionError(
                f"{spell('op')}/{spell('function')} disagree with {spell('target')} "
                f"{named.spelling!r}",
                key="op",
                hint=f"name them once: in the {spell('target')} or in {spell('op')} and "
                f"{spell('function')}",
            )
        op, function = named.op, named.function
    if op is None:
        raise OptionError(
            f'missing {spell("op")} for {spell("target")} = "{TargetKind.INSTRUCTION.value}"',
            key="op",
            hint=f"set {spell('op')} to one of {', '.join(INSTRUCTION_OPS)}",
        )
    for key, given in (("trigger", trigger is not None), ("context", context is not Context.ANY)):
        if given:
            raise OptionError(
                f"{spell(key)} does not apply to instruction faults (the instance is the trigger)",
                key=key,
                hint=f"remove {spell(key)}",
            )
    start = 1 if start_index is None else start_index
    count = 1 if faults_per_run is None else faults_per_run
    _check_instances(instance, start, max_dic, count, probability, spell)
    with _option("op"):
        return InstructionFault(op, function, instance, start, max_dic, count, probability)


def _disk_fault(
    named: Target,
    options: Mapping[str, object],
    others: Mapping[str, object],
    probability: float | None,
    bits: int | str | None,
    trigger: str | None,
    spell: Callable[[str], str],
) -> DiskFault:
    """The DiskFault of a `disk:` target and its options (see `FaultSpec.from_options`)."""
    fault = named.disk_fault
    assert fault is not None
    for key, value in others.items():
        if value is not None:
            raise OptionError(
                f"{spell(key)} does not apply to disk faults",
                key=key,
                hint=f"remove {spell(key)}",
            )
    disk = options["disk"]
    name = named.disk
    if disk is not None:
        with _option("disk"):
            given = _disk_name(str(disk))
        if name is not None and name != given:
            raise OptionError(
                f"{spell('disk')} {given!r} disagrees with {spell('target')} {named.spelling!r}",
                key="disk",
                hint=f"name the disk once: in the {spell('target')} or in {spell('disk')}",
            )
        name = given

    def refuse(key: str, why: str) -> None:
        if (key == "probability" and probability is not None) or options.get(key) is not None:
            raise OptionError(
                f"{spell(key)} does not apply to disk:{fault} ({why})",
                key=key,
                hint=f"remove {spell(key)}",
            )

    if fault == "flush-error":
        refuse("sectors", "a flush carries no sectors")
    if fault not in ERRNO_FAULTS:
        refuse("errno", "it fails no request")
    if fault != "latency":
        refuse("delay", "only disk:latency delays requests")
        refuse("jitter", "only disk:latency delays requests")
    if fault == "corrupt":
        refuse("probability", "it changes stored data, not requests")
        refuse("once", "it changes stored data, not requests")
    elif bits is not None:
        raise OptionError(
            f"{spell('bits')} apply to disk:corrupt, not to disk:{fault}",
            key="bits",
            hint=f"remove {spell('bits')}",
        )
    if fault == "corrupt" and trigger is not None and trigger.strip().startswith("request"):
        raise OptionError(
            "a corruption is made with the guest halted: a request trigger does not apply",
            key="trigger",
            hint=f"use {spell('trigger')} time or exec:SYMBOL",
        )
    chosen = Sectors()
    if options["sectors"] is not None:
        with _option("sectors"):
            chosen = Sectors.parse(options["sectors"])  # type: ignore[arg-type]
    code = "EIO"
    if options["errno"] is not None:
        with _option("errno"):
            code = errno_module.errorcode[errno_number(str(options["errno"]))]
    delay_s = DEFAULT_DELAY_S if fault == "latency" else 0.0
    jitter_s = 0.0
    for key in ("delay", "jitter"):
        text = options[key]
        if text is not None:
            with _option(key):
                value = parse_duration_s(str(text))
            if key == "delay":
                delay_s = value
            else:
                jitter_s = value
    once = options["once"]
    with _option("probability"):
        return DiskFault(
            fault, name, chosen, code, delay_s, jitter_s, probability, bool(once),
        )  # fmt: skip


def _instruction_bits(
    bits: int | str | None, bit_range: str | None, spell: Callable[[str], str]
) -> BitModel:
    """The bits of an instruction result: `bits`, drawn from `bit_range` when it is given."""
    with _option("bits"):
        model = BitModel.parse(bits)
    if bit_range is None:
        return model
    found = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", bit_range)
    if found is None:
        raise OptionError(
            f"invalid {spell('bit_range')} {bit_range!r}",
            key="bit_range",
            hint='write it low-high, e.g. "52-62"',
        )
    low, high = int(found.group(1)), int(found.group(2))
    if low > high:
        raise OptionError(
            f"bit range {bit_range!r} runs backwards",
            key="bit_range",
            hint='write it low-high, e.g. "52-62"',
        )
    if model.positions or model.low is not None or model.high is not None:
        raise OptionError(
            f"{spell('bits')} names bit positions and {spell('bit_range')} a range",
            key="bit_range",
            hint=f"with {spell('bit_range')}, give {spell('bits')} as a number of bits",
        )
    return dataclasses.replace(model, low=low, high=high)


def _storm(
    flips: int | None,
    interval: str | None,
    rate: float | None,
    rate_unit: RateUnit | str | None,
    compression: float | None,
    bits: int | str | None,
    trigger: str | None,
    context: Context,
    spell: Callable[[str], str],
) -> Storm | None:
    """The storm that the storm options describe; None when none of them is given."""

    rate_keys = {"rate_unit": rate_unit, "compression": compression}
    if interval is None and rate is None:
        if flips is not None:
            raise OptionError(
                f"{spell('flips')} needs {spell('interval')} or {spell('rate')}: give exactly "
                f"one of {spell('interval')} and {spell('rate')}",
                key="flips",
                hint=f'set {spell("interval")} = "10ms" (or {spell("rate")}, '
                f"{spell('rate_unit')}, {spell('compression')})",
            )
        for key, value in rate_keys.items():
            if value is not None:
                raise OptionError(
                    f"{spell(key)} applies only with {spell('rate')}",
                    key=key,
                    hint=f"remove {spell(key)}, or set {spell('rate')}",
                )
        return None
    if flips is None:
        raise OptionError(
            f"missing {spell('flips')} for a storm",
            key="flips",
            hint=f"set {spell('flips')} = N, the number of flips per experiment",
        )
    if rate is None:
        for key, value in rate_keys.items():
            if value is not None:
                raise OptionError(
                    f"{spell(key)} applies only with {spell('rate')}",
                    key=key,
                    hint=f"remove {spell(key)}",
                )
    elif interval is not None:
        raise OptionError(
            f"give {spell('interval')} or {spell('rate')}, not both",
            key="rate",
            hint="a fixed schedule, or one derived from a physical rate",
        )
    elif compression is None:
        raise OptionError(
            f"missing {spell('compression')} for {spell('rate')}",
            key="compression",
            hint=f"set {spell('compression')} = real-world seconds per guest second, e.g. 1e9",
        )
    given = {
        "bits": bits is not None,
        "trigger": trigger is not None,
        "context": context is not Context.ANY,
    }
    for key, present in given.items():
        if present:
            raise OptionError(
                f"{spell(key)} does not apply to a storm "
                "(one random bit per flip, on its schedule)",
                key=key,
                hint=f"remove {spell(key)}",
            )
    if flips < 1:
        raise OptionError(
            f"a storm needs at least one flip, not {flips}",
            key="flips",
            hint=f"set {spell('flips')} to 1 or more",
        )
    for key, value in (("rate", rate), ("compression", compression)):
        if value is not None and value <= 0:
            raise OptionError(
                f"{spell(key)} {value:g} is not positive",
                key=key,
                hint="give upsets > 0" if key == "rate" else "real-world seconds per guest second",
            )
    schedule = None
    if interval is not None:
        with _option("interval"):
            schedule = Schedule.parse(interval)
    unit = RateUnit.FIT_PER_MBIT
    if rate_unit is not None:
        try:
            unit = RateUnit(rate_unit.strip().lower())
        except ValueError:
            raise OptionError(
                f"invalid {spell('rate_unit')} {rate_unit!r}",
                key="rate_unit",
                hint="allowed: " + ", ".join(RateUnit),
            ) from None
    with _option("interval" if interval is not None else "rate"):
        return Storm(flips, schedule, rate, unit, compression)


def _storm_region(target: str, arch: Arch) -> Target:
    """The memory region of a storm's target; UsageError naming the region otherwise."""
    kind, _, region = target.strip().partition(":")
    if kind == TargetKind.MEMORY.value and region.strip():
        try:
            return Target.parse(target, arch=arch)
        except UsageError:
            raise UsageError(
                f"invalid region {region.strip()!r}",
                hint="allowed: ram, kernel-text, kernel-data, process, or 0xSTART-0xEND[,...]",
            ) from None
    return Target.parse(target, arch=arch)


def _period_s(period: str | None, spell: Callable[[str], str]) -> float | None:
    """Seconds of the `period` option (longer than 0), or None."""
    if period is None:
        return None
    with _option("period"):
        seconds = parse_duration_s(period)
    if seconds <= 0:
        raise OptionError(
            f"invalid period {period!r}: not longer than 0",
            key="period",
            hint=f"e.g. {spell('period')} 1s",
        )
    return seconds


def _check_network_options(given: Mapping[str, object], spell: Callable[[str], str]) -> None:
    """OptionError naming the first of `given` that is set: options a network fault does
    not take."""
    for key, value in given.items():
        if value is not None:
            raise OptionError(
                f"{spell(key)} does not apply to a network fault",
                key=key,
                hint=f"remove {spell(key)}",
            )


_NETWORK_OPTIONS: Mapping[NetworkKind, frozenset[str]] = {
    NetworkKind.LOSS: frozenset({"probability", "burst"}),
    NetworkKind.CORRUPT: frozenset({"probability", "bits", "where"}),
    NetworkKind.DELAY: frozenset({"delay", "jitter"}),
    NetworkKind.DUPLICATE: frozenset({"probability"}),
    NetworkKind.REORDER: frozenset({"probability", "delay"}),
    NetworkKind.RATE: frozenset({"bandwidth"}),
    NetworkKind.PARTITION: frozenset({"groups"}),
}
"""The options of each network fault kind beyond where it acts (`link`, `machine`,
`direction`) and when (`trigger`, `period`)."""


def _network_fault(
    target: Target,
    machine: str | None,
    bits: int | str | None,
    probability: float | None,
    period: str | None,
    options: Mapping[str, Any],
    spell: Callable[[str], str],
) -> NetworkFault:
    """The network fault the options describe; OptionError naming the option at fault."""
    kind = NetworkKind(target.name)
    if isinstance(bits, str) and bits.strip().isdigit():
        bits = int(bits)  # the command line gives every option as text
    given = {**options, "bits": bits, "probability": probability}
    if kind is NetworkKind.PARTITION:
        given["machine"] = machine
    for key, value in given.items():
        if value is None or key in _NETWORK_OPTIONS[kind]:
            continue
        if key in ("link", "machine", "direction") and kind is not NetworkKind.PARTITION:
            continue
        allowed = ", ".join(spell(k) for k in sorted(_NETWORK_OPTIONS[kind]))
        raise OptionError(
            f"{spell(key)} does not apply to network:{kind.value}",
            key=key,
            hint=f"network:{kind.value} takes {allowed}"
            + ("" if kind is NetworkKind.PARTITION else f", {spell('link')} or "
               f"{spell('machine')}, {spell('direction')}"),
        )  # fmt: skip
    values: dict[str, Any] = {"kind": kind, "nic": machine}
    if kind is NetworkKind.LOSS and probability is None:
        raise OptionError(
            f"network:loss needs {spell('probability')}",
            key="probability",
            hint=f"e.g. {spell('probability')} 0.1; add {spell('burst')} for bursts",
        )
    if kind is NetworkKind.DELAY and options["delay"] is None:
        raise OptionError(f"network:delay needs {spell('delay')}", key="delay", hint="e.g. 50ms")
    if kind is NetworkKind.RATE and options["bandwidth"] is None:
        raise OptionError(
            f"network:rate needs {spell('bandwidth')}", key="bandwidth", hint="e.g. 1mbit"
        )
    if kind is NetworkKind.PARTITION and not options["groups"]:
        raise OptionError(
            f"network:partition needs {spell('groups')}",
            key="groups",
            hint='e.g. groups = [["client"], ["server"]]',
        )
    if probability is not None:
        if isinstance(probability, bool) or not 0.0 <= probability <= 1.0:
            raise OptionError(
                f"probability {probability} is outside [0, 1]",
                key="probability",
                hint="the share of frames, e.g. 0.1 for 10%",
            )
        values["probability"] = float(probability)
    if options["link"] is not None:
        with _option("link"):
            values["link"] = parse_link(options["link"])
    if options["direction"] is not None:
        try:
            values["direction"] = Direction(str(options["direction"]).strip().lower())
        except ValueError:
            raise OptionError(
                f"invalid {spell('direction')} {options['direction']!r}",
                key="direction",
                hint="allowed: " + ", ".join(Direction),
            ) from None
        if values["direction"] is not Direction.BOTH and options["link"] is None and (
            machine is None
        ):  # fmt: skip
            raise OptionError(
                f"{spell('direction')} needs a {spell('link')} or a {spell('machine')}",
                key="direction",
                hint="in and out are seen from the (first) machine named",
            )
    if options["burst"] is not None:
        values["burst"] = float(options["burst"])
    if bits is not None:
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise OptionError(
                f"{spell('bits')} of network:corrupt is a number of bits, not {bits!r}",
                key="bits",
                hint=f"e.g. {spell('bits')} 1",
            )
        values["bits"] = bits
    if options["where"] is not None:
        try:
            values["where"] = Where(str(options["where"]).strip().lower())
        except ValueError:
            raise OptionError(
                f"invalid {spell('where')} {options['where']!r}",
                key="where",
                hint="allowed: " + ", ".join(Where),
            ) from None
    for key in ("delay", "jitter"):
        if options[key] is not None:
            with _option(key):
                values[f"{key}_s"] = parse_duration_s(options[key])
    if options["bandwidth"] is not None:
        with _option("bandwidth"):
            values["bandwidth_bps"] = parse_bandwidth(options["bandwidth"])
    if options["groups"] is not None:
        groups = options["groups"]
        if isinstance(groups, str) or not all(
            not isinstance(group, str) and all(isinstance(name, str) for name in group)
            for group in groups
        ):
            raise OptionError(
                f"{spell('groups')} must be lists of machine names",
                key="groups",
                hint='e.g. groups = [["client"], ["server"]]',
            )
        values["groups"] = tuple(tuple(group) for group in groups)
    values["duration_s"] = _period_s(period, spell)
    try:
        return NetworkFault(**values)
    except UsageError as error:
        found = (k for word, k in _NETWORK_ERROR_KEYS if word in error.message)
        raise OptionError(error.message, key=next(found, "target"), hint=error.hint) from None


_NETWORK_ERROR_KEYS = (
    ("partition", "groups"), ("burst", "burst"), ("bits", "bits"), ("link", "link"),
    ("delay", "delay"), ("jitter", "jitter"), ("period", "period"),
)  # fmt: skip
"""Which option a `NetworkFault` error is about, by a word of its message."""
