"""Instruction classes and instruction results: what `--op` counts and what its fault flips (pure).

Classes (x86-64, every encoding: SSE scalar and packed, AVX, x87):

- `fadd`: addsd addss addpd addps haddp* addsubp* (and their `v` forms), fadd faddp fiadd, FMA;
- `fmul`: mulsd mulss mulpd mulps (and `v` forms), fmul fmulp fimul, FMA (an FMA is both);
- `fsub`, `fdiv`: the same for subtraction and division;
- `cmp`: integer `cmp` and the string compares `cmps*`, (v)ucomis*/(v)comis*, the SSE/AVX
  predicate compares (cmpltsd, vcmpeq_uqpd, ...), pcmpeq*/pcmpgt*, and the x87 compares
  (fcom* fucom* ficom* ftst). `test` is not a compare: it is an AND that keeps only flags,
  counted under `int-alu`;
- `xor`: xor, pxor, xorps, xorpd (and `v` forms); `sar`: sar, sarx; `idiv`; `imul`.

Families: `fp` (floating-point arithmetic, compares and conversions; not moves), `int-alu`
(integer arithmetic and logic on general-purpose registers or memory), `load` and `store`
(explicit memory operands read or written, plus the stack's push/call and pop/ret/leave),
`branch` (jumps, calls, returns), `all`.

A result (`Destination`) is what the instruction writes: the XMM lane (the low 64 bits for
`sd`, 32 for `ss`, the whole register for packed forms; a YMM result's low 128 bits), the
general-purpose register (the whole 64-bit register; its default bits are the operand's, e.g.
0-31 for `eax`, 8-15 for `ah`), x87 ST(i) (80 bits), the flags for compares (eflags; the x87
status word for fcom), memory for stores, and rip for branches. Bit positions count from the
register's bit 0 (for a memory result: the operand's first byte).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import capstone
from capstone import x86

from vmfault.arch import DEFAULT_ARCH, Arch
from vmfault.faults.model import (
    INSTRUCTION_FAMILIES,
    OP_CLASSES,
    BitMode,
    BitModel,
    InstructionFault,
)
from vmfault.faults.select import BitChoice
from vmfault.faults.values import ValueFormat, decode_value, format_value, x87_to_float

__all__ = [
    "DEFAULT_FP_BITS",
    "Destination",
    "DestinationKind",
    "Flow",
    "Instruction",
    "MemoryOperand",
    "ValueFormat",
    "choose_instances",
    "choose_result_bits",
    "class_counts",
    "decode",
    "decode_value",
    "format_value",
    "iter_decode",
    "relocated",
    "x87_to_float",
]

# ---------------------------------------------------------------------------- classes


def _with_vex(*names: str) -> frozenset[str]:
    return frozenset(names) | frozenset("v" + name for name in names)


_FMA = re.compile(r"^vf(n?)m(add|sub|addsub|subadd)\d{3}(sd|ss|pd|ps)$")
_FADD = _with_vex("addsd", "addss", "addpd", "addps", "haddpd", "haddps", "addsubpd", "addsubps")
_FADD |= {"fadd", "faddp", "fiadd"}
_FMUL = _with_vex("mulsd", "mulss", "mulpd", "mulps") | {"fmul", "fmulp", "fimul"}
_FSUB = _with_vex("subsd", "subss", "subpd", "subps", "hsubpd", "hsubps")
_FSUB |= {"fsub", "fsubp", "fsubr", "fsubrp", "fisub", "fisubr"}
_FDIV = _with_vex("divsd", "divss", "divpd", "divps")
_FDIV |= {"fdiv", "fdivp", "fdivr", "fdivrp", "fidiv", "fidivr"}
_XOR = {"xor", "vpxord", "vpxorq"} | _with_vex("pxor", "xorps", "xorpd")
_SAR = frozenset({"sar", "sarx"})
_X87_COMPARES = frozenset(
    {"fcom", "fcomp", "fcompp", "fucom", "fucomp", "fucompp", "ficom", "ficomp", "ftst"}
)
_X87_FLAG_COMPARES = frozenset({"fcomi", "fcomip", "fucomi", "fucomip"})
_SCALAR_COMPARES = _with_vex("ucomisd", "ucomiss", "comisd", "comiss")
_STRING_COMPARES = frozenset({"cmpsb", "cmpsw", "cmpsd", "cmpsq"})
_PREDICATE_COMPARE = re.compile(r"^v?cmp[a-z_]*(sd|ss|pd|ps)$")
_PACKED_INT_COMPARE = re.compile(r"^v?pcmp(eq|gt)[bwdq]$")
_FP_OTHER = _with_vex(
    "sqrtsd", "sqrtss", "sqrtpd", "sqrtps", "minsd", "minss", "minpd", "minps", "maxsd",
    "maxss", "maxpd", "maxps", "rcpss", "rcpps", "rsqrtss", "rsqrtps", "roundsd", "roundss",
    "roundpd", "roundps", "dppd", "dpps",
) | {
    "fsqrt", "fabs", "fchs", "frndint", "fscale", "fprem", "fprem1", "fsin", "fcos",
    "fsincos", "fptan", "fpatan", "f2xm1", "fyl2x", "fyl2xp1", "fxtract",
}  # fmt: skip
_FP_CONVERT = re.compile(
    r"^v?cvtt?(s[sd]2s[sdi]|u?si2s[sd]|p[sd]2p[sd]|dq2p[sd]|p[sd]2dq|pi2p[sd]|p[sd]2pi|s[sd]2usi)$"
)
_INT_ALU = frozenset(
    {
        "add", "adc", "sub", "sbb", "inc", "dec", "neg", "not", "and", "or", "xor", "cmp",
        "test", "shl", "sal", "shr", "sar", "rol", "ror", "rcl", "rcr", "shld", "shrd", "imul",
        "mul", "idiv", "div", "bt", "bts", "btr", "btc", "bsf", "bsr", "lzcnt", "tzcnt",
        "popcnt", "andn", "sarx", "shlx", "shrx", "rorx", "bextr", "blsi", "blsr", "blsmsk",
        "adcx", "adox", "bswap", "xadd",
    }
)  # fmt: skip
_X87_STORES = frozenset(
    {
        "fst", "fstp", "fist", "fistp", "fisttp", "fbstp", "fnstsw", "fstsw", "fnstcw",
        "fstcw", "fnstenv", "fstenv", "fnsave", "fsave", "fxsave", "fxsave64",
    }
)  # fmt: skip
_X87_NO_RESULT = frozenset(
    {
        "fldcw", "fnclex", "fclex", "fninit", "finit", "fwait", "wait", "ffree", "ffreep",
        "fincstp", "fdecstp", "fnop", "frstor", "fldenv", "fxrstor", "fxrstor64",
    }
)  # fmt: skip
_FP_MOVES = _with_vex(
    "movsd", "movss", "movapd", "movaps", "movupd", "movups", "movlpd", "movhpd", "movlps",
    "movhps", "movddup", "movsldup", "movshdup", "unpcklpd", "unpckhpd", "unpcklps",
    "unpckhps", "shufpd", "shufps",
)  # fmt: skip
_NOT_MEMORY_ACCESS = frozenset({"lea", "nop"})
_STACK_LOADS = frozenset({"pop", "ret", "leave", "popfq", "popf"})
_STACK_STORES = frozenset({"push", "call", "pushfq", "pushf"})
_TB_ENDING = frozenset(
    {"syscall", "sysenter", "int", "int3", "into", "ud2", "hlt", "pause", "iretq", "iret"}
)
FLAG_BITS: tuple[int, ...] = (0, 2, 4, 6, 7, 11)
"""The status flags of eflags: CF PF AF ZF SF OF."""
FPU_CONDITION_BITS: tuple[int, ...] = (8, 9, 10, 14)
"""The x87 status word's condition codes C0 C1 C2 C3."""


