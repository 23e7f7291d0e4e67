"""The guest architectures vmfault runs: what each one is made of, as plain data (pure).

One `Arch` value (`x86_64`, the default, or `aarch64`) is chosen where a guest is chosen
(`--arch`, `[guest] arch`) and travels with the image; the machine configuration, the image
builder, the gdbstub's register names, fault targets and instruction classes consult it
(fault knowledge lives in `vmfault.faults`, not here). `Platform` holds what the layers
below the faults need: the QEMU binary and machine, the console, the toolchain, and the
names of the registers that say where the vCPU is and whose address space it runs in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vmfault.errors import UsageError

__all__ = ["DEFAULT_ARCH", "DISKS", "MACHINES", "Arch", "Platform"]

DISKS = "disks"
"""The feature of guest disks (`--disk`, `[[guest.disks]]`) and disk faults."""
MACHINES = "[[machine]] tables"
"""The feature of testbeds of named machines: networks, daemons, console scripts."""


class Arch(enum.StrEnum):
    """A guest architecture, spelled as `uname -m` spells it."""

    X86_64 = "x86_64"
    AARCH64 = "aarch64"

    @classmethod
    def parse(cls, text: str | Arch) -> Arch:
        """The architecture named `text` (`arm64` and `amd64`, Debian's names, too);
        UsageError naming the choices otherwise."""
        if isinstance(text, Arch):
            return text
        name = text.strip().lower().replace("-", "_")
        name = {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)
        try:
            return cls(name)
        except ValueError:
            raise UsageError(
                f"unknown guest architecture {text!r}",
                hint="choose " + " or ".join(a.value for a in cls),
            ) from None

    @property
    def platform(self) -> Platform:
        """What this architecture's guests are made of."""
        return _PLATFORMS[self]

    def require(self, feature: str) -> None:
        """Nothing when `feature` (`DISKS`, `MACHINES`) works on this architecture's guests;
        else a one-line UsageError naming it and why."""
        why = dict(self.platform.lacks).get(feature)
        if why is not None:
            others = [a.value for a in Arch if feature not in dict(a.platform.lacks)]
            raise UsageError(
                f"{feature} work only on {' or '.join(others).replace('_', '-')} guests, "
                f"not {self.value}: {why}",
                hint=f"leave out the {feature}, or choose arch {' or '.join(others)}",
            )


DEFAULT_ARCH = Arch.X86_64


@dataclass(frozen=True)
class Platform:
    """The facts of one guest architecture the machine, guest and session layers use.

    Register names are the gdbstub's (QEMU's target description); addresses are guest
    virtual unless named physical.
    """

    arch: Arch
    debian: str
    """Debian's name of the architecture (`amd64`, `arm64`)."""
    qemu_binary: str
    qemu_package: str
    """The Debian package that installs `qemu_binary`."""
    machine_type: str
    tcg_cpu: str
    """The CPU model under TCG."""
    console: str
    """The guest kernel's name of the serial console device."""
    gcc: str
    toolchain_packages: tuple[str, ...]
    elf_machine: int
    """ELF e_machine of its executables."""
    ram_base: int
    """Guest-physical address where RAM starts."""
    kernel_space: int
    """Virtual addresses at or above this are the kernel's."""
    kernel_code: int
    """Kernel code (its image and modules) lies at or above this virtual address."""
    kernel_image_offset: int
    """Kernel image virtual address minus its physical address (Debian's kernel booted
    with `nokaslr` by QEMU's loader)."""
    pc: str
    stack_pointer: str
    frame_pointer: str
    first_argument: str
    """The register of a kernel function's first argument at its entry."""
    flags: str
    privilege: str
    """The register whose value says whether the vCPU runs user code (`is_user`)."""
    page_table_root: str
    """The register holding the user address space's page-table root."""
    exec_hook: str | None
    """The kernel function every exec calls with the new address space live and the new
    pc and sp as its 2nd and 3rd arguments (`start_thread`); None where it is inlined
    (arm64): an exec is caught at the executable's entry point instead."""
    exec_args: tuple[str, str]
    """Where the new process's first pc and stack pointer are read at the exec: the
    registers of `exec_hook`'s 2nd and 3rd arguments, or the vCPU's own pc and sp."""
    lacks: tuple[tuple[str, str], ...] = ()
    """Features its guests do not have yet, each with the reason (see `Arch.require`)."""
    reset_writes_ram: bool = False
    """Whether a machine reset writes QEMU's ROM images into guest RAM (the device tree at
    the base of RAM on -M virt without -kernel): a template restore, whose loadvm begins
    with a reset, must then put those pages back after it."""

    def is_user(self, privilege: int) -> bool:
        """Whether the value of the `privilege` register means user mode: CPL 3 in CS on
        x86-64, EL0 in the PSTATE (CPSR) on aarch64."""
        if self.arch is Arch.X86_64:
            return privilege & 3 == 3
        return (privilege >> 2) & 3 == 0

    def page_table_key(self, root: int) -> int:
        """The address space `root` (the value of `page_table_root`) names: the table's
        physical address without tag bits (x86-64 PCID bits 0-11; aarch64 ASID bits
        48-63 and CnP bit 0). Under x86 KPTI bit 12 is kept, see machine.pagetable."""
        if self.arch is Arch.X86_64:
            return root & ((1 << 52) - 1) & ~0xFFF
        return root & ((1 << 48) - 1) & ~1


_PLATFORMS = {
    Arch.X86_64: Platform(
        arch=Arch.X86_64,
        debian="amd64",
        qemu_binary="qemu-system-x86_64",
        qemu_package="qemu-system-x86",
        machine_type="microvm",
        tcg_cpu="max",
        console="ttyS0",
        gcc="gcc",
        toolchain_packages=("gcc", "libc6-dev"),
        elf_machine=62,
        ram_base=0,
        kernel_space=0xFFFF800000000000,
        kernel_code=0xFFFFFFFF80000000,
        kernel_image_offset=0xFFFFFFFF80000000,
        pc="rip",
        stack_pointer="rsp",
        frame_pointer="rbp",
        first_argument="rdi",
        flags="eflags",
        privilege="cs",
        page_table_root="cr3",
        exec_hook="start_thread",
        exec_args=("rsi", "rdx"),
    ),
    Arch.AARCH64: Platform(
        arch=Arch.AARCH64,
        debian="arm64",
        qemu_binary="qemu-system-aarch64",
        qemu_package="qemu-system-arm",
        machine_type="virt",
        # ARMv8.2 without pointer authentication (its QARMA costs TCG 5x in boot time) and
        # without RNDR (host randomness, which icount cannot replay); measured boot to a
        # finished workload: cortex-a76 1.4 s, cortex-a57 1.6 s, max 7.6 s.
        tcg_cpu="cortex-a76",
        console="ttyAMA0",
        gcc="aarch64-linux-gnu-gcc",
        toolchain_packages=("gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"),
        elf_machine=183,
        ram_base=0x40000000,
        kernel_space=0xFFFF000000000000,
        kernel_code=0xFFFF800000000000,  # modules, then the kernel image
        # KIMAGE_VADDR (48-bit VA) minus where QEMU loads an Image whose text_offset is 0:
        # RAM base + 2 MiB.
        kernel_image_offset=0xFFFF800008000000 - 0x40200000,
        pc="pc",
        stack_pointer="sp",
        frame_pointer="x29",
        first_argument="x0",
        flags="cpsr",
        privilege="cpsr",
        page_table_root="TTBR0_EL1",
        exec_hook=None,
        exec_args=("pc", "sp"),
        reset_writes_ram=True,
        lacks=((DISKS, "Debian's arm64 installer kernel has no virtio_blk"),),
    ),
}
