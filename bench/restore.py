"""Restore speed: RAM templates against loadvm, measured in the same run on checksum.

Each restore follows a real run of the workload from the snapshot to its exit, so it puts
back what a run writes. Prints medians, the 90th percentile, the ratio of the two methods,
what a clone costs to start, how many bytes a restore copies back, and the cost and result
of verified restores; asserts nothing. Targets: template restore <= 5 ms median, a worker
(clone) ready in < 0.2 s, boot to ready <= 1.5 s.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

from vmfault.errors import RestoreMismatchError
from vmfault.experiment.testbed import VERIFY_EVERY, GuestMachine, RestoreMethod, Testbed
from vmfault.guest.image import GuestImage
from vmfault.session import prepare_image
from vmfault.session.guest import GuestSession

RUNS = 40
VERIFIED = 8
BOOTS = 5
CLONES = 10
ARGV = ("checksum",)


def ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"median {statistics.median(ordered) * 1e3:7.2f} ms  p90 {p90 * 1e3:7.2f} ms"


def timed(action: Callable[[], object]) -> float:
    begun = time.perf_counter()
    action()
    return time.perf_counter() - begun


def restores(machine: GuestMachine, runs: int, *, verify: bool = False) -> list[float]:
    """Restore after each of `runs` runs of the workload to its exit."""
    samples = []
    machine.restore()
    for _ in range(runs):
        machine.session.finish(timeout_s=60)
        samples.append(timed(lambda: machine.restore(verify=verify)))
    return samples


def boots(image: GuestImage) -> list[float]:
    samples = []
    for _ in range(BOOTS):
        with GuestSession(image, ARGV) as session:
            samples.append(timed(session.start))
    return samples


def main() -> None:
    image = prepare_image()
    print(f"restore (checksum, 128 MiB guest, TCG); {RUNS} restores per method, each after "
          "a run to the workload's exit")  # fmt: skip
    boot = boots(image)
    print(f"  boot to ready (launch -> workload start)   {ms(boot)}   target <= 1500 ms")

    with Testbed.single(image, ARGV, restore=RestoreMethod.LOADVM) as testbed:
        loadvm = restores(testbed.machine(), RUNS)

    with Testbed.single(image, ARGV) as testbed:
        machine = testbed.machine()
        template = machine.template
        assert template is not None
        clone = restores(machine, RUNS)
        written = machine.vm.ram_written_bytes or 0
        verified = restores(machine, VERIFIED, verify=True)
        clone_starts = []
        for _ in range(CLONES):
            with GuestSession(image, ARGV, template=template) as session:
                clone_starts.append(timed(session.start))
        try:
            machine.session.finish(timeout_s=60)
            machine.restore(verify=True)
            check = "passed"
        except RestoreMismatchError as exc:
            check = f"FAILED: {exc.one_line()}"

    median_loadvm = statistics.median(loadvm)
    median_clone = statistics.median(clone)
    verdict = "ok" if median_clone <= 0.005 else "MISSED"
    print(f"  restore, loadvm (internal qcow2 snapshot)  {ms(loadvm)}")
    print(f"  restore, template clone                    {ms(clone)}   target <= 5 ms: {verdict}")
    print(f"  ratio loadvm / template: {median_loadvm / median_clone:.1f}x "
          f"(template restore copies back {written / 1024:.0f} KiB of written pages)")  # fmt: skip
    print(f"  verified restore (registers + all RAM)    {ms(verified)}   "
          f"(one in {VERIFY_EVERY} restores, and after every fault that wrote code)")  # fmt: skip
    ready = statistics.median(clone_starts)
    print(f"  clone start (spawn -> halted at the start) {ms(clone_starts)}   "
          f"target < 200 ms: {'ok' if ready < 0.2 else 'MISSED'}")  # fmt: skip
    print(f"  verification after {RUNS + VERIFIED + 1} restores: {check}")


if __name__ == "__main__":
    main()