def _is_x87(insn: Any) -> bool:
    return bool(insn.mnemonic.startswith("f") and x86.X86_GRP_FPU in insn.groups)


def _has_vector_operand(insn: Any) -> bool:
    return any(
        op.type == x86.X86_OP_REG and insn.reg_name(op.reg)[:3] in ("xmm", "ymm", "zmm")
        for op in insn.operands
    )


def _op_classes(insn: Any) -> frozenset[str]:
    """The classes (not families) of one decoded instruction."""
    name = insn.mnemonic
    found: set[str] = set()
    if name in _FADD:
        found.add("fadd")
    if name in _FMUL:
        found.add("fmul")
    if name in _FSUB:
        found.add("fsub")
    if name in _FDIV:
        found.add("fdiv")
    if _FMA.match(name):
        found |= {"fadd", "fmul"}
    if name in _XOR:
        found.add("xor")
    if name in _SAR:
        found.add("sar")
    if name == "idiv":
        found.add("idiv")
    if name == "imul":
        found.add("imul")
    if _is_compare(insn):
        found.add("cmp")
    return frozenset(found)


def _is_compare(insn: Any) -> bool:
    name = insn.mnemonic
    if name == "cmp" or name in _SCALAR_COMPARES:
        return True
    if name in _X87_COMPARES or name in _X87_FLAG_COMPARES:
        return True
    if name in _STRING_COMPARES and not _has_vector_operand(insn):
        return True
    if _PACKED_INT_COMPARE.match(name):
        return True
    return bool(_PREDICATE_COMPARE.match(name) and _has_vector_operand(insn))


