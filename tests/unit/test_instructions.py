"""Instruction classes, results and choices, on x86-64 byte strings (no VM)."""

from __future__ import annotations

import math
import random
import struct

import pytest

from vmfault.errors import UsageError
from vmfault.faults import BitModel, FaultSpec, InstructionFault, Target, TargetKind, canonical_op
from vmfault.faults.instructions import (
    FLAG_BITS,
    DestinationKind,
    Flow,
    Instruction,
    ValueFormat,
    choose_instances,
    choose_result_bits,
    class_counts,
    decode,
    decode_value,
    format_value,
    relocated,
    x87_to_float,
)

ADDRESS = 0x1000


def one(code: str) -> Instruction:
    decoded = decode(bytes.fromhex(code), ADDRESS)
    assert len(decoded) == 1, decoded
    return decoded[0]


def classes(code: str) -> set[str]:
    return set(one(code).classes) - {"all"}


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        ("f20f58c1", "addsd xmm0, xmm1", {"fadd", "fp"}),
        ("f30f58ca", "addss xmm1, xmm2", {"fadd", "fp"}),
        ("0f58ca", "addps xmm1, xmm2", {"fadd", "fp"}),
        ("c5e358d4", "vaddsd xmm2, xmm3, xmm4", {"fadd", "fp"}),
        ("c5e558d4", "vaddpd ymm2, ymm3, ymm4", {"fadd", "fp"}),
        ("d8c3", "fadd st(3)", {"fadd", "fp"}),
        ("dec1", "faddp st(1)", {"fadd", "fp"}),
        ("da00", "fiadd dword ptr [rax]", {"fadd", "fp", "load"}),
        ("f20f59c1", "mulsd xmm0, xmm1", {"fmul", "fp"}),
        ("dec9", "fmulp st(1)", {"fmul", "fp"}),
        ("c4e2f1b9c2", "vfmadd231sd xmm0, xmm1, xmm2", {"fadd", "fmul", "fp"}),
        ("f20f5cc1", "subsd xmm0, xmm1", {"fsub", "fp"}),
        ("f20f5ec1", "divsd xmm0, xmm1", {"fdiv", "fp"}),
        ("837dfc09", "cmp dword ptr [rbp - 4], 9", {"cmp", "int-alu", "load"}),
        ("39d8", "cmp eax, ebx", {"cmp", "int-alu"}),
        ("85c0", "test eax, eax", {"int-alu"}),
        ("660f2ec1", "ucomisd xmm0, xmm1", {"cmp", "fp"}),
        ("f20fc2c101", "cmpltsd xmm0, xmm1", {"cmp", "fp"}),
        ("a7", "cmpsd dword ptr [rsi], dword ptr [rdi]", {"cmp", "load"}),
        ("660f74c1", "pcmpeqb xmm0, xmm1", {"cmp"}),
        ("dbf1", "fcomi st(1)", {"cmp", "fp"}),
        ("31c0", "xor eax, eax", {"xor", "int-alu"}),
        ("660fefc0", "pxor xmm0, xmm0", {"xor"}),
        ("0f57c9", "xorps xmm1, xmm1", {"xor"}),
        ("c1f803", "sar eax, 3", {"sar", "int-alu"}),
        ("d17df8", "sar dword ptr [rbp - 8], 1", {"sar", "int-alu", "load", "store"}),
        ("c4e272f7c3", "sarx eax, ebx, ecx", {"sar", "int-alu"}),
        ("f7f9", "idiv ecx", {"idiv", "int-alu"}),
        ("0fafc2", "imul eax, edx", {"imul", "int-alu"}),
        ("48f7eb", "imul rbx", {"imul", "int-alu"}),
        ("55", "push rbp", {"store"}),
        ("5b", "pop rbx", {"load"}),
        ("f20f1145f0", "movsd qword ptr [rbp - 0x10], xmm0", {"store"}),
        ("f20f1045f0", "movsd xmm0, qword ptr [rbp - 0x10]", {"load"}),
        ("dd18", "fstp qword ptr [rax]", {"store"}),
        ("dd00", "fld qword ptr [rax]", {"load"}),
        ("488d44cb10", "lea rax, [rbx + rcx*8 + 0x10]", set()),
        ("0f1f00", "nop dword ptr [rax]", set()),
        ("7e0e", "jle 0x1010", {"branch"}),
        ("e81b000000", "call 0x1020", {"branch", "store"}),
        ("c3", "ret", {"branch", "load"}),
        ("ffe0", "jmp rax", {"branch"}),
        ("f20f2ac0", "cvtsi2sd xmm0, eax", {"fp"}),
        ("f20f51c1", "sqrtsd xmm0, xmm1", {"fp"}),
    ],
)
def test_every_form_lands_in_its_class(code: str, text: str, expected: set[str]) -> None:
    insn = one(code)
    assert insn.text == text
    assert classes(code) == expected
    assert "all" in insn.classes


