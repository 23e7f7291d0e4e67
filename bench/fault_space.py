"""The fault space at full size: where faults land, how many cannot be placed, and whether
control runs stay benign. The integration tests check the same properties on tens of
experiments; this script checks them on the sizes users run.

- register:gpr in user context and memory:process on checksum: the `trigger.progress` of
  RUNS experiments each against uniform on [0, 1) (Kolmogorov-Smirnov, target p > 0.01),
  and the share not injected (target at most 1%);
- a control family of CONTROLS runs on every built-in workload (target: all benign).

Prints figures and targets; asserts nothing. `--runs` and `--controls` shrink it.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from scipy import stats

from vmfault.classify import Outcome
from vmfault.experiment.pipeline import Experimenter
from vmfault.faults import FaultSpec
from vmfault.guest.workloads import BUILTIN_WORKLOADS
from vmfault.session import prepare_image

RUNS = 200
CONTROLS = 100
FAMILIES: tuple[dict[str, Any], ...] = (
    {"target": "register:gpr", "context": "user"},
    {"target": "memory:process"},
)


def uniformity(runs: int) -> None:
    """KS test of trigger progress and the not-injected share, per family."""
    image = prepare_image()
    with Experimenter.single(image, ["checksum"]) as experimenter:
        for options in FAMILIES:
            spec = FaultSpec.from_options(**options)
            begun = time.perf_counter()
            records = [experimenter.run(spec, seed=29, index=i) for i in range(runs)]
            spent = time.perf_counter() - begun
            missed = [r.reason for r in records if r.outcome is Outcome.NOT_INJECTED]
            landed = [
                r.injection.trigger.progress
                for r in records
                if r.injection.injected and r.injection.trigger.progress is not None
            ]
            p = stats.kstest(landed, "uniform").pvalue if landed else 0.0
            share = len(missed) / runs
            uniform = "met" if p > 0.01 else "MISSED"
            placed = "met" if share <= 0.01 else "MISSED"
            print(f"{spec.target.spelling} context={spec.context.value}: {runs} runs "
                  f"in {spent:.1f} s; KS p = {p:.3f} (target > 0.01: {uniform}); "
                  f"not injected {len(missed)} = {share:.1%} (target <= 1%: {placed})")  # fmt: skip
            for reason in sorted(set(missed)):
                print(f"  not injected: {reason} ({missed.count(reason)})")


def controls(runs: int) -> None:
    """Control runs on every built-in workload."""
    image = prepare_image()
    control = FaultSpec.from_options(target="none")
    for workload in sorted(BUILTIN_WORKLOADS):
        with Experimenter.single(image, [workload]) as experimenter:
            records = [experimenter.run(control, seed=31, index=i) for i in range(runs)]
        bad = [f"{r.outcome.value}: {r.reason}" for r in records if r.outcome is not Outcome.BENIGN]
        print(f"control runs on {workload}: {runs - len(bad)} of {runs} benign "
              f"(target all: {'met' if not bad else 'MISSED'})")  # fmt: skip
        for line in bad[:5]:
            print(f"  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS)
    parser.add_argument("--controls", type=int, default=CONTROLS)
    args = parser.parse_args()
    uniformity(args.runs)
    controls(args.controls)


if __name__ == "__main__":
    main()
