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
  false-positive rate.

Parsing raises UsageError naming the bad text and what is allowed. `FaultSpec.from_options`
builds a spec from the raw options of a campaign `[[faults]]` table or the command line and
owns the rules of which options combine; it raises `OptionError` naming the option at fault.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import enum
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from vmfault.arch import DEFAULT_ARCH, Arch
from vmfault.errors import UsageError
from vmfault.faults.schedule import RateUnit, Schedule, Storm
from vmfault.faults.units import parse_duration_s, parse_ranges

__all__ = [
    "INSTRUCTION_FAMILIES",
    "INSTRUCTION_OPS",
    "MEMORY_REGIONS",
    "OP_CLASSES",
    "REGISTER_GROUPS",
    "REGISTER_SETS",
    "REGISTER_WIDTHS",
    "BitMode",
    "BitModel",
    "Context",
    "FaultSpec",
    "InstructionFault",
    "OptionError",
    "RegisterSet",
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
        widths={
            **dict.fromkeys((*_A64_GPRS, "sp", "pc"), 64),
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
MEMORY_REGIONS = ("ram", "kernel-text", "kernel-data", "process")
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


class TargetKind(enum.StrEnum):
    """What kind of state a fault corrupts."""

    REGISTER = "register"
    MEMORY = "memory"
    KERNEL_CODE = "kernel-code"
    INSTRUCTION = "instruction"
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
        "process|0xADDRESS|0xSTART-0xEND[,...]|@SYMBOL[+OFFSET], kernel-code:hot|FUNCTION, "
        "instruction:OP[@FUNCTION], none (a control run)"
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


@dataclass(frozen=True)
class Trigger:
    """When to inject. Unset `time_s`/`instructions` mean: drawn uniformly over the golden run."""

    kind: TriggerKind = TriggerKind.TIME
    time_s: float | None = None
    location: str = ""
    count: int = 1
    instructions: int | None = None

    ALLOWED = "time, time:20ms, exec:SYMBOL|0xADDR[#N], icount, icount:N"

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

    def __post_init__(self) -> None:
        if self.period_s is not None and self.period_s <= 0:
            raise UsageError(f"period {self.period_s} s is not positive", hint="e.g. period 1s")
        if self.target.kind is TargetKind.NONE:
            self._check_control()
            return
        if self.storm is not None:
            self._check_storm()
            return
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
            target.address is not None
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
        spell: Callable[[str], str] = _same,
        arch: Arch = DEFAULT_ARCH,
    ) -> FaultSpec:
        """The spec that a campaign `[[faults]]` table or the command line describes.

        Options are the user's raw values; None means not given (pass None, not a default,
        for an option the user left out; `context` "any" also counts as not given). The
        target is `target`, or `instruction:OP[@FUNCTION]` from `op` and `function` when
        `target` is None or `"instruction"`. `flips` with `interval` or `rate` (and
        `compression`) makes a storm on a memory region. Registers are `arch`'s.
        OptionError names the first option that is invalid or does not combine; messages
        spell option names with `spell`.
        """
        named = None
        if target is not None and target.strip() != TargetKind.INSTRUCTION.value:
            stormy = flips is not None or interval is not None or rate is not None
            with _option("target"):
                named = _storm_region(target, arch) if stormy else Target.parse(target, arch=arch)
        if target is None and op is None:
            raise OptionError(
                f"give exactly one of {spell('target')} and {spell('op')}",
                key="target",
                hint=f"{spell('target')} register:rip for a register, {spell('op')} fadd for an "
                "instruction result",
            )
        where = Context.ANY if context is None else _context(context, spell)
        if named is not None and named.kind is TargetKind.NONE:
            _check_control_options(
                {
                    "bits": bits, "trigger": trigger,
                    "context": None if where is Context.ANY else where,
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
                probability, trigger, where, spell,
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
        storm = _storm(flips, interval, rate, rate_unit, compression, bits, trigger, where, spell)
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
        with _option("bits"):
            model = BitModel.parse(bits)
        with _option("trigger"):
            when = Trigger.parse(trigger)
        with _option("bits" if storm is None else "target"):
            return cls(named, model, when, where, storm=storm, period_s=period_s, machine=machine)

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