@pytest.mark.parametrize(
    ("code", "register", "width", "fmt", "default"),
    [
        ("f20f58c1", "xmm0", 64, ValueFormat.F64, (52, 62)),  # addsd: the low lane
        ("f30f58ca", "xmm1", 32, ValueFormat.F32, (23, 30)),  # addss
        ("0f58ca", "xmm1", 128, ValueFormat.F32X4, (23, 30)),  # addps: the whole register
        ("c5e558d4", "xmm2", 128, ValueFormat.F64X2, (52, 62)),  # ymm: its low 128 bits
        ("d8c3", "st0", 80, ValueFormat.F80, (64, 78)),  # fadd st(0), st(3)
        ("dcc3", "st3", 80, ValueFormat.F80, (64, 78)),  # fadd st(3), st(0)
        ("dec1", "st0", 80, ValueFormat.F80, (64, 78)),  # faddp: st(1) popped into st(0)
        ("837dfc09", "eflags", 32, ValueFormat.FLAGS, (0, 11)),
        ("660f2ec1", "eflags", 32, ValueFormat.FLAGS, (0, 11)),
        ("d8d9", "fstat", 16, ValueFormat.FLAGS, (8, 14)),  # fcomp: the condition codes
        ("0fafc2", "rax", 64, ValueFormat.INT, (0, 31)),  # imul eax: the operand's bits
        ("48f7eb", "rax", 64, ValueFormat.INT, (0, 63)),  # imul rbx: rdx:rax, low half
        ("f6fb", "rax", 64, ValueFormat.INT, (0, 7)),  # idiv bl: the quotient al
        ("b403", "rax", 64, ValueFormat.INT, (8, 15)),  # mov ah: bits 8-15 of rax
        ("7e0e", "rip", 64, ValueFormat.INT, (0, 63)),
    ],
)
def test_register_results(
    code: str, register: str, width: int, fmt: ValueFormat, default: tuple[int, int]
) -> None:
    destination = one(code).destination
    assert destination.kind is DestinationKind.REGISTER
    assert (destination.register, destination.width, destination.fmt) == (register, width, fmt)
    assert (destination.default_bits[0], destination.default_bits[-1]) == default


def test_flag_results_default_to_the_status_flags() -> None:
    assert one("39d8").destination.default_bits == FLAG_BITS == (0, 2, 4, 6, 7, 11)