def _is_fp(insn: Any, classes: frozenset[str]) -> bool:
    name = insn.mnemonic
    if classes & {"fadd", "fmul", "fsub", "fdiv"}:
        return True
    if name in _SCALAR_COMPARES or name in _X87_COMPARES or name in _X87_FLAG_COMPARES:
        return True
    if _PREDICATE_COMPARE.match(name) and _has_vector_operand(insn):
        return True
    return name in _FP_OTHER or bool(_FP_CONVERT.match(name))


def _memory_operands(insn: Any) -> list[Any]:
    return [op for op in insn.operands if op.type == x86.X86_OP_MEM]


def _reads_memory(insn: Any) -> bool:
    name = insn.mnemonic
    if name in _STACK_LOADS:
        return True
    if name in _NOT_MEMORY_ACCESS or name.startswith("prefetch"):
        return False
    memory = _memory_operands(insn)
    if not memory:
        return False
    if _is_x87(insn):
        return name not in _X87_STORES
    return any(op.access & capstone.CS_AC_READ for op in memory) or all(
        op.access == 0 for op in memory
    )


def _writes_memory(insn: Any) -> bool:
    name = insn.mnemonic
    if name in _STACK_STORES:
        return True
    if name in _NOT_MEMORY_ACCESS or name.startswith("prefetch"):
        return False
    memory = _memory_operands(insn)
    if not memory:
        return False
    if _is_x87(insn):
        return name in _X87_STORES
    return any(op.access & capstone.CS_AC_WRITE for op in memory)


_BRANCH_GROUPS = (x86.X86_GRP_JUMP, x86.X86_GRP_CALL, x86.X86_GRP_RET, x86.X86_GRP_IRET)


def _is_branch(insn: Any) -> bool:
    return any(group in insn.groups for group in _BRANCH_GROUPS)


def _families(insn: Any, classes: frozenset[str]) -> frozenset[str]:
    found = {"all"}
    if _is_fp(insn, classes):
        found.add("fp")
    if insn.mnemonic in _INT_ALU and not _has_vector_operand(insn):
        found.add("int-alu")
    if _reads_memory(insn):
        found.add("load")
    if _writes_memory(insn):
        found.add("store")
    if _is_branch(insn):
        found.add("branch")
    return frozenset(found)


# ---------------------------------------------------------------------------- results


class DestinationKind(enum.StrEnum):
    """Where an instruction's result lives."""

    REGISTER = "register"
    MEMORY = "memory"
    NONE = "none"


DEFAULT_FP_BITS: Mapping[ValueFormat, tuple[int, ...]] = {
    ValueFormat.F64: tuple(range(52, 63)),
    ValueFormat.F32: tuple(range(23, 31)),
    ValueFormat.F80: tuple(range(64, 79)),
    ValueFormat.F64X2: tuple(range(52, 63)),
    ValueFormat.F32X4: tuple(range(23, 31)),
}
"""Default bits of floating-point results: the exponent (of the lowest element)."""
_DEFAULT_FP_BITS = DEFAULT_FP_BITS


