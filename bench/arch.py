"""The two guest architectures side by side: boot, restore, a register flip, the result channel.

For x86-64 (-M microvm) and aarch64 (-M virt, cortex-a76), under TCG: boot to the
workload's start; restores after a run of checksum to its exit, through a RAM template and
through loadvm; a register bit flip round trip (halt, read, write, continue) on an idle
guest. Then what the result channel costs the guest, per 4 KiB frame: isa-debugcon
(x86-64), ARM semihosting (aarch64's choice) and virtio-console (the alternative that
needs a driver), in guest instructions (icount mode, where guest time is instructions) and
in guest time under plain TCG. Prints medians and ratios; asserts nothing.
Targets (x86-64): boot <= 1.5 s, template restore <= 5 ms, register flip <= 0.2 ms.
"""

from __future__ import annotations

import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vmfault.arch import Arch
from vmfault.experiment.testbed import GuestMachine, RestoreMethod, Testbed
from vmfault.guest.image import GuestImage, ImageSpec, UserWorkload
from vmfault.machine import Machine
from vmfault.session import GuestSession, machine_config, prepare_image

BOOTS = 5
RESTORES = 20
FLIPS = 1000
FRAMES = 200
FRAME_BYTES = 4096
ARGV = ("checksum",)
FLIP_REGISTER = {Arch.X86_64: "xmm15", Arch.AARCH64: "v31"}
"""A register the idle kernel never uses: successive flips of one bit undo each other."""
# A null chardev never reports itself open, and the guest's writes to a port whose host
# side is closed block for good: the port's chardev is a file, /dev/null.
VIRTIO_CONSOLE = (
    "-device", "virtio-serial-device", "-chardev", "file,id=vmf-bench,path=/dev/null",
    "-device", "virtserialport,chardev=vmf-bench,name=bench",
)  # fmt: skip

CHANNEL_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__)
#include <sys/io.h>
#endif

static char frame[4097];

static void channel(const char *mode, int fd, size_t size)
{
    if (strcmp(mode, "virtio") == 0) {
        if (write(fd, frame, size) != (ssize_t)size)
            exit(2);
        return;
    }
#if defined(__x86_64__)
    const char *p = frame;
    __asm__ volatile("rep outsb" : "+S"(p), "+c"(size) : "d"((unsigned short)0xe9) : "memory");
#else
    register long x0 __asm__("x0") = 4; /* SYS_WRITE0 */
    register const char *x1 __asm__("x1") = frame;
    __asm__ volatile("hlt #0xf000" : "+r"(x0) : "r"(x1) : "memory");
#endif
}

int main(int argc, char **argv)
{
    const char *mode = argv[1];
    int frames = atoi(argv[2]);
    size_t size = (size_t)atoi(argv[3]);
    int fd = -1;
    struct timespec t0, t1;
    memset(frame, 'x', size);
    /* The port appears a little after boot (the host's port-add message is handled in a
     * work queue: 4 ms of guest time in icount mode); wait up to 5 s for it. */
    for (int tries = 0; strcmp(mode, "virtio") == 0 && fd < 0; tries++) {
        if ((fd = open("/dev/vport0p1", O_WRONLY)) < 0 && tries == 5000)
            return 3;
        if (fd < 0)
            usleep(1000);
    }
#if defined(__x86_64__)
    if (strcmp(mode, "virtio") != 0 && ioperm(0xe9, 1, 1) != 0)
        return 4;
#endif
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < frames; i++)
        channel(mode, fd, size);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long long ns = (t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec);
    printf("%lld\n", ns / frames);
    return 0;
}
"""


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def timed(action: Callable[[], object]) -> float:
    begun = time.perf_counter()
    action()
    return time.perf_counter() - begun


def restores(machine: GuestMachine) -> list[float]:
    """Restore after each of RESTORES runs of the workload to its exit."""
    samples = []
    machine.restore()
    for _ in range(RESTORES):
        machine.session.finish(timeout_s=60)
        samples.append(timed(machine.restore))
    return samples


def register_flips(image: GuestImage) -> list[float]:
    name = FLIP_REGISTER[image.arch]
    with Machine(machine_config(image, ["/bin/busybox", "true"]), name="bench-flip") as vm:
        vm.channel.wait("idle", timeout_s=60)
        gdb = vm.gdb

        def flip() -> None:
            gdb.halt()
            gdb.write_register(name, gdb.read_register(name) ^ (1 << 7))
            gdb.cont()

        return [timed(flip) for _ in range(FLIPS)]


def channel_cost(image: GuestImage, mode: str, *, deterministic: bool) -> int:
    """Guest nanoseconds per frame (instructions in deterministic mode) of `mode`."""
    argv = ["chanbench", mode, str(FRAMES), str(FRAME_BYTES)]
    session = GuestSession(image, argv, deterministic=deterministic)
    if mode == "virtio":
        config = dataclasses.replace(session.machine.config, extra_args=VIRTIO_CONSOLE)
        session.machine = Machine(config, name="bench-virtio")
    with session:
        session.start()
        result = session.finish(timeout_s=120).result
    if result.exit_code != 0:
        raise RuntimeError(f"{mode} channel benchmark failed: exit {result.exit_code}")
    return int(result.stdout.split()[0])


def main() -> None:
    rows: dict[Arch, dict[str, float]] = {}
    costs: dict[Arch, dict[str, tuple[int, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="vmfault-bench-") as scratch:
        source = Path(scratch) / "chanbench.c"
        source.write_text(CHANNEL_C)
        for arch in Arch:
            image = prepare_image(ImageSpec(arch=arch))
            boots = []
            for _ in range(BOOTS):
                with GuestSession(image, ARGV) as session:
                    boots.append(timed(session.start))
            with Testbed.single(image, ARGV) as testbed:
                template = restores(testbed.machine())
            with Testbed.single(image, ARGV, restore=RestoreMethod.LOADVM) as testbed:
                loadvm = restores(testbed.machine())
            rows[arch] = {
                "boot to the workload's start": median_ms(boots),
                "restore, RAM template (after a run)": median_ms(template),
                "restore, loadvm (after a run)": median_ms(loadvm),
                "register bit flip round trip": median_ms(register_flips(image)),
            }
            bench = prepare_image(
                ImageSpec(user_workloads=(UserWorkload("chanbench", source),), arch=arch)
            )
            native = "debugcon" if arch is Arch.X86_64 else "semihosting"
            costs[arch] = {
                mode: (
                    channel_cost(bench, mode, deterministic=True),
                    channel_cost(bench, mode, deterministic=False),
                )
                for mode in (native, "virtio")
            }
    arches = list(Arch)
    print("two guest architectures under TCG (medians; x86-64 -M microvm, aarch64 -M virt)")
    print(f"  {'':42s}" + "".join(f"{arch.value:>12s}" for arch in arches) + "   aarch64/x86")
    for label in rows[Arch.X86_64]:
        values = [rows[arch][label] for arch in arches]
        print(
            f"  {label:42s}"
            + "".join(f"{value:9.3f} ms" for value in values)
            + f"   {values[1] / values[0]:8.2f}x"
        )
    print(f"result channel, per {FRAME_BYTES}-byte frame ({FRAMES} frames; guest side)")
    for arch in arches:
        for mode, (instructions, guest_ns) in costs[arch].items():
            print(
                f"  {arch.value:8s} {mode:12s} {instructions:10,d} guest instructions"
                f"  {guest_ns / 1e3:9.1f} us guest time"
            )


if __name__ == "__main__":
    main()