def test_memory_results_know_their_address() -> None:
    store = one("f20f1145f0").destination  # movsd [rbp - 0x10], xmm0
    assert store.kind is DestinationKind.MEMORY and store.memory is not None
    assert (store.width, store.fmt) == (64, ValueFormat.F64)
    assert store.memory.address({"rbp": 0x7000}, next_pc=0) == 0x7000 - 0x10
    push = one("55").destination
    assert push.memory is not None
    assert push.memory.address({"rsp": 0x8000}, next_pc=0) == 0x8000 - 8
    tls = one("64c7400801000000").destination  # mov dword ptr fs:[rax + 8], 1
    assert tls.memory is not None and tls.width == 32
    assert tls.memory.address({"rax": 0x10, "fs_base": 0x5000}, next_pc=0) == 0x5018
    relative = decode(bytes.fromhex("f20f110510000000"), ADDRESS)[0]  # movsd [rip+0x10]
    assert relative.destination.memory is not None
    assert relative.destination.memory.address({}, next_pc=relative.end) == relative.end + 0x10


def test_instructions_without_a_result() -> None:
    assert one("0f1f00").destination.kind is DestinationKind.NONE
    assert one("0f05").destination.kind is DestinationKind.NONE  # syscall


def test_control_flow() -> None:
    jle = one("7e0e")
    assert jle.flow is Flow.CONDITIONAL and jle.targets == (0x1010,)
    assert jle.successors() == (0x1010, 0x1002)
    assert one("c3").flow is Flow.RETURN and one("c3").successors() is None
    assert one("ffe0").flow is Flow.INDIRECT
    rep = one("f3a4")
    assert rep.flow is Flow.REPEAT and rep.successors() == (ADDRESS, ADDRESS + 2)
    assert one("f20f1045f0").flow is Flow.NEXT  # movsd with an F2 prefix is no string op
    assert one("0f05").flow is Flow.TRAP
    moved = relocated(jle, 0x5000)
    assert (moved.address, moved.targets) == (0x6000, (0x6010,))


def test_class_counts_weight_static_instructions_by_executions() -> None:
    code = bytes.fromhex("f20f58c1837dfc09c4e2f1b9c2")  # addsd, cmp, vfmadd231sd
    decoded = decode(code, ADDRESS)
    counts = class_counts(decoded, {ADDRESS: 10, ADDRESS + 4: 11, ADDRESS + 8: 2})
    assert counts["fadd"] == 12 and counts["fmul"] == 2 and counts["cmp"] == 11
    assert counts["fp"] == 12 and counts["all"] == 23 and counts["idiv"] == 0


def test_result_bits_default_range_and_fixed_positions() -> None:
    addsd = one("f20f58c1").destination
    rng = random.Random(1)
    for _ in range(50):
        choice = choose_result_bits(BitModel(), addsd, rng)
        assert len(choice.positions) == 1 and 52 <= choice.positions[0] <= 62
    assert choose_result_bits(BitModel.parse("59"), addsd, rng).mask == 1 << 59
    two = choose_result_bits(BitModel(count=2, low=40, high=45), addsd, rng)
    assert len(two.positions) == 2 and all(40 <= p <= 45 for p in two.positions)
    flags = choose_result_bits(BitModel(count=3), one("39d8").destination, rng)
    assert set(flags.positions) <= set(FLAG_BITS) and len(flags.positions) == 3


