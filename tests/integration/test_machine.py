"""The machine layer against real QEMU guests: snapshots, memory map, panics, lifecycle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vmfault.errors import SnapshotError
from vmfault.guest.image import GuestImage
from vmfault.guest.symbols import KernelSymbols
from vmfault.machine import Machine, Runstate
from vmfault.machine.rundir import run_root, sweep_stale
from vmfault.session import GuestSession, machine_config

pytestmark = pytest.mark.vm

SCRATCH = 0x7000000  # 112 MiB: free RAM in an idle 128 MiB guest


def wait_gone(pid: int, timeout_s: float = 10.0) -> bool:
    """True once process `pid` no longer exists (awaited through a pidfd, no polling)."""
    import select

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], timeout_s)[0])
    finally:
        os.close(fd)


def test_restore_undoes_a_memory_change(machine: Machine) -> None:
    machine.halt()
    original = machine.gdb.read_memory(SCRATCH, 64, physical=True)
    snap = machine.save_snapshot("before", verify_ranges=[(SCRATCH, 4096)])
    flipped = bytes([original[0] ^ 0x80]) + original[1:]
    machine.gdb.write_memory(SCRATCH, flipped, physical=True)
    assert machine.gdb.read_memory(SCRATCH, 64, physical=True) == flipped
    machine.restore_snapshot(snap, verify=True)
    assert machine.gdb.read_memory(SCRATCH, 64, physical=True) == original


def test_verify_detects_a_state_that_differs(machine: Machine) -> None:
    machine.halt()
    snap = machine.save_snapshot("verify", verify_ranges=[(SCRATCH, 4096)])
    byte = machine.gdb.read_memory(SCRATCH, 1, physical=True)[0]
    machine.gdb.write_memory(SCRATCH, bytes([byte ^ 1]), physical=True)
    with pytest.raises(SnapshotError, match="RAM 0x7000000"):
        machine.verify_snapshot(snap)


def test_restore_rewinds_registers(machine: Machine) -> None:
    machine.halt()
    snap = machine.save_snapshot("regs")
    rip = machine.gdb.read_register("rip")
    machine.cont()
    machine.halt()
    machine.restore_snapshot(snap, verify=True)
    assert machine.gdb.read_register("rip") == rip


def test_memory_map_comes_from_qemu(machine: Machine) -> None:
    memory = machine.memory_map()
    assert 127 * 2**20 < memory.ram_bytes <= 128 * 2**20
    assert memory.region_of(SCRATCH) is not None
    assert memory.region_of(SCRATCH).kind == "ram"  # type: ignore[union-attr]


def test_kernel_text_range_maps_to_physical(
    machine: Machine, kernel_symbols: KernelSymbols
) -> None:
    text = kernel_symbols.text()
    machine.halt()
    virtual = machine.gdb.read_memory(text.start, 4096)
    physical = machine.gdb.read_memory(text.physical_start, 4096, physical=True)
    assert virtual == physical
    assert kernel_symbols.data().size > 0


def test_large_physical_read_uses_a_dump(machine: Machine) -> None:
    machine.halt()
    chunk = machine.gdb.read_memory(0x1000000, 4096, physical=True)
    assert machine.read_physical(0x1000000, 2 * 2**20)[:4096] == chunk


def test_kernel_panic_is_a_qmp_event(image: GuestImage) -> None:
    argv = ["/bin/busybox", "sh", "-c", "echo c > /proc/sysrq-trigger"]
    with Machine(machine_config(image, argv), name="panic") as vm:
        event = vm.wait_event("GUEST_PANICKED", timeout_s=60)
        assert event is not None, vm.console.transcript()[-2000:]
        assert vm.qmp("query-status")["status"] == "guest-panicked"
        assert "Kernel panic" in vm.console.transcript()
        stop = vm.wait_stop(timeout_s=5)
        assert stop is not None


def test_state_file_starts_a_new_process(image: GuestImage, tmp_path: Path) -> None:
    state = tmp_path / "golden.state"
    with GuestSession(image, ["checksum"]) as session:
        session.start()
        session.machine.save_state_file(state)
        expected = session.finish(timeout_s=60).result
    config = machine_config(image, ["checksum"])
    import dataclasses

    with Machine(dataclasses.replace(config, incoming=state), name="incoming") as vm:
        frame = vm.channel.wait("exit", timeout_s=60)
        assert frame is not None and frame.text.startswith("exited 0 ")
        stdout = b"".join(f.payload for f in vm.channel.frames if f.kind == "out")
    assert stdout == expected.stdout


def test_exception_inside_with_cleans_up(image: GuestImage) -> None:
    with (
        pytest.raises(RuntimeError),
        Machine(machine_config(image, ["/bin/busybox", "true"])) as vm,
    ):
        pid, run_dir = vm.pid, vm.run_dir
        raise RuntimeError("boom")
    assert vm.runstate is Runstate.CLOSED
    assert pid is not None and wait_gone(pid, 1.0)
    assert not run_dir.exists()


def _spawn_owner(image: GuestImage) -> subprocess.Popen[str]:
    """A Python process that launches a machine, prints QEMU's pid and run dir, then waits."""
    script = textwrap.dedent(f"""
        import sys, time
        from vmfault.machine import Machine
        from vmfault.session import machine_config
        from vmfault.guest.image import load_image
        from pathlib import Path
        image = load_image(Path({str(image.root)!r}))
        with Machine(machine_config(image, ["/bin/busybox", "true"])) as vm:
            print(vm.pid, vm.run_dir, flush=True)
            time.sleep(600)
    """)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_qemu_dies_with_its_owner(image: GuestImage, sig: signal.Signals) -> None:
    owner = _spawn_owner(image)
    assert owner.stdout is not None
    pid_text, run_dir = owner.stdout.readline().split()
    owner.send_signal(sig)
    owner.wait(timeout=30)
    assert wait_gone(int(pid_text)), f"QEMU outlived its owner after {sig.name}"
    if sig is signal.SIGINT:  # KeyboardInterrupt unwinds the with block: all cleaned up
        assert not Path(run_dir).exists()
    else:  # killed outright, the owner could not clean up: the next machine sweeps it
        sweep_stale(run_root())
        assert not Path(run_dir).exists()
