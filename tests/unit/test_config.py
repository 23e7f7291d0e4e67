"""The QEMU command line built from a MachineConfig."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmfault.machine.config import Accel, MachineConfig, SocketPaths, qemu_argv

SOCKETS = SocketPaths(Path("/r/q"), Path("/r/g"), Path("/r/c"), Path("/r/d"))


def _argv(**changes: object) -> list[str]:
    config = MachineConfig(kernel=Path("/img/vmlinux"), initrd=Path("/img/initrd"), **changes)  # type: ignore[arg-type]
    return qemu_argv(config, Accel.TCG, SOCKETS, Path("/r/scratch.qcow2"))


def _option(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_default_machine_is_paused_microvm_with_pvpanic_and_snapshot_drive() -> None:
    argv = _argv()
    assert "-S" in argv
    assert _option(argv, "-M")[0].startswith("microvm")
    assert _option(argv, "-accel") == ["tcg"]
    assert "pvpanic" in _option(argv, "-device")
    assert _option(argv, "-action") == ["panic=pause"]
    assert any("format=qcow2" in d for d in _option(argv, "-drive"))
    assert "nokaslr" in _option(argv, "-append")[0]


def test_control_channels_are_unix_sockets_qemu_connects_to() -> None:
    chardevs = _option(_argv(), "-chardev")
    assert len(chardevs) == 4
    for spec in chardevs:
        assert spec.startswith("socket,")
        assert "server" not in spec and "host=" not in spec and "port=" not in spec


def test_deterministic_mode_sets_icount_and_vm_clock() -> None:
    argv = _argv(deterministic=True)
    assert _option(argv, "-icount") == ["shift=0,sleep=off"]
    assert _option(argv, "-rtc")[0].startswith("clock=vm,base=")
    assert "-icount" not in _argv()


def test_append_follows_fixed_parameters() -> None:
    cmdline = _option(_argv(append="vmfault.mode=run"), "-append")[0]
    assert cmdline.endswith("vmfault.mode=run")


def test_auto_must_be_resolved_first() -> None:
    config = MachineConfig(kernel=Path("/k"))
    with pytest.raises(ValueError, match="AUTO"):
        qemu_argv(config, Accel.AUTO, SOCKETS, Path("/s"))


CPUINFO = (
    "model name\t: AMD EPYC\ncpu MHz\t\t: 2596.098\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n"
)


def test_host_tsc_rate_from_cpuinfo() -> None:
    from vmfault.machine.config import host_tsc_khz

    assert host_tsc_khz(CPUINFO) == 2596098
    assert host_tsc_khz(CPUINFO.replace(" constant_tsc", "")) is None
    assert host_tsc_khz("flags: fpu\n") is None


def test_guest_is_told_its_tsc_rate_under_tcg() -> None:
    from vmfault.machine.config import guest_tsc_khz

    plain = MachineConfig(kernel=Path("/k"))
    icount = MachineConfig(kernel=Path("/k"), deterministic=True)
    assert guest_tsc_khz(plain, Accel.TCG, 2596098) == 2596098
    assert guest_tsc_khz(icount, Accel.TCG, 2596098) == 1_000_000  # 1 instruction per ns
    assert guest_tsc_khz(plain, Accel.KVM, 2596098) is None
    argv = qemu_argv(icount, Accel.TCG, SOCKETS, Path("/s"), tsc_khz=1_000_000)
    assert _option(argv, "-append")[0].endswith("tsc_early_khz=1000000")