@dataclass(frozen=True)
class MemoryOperand:
    """A memory operand `segment:[base + index * scale + displacement]` of `size` bytes.

    Register names are the 64-bit general-purpose ones (or `rip`); `segment` is `fs`,
    `gs` or None.
    """

    base: str | None
    index: str | None
    scale: int
    displacement: int
    segment: str | None
    size: int
    address_bits: int = 64
    index_signed32: bool = False
    """The index is a 32-bit register sign-extended (AArch64's `sxtw`)."""

    def address(self, registers: Mapping[str, int], *, next_pc: int) -> int:
        """The virtual address, from the registers before the instruction executes.

        `registers` maps the base, index and `fs_base`/`gs_base` to their values; `next_pc`
        is the address after the instruction (for rip-relative operands).
        """
        value = self.displacement
        if self.base == "rip":
            value += next_pc
        elif self.base is not None:
            value += registers[self.base]
        if self.index is not None:
            index = registers[self.index]
            if self.index_signed32:
                index = (index & 0xFFFFFFFF) - ((index & 0x80000000) << 1)
            value += index * self.scale
        value &= (1 << self.address_bits) - 1
        if self.segment in ("fs", "gs"):
            value += registers[f"{self.segment}_base"]
        return value & ((1 << 64) - 1)

    @property
    def registers(self) -> tuple[str, ...]:
        """The registers `address` needs."""
        names = [name for name in (self.base, self.index) if name not in (None, "rip")]
        if self.segment in ("fs", "gs"):
            names.append(f"{self.segment}_base")
        return tuple(name for name in names if name is not None)


@dataclass(frozen=True)
class Destination:
    """What an instruction writes, as a fault in its result sees it.

    `register` is the gdbstub name of the register holding the result (`rax`, `xmm3`,
    `st1`, `eflags`, `fstat`, `rip`); `width` the bits a fault may flip there (a lane of
    an XMM register: its low `width` bits); `memory` the operand of a memory result;
    `default_bits` the bits one random flip is drawn from when no range is given; `note`
    why a NONE result has nothing to flip.
    """

    kind: DestinationKind
    width: int = 0
    register: str | None = None
    memory: MemoryOperand | None = None
    fmt: ValueFormat = ValueFormat.INT
    default_bits: tuple[int, ...] = ()
    operand: str = ""
    note: str = ""

    @property
    def text(self) -> str:
        """`xmm0[63:0]`, `rax[31:0]` (the operand's own bits), `eflags`, `qword [rbp - 0x10]`."""
        if self.kind is DestinationKind.NONE:
            return "none"
        if self.kind is DestinationKind.MEMORY:
            return self.operand
        assert self.register is not None
        if self.register.startswith(("xmm", "v")) and self.width < 128:
            return f"{self.register}[{self.width - 1}:0]"
        if self.fmt is ValueFormat.INT and self.default_bits and self.width == 64:
            low, high = self.default_bits[0], self.default_bits[-1]
            if (low, high) != (0, 63):
                return f"{self.register}[{high}:{low}]"
        return self.register


_NONE = Destination(DestinationKind.NONE, note="writes no register, flags or memory")

_GPR_NAMES: dict[str, tuple[str, int, int]] = {}
"""Sub-register name -> (64-bit register, first bit, bits)."""
for _legacy in ("a", "b", "c", "d"):
    _GPR_NAMES[f"r{_legacy}x"] = (f"r{_legacy}x", 0, 64)
    _GPR_NAMES[f"e{_legacy}x"] = (f"r{_legacy}x", 0, 32)
    _GPR_NAMES[f"{_legacy}x"] = (f"r{_legacy}x", 0, 16)
    _GPR_NAMES[f"{_legacy}l"] = (f"r{_legacy}x", 0, 8)
    _GPR_NAMES[f"{_legacy}h"] = (f"r{_legacy}x", 8, 8)
