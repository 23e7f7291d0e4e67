"""The second guest architecture without a VM: platform facts, aarch64's QEMU command line,
register targets, instruction classes and results, page tables, exec logs, crash patterns,
kernel ranges, cpio reading, campaign files and the one-line errors of what aarch64 lacks."""

from __future__ import annotations

import io
import random
import re
import struct
from collections import Counter
from pathlib import Path

import pytest

from vmfault import cli
from vmfault.arch import DISKS, MACHINES, Arch
from vmfault.campaign.spec import CampaignSpec
from vmfault.classify import CrashScope, CrashTable
from vmfault.errors import ImageError, UsageError
from vmfault.faults import BitModel, FaultSpec, Target
from vmfault.faults.instructions import (
    DestinationKind,
    Flow,
    Instruction,
    MemoryOperand,
    ValueFormat,
    choose_result_bits,
    class_counts,
    decode,
)
from vmfault.faults.model import REGISTER_SETS
from vmfault.faults.select import plan
from vmfault.guest.image import ImageSpec, gather_inputs
from vmfault.guest.initramfs import (
    EntryKind,
    char_device,
    directory,
    read_newc,
    regular_file,
    symlink,
    write_newc,
)
from vmfault.guest.symbols import KernelSymbols
from vmfault.guest.workloads import check_static_elf
from vmfault.machine.config import (
    Accel,
    MachineConfig,
    Nic,
    SocketPaths,
    guest_tsc_khz,
    qemu_argv,
)
from vmfault.machine.pagetable import (
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
    translate_address,
    walk_address_space,
    walk_arm64,
)
from vmfault.profile.execlog import count_executions, log_items, parse_exec_log

A64 = Arch.AARCH64
X86 = Arch.X86_64


# ---------------------------------------------------------------------------- platform


def test_arch_names_and_debian_aliases() -> None:
    assert Arch.parse("aarch64") is A64 and Arch.parse("arm64") is A64
    assert Arch.parse("x86-64") is X86 and Arch.parse("amd64") is X86
    with pytest.raises(UsageError, match="unknown guest architecture 'riscv64'") as caught:
        Arch.parse("riscv64")
    assert "x86_64 or aarch64" in caught.value.hint


def test_user_mode_and_address_space_keys() -> None:
    x86, a64 = X86.platform, A64.platform
    assert x86.is_user(0x33) and not x86.is_user(0x10)
    assert a64.is_user(0x80001000) and not a64.is_user(0x60400005)  # EL0t, EL1h
    assert x86.page_table_key(0x61AE000 | 0x5) == 0x61AE000  # PCID dropped
    assert a64.page_table_key(0x0055000041852000 | 1) == 0x41852000  # ASID and CnP dropped


def _argv(config: MachineConfig) -> list[str]:
    paths = SocketPaths(Path("/q"), Path("/g"), Path("/c"), Path("/ch"))
    return qemu_argv(config, Accel.TCG, paths, Path("/s.qcow2"))


def test_aarch64_machine_is_virt_with_semihosting_and_the_psci_reset_path() -> None:
    config = MachineConfig(kernel=Path("/Image"), arch=A64, append="quiet")
    argv = _argv(config)
    assert argv[0] == "qemu-system-aarch64" and config.machine_type == "virt"
    assert argv[argv.index("-M") + 1] == "virt,dtb-randomness=off"
    assert argv[argv.index("-cpu") + 1] == "cortex-a76"
    assert "enable=on,target=native,userspace=on,chardev=vmf-chan" in argv
    assert argv[argv.index("-action") + 1] == "panic=pause,reboot=shutdown,shutdown=pause"
    assert "-no-reboot" not in argv and not any("debugcon" in a or a == "pvpanic" for a in argv)
    cmdline = argv[argv.index("-append") + 1]
    assert cmdline.startswith("console=ttyAMA0 nokaslr") and "reboot=t" not in cmdline
    assert config.pauses_on_reset
    assert guest_tsc_khz(config, Accel.TCG, 3_000_000) is None


