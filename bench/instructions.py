"""Cost of instruction-level work: profiling a function that executes about 10^6
instructions, and reaching the Nth dynamic instance of a class to corrupt its result.

Prints figures; asserts nothing. Target: a 10^6-instruction profile in seconds, not
minutes; reaching instance N costs one breakpoint stop per instance of that class, never
a single step per instruction before it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from vmfault.experiment.pipeline import Experimenter
from vmfault.faults import BitModel, FaultSpec, InstructionFault
from vmfault.guest.image import ImageSpec, UserWorkload
from vmfault.profile.workload import profile_instructions
from vmfault.session import GuestSession, prepare_image

KERNEL_C = """
#include <stdio.h>
#include <stdlib.h>

__attribute__((noipa)) double kernel(const double *x, int n)
{
    double sum = 0.0, weight = 1.0;
    for (int i = 0; i < n; i++) {
        sum += x[i] * weight;
        weight *= 1.0000001;
    }
    return sum;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 125000;
    double *x = malloc((size_t)n * sizeof *x);
    for (int i = 0; i < n; i++)
        x[i] = i * 0.5;
    printf("%.6f\\n", kernel(x, n));
    return 0;
}
"""
INSTANCES = (1, 10, 100, 1000, 10000)
REPEATS = 3
STEPS = 300


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        source = Path(scratch) / "kernel.c"
        source.write_text(KERNEL_C)
        image = prepare_image(ImageSpec(user_workloads=(UserWorkload("kernel", source),)))
    print("instruction-level cost (TCG); workload: a 125,000-iteration multiply-add loop")

    begun = time.perf_counter()
    profile = profile_instructions(image, ["kernel"], function="kernel")
    total_s = time.perf_counter() - begun
    print(
        f"  profile of kernel(): {profile.count('all'):,} instructions "
        f"(fadd {profile.count('fadd'):,}, fmul {profile.count('fmul'):,}) in "
        f"{total_s:.1f} s: logged run {profile.wall_s:.2f} s, counting "
        f"{profile.count_s:.2f} s ({profile.log_bytes / 1e6:.0f} MB of log), boot and golden "
        f"state {total_s - profile.wall_s - profile.count_s:.1f} s"
    )

    with Experimenter.single(image, ["kernel"]) as experimenter:
        golden = experimenter.golden
        assert golden is not None
        print(f"  golden run {golden.host_s * 1e3:.1f} ms")
        baseline = None
        for instance in INSTANCES:
            fault = InstructionFault("fadd", "kernel", instance=instance)
            spec = FaultSpec.of_instruction(fault, BitModel.parse("0"))
            costs = []
            for repeat in range(REPEATS):
                record = experimenter.run(spec, seed=1, index=repeat)
                assert record.injection.injected, record.reason
                # to the exec, then counting to the instance
                costs.append(record.phases_s["to_trigger"] + record.phases_s["inject"])
            cost = statistics.median(costs)
            baseline = cost if baseline is None else baseline
            per = (cost - baseline) / max(instance - 1, 1) * 1e3
            print(
                f"  reach fadd #{instance:<6,} {cost * 1e3:9.1f} ms"
                + ("" if instance == 1 else f"  ({per:.2f} ms per further instance)")
            )
    with GuestSession(image, ["kernel"]) as session:
        session.start()
        begun = time.perf_counter()
        session.machine.gdb.step(count=STEPS)
        step_s = (time.perf_counter() - begun) / STEPS
        per_iteration = profile.count("all") / max(profile.count("fadd"), 1)
        print(
            f"  for comparison, single-stepping: {step_s * 1e3:.2f} ms per instruction, so "
            f"fadd #{INSTANCES[-1]:,} would cost about "
            f"{INSTANCES[-1] * per_iteration * step_s:.0f} s"
        )


if __name__ == "__main__":
    main()