for _pair in ("si", "di", "bp", "sp"):
    _GPR_NAMES[f"r{_pair}"] = (f"r{_pair}", 0, 64)
    _GPR_NAMES[f"e{_pair}"] = (f"r{_pair}", 0, 32)
    _GPR_NAMES[_pair] = (f"r{_pair}", 0, 16)
    _GPR_NAMES[f"{_pair}l"] = (f"r{_pair}", 0, 8)
for _number in range(8, 16):
    _GPR_NAMES[f"r{_number}"] = (f"r{_number}", 0, 64)
    _GPR_NAMES[f"r{_number}d"] = (f"r{_number}", 0, 32)
    _GPR_NAMES[f"r{_number}w"] = (f"r{_number}", 0, 16)
    _GPR_NAMES[f"r{_number}b"] = (f"r{_number}", 0, 8)
_GPR_NAMES["rip"] = ("rip", 0, 64)


def _gpr(name: str, operand: str) -> Destination:
    register, first, bits = _GPR_NAMES[name]
    return Destination(
        DestinationKind.REGISTER,
        64,
        register,
        default_bits=tuple(range(first, first + bits)),
        operand=operand,
    )


def _flags(operand: str = "flags") -> Destination:
    return Destination(
        DestinationKind.REGISTER,
        32,
        "eflags",
        fmt=ValueFormat.FLAGS,
        default_bits=FLAG_BITS,
        operand=operand,
    )


def _x87_register(index: int) -> Destination:
    return Destination(
        DestinationKind.REGISTER,
        80,
        f"st{index}",
        fmt=ValueFormat.F80,
        default_bits=_DEFAULT_FP_BITS[ValueFormat.F80],
        operand=f"st({index})",
    )


def _vector_format(name: str, fp_valued: bool) -> tuple[int, ValueFormat]:
    """Width and format of an XMM result of the instruction named `name`."""
    base = name[1:] if name.startswith("v") else name
    if base in ("movq",):
        return 64, ValueFormat.INT
    if base in ("movd",):
        return 32, ValueFormat.INT
    if base.endswith("sd") and not base.endswith("pd"):
        return 64, ValueFormat.F64 if fp_valued else ValueFormat.INT
    if base.endswith("ss"):
        return 32, ValueFormat.F32 if fp_valued else ValueFormat.INT
    if not fp_valued:
        return 128, ValueFormat.INT
    if base.endswith("pd") or base in ("movddup",):
        return 128, ValueFormat.F64X2
    return 128, ValueFormat.F32X4


def _memory(insn: Any, op: Any, fp_valued: bool, vector_source: bool) -> Destination:
    def gpr_name(reg: int) -> str | None:
        if not reg:
            return None
        name = insn.reg_name(reg)
        return "rip" if name in ("rip", "eip") else _GPR_NAMES[name][0]

    segment = insn.reg_name(op.mem.segment) if op.mem.segment else None
    base_name = insn.reg_name(op.mem.base) if op.mem.base else ""
    operand = MemoryOperand(
        base=gpr_name(op.mem.base),
        index=gpr_name(op.mem.index),
        scale=op.mem.scale,
        displacement=op.mem.disp,
        segment=segment if segment in ("fs", "gs") else None,
        size=op.size,
        address_bits=32 if base_name.startswith("e") else 64,
    )
    fmt = ValueFormat.INT
    if fp_valued:
        if _is_x87(insn) and insn.mnemonic in ("fst", "fstp"):
            fmt = {4: ValueFormat.F32, 8: ValueFormat.F64, 10: ValueFormat.F80}.get(
                op.size, ValueFormat.INT
            )
        elif vector_source:
            _, fmt = _vector_format(insn.mnemonic, True)
            if op.size == 8 and fmt is ValueFormat.F64X2:
                fmt = ValueFormat.F64
            if op.size == 4 and fmt is ValueFormat.F32X4:
                fmt = ValueFormat.F32
    bits = op.size * 8
    text = insn.op_str.split(", ")[0] if insn.op_str else ""
    return Destination(
        DestinationKind.MEMORY,
        bits,
        memory=operand,
        fmt=fmt,
        default_bits=_DEFAULT_FP_BITS.get(fmt, tuple(range(bits))),
        operand=text,
    )


