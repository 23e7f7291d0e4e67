"""What hangs cost: the share of a campaign's time spent in experiments that end as hangs,
with the old hang rule (a budget of 3 golden runs, hangs found only when it runs out) and
with today's (2 golden runs, and a vCPU left idle with the workload unfinished is a hang at
once: the stall rule). Both on the same experiments, in one run.

Prints figures and the ratio; asserts nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import vmfault.experiment.observe as observe
from vmfault.classify import Outcome
from vmfault.experiment.pipeline import Experimenter
from vmfault.faults import FaultSpec
from vmfault.session import prepare_image

RUNS = 60
FAMILIES = (
    FaultSpec.from_options(target="kernel-code:hot"),
    FaultSpec.from_options(target="register:gpr", context="kernel"),
)


@contextmanager
def stall_rule(enabled: bool) -> Iterator[None]:
    """The stall rule on or off (off: hangs wait for the budget, as before)."""
    original = observe._Stall.of
    if not enabled:
        observe._Stall.of = classmethod(lambda cls, progress: None)  # type: ignore[assignment]
    try:
        yield
    finally:
        observe._Stall.of = original  # type: ignore[method-assign]


def measure(budget: float, *, stall: bool) -> tuple[float, float, int, int]:
    """(wall seconds of all experiments, of the hangs, hangs, stalls)."""
    image = prepare_image()
    total = hanging = 0.0
    hangs = stalls = 0
    with stall_rule(stall), Experimenter.single(image, ["checksum"], budget_factor=budget) as ex:
        for spec in FAMILIES:
            for index in range(RUNS):
                begun = time.perf_counter()
                record = ex.run(spec, seed=17, index=index)
                spent = time.perf_counter() - begun
                total += spent
                if record.outcome is Outcome.HANG:
                    hanging += spent
                    hangs += 1
                    stalls += record.reason.startswith("stalled")
    return total, hanging, hangs, stalls


def main() -> None:
    before = measure(3.0, stall=False)
    after = measure(2.0, stall=True)
    print(f"hang cost on checksum, {RUNS} experiments each of kernel-code:hot and register:gpr "
          "(kernel), TCG")  # fmt: skip
    for label, (total, hanging, hangs, stalls) in (
        ("budget 3, no stall rule (before)", before),
        ("budget 2 + stall rule (now)", after),
    ):
        print(f"  {label}: {total:.1f} s in all, {hanging:.1f} s in {hangs} hangs "
              f"({hanging / max(total, 1e-9):.0%} of the time), {stalls} declared by the stall "
              "rule")  # fmt: skip
    per_before = before[1] / max(before[2], 1)
    per_after = after[1] / max(after[2], 1)
    print(f"  time per hang: {per_before:.2f} s before, {per_after:.2f} s now "
          f"({per_before / max(per_after, 1e-9):.1f}x less)")  # fmt: skip


if __name__ == "__main__":
    main()