def test_x86_machine_is_unchanged() -> None:
    config = MachineConfig(kernel=Path("/vmlinux"))
    argv = _argv(config)
    assert argv[0] == "qemu-system-x86_64" and config.machine_type == "microvm"
    assert "isa-debugcon,iobase=0xe9,chardev=vmf-chan" in argv and "-no-reboot" in argv
    assert not config.pauses_on_reset
    assert "console=ttyS0" in argv[argv.index("-append") + 1]


# ---------------------------------------------------------------------------- registers


def test_aarch64_register_targets_and_groups() -> None:
    assert Target.parse("register:gpr", arch=A64).registers() == tuple(f"x{i}" for i in range(31))
    assert Target.parse("register:pointer", arch=A64).registers() == ("pc", "sp", "x29")
    assert Target.parse("register:flags", arch=A64).registers() == ("nzcv",)
    assert len(Target.parse("register:simd", arch=A64).registers()) == 32
    target = Target.parse("register:V3", arch=A64)
    assert (target.name, target.register_width("v3")) == ("v3", 128)
    assert REGISTER_SETS[A64].location("nzcv") == ("cpsr", 28)
    assert REGISTER_SETS[A64].location("x0") == ("x0", 0)


def test_the_aarch64_pc_is_56_bits_wide() -> None:
    # Bits 56-63 of a pc are copies of bit 55 (top-byte-ignore): no fault lives there.
    target = Target.parse("register:pc", arch=A64)
    assert target.register_width("pc") == 56
    spec = FaultSpec.from_options(target="register:pc", arch=A64)
    plans = [
        plan(spec, seed=1, index=i, golden_duration_s=1.0, golden_instructions=None)
        for i in range(300)
    ]
    assert {p.width for p in plans} == {56}
    masks = {p.bits.mask for p in plans}
    assert max(masks) == 1 << 55 and min(masks) == 1  # every bit 0-55 can be drawn
    with pytest.raises(UsageError, match=r"bit 60 is out of range for register pc \(56 bits\)"):
        FaultSpec.from_options(target="register:pc", bits="60", arch=A64)


