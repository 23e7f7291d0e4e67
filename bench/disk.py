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

RUNS = 12
ARMS = 200
ARGV = ("diskio", "--blocks", "256")
DISK = fresh_disk("data", "64M")


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def _runs(machine: GuestMachine, prepare: Callable[[], None] = lambda: None) -> list[float]:
    """Host seconds of RUNS fault-free runs restored from the snapshot."""
    times = []
    for _ in range(RUNS):
        machine.restore()
        prepare()
        times.append(run_to_exit([machine], timeout_s=120)[machine.name].host_s)
    return times


def _testbed(image: GuestImage, argv: tuple[str, ...], *, disks: bool, tapped: bool) -> Testbed:
    spec = MachineSpec("guest", argv, disks=(DISK,) if disks else (), tap_disks=tapped)
    return Testbed(image, [spec])


def _restores(machine: GuestMachine) -> list[float]:
    times = []
    for _ in range(RUNS):
        begun = time.perf_counter()
        machine.restore()
        times.append(time.perf_counter() - begun)
    return times


def main() -> None:
    image = prepare_image()
    print(f"disk fault layer on {' '.join(ARGV)} ({DISK.spelling}), TCG, medians of {RUNS} runs")
    with _testbed(image, ARGV, disks=True, tapped=False) as testbed:
        plain = _runs(testbed.machine())
        restore_untapped = _restores(testbed.machine())
    with _testbed(image, ARGV, disks=True, tapped=True) as testbed:
        machine = testbed.machine()
        tapped = _runs(machine)
        tap = machine.vm.disk_tap(DISK.name)
        far = Sectors.parse(f"{DISK.sectors - 8}-{DISK.sectors - 1}")
        fault = DiskFault("bad-block", sectors=far)

        def arm() -> None:
            tap.set_policy(DiskPolicy(fault, first=far.first, last=far.last,
                                      rng=random.Random(1)))  # fmt: skip

        armed = _runs(machine, arm)
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
        restore_tapped = _restores(machine)
    with _testbed(image, ("checksum",), disks=False, tapped=False) as testbed:
        restore_bare = _restores(testbed.machine())

    base = _median_ms(plain)
    print(f"  qcow2 overlay (QEMU)            {base:8.1f} ms")
    print(f"  tap, no fault                   {_median_ms(tapped):8.1f} ms  "
          f"x{_median_ms(tapped) / base:.2f}")  # fmt: skip
    print(f"  tap, a fault armed, not reached {_median_ms(armed):8.1f} ms  "
          f"x{_median_ms(armed) / base:.2f} (x{_median_ms(armed) / _median_ms(tapped):.2f} "
          "of the tap alone)")  # fmt: skip
    print(f"arming a fault (set a tap's policy): {_median_ms(arming):.3f} ms, median of {ARMS}")
    print(f"corrupting a stored word (read, write, read back): {_median_ms(corrupting):.3f} ms")
    bare, untapped, tapped_ms = (
        _median_ms(times) for times in (restore_bare, restore_untapped, restore_tapped)
    )
    print(f"restore: no disk (loadvm) {bare:.1f} ms, untapped disk (loadvm) {untapped:.1f} ms, "
          f"tapped disk (snapshot-load job + tap) {tapped_ms:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
