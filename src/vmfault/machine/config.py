"""What a virtual machine is made of, and the QEMU command line that makes it (pure, no I/O)."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from pathlib import Path

from vmfault.arch import DEFAULT_ARCH, Arch
from vmfault.machine.disks import GuestDisk, disk_argv, virtio_device

__all__ = [
    "DETERMINISTIC_RTC_BASE",
    "LOG_DIR_ENV",
    "RAM_BACKEND_ID",
    "SCRATCH_NODE",
    "Accel",
    "MachineConfig",
    "Nic",
    "RamFile",
    "SocketPaths",
    "guest_tsc_khz",
    "host_tsc_khz",
    "qemu_argv",
]

DETERMINISTIC_RTC_BASE = "2020-01-01T00:00:00"
"""Fixed guest wall-clock start in deterministic mode, so transcripts do not carry today's date."""

RAM_BACKEND_ID = "vmf-ram"
"""The id of the memory backend of guest RAM held in a file (also its region's name in
QEMU's memory tree)."""

SCRATCH_NODE = "vmf-scratch"
"""The node name of the scratch qcow2 drive that holds the machine state of snapshots."""

LOG_DIR_ENV = "VMFAULT_LOG_DIR"
"""Environment variable: when set, every machine keeps its serial console log and QEMU's
output in this directory (`{name}-{pid}-{n}.console.log` and `.qemu.log`) after it closes."""


class Accel(enum.StrEnum):
    """How QEMU executes guest code."""

    TCG = "tcg"
    """Software translation: works everywhere; the mode tests and benchmarks use."""
    KVM = "kvm"
    """Hardware virtualisation; only where a probe showed that it boots a guest."""
    AUTO = "auto"
    """KVM if the probe shows it works on this host, else TCG (with a one-line reason)."""


@dataclass(frozen=True)
class SocketPaths:
    """Unix sockets vmfault listens on; QEMU connects to each one as a client."""

    qmp: Path
    gdb: Path
    console: Path
    channel: Path


@dataclass(frozen=True)
class RamFile:
    """Guest RAM backed by a host file (`memory-backend-file`).

    `shared`: the guest writes the file itself (a template being made: what it holds is
    the guest's RAM). Otherwise the file is mapped copy-on-write (a clone of a template):
    pages the guest never writes stay the file's, shared by every clone in the host's page
    cache, and the file is never written.
    """

    path: Path
    shared: bool


@dataclass(frozen=True)
class Nic:
    """A virtio network card whose frames go to a datagram socket the caller owns.

    `fd` is one end of a Unix datagram socket pair (or a connected datagram socket),
    inherited by QEMU under the same number (`-netdev dgram,local.type=fd`): each Ethernet
    frame the guest sends is one datagram on it, and each datagram written to its peer is
    one frame the guest receives. Nothing reaches the host's network. `mac` is the card's
    address (`52:54:00:...`).
    """

    mac: str
    fd: int