@pytest.mark.parametrize(
    ("code", "bits", "message"),
    [
        ("39d8", "59", "bit 59 is outside the 32-bit result eflags"),
        ("f30f58ca", "52-62", "bits 52-62 reach beyond the 32-bit result xmm1[31:0]"),
        ("39d8", "k7", "cannot choose 7 bits from 6"),
        ("0f1f00", "3", "no result"),
    ],
)
def test_result_bits_that_do_not_fit_say_why(code: str, bits: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        choose_result_bits(BitModel.parse(bits), one(code).destination, random.Random(0))


def test_instances_fixed_drawn_and_probable() -> None:
    rng = random.Random(4)
    assert choose_instances(InstructionFault("fadd", instance=5), executed=None, rng=rng) == (5,)
    drawn = choose_instances(
        InstructionFault("fadd", faults_per_run=3, start_index=2), executed=10, rng=rng
    )
    assert len(drawn) == 3 and drawn == tuple(sorted(drawn)) and all(2 <= i <= 10 for i in drawn)
    capped = choose_instances(InstructionFault("fadd", max_dic=100), executed=10, rng=rng)
    assert 1 <= capped[0] <= 10
    every = choose_instances(InstructionFault("fadd", probability=1.0), executed=7, rng=rng)
    assert every == tuple(range(1, 8))
    counts = [
        len(choose_instances(InstructionFault("fadd", probability=0.25), executed=400, rng=rng))
        for _ in range(20)
    ]
    assert 70 < sum(counts) / len(counts) < 130
    with pytest.raises(ValueError, match="needs max_dic"):
        choose_instances(InstructionFault("fadd"), executed=None, rng=rng)
    with pytest.raises(ValueError, match="none from start index 12"):
        choose_instances(InstructionFault("fadd", start_index=12), executed=10, rng=rng)


def test_values_read_as_their_format() -> None:
    value = 1.0
    for _ in range(10):
        value *= 1.1
    for _ in range(5):
        value += 1.1  # foo's 5th fadd result
    raw = struct.unpack("<Q", struct.pack("<d", value))[0]
    assert decode_value(raw, ValueFormat.F64) == value
    flipped = decode_value(raw ^ 1 << 59, ValueFormat.F64)
    assert flipped == 2.754157841571328e39
    assert decode_value(0x3F800000, ValueFormat.F32) == 1.0
    assert decode_value(0x40000000_00000000_3FF00000_00000000, ValueFormat.F64X2) == [1.0, 2.0]
    assert format_value(0x297, ValueFormat.FLAGS) == "0x297"
    assert format_value(raw, ValueFormat.F64) == "8.093742460100001"


def test_x87_extended_values() -> None:
    one_80 = 0x3FFF << 64 | 1 << 63
    assert x87_to_float(one_80) == 1.0
    assert x87_to_float(1 << 79 | 0x4000 << 64 | 3 << 62) == -3.0
    assert x87_to_float(0x7FFF << 64 | 1 << 63) == math.inf
    assert math.isnan(x87_to_float(0x7FFF << 64 | 3 << 62))
    assert x87_to_float(0x7FFE << 64 | 1 << 63) == math.inf  # beyond a double's range
    assert x87_to_float(0) == 0.0


def test_instruction_targets_and_faults_parse() -> None:
    target = Target.parse("instruction:sarl@solve")
    assert (target.kind, target.op, target.function) == (TargetKind.INSTRUCTION, "sar", "solve")
    assert Target.parse("instruction:fadd").function is None
    assert canonical_op("IDIVL") == "idiv"
    with pytest.raises(UsageError, match="unknown instruction class 'fad'") as error:
        canonical_op("fad")
    assert "fadd" in error.value.hint
    spec = FaultSpec.of_instruction(InstructionFault("fadd", "f", instance=5), BitModel.parse("59"))
    assert spec.target.spelling == "instruction:fadd@f"
    assert spec.to_json()["instruction"]["instance"] == 5
    derived = FaultSpec(Target.parse("instruction:cmp@g"))
    assert derived.instruction == InstructionFault("cmp", "g")
    with pytest.raises(UsageError, match="bit 130 is out of range"):
        FaultSpec.of_instruction(InstructionFault("fadd"), BitModel.parse("130"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"instance": 0}, "instance 0 is not a dynamic instance"),
        ({"start_index": 0}, "start index 0 is below 1"),
        ({"start_index": 5, "max_dic": 3}, "below the start index 5"),
        ({"probability": 1.5}, "probability 1.5 is outside"),
        ({"probability": 0.1, "faults_per_run": 2}, "replaces a fixed number"),
        ({"instance": 3, "faults_per_run": 2}, "a fixed instance is one fault per run"),
    ],
)
def test_bad_instruction_faults_say_why(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        InstructionFault("fadd", **kwargs)  # type: ignore[arg-type]