@pytest.mark.parametrize(
    ("text", "arch", "message"),
    [
        ("register:rip", A64, "unknown register 'rip' on aarch64 guests"),
        ("register:sse", A64, "unknown register 'sse' on aarch64 guests"),
        ("register:x0", X86, "unknown register 'x0'"),
        ("register:ttbr0_el1", A64, "register ttbr0_el1 is read-only"),
    ],
)
def test_registers_of_the_other_architecture_are_one_line_errors(
    text: str, arch: Arch, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        Target.parse(text, arch=arch)


def test_nzcv_faults_are_four_bits_wide() -> None:
    spec = FaultSpec.from_options(target="register:nzcv", bits="2", arch=A64)
    assert plan(spec, seed=1, index=0, golden_duration_s=1.0, golden_instructions=None).width == 4
    with pytest.raises(UsageError, match="register nzcv"):
        FaultSpec.from_options(target="register:nzcv", bits="5", arch=A64)


# ---------------------------------------------------------------------------- instructions

# F-SEFI's myaddfunc as gcc-aarch64 -O0 compiles it (foo.c), at 0x10000724.
MYADDFUNC = (
    "ff8300d1e00700fde00740fde00b00fdff1f00b909000014e00b40fda00200f001e441fd0028611e"
    "e00b00fde01f40b900040011e01f00b9e01f40b91f240071cdfeff54e00b40fdff830091c0035fd6"
)
BASE = 0x10000724


def a64(code: str, address: int = 0x1000) -> Instruction:
    decoded = decode(bytes.fromhex(code), address, arch=A64)
    assert len(decoded) == 1, decoded
    return decoded[0]


@pytest.mark.parametrize(
    ("code", "text", "expected"),
    [
        ("0028611e", "fadd d0, d0, d1", {"fadd", "fp"}),
        ("20d4614e", "fadd v0.2d, v1.2d, v1.2d", {"fadd", "fp"}),
        ("0008411f", "fmadd d0, d0, d1, d2", {"fadd", "fmul", "fp"}),
        ("0008611e", "fmul d0, d0, d1", {"fmul", "fp"}),
        ("0038611e", "fsub d0, d0, d1", {"fsub", "fp"}),
        ("0018611e", "fdiv d0, d0, d1", {"fdiv", "fp"}),
        ("0020611e", "fcmp d0, d1", {"cmp", "fp"}),
        ("1f240071", "cmp w0, #9", {"cmp", "int-alu"}),
        ("1f00006a", "tst w0, w0", {"int-alu"}),
        ("000001ca", "eor x0, x0, x1", {"xor", "int-alu"}),
        ("00fc4193", "asr x0, x0, #1", {"sar", "int-alu"}),
        ("000cc11a", "sdiv w0, w0, w1", {"idiv", "int-alu"}),
        ("007c019b", "mul x0, x0, x1", {"imul", "int-alu"}),
        ("2004009b", "madd x0, x1, x0, x1", {"imul", "int-alu"}),
        ("e00740fd", "ldr d0, [sp, #8]", {"load"}),
        ("200400f9", "str x0, [x1, #8]", {"store"}),
        ("000000b4", "cbz x0, #0x1000", {"branch"}),
        ("c0035fd6", "ret", {"branch"}),
        ("1f2003d5", "nop", set()),
    ],
)
def test_aarch64_classes(code: str, text: str, expected: set[str]) -> None:
    insn = a64(code)
    assert insn.text == text
    assert set(insn.classes) - {"all"} == expected


def test_myaddfunc_counts_ten_fadds_and_eleven_compares_per_call() -> None:
    insns = decode(bytes.fromhex(MYADDFUNC), BASE, arch=A64)
    assert len(insns) == 20
    fadd = next(i for i in insns if "fadd" in i.classes)
    compare = next(i for i in insns if "cmp" in i.classes)
    loop = [i.address for i in insns if fadd.address - 12 <= i.address <= compare.address + 4]
    counts = {address: 10 for address in loop} | {compare.address: 11, compare.end: 11}
    totals = class_counts(insns, counts)
    assert (totals["fadd"], totals["cmp"], totals["fmul"]) == (10, 11, 0)
    branch = insns[-4]
    assert branch.text == "b.le #0x1000073c" and branch.flow is Flow.CONDITIONAL
    assert branch.successors() == (0x1000073C, branch.end)


def test_aarch64_results() -> None:
    fadd = a64("0028611e").destination
    assert (fadd.register, fadd.width, fadd.fmt, fadd.text) == (
        "v0",
        64,
        ValueFormat.F64,
        "v0[63:0]",
    )
    assert fadd.default_bits == tuple(range(52, 63))
    vector = a64("20d4614e").destination
    assert (vector.register, vector.width, vector.fmt) == ("v0", 128, ValueFormat.F64X2)
    flags = a64("1f240071").destination
    assert (flags.register, flags.fmt, flags.default_bits) == (
        "cpsr",
        ValueFormat.FLAGS,
        (28, 29, 30, 31),
    )
    word = a64("00040011").destination  # add w0, w0, #1
    assert (word.register, word.text, word.default_bits) == ("x0", "x0[31:0]", tuple(range(32)))
    assert a64("ff8300d1").destination.register == "sp"  # sub sp, sp, #0x20
    zero = a64("1f00006b").destination  # cmp w0, w0 is flags; subs wzr, ... too
    assert zero.register == "cpsr"
    assert a64("00000094").destination.register == "pc"  # bl
    assert a64("1f2003d5").destination.kind is DestinationKind.NONE
    assert a64("e0030091").destination.register == "x0"  # mov x0, sp


@pytest.mark.parametrize(
    ("code", "registers", "address", "size", "fmt"),
    [
        ("e00b00fd", {"sp": 0x8000}, 0x8010, 8, ValueFormat.F64),  # str d0, [sp, #16]
        ("200400f9", {"x1": 0x100}, 0x108, 8, ValueFormat.INT),  # str x0, [x1, #8]
        ("208400f8", {"x1": 0x100}, 0x100, 8, ValueFormat.INT),  # str x0, [x1], #8 (post)
        ("208c00f8", {"x1": 0x100}, 0x108, 8, ValueFormat.INT),  # str x0, [x1, #8]! (pre)
        ("206822f8", {"x1": 0x100, "x2": 0x30}, 0x130, 8, ValueFormat.INT),  # str x0, [x1, x2]
        ("ff1f00b9", {"sp": 0x8000}, 0x801C, 4, ValueFormat.INT),  # str wzr, [sp, #28]
        ("e00701a9", {"sp": 0x8000}, 0x8010, 16, ValueFormat.INT),  # stp x0, x1, [sp, #16]
        ("20000039", {"x1": 0x100}, 0x100, 1, ValueFormat.INT),  # strb w0, [x1]
    ],
)
def test_aarch64_store_results_are_their_memory(
    code: str, registers: dict[str, int], address: int, size: int, fmt: ValueFormat
) -> None:
    insn = a64(code)
    destination = insn.destination
    assert destination.kind is DestinationKind.MEMORY and destination.memory is not None
    assert destination.memory.address(registers, next_pc=insn.end) == address
    assert (destination.width, destination.fmt) == (size * 8, fmt)


def test_a_sign_extended_index_counts_backwards() -> None:
    operand = MemoryOperand("x1", "x2", 8, 0, None, 8, index_signed32=True)
    assert operand.address({"x1": 0x1000, "x2": 0xFFFFFFFF}, next_pc=0) == 0x1000 - 8


def test_aarch64_result_bits_and_flows() -> None:
    rng = random.Random(1)
    flags = choose_result_bits(BitModel(), a64("1f240071").destination, rng)
    assert flags.mask in {1 << bit for bit in (28, 29, 30, 31)}
    exponent = choose_result_bits(BitModel.parse("59"), a64("0028611e").destination, rng)
    assert exponent.mask == 1 << 59
    assert a64("010000d4").flow is Flow.TRAP  # svc #0
    assert a64("00001fd6").flow is Flow.INDIRECT  # br x0
    assert a64("00000014").flow is Flow.JUMP  # b
    assert a64("00000094", 0x2000).targets == (0x2000,)  # bl to itself


# ---------------------------------------------------------------------------- page tables

VALID, TABLE, PAGE = 0b01, 0b11, 0b11
AF, AP_EL0, AP_RO = 1 << 10, 1 << 6, 1 << 7
UXN, PXN = 1 << 54, 1 << 53
AP_TABLE_NO_EL0, UXN_TABLE = 1 << 61, 1 << 60
L0, L1, L2, L3, L2_KERNEL = 0x41000000, 0x41001000, 0x41002000, 0x41003000, 0x41004000


class FakeMemory:
    """Guest-physical memory of 4 KiB pages in a dict; counts reads per page."""

    def __init__(self) -> None:
        self.pages: dict[int, bytearray] = {}
        self.reads: Counter[int] = Counter()

    def set_entry(self, table: int, index: int, value: int) -> None:
        page = self.pages.setdefault(table, bytearray(PAGE_SIZE_4K))
        struct.pack_into("<Q", page, 8 * index, value)

    def read(self, address: int, size: int) -> bytes:
        base = address & ~(PAGE_SIZE_4K - 1)
        self.reads[base] += 1
        page = self.pages.get(base, bytearray(PAGE_SIZE_4K))
        return bytes(page[address - base : address - base + size])


@pytest.fixture
def tables() -> FakeMemory:
    """A user address space: code at 0x10000000 (read-only), data at 0x10001000
    (writable, UXN), an invalid page at 0x10002000, a 2 MiB block at 0x10200000, a
    kernel-only page at 0x10003000, and a table at 0x40000000 closed to EL0."""
    mem = FakeMemory()
    mem.set_entry(L0, 0, L1 | TABLE)
    mem.set_entry(L1, 0, L2 | TABLE)
    mem.set_entry(L1, 1, L2_KERNEL | TABLE | AP_TABLE_NO_EL0 | UXN_TABLE)
    mem.set_entry(L2, 128, L3 | TABLE)  # 0x10000000
    mem.set_entry(L2, 129, 0x42200000 | VALID | AF | AP_EL0 | UXN)  # 2 MiB block
    mem.set_entry(L3, 0, 0x40500000 | PAGE | AF | AP_EL0 | AP_RO | PXN)
    mem.set_entry(L3, 1, 0x40501000 | PAGE | AF | AP_EL0 | UXN | PXN)
    mem.set_entry(L3, 2, 0x40502000 | AF | AP_EL0)  # not valid
    mem.set_entry(L3, 3, 0x40503000 | PAGE | AF)  # EL1 only
    mem.set_entry(L2_KERNEL, 0, 0x40600000 | VALID | AF | AP_EL0)
    return mem


def test_arm64_walk_finds_user_pages_with_their_permissions(tables: FakeMemory) -> None:
    ttbr0 = (0x23 << 48) | L0 | 1  # ASID 0x23, CnP
    pages = walk_arm64(ttbr0, tables.read)
    assert [(p.virtual, p.physical, p.size) for p in pages] == [
        (0x10000000, 0x40500000, PAGE_SIZE_4K),
        (0x10001000, 0x40501000, PAGE_SIZE_4K),
        (0x10200000, 0x42200000, PAGE_SIZE_2M),
    ]
    code, data, block = pages
    assert (code.writable, code.executable, code.user) == (False, True, True)
    assert (data.writable, data.executable) == (True, False)
    assert (block.writable, block.executable) == (True, False)
    assert max(tables.reads.values()) == 1  # each table page read once, whole
    everything = walk_address_space(A64, ttbr0, tables.read, user_only=False)
    assert {p.virtual for p in everything} == {0x10000000, 0x10001000, 0x10003000, 0x10200000,
                                               0x40000000}  # fmt: skip
    closed = next(p for p in everything if p.virtual == 0x40000000)
    assert not closed.user and not closed.executable


def test_arm64_translate(tables: FakeMemory) -> None:
    assert translate_address(A64, L0, 0x10001234, tables.read) == 0x40501234
    assert translate_address(A64, L0, 0x10234567, tables.read) == 0x42234567
    assert translate_address(A64, L0, 0x10002000, tables.read) is None
    assert translate_address(A64, L0, 0xFFFF000000001000, tables.read) is None


# ---------------------------------------------------------------------------- exec logs

AARCH64_LOG = b"""Taking exception 5 [IRQ] on CPU 0
...from EL1 to EL1
Trace 0: 0x7f66 [0000000000003001/0000000000001004/00000001/ff000200]
Taking exception 4 [Data Abort] on CPU 0
...from EL0 to EL1
...with ESR 0x24/0x92000047
Exception return from AArch64 EL1 to AArch64 EL0 PC 0x1004
Trace 0: 0x7f66 [0000000000003001/0000000000001004/00000001/ff000200]
Taking exception 5 [IRQ] on CPU 0
...from EL0 to EL1
Trace 0: 0x7f66 [0000000000003001/0000000000001000/00000001/ff000200]
"""
# 0x1000 add w0, w0, #1 / 0x1004 ldr w1, [x2] / 0x1008 b 0x1000
LOOP = "00040011410040b9feffff17"


class LoopCode:
    def __init__(self) -> None:
        self.at = {i.address: i for i in decode(bytes.fromhex(LOOP), 0x1000, arch=A64)}

    def block_at(self, pc: int) -> tuple[Instruction, ...]:
        block: list[Instruction] = []
        while pc in self.at:
            block.append(self.at[pc])
            if self.at[pc].flow.ends_block:
                break
            pc = self.at[pc].end
        return tuple(block)


def test_aarch64_logs_count_faults_from_el0_as_cr2_changes() -> None:
    assert log_items(A64) == "exec,nochain,int" and log_items(X86) == "exec,cpu,nochain"
    entries = list(parse_exec_log(io.BytesIO(AARCH64_LOG), read_bytes=64, arch=A64))
    assert [(e.pc, e.cr3, e.cr2) for e in entries] == [
        (0x1004, None, 0),
        (0x1004, None, 1),  # a data abort from EL0 after the previous block
        (0x1000, None, 1),  # an IRQ is no fault
    ]
    counts, _ = count_executions(entries, process=0x41852000, code=LoopCode())
    # The first 0x1004 block faulted at its load and ran nothing: counted once, retried.
    assert dict(counts) == {0x1000: 1, 0x1004: 2, 0x1008: 2}


# ---------------------------------------------------------------------------- crashes


@pytest.mark.parametrize(
    ("line", "scope", "cause"),
    [
        ("Unable to handle kernel paging request at virtual address ffff80000aa23eb0",
         CrashScope.KERNEL, "page-fault"),
        ("Unable to handle kernel NULL pointer dereference at virtual address 0000000000000001",
         CrashScope.KERNEL, "null-dereference"),
        ("Unable to handle kernel execute from non-executable memory at virtual address ffff8",
         CrashScope.KERNEL, "nx-execute"),
        ("Internal error: Oops - Undefined instruction: 0000000002000000 [#1] SMP",
         CrashScope.KERNEL, "invalid-opcode"),
        ("Internal error: Oops: 0000000096000006 [#1] SMP", CrashScope.KERNEL, "oops"),
        ("checksum[78]: unhandled exception: DABT (lower EL), ESR 0x0000000092000046, level 2 "
         "translation fault in checksum[10000000+7e000]", CrashScope.USER, "segfault"),
        ("checksum[78]: unhandled exception: PC Alignment, ESR 0x000000008a000000, SP/PC "
         "alignment exception", CrashScope.USER, "alignment"),
        ("checksum[78]: unhandled exception: undefined instruction in checksum[10000000+7e000]",
         CrashScope.USER, "invalid-opcode"),
    ],
)  # fmt: skip
def test_arm64_console_lines_name_their_cause(line: str, scope: CrashScope, cause: str) -> None:
    found = CrashTable.default().match(f"[    1.804907] {line}\n")
    assert found is not None
    assert (found[0].scope, found[0].cause) == (scope, cause)


# ---------------------------------------------------------------------------- kernel ranges


def test_kernel_data_of_a_kernel_without_data_symbols_comes_from_iomem() -> None:
    offset = A64.platform.kernel_image_offset
    text = (
        "ffff800008010000 T _stext\nffff800008d00000 D _etext\n"
        "  40000000-47ffffff : System RAM\n"
        "    40210000-4185ffff : Kernel code\n    41eb0000-4220ffff : Kernel data\n"
    )
    symbols = KernelSymbols.parse(text, image_offset=offset)
    code = symbols.text()
    assert code.physical_start == symbols.iomem["code"][0] == 0x40210000
    data = symbols.data()
    assert (data.physical_start, data.size) == (0x41EB0000, 0x42210000 - 0x41EB0000)
    assert symbols.physical_of(0xFFFF800008010000) == 0x40210000


# ---------------------------------------------------------------------------- cpio


def test_newc_archives_read_back_as_written() -> None:
    entries = [
        regular_file("bin/busybox", b"\x7fELF" + bytes(range(200)), 0o755),
        symlink("lib/ld-linux-aarch64.so.1", "aarch64-linux-gnu/ld-linux-aarch64.so.1"),
        char_device("dev/console", 5, 1),
        directory("etc"),
    ]
    archive = write_newc(entries)
    read = {e.path: e for e in read_newc(archive + b"\0" * 512)}  # padding is fine
    assert read["bin/busybox"].data == entries[0].data and read["bin/busybox"].permissions == 0o755
    assert read["lib/ld-linux-aarch64.so.1"].kind is EntryKind.SYMLINK
    assert "dev/console" not in read  # device nodes are left out
    assert {"bin", "lib", "etc", "dev"} <= set(read)
    with pytest.raises(ImageError, match="truncated"):
        read_newc(archive[:200])


# ---------------------------------------------------------------------------- inputs

CAMPAIGN = {
    "campaign": {"name": "a", "seed": 1, "experiments": 4},
    "guest": {"workload": "checksum", "arch": "aarch64"},
    "faults": [{"target": "register:x0"}, {"target": "register:nzcv", "bits": "3"}],
}


def test_campaign_families_name_registers_of_the_guest_architecture() -> None:
    spec = CampaignSpec.model_validate(CAMPAIGN)
    assert spec.guest.arch is A64
    assert spec.faults[0].fault_spec().target == Target.parse("register:x0", arch=A64)
    again = CampaignSpec.from_json(spec.to_json())
    assert again.faults[1].fault_spec().target.arch is A64
    x86 = {**CAMPAIGN, "guest": {"workload": "checksum"}}
    with pytest.raises(ValueError, match="unknown register 'x0'"):
        CampaignSpec.model_validate(x86)


def _elf(path: Path, machine: int, e_type: int = 2) -> Path:
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<HH", header, 16, e_type, machine)
    struct.pack_into("<QHH", header, 32, 64, 0, 0)  # no program headers
    struct.pack_into("<HH", header, 54, 56, 0)
    path.write_bytes(bytes(header))
    return path


def test_binaries_must_match_the_guest_architecture(tmp_path: Path) -> None:
    arm = _elf(tmp_path / "arm", 183)
    check_static_elf(arm, arch=A64)
    with pytest.raises(ImageError, match="not an x86-64 executable"):
        check_static_elf(arm)
    with pytest.raises(ImageError, match="PIE executables run only on x86-64 guests"):
        check_static_elf(_elf(tmp_path / "pie", 183, e_type=3), arch=A64)


def test_what_aarch64_lacks_is_a_one_line_error(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(512))
    with pytest.raises(UsageError, match="disks work only on x86-64 guests"):
        gather_inputs(ImageSpec(disk=disk, arch=A64), cache_root=tmp_path)
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    with pytest.raises(UsageError, match="a kernel of your own works only for x86-64 guests"):
        gather_inputs(ImageSpec(kernel=kernel, arch=A64), cache_root=tmp_path)


def test_features_aarch64_lacks_are_named_in_one_line() -> None:
    Arch.X86_64.require(DISKS)
    Arch.X86_64.require(MACHINES)
    A64.require(MACHINES)  # networks, daemons and console scripts work on both
    with pytest.raises(UsageError, match=r"^disks work only on x86-64 guests, not aarch64: "):
        A64.require(DISKS)


def test_aarch64_networks_use_a_virtio_mmio_card_and_campaigns_take_machine_tables() -> None:
    nic = Nic(fd=7, mac="52:54:00:00:00:01")
    argv = _argv(MachineConfig(kernel=Path("/Image"), arch=A64, nic=nic))
    assert "virtio-net-device,netdev=vmf-net,mac=52:54:00:00:00:01" in argv
    spec = CampaignSpec.model_validate({
        **CAMPAIGN, "guest": {"arch": "aarch64"},
        "machine": [{"name": "a", "workload": "checksum"}, {"name": "b", "idle": "1s"}],
        "faults": [{"target": "register:x0"}],
    })  # fmt: skip
    assert spec.guest.arch is A64 and [m.name for m in spec.machine] == ["a", "b"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"guest": {"workload": "diskio", "arch": "aarch64",
                    "disks": [{"name": "data", "size": "1M"}]}},
         "disks work only on x86-64 guests, not aarch64"),
        ({"faults": [{"target": "disk:read-error"}]}, "disks work only on x86-64 guests"),
        ({"guest": {}, "machine": [{"name": "a", "workload": "checksum", "arch": "aarch64"},
                                   {"name": "b", "idle": "1s"}],
          "faults": [{"target": "register:rip"}]},
         "arch applies to every machine"),
    ],
)  # fmt: skip
def test_campaigns_of_what_aarch64_lacks_fail_in_one_line(
    changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        CampaignSpec.model_validate({**CAMPAIGN, **changes})


@pytest.mark.parametrize(
    "args",
    [
        ["run", "checksum", "--arch", "aarch64", "--disk", "data:1M"],
        ["inject", "-w", "checksum", "--arch", "aarch64", "--target", "register:x0",
         "--disk", "data:1M"],
        ["inject", "-w", "checksum", "--arch", "aarch64", "--target", "disk:read-error"],
        ["storm", "--idle", "1s", "--arch", "aarch64", "--flips", "2", "--interval", "10ms",
         "--disk", "data:1M"],
    ],
)  # fmt: skip
def test_disks_on_aarch64_fail_in_one_line_before_any_image(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    monkeypatch.setattr(cli, "prepare_image", lambda *_, **__: pytest.fail("built an image"))
    with pytest.raises(SystemExit) as exited:
        cli.main(args)
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "disks work only on x86-64 guests" in lines[0], lines
