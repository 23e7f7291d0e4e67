"""AArch64 instruction classes and results, for the same faults as on x86-64 (pure).

Decoded with capstone's AArch64 engine into the same `Instruction` values as x86-64
(`vmfault.faults.instructions`), with the same class and family names:

- `fadd`: fadd faddp, and the fused multiply-adds fmadd fmsub fnmadd fnmsub fmla fmls
  (which are `fmul` too, as x86's FMA is); `fmul`: fmul fmulx fnmul and those FMAs;
  `fsub`: fsub; `fdiv`: fdiv;
- `cmp`: the integer compares cmp cmn ccmp ccmn, the floating-point ones fcmp fcmpe fccmp
  fccmpe (F-SEFI's fcmp), and the vector compares cm* fcm* fac* (not `tst` or `cmtst`,
  which are ANDs, as x86's `test` is not a compare);
- `xor`: eor eon; `sar`: asr asrv; `idiv`: sdiv; `imul`: mul madd msub mneg smull
  smaddl smsubl smnegl smulh (the low half of a product is the same signed or not);
- families: `fp` (floating-point arithmetic, compares and conversions, not fmov),
  `int-alu` (integer arithmetic, logic, shifts, bit fields, conditional selects on
  general-purpose registers), `load` and `store` (ld*/st*, the LSE atomics and swp/cas
  both), `branch` (b, b.cond, bl, br, blr, ret, cbz, cbnz, tbz, tbnz), `all`.

Results: the general-purpose register written (its x name: a w result's default bits are
0-31, a write to xzr/wzr has none), sp, the SIMD&FP register (`v0`..`v31`, whose low 64
bits are a d result, 32 an s result, the whole register a full vector), the NZCV flags
(bits 28-31 of `cpsr`) for compares, memory for stores (its address from the base and
index registers before the instruction runs; post-indexed stores write at the base), and
`pc` for branches.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from typing import Any

import capstone
from capstone import arm64

from vmfault.faults.instructions import (
    DEFAULT_FP_BITS,
    Destination,
    DestinationKind,
    Flow,
    Instruction,
    MemoryOperand,
)
from vmfault.faults.values import ValueFormat

__all__ = ["NZCV_BITS", "iter_decode_a64"]

NZCV_BITS: tuple[int, ...] = (28, 29, 30, 31)
"""The condition flags V C Z N in the PSTATE (`cpsr` to the gdbstub)."""

_FMA = frozenset({"fmadd", "fmsub", "fnmadd", "fnmsub", "fmla", "fmls"})
_FADD = frozenset({"fadd", "faddp"}) | _FMA
_FMUL = frozenset({"fmul", "fmulx", "fnmul"}) | _FMA
_FSUB = frozenset({"fsub"})
_FDIV = frozenset({"fdiv"})
_INT_COMPARES = frozenset({"cmp", "cmn", "ccmp", "ccmn"})
_FP_COMPARES = frozenset({"fcmp", "fcmpe", "fccmp", "fccmpe"})
_VECTOR_COMPARE = re.compile(r"^(cm(eq|ge|gt|hi|hs|le|lt)|fcm(eq|ge|gt|le|lt)|fac(ge|gt))$")
_XOR = frozenset({"eor", "eon"})
_SAR = frozenset({"asr", "asrv"})
_IDIV = frozenset({"sdiv"})
_IMUL = frozenset({"mul", "madd", "msub", "mneg", "smull", "smaddl", "smsubl", "smnegl", "smulh"})
_FP_OTHER = re.compile(
    r"^(fabs|fneg|fsqrt|fabd|fmaxn?m?[pv]?|fminn?m?[pv]?|frint[a-z]|fcvt[a-z]*|[su]cvtf|"
    r"frecp[esx]|frsqrt[es]|fcsel)$"
)
_INT_ALU = frozenset(
    {
        "add", "adds", "sub", "subs", "cmp", "cmn", "neg", "negs", "adc", "adcs", "sbc", "sbcs",
        "ngc", "ngcs", "and", "ands", "tst", "orr", "orn", "eor", "eon", "bic", "bics", "mvn",
        "lsl", "lslv", "lsr", "lsrv", "asr", "asrv", "ror", "rorv", "mul", "madd", "msub",
        "mneg", "smull", "smaddl", "smsubl", "smnegl", "smulh", "umull", "umaddl", "umsubl",
        "umnegl", "umulh", "sdiv", "udiv", "clz", "cls", "rbit", "rev", "rev16", "rev32",
        "ccmp", "ccmn", "csel", "csinc", "csinv", "csneg", "cset", "csetm", "cinc", "cinv",
        "cneg", "ubfx", "sbfx", "ubfiz", "sbfiz", "bfi", "bfxil", "bfc", "bfm", "sbfm", "ubfm",
        "extr", "sxtb", "sxth", "sxtw", "uxtb", "uxth",
    }
)  # fmt: skip
_ATOMIC = re.compile(r"^(ld(add|clr|eor|set|smax|smin|umax|umin)|swp|cas|casp)[al]*[bh]?$")
_BRANCHES = frozenset({"b", "bl", "br", "blr", "ret", "cbz", "cbnz", "tbz", "tbnz", "eret"})
_TRAPS = frozenset({"svc", "hvc", "smc", "brk", "hlt", "udf", "wfi", "wfe", "isb", "yield"})
_NO_PREFETCH = frozenset({"prfm", "prfum"})
_FP_CARRIERS = frozenset({"ldr", "ldur", "ldp", "ldnp", "fmov"})
"""Moves whose d or s result is a float as much as their source (x86's movsd)."""
_GPR_ALIASES = {"fp": "x29", "lr": "x30"}
_SIZE_BY_PREFIX = {"x": 8, "w": 4, "q": 16, "d": 8, "s": 4, "h": 2, "b": 1}
_FULL_VECTORS = frozenset(
    {arm64.ARM64_VAS_16B, arm64.ARM64_VAS_8H, arm64.ARM64_VAS_4S, arm64.ARM64_VAS_2D}
)


def _is_vector(insn: Any) -> bool:
    return any(
        op.type == arm64.ARM64_OP_REG and insn.reg_name(op.reg)[:1] in "vq" for op in insn.operands
    )


def _op_classes(name: str) -> frozenset[str]:
    found: set[str] = set()
    for cls, names in (
        ("fadd", _FADD),
        ("fmul", _FMUL),
        ("fsub", _FSUB),
        ("fdiv", _FDIV),
        ("xor", _XOR),
        ("sar", _SAR),
        ("idiv", _IDIV),
        ("imul", _IMUL),
    ):
        if name in names:
            found.add(cls)
    if name in _INT_COMPARES or name in _FP_COMPARES or _VECTOR_COMPARE.match(name):
        found.add("cmp")
    return frozenset(found)


def _base(name: str) -> str:
    """A mnemonic without its condition (`b.le` -> `b`)."""
    return name.split(".", 1)[0]


def _is_load(name: str) -> bool:
    return name.startswith("ld") or bool(_ATOMIC.match(name))


def _is_store(name: str) -> bool:
    return name.startswith("st") or bool(_ATOMIC.match(name))


def _families(insn: Any, classes: frozenset[str]) -> frozenset[str]:
    name = insn.mnemonic
    found = {"all"}
    fp_compare = name in _FP_COMPARES or name.startswith(("fcm", "fac"))
    if classes & {"fadd", "fmul", "fsub", "fdiv"} or fp_compare or _FP_OTHER.match(name):
        found.add("fp")
    if name in _INT_ALU and not _is_vector(insn):
        found.add("int-alu")
    if name not in _NO_PREFETCH:
        if _is_load(name):
            found.add("load")
        if _is_store(name):
            found.add("store")
    if _base(name) in _BRANCHES:
        found.add("branch")
    return frozenset(found)


def _gpr(name: str) -> str | None:
    """The gdbstub name of a general-purpose register operand (None for the zero register)."""
    name = _GPR_ALIASES.get(name, name)
    if name in ("xzr", "wzr"):
        return None
    if name in ("sp", "wsp"):
        return "sp"
    if name[:1] in "xw" and name[1:].isdigit():
        return f"x{name[1:]}"
    return None


def _register_destination(insn: Any, op: Any, float_result: bool) -> Destination:
    name = _GPR_ALIASES.get(insn.reg_name(op.reg), insn.reg_name(op.reg))
    if name in ("xzr", "wzr"):
        return Destination(DestinationKind.NONE, note="its result goes to the zero register")
    gpr = _gpr(name)
    if gpr is not None:
        bits = 32 if name[:1] == "w" else 64
        return Destination(
            DestinationKind.REGISTER, 64, gpr, default_bits=tuple(range(bits)), operand=name
        )
    prefix, number = name[:1], name[1:]
    if prefix in "qdshbv" and number.isdigit():
        register = f"v{number}"
        if prefix == "v":
            full = op.vas in _FULL_VECTORS or op.vas == arm64.ARM64_VAS_INVALID
            width = 128 if full else 64
            fmt = ValueFormat.INT
            if float_result and op.vas == arm64.ARM64_VAS_2D:
                fmt = ValueFormat.F64X2
            elif float_result and op.vas == arm64.ARM64_VAS_4S:
                fmt = ValueFormat.F32X4
        else:
            width = _SIZE_BY_PREFIX[prefix] * 8
            fmt = {"d": ValueFormat.F64, "s": ValueFormat.F32}.get(prefix, ValueFormat.INT)
            if not float_result:
                fmt = ValueFormat.INT
        return Destination(
            DestinationKind.REGISTER,
            width,
            register,
            fmt=fmt,
            default_bits=DEFAULT_FP_BITS.get(fmt, tuple(range(width))),
            operand=name,
        )
    return Destination(DestinationKind.NONE, note=f"its result register {name} is not faultable")


def _flags(operand: str = "nzcv") -> Destination:
    return Destination(
        DestinationKind.REGISTER,
        32,
        "cpsr",
        fmt=ValueFormat.FLAGS,
        default_bits=NZCV_BITS,
        operand=operand,
    )


def _store_size(insn: Any, data: list[Any]) -> int:
    name = insn.mnemonic
    stem = name.rstrip("p") if name in ("stp", "stnp") else name
    if stem.endswith("b") and not stem.startswith("stp"):
        size = 1
    elif stem.endswith("h"):
        size = 2
    else:
        first = insn.reg_name(data[0].reg) if data else "x"
        size = _SIZE_BY_PREFIX.get(first[:1], 8)
    return size * (2 if name in ("stp", "stnp") else 1)


def _memory_destination(insn: Any) -> Destination:
    name = insn.mnemonic
    memory = [op for op in insn.operands if op.type == arm64.ARM64_OP_MEM]
    registers = [op for op in insn.operands if op.type == arm64.ARM64_OP_REG]
    if not memory or name.startswith("st1") or name[:3] in ("st2", "st3", "st4"):
        return Destination(DestinationKind.NONE, note=f"{name} stores a vector structure")
    op = memory[0]
    data = registers[1:] if name.startswith(("stxr", "stlxr", "stxp", "stlxp")) else registers
    size = _store_size(insn, data)
    base = _gpr(insn.reg_name(op.mem.base)) if op.mem.base else None
    index = _gpr(insn.reg_name(op.mem.index)) if op.mem.index else None
    index_name = insn.reg_name(op.mem.index) if op.mem.index else ""
    displacement = 0 if getattr(insn, "post_index", False) else int(op.mem.disp)
    operand = MemoryOperand(
        base=base,
        index=index,
        scale=1 << op.shift.value if op.shift.type == arm64.ARM64_SFT_LSL else 1,
        displacement=displacement,
        segment=None,
        size=size,
        index_signed32=index_name.startswith("w") and op.ext == arm64.ARM64_EXT_SXTW,
    )
    first = insn.reg_name(data[0].reg) if data else "x"
    fmt = ValueFormat.INT
    if first[:1] in "ds" and size in (4, 8):  # a float register stored whole
        fmt = ValueFormat.F64 if size == 8 else ValueFormat.F32
    bits = size * 8
    text = insn.op_str.split(", [", 1)
    return Destination(
        DestinationKind.MEMORY,
        bits,
        memory=operand,
        fmt=fmt,
        default_bits=DEFAULT_FP_BITS.get(fmt, tuple(range(bits))),
        operand="[" + text[1] if len(text) == 2 else insn.op_str,
    )


def _destination(insn: Any, classes: frozenset[str], families: frozenset[str]) -> Destination:
    name = insn.mnemonic
    float_result = "fp" in families or name in _FP_CARRIERS
    if "cmp" in classes and not _is_vector(insn):
        return _flags()
    if "branch" in families:
        return Destination(
            DestinationKind.REGISTER, 64, "pc", default_bits=tuple(range(64)), operand="pc"
        )
    if "store" in families and "load" not in families:
        return _memory_destination(insn)
    for op in insn.operands:
        if op.type == arm64.ARM64_OP_REG and op.access & capstone.CS_AC_WRITE:
            return _register_destination(insn, op, float_result)
    if "nzcv" in (insn.reg_name(r) for r in insn.regs_access()[1]):
        return _flags()
    return Destination(DestinationKind.NONE, note=f"{name} writes no register, flags or memory")


def _flow(insn: Any) -> tuple[Flow, tuple[int, ...]]:
    name = _base(insn.mnemonic)
    immediates = tuple(int(op.imm) for op in insn.operands if op.type == arm64.ARM64_OP_IMM)
    if name in ("ret", "eret", "retaa", "retab"):
        return Flow.RETURN, ()
    if name in ("br", "blr", "braa", "brab", "blraa", "blrab"):
        return Flow.INDIRECT, ()
    if name == "bl":
        return Flow.CALL, immediates[-1:]
    if insn.mnemonic == "b":
        return Flow.JUMP, immediates[-1:]
    if name in ("b", "cbz", "cbnz", "tbz", "tbnz"):
        return Flow.CONDITIONAL, immediates[-1:]
    if name in _TRAPS:
        return Flow.TRAP, ()
    return Flow.NEXT, ()


@functools.cache
def _disassembler() -> Any:
    engine = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    engine.detail = True
    return engine


def _instruction(insn: Any) -> Instruction:
    classes = _op_classes(insn.mnemonic)
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


def iter_decode_a64(code: bytes, address: int) -> Iterator[Instruction]:
    """Decode AArch64 `code` placed at `address` lazily, up to the first invalid word."""
    for insn in _disassembler().disasm(code, address):
        yield _instruction(insn)
