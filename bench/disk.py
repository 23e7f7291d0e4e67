"""Cost of the disk fault layer on `diskio`, and of arming a disk fault per experiment.

- The fault layer: a disk served by its tap (vmfault's NBD server, which every disk fault
  needs) against the same disk as a qcow2 overlay QEMU serves itself, and the tap with an
  armed fault no request reaches (bad blocks on sectors diskio never touches): medians of
  fault-free runs restored from the snapshot, and their ratios.
- Arming: setting a tap's policy (what a fault in requests does at its trigger), and a
  corruption's read, write and read back of a stored word (the guest halted).
- Restoring a machine: without disks (HMP loadvm), with an untapped disk (loadvm, the
  overlay holds the snapshot) and with a tapped one (the snapshot-load job, then the tap).

Prints figures; asserts nothing.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable

from vmfault.experiment.kinds.disk import DiskPolicy
from vmfault.experiment.testbed import GuestMachine, MachineSpec, Testbed, run_to_exit
from vmfault.faults import DiskFault, Sectors
from vmfault.guest.image import GuestImage
from vmfault.machine.disks import fresh_disk
from vmfault.session import prepare_image

RUNS = 21
ARMS = 200
ARGV = ("diskio", "--blocks", "256")
DISK = fresh_disk("data", "64M")


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def _run(machine: GuestMachine, prepare: Callable[[], None] = lambda: None) -> float:
    """Host seconds of one fault-free run restored from the snapshot."""
    machine.restore()
    prepare()
    return run_to_exit([machine], timeout_s=120)[machine.name].host_s


def _restore(machine: GuestMachine) -> float:
    begun = time.perf_counter()
    machine.restore()
    return time.perf_counter() - begun


def _testbed(image: GuestImage, argv: tuple[str, ...], *, disks: bool, tapped: bool) -> Testbed:
    spec = MachineSpec("guest", argv, disks=(DISK,) if disks else (), tap_disks=tapped)
    return Testbed(image, [spec])


def main() -> None:
    image = prepare_image()
    print(f"disk fault layer on {' '.join(ARGV)} ({DISK.spelling}), TCG, medians of {RUNS} "
          "runs, interleaved (the host's speed drifts)")  # fmt: skip
    with (
        _testbed(image, ARGV, disks=True, tapped=False) as untapped_bed,
        _testbed(image, ARGV, disks=True, tapped=True) as tapped_bed,
        _testbed(image, ("checksum",), disks=False, tapped=False) as bare_bed,
    ):
        untapped, machine, bare = untapped_bed.machine(), tapped_bed.machine(), bare_bed.machine()
        tap = machine.vm.disk_tap(DISK.name)
        far = Sectors.parse(f"{DISK.sectors - 8}-{DISK.sectors - 1}")
        fault = DiskFault("bad-block", sectors=far)

        def arm() -> None:
            tap.set_policy(DiskPolicy(fault, first=far.first, last=far.last,
                                      rng=random.Random(1)))  # fmt: skip

        plain: list[float] = []
        tapped: list[float] = []
        armed: list[float] = []
        restores: dict[str, list[float]] = {"bare": [], "untapped": [], "tapped": []}
        kinds: list[tuple[list[float], Callable[[], float]]] = [
            (plain, lambda: _run(untapped)),
            (tapped, lambda: _run(machine)),
            (armed, lambda: _run(machine, arm)),
        ]
        for index in range(RUNS):
            turn = index % len(kinds)  # each takes each place in turn: no order favoured
            for times, run in kinds[turn:] + kinds[:turn]:
                times.append(run())
            for name, which in (("bare", bare), ("untapped", untapped), ("tapped", machine)):
                restores[name].append(_restore(which))
        machine.restore()
        arming = []
        for _ in range(ARMS):
            begun = time.perf_counter()
            arm()
            arming.append(time.perf_counter() - begun)
        corrupting = []
        for offset in range(0, ARMS * 512, 512):
            begun = time.perf_counter()
            word = int.from_bytes(tap.read(offset, 8), "little")
            tap.write(offset, (word ^ 1).to_bytes(8, "little"))
            tap.read(offset, 8)
            corrupting.append(time.perf_counter() - begun)

    base = _median_ms(plain)
    print(f"  qcow2 overlay (QEMU)            {base:8.1f} ms")
    print(f"  tap, no fault                   {_median_ms(tapped):8.1f} ms  "
          f"x{_median_ms(tapped) / base:.2f}")  # fmt: skip
    print(f"  tap, a fault armed, not reached {_median_ms(armed):8.1f} ms  "
          f"x{_median_ms(armed) / base:.2f} (x{_median_ms(armed) / _median_ms(tapped):.2f} "
          "of the tap alone)")  # fmt: skip
    print(f"arming a fault (set a tap's policy): {_median_ms(arming):.3f} ms, median of {ARMS}")
    print(f"corrupting a stored word (read, write, read back): {_median_ms(corrupting):.3f} ms")
    bare_ms, untapped_ms, tapped_ms = (_median_ms(restores[k]) for k in restores)
    print(f"restore: no disk (loadvm) {bare_ms:.1f} ms, untapped disk (loadvm) {untapped_ms:.1f} "
          f"ms, tapped disk (snapshot-load job + tap) {tapped_ms:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