def _x87_destination(insn: Any) -> Destination:
    name = insn.mnemonic
    registers = [
        int(insn.reg_name(op.reg)[3])
        for op in insn.operands
        if op.type == x86.X86_OP_REG and insn.reg_name(op.reg).startswith("st(")
    ]
    memory = _memory_operands(insn)
    if name in _X87_NO_RESULT:
        return Destination(DestinationKind.NONE, note=f"{name} changes no x87 data register")
    if name in _X87_FLAG_COMPARES:
        return _flags()
    if name in _X87_COMPARES:
        return Destination(
            DestinationKind.REGISTER,
            16,
            "fstat",
            fmt=ValueFormat.FLAGS,
            default_bits=FPU_CONDITION_BITS,
            operand="x87 status word",
        )
    if name in ("fnstsw", "fstsw") and not memory:
        return _gpr("ax", "ax")
    if name in _X87_STORES:
        if memory:
            return _memory(insn, memory[0], True, False)
        if registers:  # fst/fstp st(i): the copy, after fstp's pop one register up
            index = registers[0] - (1 if name.endswith("p") else 0)
            return _x87_register(max(index, 0))
    if name.endswith("p") and registers and registers[0] >= 1:
        return _x87_register(registers[0] - 1)  # the result, after the pop
    if len(registers) == 2 and registers[0] >= 1:
        return _x87_register(registers[0])
    return _x87_register(0)


def _written_register(insn: Any) -> str | None:
    """A general-purpose or vector register the instruction writes implicitly."""
    skip = {"rflags", "eflags", "flags", "rsp", "esp", "rip", "fpsw"}
    if insn.mnemonic.startswith(("movs", "stos", "lods", "scas", "cmps", "rep")):
        skip |= {"rsi", "rdi", "rcx", "esi", "edi", "ecx"}
    for reg in insn.regs_access()[1]:
        name = insn.reg_name(reg)
        if name not in skip and (name in _GPR_NAMES or name[:3] in ("xmm", "ymm")):
            return str(name)
    return None


def _destination(insn: Any, classes: frozenset[str], families: frozenset[str]) -> Destination:
    name = insn.mnemonic
    fp_valued = ("fp" in families or name in _FP_MOVES) and "cmp" not in classes
    if _is_x87(insn):
        return _x87_destination(insn)
    if "cmp" in classes and not _has_vector_operand(insn):
        return _flags()
    if name in _SCALAR_COMPARES:
        return _flags()
    if "branch" in families:
        return Destination(
            DestinationKind.REGISTER, 64, "rip", default_bits=tuple(range(64)), operand="rip"
        )
    if name in ("push", "pushfq", "pushf"):
        stack = MemoryOperand("rsp", None, 1, -8, None, 8)
        return Destination(
            DestinationKind.MEMORY,
            64,
            memory=stack,
            default_bits=tuple(range(64)),
            operand="qword ptr [rsp]",
        )
    vector_source = _has_vector_operand(insn)
    for op in insn.operands:
        if not op.access & capstone.CS_AC_WRITE:
            continue
        if op.type == x86.X86_OP_MEM:
            return _memory(insn, op, fp_valued, vector_source)
        if op.type == x86.X86_OP_REG:
            return _register(insn, insn.reg_name(op.reg), fp_valued)
    implicit = _written_register(insn)
    if implicit is not None:
        return _register(insn, implicit, fp_valued)
    if any(insn.reg_name(reg) in ("rflags", "eflags") for reg in insn.regs_access()[1]):
        return _flags()
    return _NONE


def _register(insn: Any, name: str, fp_valued: bool) -> Destination:
    if name in _GPR_NAMES:
        return _gpr(name, name)
    if name[:3] in ("xmm", "ymm", "zmm"):
        register = "xmm" + name[3:]
        width, fmt = _vector_format(insn.mnemonic, fp_valued)
        default = _DEFAULT_FP_BITS.get(fmt, tuple(range(width)))
        return Destination(
            DestinationKind.REGISTER, width, register, fmt=fmt, default_bits=default, operand=name
        )
    return Destination(DestinationKind.NONE, note=f"its result register {name} is not faultable")


# ---------------------------------------------------------------------------- decoding


