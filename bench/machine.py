"""Machine-layer speed: boot, restore, register and physical-memory flips (TCG).

Prints medians over >= 20 runs and the ratios that matter; asserts nothing.
Targets: boot to ready <= 1.5 s, restore <= 30 ms, register flip <= 0.2 ms,
physical flip <= 0.3 ms.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from vmfault.machine import Machine
from vmfault.session import machine_config, prepare_image

RUNS = 20
FLIPS = 2000
SCRATCH = 0x7000000


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def timed(action: Callable[[], object]) -> float:
    begun = time.perf_counter()
    action()
    return time.perf_counter() - begun


def main() -> None:
    image = prepare_image()
    config = machine_config(image, ["/bin/busybox", "true"])

    boots: list[float] = []
    for _ in range(RUNS):
        begun = time.perf_counter()
        with Machine(config, name="bench-boot") as vm:
            vm.channel.wait("hello", timeout_s=60)
            boots.append(time.perf_counter() - begun)

    with Machine(config, name="bench") as vm:
        vm.channel.wait("idle", timeout_s=60)
        snap = vm.save_snapshot("bench")
        restores, verified, saves = [], [], []
        for _ in range(RUNS):
            vm.cont()
            restores.append(timed(lambda: vm.restore_snapshot(snap)))
        for _ in range(RUNS):
            vm.cont()
            verified.append(timed(lambda: vm.restore_snapshot(snap, verify=True)))
        for i in range(5):
            saves.append(timed(partial(vm.save_snapshot, f"s{i}")))

        gdb = vm.gdb
        vm.cont()

        def register_flip() -> None:
            # Successive flips of the same bit undo each other, so the idle kernel runs
            # with a wrong xmm15 (which it never uses) for at most one round trip.
            gdb.halt()
            value = gdb.read_register("xmm15")
            gdb.write_register("xmm15", value ^ (1 << 7))
            gdb.cont()

        def physical_flip() -> None:
            gdb.halt()
            byte = gdb.read_memory(SCRATCH, 1, physical=True)[0]
            gdb.write_memory(SCRATCH, bytes([byte ^ 0x10]), physical=True)
            gdb.cont()

        reg = [timed(register_flip) for _ in range(FLIPS)]
        phys = [timed(physical_flip) for _ in range(FLIPS)]
        status = vm.qmp("query-status")["status"]

        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state"
            vm.restore_snapshot(snap)
            file_save = timed(lambda: vm.save_state_file(state))
            incoming = dataclasses.replace(config, incoming=state)
            file_starts = []
            for _ in range(5):
                begun = time.perf_counter()
                with Machine(incoming, name="bench-incoming"):
                    file_starts.append(time.perf_counter() - begun)

    boot = median_ms(boots)
    restore = median_ms(restores)
    rows = [
        ("boot to ready (launch -> agent hello)", boot, "ms", 1500),
        ("restore (HMP loadvm, internal qcow2)", restore, "ms", 30),
        ("restore + verify registers", median_ms(verified), "ms", None),
        ("save (HMP savevm)", median_ms(saves), "ms", None),
        ("save to state file (migration)", file_save * 1e3, "ms", None),
        ("start new process from state file", median_ms(file_starts), "ms", None),
        ("register bit flip round trip (xmm15)", median_ms(reg), "ms", 0.2),
        ("physical byte flip round trip", median_ms(phys), "ms", 0.3),
    ]
    print(f"machine benchmarks (TCG, 128 MiB microvm, medians of {RUNS}+ runs)")
    for label, value, unit, target in rows:
        goal = "" if target is None else f"  target <= {target} {unit}"
        verdict = "" if target is None else ("  ok" if value <= target else "  MISSED")
        print(f"  {label:42s} {value:9.3f} {unit}{goal}{verdict}")
    print(f"  guest state after the flip loops: {status}")
    print(f"  ratio restore/boot: {restore / boot:.4f} (restore is {boot / restore:.0f}x faster)")


if __name__ == "__main__":
    main()