@dataclass(frozen=True)
class MachineConfig:
    """Everything needed to start one guest. Plain data: hashable, comparable, reusable.

    `append` is added to the kernel command line after vmfault's own parameters.
    `ram_mib` is guest RAM in MiB (this kernel needs >= 96). `deterministic` turns on
    `-icount shift=0,sleep=off` and a guest RTC on the virtual clock, which makes runs
    repeatable instruction for instruction (at about half the speed). `arch` picks the
    QEMU binary and machine (`machine_type` and `qemu_binary` left empty take the arch's).
    """

    kernel: Path | None
    """The kernel to boot; None for a machine that starts from a saved state (`loadvm`)."""
    initrd: Path | None = None
    append: str = ""
    ram_mib: int = 128
    cpus: int = 1
    accel: Accel = Accel.TCG
    machine_type: str = ""
    deterministic: bool = False
    disk: Path | None = None
    disks: tuple[GuestDisk, ...] = ()
    """Virtio disks, in order (vda, vdb, ...) (`vmfault.machine.disks`)."""
    tap_disks: bool = True
    """Serve the disks through taps (`Machine.disk_tap`: faults possible); False: qcow2
    overlays QEMU serves itself."""
    snapshot_drive_mib: int = 64
    incoming: Path | None = None
    """Start from a saved state file (see `Machine.save_state_file`) instead of booting."""
    ram_file: RamFile | None = None
    """Guest RAM in a host file instead of anonymous memory (templates and their clones)."""
    snapshot_drive: Path | None = None
    """A qcow2 file to copy as the snapshot drive instead of a new empty one (a template's
    device state lives in its internal snapshots)."""
    loadvm: str | None = None
    """At launch, load this internal snapshot of `snapshot_drive` before anything runs,
    leaving RAM as `ram_file` holds it (migration capability `x-ignore-shared`): a clone
    of a template, running from the template's state in milliseconds."""
    console_log: Path | None = None
    """Where the whole serial console transcript goes; None keeps it in the run directory
    (or in `$VMFAULT_LOG_DIR`, which gets a copy in any case)."""
    qemu_binary: str = ""
    nic: Nic | None = None
    """A network card joined to a socket of the caller's (None: no network card)."""
    extra_args: tuple[str, ...] = field(default=())
    host_cpus: tuple[int, ...] = ()
    """Host cores every thread of QEMU is pinned to (`os.sched_setaffinity`); (): not
    pinned, the host's scheduler places it."""
    arch: Arch = DEFAULT_ARCH
    """The guest architecture."""

    def __post_init__(self) -> None:
        platform = self.arch.platform
        if not self.machine_type:
            object.__setattr__(self, "machine_type", platform.machine_type)
        if not self.qemu_binary:
            object.__setattr__(self, "qemu_binary", platform.qemu_binary)

    @property
    def pauses_on_reset(self) -> bool:
        """Whether a guest reset (or power-off) pauses the VM (`SHUTDOWN` event, status
        `shutdown`) instead of ending QEMU: aarch64, whose panics arrive that way."""
        return self.arch is Arch.AARCH64

    def kernel_cmdline(self) -> str:
        """The full kernel command line: vmfault's fixed part, then `append`."""
        # nokaslr and norandmaps keep kernel and process addresses the same on every boot,
        # so faults aimed at an address mean the same thing in every experiment.
        console = self.arch.platform.console
        base = f"console={console} nokaslr norandmaps panic=-1 oops=panic"
        if self.arch is Arch.X86_64:
            base += " reboot=t"  # a reset by triple fault: no firmware to ask
        return f"{base} {self.append}".strip()


def _machine_option(config: MachineConfig) -> str:
    if config.machine_type == "microvm":
        # No option ROMs and an ACPI table for pvpanic; the ISA serial port is the console.
        return "microvm,x-option-roms=off,isa-serial=on,acpi=on"
    if config.machine_type == "virt":
        # No random seeds in the device tree: they would differ between deterministic runs.
        return "virt,dtb-randomness=off"
    return config.machine_type


def _cpu_model(config: MachineConfig, accel: Accel) -> str:
    model = "host" if accel is not Accel.TCG else config.arch.platform.tcg_cpu
    if config.deterministic and config.arch is Arch.X86_64:
        # TCG's RDRAND/RDSEED return host randomness: the one input icount cannot replay.
        model += ",-rdrand,-rdseed"
    return model


def _channel_and_panic(config: MachineConfig, sockets: SocketPaths) -> list[str]:
    """The result channel and how guest panics reach QEMU, per architecture.

    x86-64: the isa-debugcon port and pvpanic (`GUEST_PANICKED`, the VM paused), a reset
    (a triple fault) ends QEMU (`-no-reboot`). aarch64 has neither port I/O nor a pvpanic
    driver in Debian's installer kernel: the channel is ARM semihosting from user space
    (SYS_WRITE0/SYS_WRITEC to a chardev), and a panic (`panic=-1`) resets the guest
    through PSCI, which pauses the VM with a `SHUTDOWN` event (reason guest-reset).
    """
    chardev = ["-chardev", f"socket,id=vmf-chan,path={sockets.channel}"]
    if config.arch is Arch.AARCH64:
        return [
            *chardev,
            "-semihosting-config",
            "enable=on,target=native,userspace=on,chardev=vmf-chan",
            "-action",
            "panic=pause,reboot=shutdown,shutdown=pause",
        ]
    return [
        "-no-reboot",
        *chardev,
        "-device",
        "isa-debugcon,iobase=0xe9,chardev=vmf-chan",
        "-device",
        "pvpanic",
        "-action",
        "panic=pause",
    ]