class Flow(enum.StrEnum):
    """How control leaves an instruction."""

    NEXT = "next"
    JUMP = "jump"
    """Unconditional direct jump."""
    CONDITIONAL = "conditional"
    CALL = "call"
    RETURN = "return"
    INDIRECT = "indirect"
    """Jump or call through a register or memory."""
    REPEAT = "repeat"
    """A rep-prefixed string instruction: it may execute again at the same address."""
    TRAP = "trap"
    """syscall, int, hlt, pause ...: the emulator ends its translation block there."""

    @property
    def ends_block(self) -> bool:
        """Whether the emulator ends a translation block with this instruction."""
        return self is not Flow.NEXT


@dataclass(frozen=True)
class Instruction:
    """One decoded instruction: where it is, its classes and families, and its result.

    `classes` holds the class names (`fadd`, ...) and the family names (`fp`, `all`, ...)
    it belongs to. `targets` are the direct branch targets.
    """

    address: int
    size: int
    mnemonic: str
    operands: str
    classes: frozenset[str]
    destination: Destination
    flow: Flow
    targets: tuple[int, ...] = ()

    @property
    def text(self) -> str:
        """The disassembly, `addsd xmm0, xmm1`."""
        return f"{self.mnemonic} {self.operands}".strip()

    @property
    def end(self) -> int:
        """The address after the instruction."""
        return self.address + self.size

    def successors(self) -> tuple[int, ...] | None:
        """Addresses control may go to next; None when unknown (returns, indirect jumps)."""
        if self.flow in (Flow.RETURN, Flow.INDIRECT, Flow.TRAP):
            return None
        if self.flow is Flow.JUMP:
            return self.targets
        if self.flow is Flow.REPEAT:
            return (self.address, self.end)
        if self.flow in (Flow.CONDITIONAL, Flow.CALL):
            return (*self.targets, self.end)
        return (self.end,)


def _flow(insn: Any) -> tuple[Flow, tuple[int, ...]]:
    groups = insn.groups
    immediates = tuple(int(op.imm) for op in insn.operands if op.type == x86.X86_OP_IMM)
    direct = bool(immediates) and x86.X86_GRP_BRANCH_RELATIVE in groups
    targets = immediates if direct else ()
    if x86.X86_GRP_RET in groups or x86.X86_GRP_IRET in groups:
        return Flow.RETURN, ()
    if x86.X86_GRP_CALL in groups:
        return (Flow.CALL, targets) if direct else (Flow.INDIRECT, ())
    if x86.X86_GRP_JUMP in groups:
        if not direct:
            return Flow.INDIRECT, ()
        return (Flow.JUMP, targets) if insn.mnemonic == "jmp" else (Flow.CONDITIONAL, targets)
    string = insn.mnemonic.split()[-1].startswith(
        ("movs", "stos", "lods", "scas", "cmps", "ins", "outs")
    )
    if string and insn.prefix[0] in (0xF2, 0xF3) and not _has_vector_operand(insn):
        return Flow.REPEAT, ()
    if insn.mnemonic in _TB_ENDING or x86.X86_GRP_INT in groups:
        return Flow.TRAP, ()
    return Flow.NEXT, ()


@functools.cache
def _disassembler() -> Any:
    engine = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    engine.detail = True
    return engine


def _instruction(insn: Any) -> Instruction:
    classes = _op_classes(insn)
    families = _families(insn, classes)
    flow, targets = _flow(insn)
    return Instruction(
        address=int(insn.address),
        size=int(insn.size),
        mnemonic=str(insn.mnemonic),
        operands=str(insn.op_str),
        classes=classes | families,
        destination=_destination(insn, classes, families),
        flow=flow,
        targets=targets,
    )


def iter_decode(code: bytes, address: int, *, arch: Arch = DEFAULT_ARCH) -> Iterator[Instruction]:
    """Decode `code` of `arch` (x86-64; aarch64: `vmfault.faults.instructions_a64`) placed
    at `address` lazily, up to the first invalid instruction."""
    if arch is Arch.AARCH64:
        # The AArch64 decoder builds on this module's types, so it is imported here.
        from vmfault.faults.instructions_a64 import iter_decode_a64  # noqa: PLC0415

        yield from iter_decode_a64(code, address)
        return
    for insn in _disassembler().disasm(code, address):
        yield _instruction(insn)