def guest_tsc_khz(config: MachineConfig, accel: Accel, host_tsc_khz: int | None) -> int | None:
    """The guest's TSC rate in kHz, when vmfault knows it better than the guest could.

    Under TCG the guest calibrates its TSC against the emulated PIT, which fails on a busy
    host ("Unable to calibrate against PIT") and can hang the boot. The rate is known:
    icount runs the TSC at 1 GHz (one instruction per ns at shift=0), plain TCG at the
    host's TSC rate. Under KVM the guest calibrates correctly on its own.
    """
    if accel is not Accel.TCG or config.arch is not Arch.X86_64:
        return None  # aarch64's generic timer runs at a rate the device tree states
    if config.deterministic:
        return 1_000_000
    return host_tsc_khz


def host_tsc_khz(cpuinfo: str) -> int | None:
    """The host TSC rate in kHz from /proc/cpuinfo text, if the CPU's TSC is invariant."""
    flags = re.search(r"^flags\s*:(.*)$", cpuinfo, re.MULTILINE)
    mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)$", cpuinfo, re.MULTILINE)
    if flags is None or mhz is None or "constant_tsc" not in flags.group(1).split():
        return None
    return round(float(mhz.group(1)) * 1000)


def qemu_argv(
    config: MachineConfig,
    accel: Accel,
    sockets: SocketPaths,
    scratch: Path,
    *,
    tsc_khz: int | None = None,
) -> list[str]:
    """The QEMU argument vector for `config`, executing with `accel` (not AUTO).

    The guest starts paused (`-S`); every control channel is a Unix socket that QEMU
    connects to. `scratch` is the qcow2 file that holds internal snapshots; the disks'
    files and taps are beside it (`vmfault.machine.disks.prepare_disk_files`). `tsc_khz`, if
    given, tells the guest kernel its TSC rate (see `guest_tsc_khz`).
    """
    if accel is Accel.AUTO:
        raise ValueError("resolve Accel.AUTO before building a command line")
    machine = _machine_option(config)
    memory: list[str] = []
    if config.ram_file is not None:
        share = "on" if config.ram_file.shared else "off"
        memory = [
            "-object",
            f"memory-backend-file,id={RAM_BACKEND_ID},size={config.ram_mib}M,"
            f"mem-path={config.ram_file.path},share={share}",
        ]
        machine += f",memory-backend={RAM_BACKEND_ID}"
    argv = [
        config.qemu_binary,
        "-M",
        machine,
        "-accel",
        accel.value,
        "-cpu",
        _cpu_model(config, accel),
        "-smp",
        str(config.cpus),
        "-m",
        f"{config.ram_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        *memory,
        "-chardev",
        f"socket,id=vmf-qmp,path={sockets.qmp}",
        "-mon",
        "chardev=vmf-qmp,mode=control",
        "-chardev",
        f"socket,id=vmf-gdb,path={sockets.gdb}",
        "-gdb",
        "chardev:vmf-gdb",
        "-chardev",
        f"socket,id=vmf-con,path={sockets.console}",
        "-serial",
        "chardev:vmf-con",
        *_channel_and_panic(config, sockets),
        "-drive",
        f"if=none,id=vmf-snap,node-name={SCRATCH_NODE},format=qcow2,cache=unsafe,file={scratch}",
    ]
    if config.kernel is not None:
        # A machine started from a template has no kernel to load: a reset (which loadvm
        # makes first) would write the kernel's segments back over the restored RAM.
        append = config.kernel_cmdline() + ("" if tsc_khz is None else f" tsc_early_khz={tsc_khz}")
        argv += ["-kernel", str(config.kernel), "-append", append]
    if config.initrd is not None and config.kernel is not None:
        argv += ["-initrd", str(config.initrd)]
    if config.deterministic:
        argv += [
            "-icount",
            "shift=0,sleep=off",
            "-rtc",
            f"clock=vm,base={DETERMINISTIC_RTC_BASE}",
        ]
    if config.disk is not None:
        bus_device = virtio_device(config.machine_type, "blk")
        argv += [
            "-drive",
            f"if=none,id=vmf-disk,format=raw,file={config.disk}",
            "-device",
            f"{bus_device},drive=vmf-disk",
        ]
    if config.nic is not None:
        nic_device = virtio_device(config.machine_type, "net")
        argv += [
            "-netdev",
            f"dgram,id=vmf-net,local.type=fd,local.str={config.nic.fd}",
            "-device",
            f"{nic_device},netdev=vmf-net,mac={config.nic.mac}",
        ]
    argv += disk_argv(config.disks, scratch.parent, config.machine_type, tapped=config.tap_disks)
    if config.incoming is not None:
        argv += ["-incoming", "defer"]
    argv += list(config.extra_args)
    return argv