def relocated(insn: Instruction, base: int) -> Instruction:
    """`insn` loaded `base` bytes higher (a PIE's load base): address and direct targets."""
    if base == 0:
        return insn
    return dataclasses.replace(
        insn, address=insn.address + base, targets=tuple(t + base for t in insn.targets)
    )


def decode(code: bytes, address: int, *, arch: Arch = DEFAULT_ARCH) -> tuple[Instruction, ...]:
    """Every instruction of `arch`'s `code` placed at `address`, up to the first invalid one."""
    return tuple(iter_decode(code, address, arch=arch))


def class_counts(instructions: Sequence[Instruction], counts: Mapping[int, int]) -> dict[str, int]:
    """Dynamic counts per class and family, from per-address execution counts.

    Every class and family is present (0 when none executed); an instruction in two
    classes (an FMA) counts in both, a family counts each instruction once.
    """
    totals = dict.fromkeys((*OP_CLASSES, *INSTRUCTION_FAMILIES), 0)
    for insn in instructions:
        hits = counts.get(insn.address, 0)
        if hits:
            for name in insn.classes:
                totals[name] += hits
    return totals


# ---------------------------------------------------------------------------- choices


def choose_result_bits(model: BitModel, destination: Destination, rng: random.Random) -> BitChoice:
    """The bits `model` changes in `destination`'s result.

    Without positions or a range, bits are drawn from the result's default bits (the
    exponent of a floating-point result, the operand's bits, the status flags). Raises
    ValueError with a one-line reason if the model does not fit the result.
    """
    width = destination.width
    where = f"the {width}-bit result {destination.text}"
    if destination.kind is DestinationKind.NONE or width == 0:
        raise ValueError(f"the instruction has no result to corrupt: {destination.note}")
    if model.mode is BitMode.VALUE:
        return BitChoice((1 << width) - 1, model.mode, width, model.value)
    if model.positions:
        outside = [p for p in model.positions if p >= width]
        if outside:
            raise ValueError(f"bit {outside[0]} is outside {where}")
        return BitChoice(sum(1 << p for p in model.positions), model.mode, width)
    if model.low is not None or model.high is not None:
        low = model.low or 0
        high = width - 1 if model.high is None else model.high
        if high >= width:
            raise ValueError(f"bits {low}-{high} reach beyond {where}")
        candidates: tuple[int, ...] = tuple(range(low, high + 1))
    else:
        candidates = destination.default_bits or tuple(range(width))
    if model.count > len(candidates):
        raise ValueError(f"cannot choose {model.count} bits from {len(candidates)} in {where}")
    if model.mode is BitMode.BURST:
        start = rng.randrange(len(candidates) - model.count + 1)
        picked = candidates[start : start + model.count]
    else:
        picked = tuple(rng.sample(candidates, model.count))
    return BitChoice(sum(1 << p for p in picked), model.mode, width)


def choose_instances(
    fault: InstructionFault, *, executed: int | None, rng: random.Random
) -> tuple[int, ...]:
    """The dynamic instances (from 1, ascending) one run of `fault` corrupts.

    `executed` is how many instances the golden run executed (None: unknown); the span
    `start_index`..`max_dic` is capped at it. Raises ValueError if the span is unknown
    (no `max_dic` and no golden count) or empty.
    """
    if fault.instance is not None:
        return (fault.instance,)
    high = fault.max_dic
    if executed is not None:
        high = executed if high is None else min(high, executed)
    if high is None:
        raise ValueError("the span of instances needs max_dic or the golden run's count")
    low = fault.start_index
    if high < low:
        raise ValueError(
            f"the golden run executes {executed} {fault.op} instances, "
            f"none from start index {low} on"
        )
    if fault.probability is not None:
        chance = fault.probability
        return tuple(i for i in range(low, high + 1) if rng.random() < chance)
    span = range(low, high + 1)
    return tuple(sorted(rng.sample(span, min(fault.faults_per_run, len(span)))))
