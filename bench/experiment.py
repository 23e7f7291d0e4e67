"""Cost of one experiment, phase by phase, against the target
`restore + 1.2 x the golden runtime left + 20 ms` for a non-hang experiment.

Prints medians per phase for register and memory flips on `checksum`; asserts nothing.
"""

from __future__ import annotations

import statistics
import time

from vmfault.classify import Outcome
from vmfault.experiment.pipeline import Experimenter
from vmfault.faults import BitModel, Context, FaultSpec, Target, Trigger
from vmfault.session import prepare_image

RUNS = 30
FAMILIES = [
    ("register:gpr (user)", FaultSpec(Target.parse("register:gpr"), BitModel(),
                                      Trigger.parse("time"), Context.USER)),
    ("register:rip (any)", FaultSpec(Target.parse("register:rip"), BitModel.parse("40"))),
    ("memory:ram", FaultSpec(Target.parse("memory:ram"))),
    ("memory:process", FaultSpec(Target.parse("memory:process"))),
]  # fmt: skip


def main() -> None:
    image = prepare_image()
    with Experimenter.single(image, ["checksum"]) as experimenter:
        golden = experimenter.golden
        assert golden is not None
        print(f"experiment cost on checksum (TCG); golden run {golden.host_s * 1e3:.1f} ms")
        header = "restore  to_trig  inject  observe  classify   total  target  outcomes"
        print(f"  {'family':22s} {header}")
        for label, spec in FAMILIES:
            phases: dict[str, list[float]] = {}
            totals: list[float] = []
            targets: list[float] = []
            outcomes: dict[str, int] = {}
            for index in range(RUNS):
                begun = time.perf_counter()
                record = experimenter.run(spec, seed=11, index=index)
                totals.append(time.perf_counter() - begun)
                for name, value in record.phases_s.items():
                    phases.setdefault(name, []).append(value)
                left = max(0.0, golden.host_s - (record.injection.trigger.time_s or 0.0))
                targets.append(record.phases_s["restore"] + 1.2 * left + 0.020)
                outcomes[record.outcome.value] = outcomes.get(record.outcome.value, 0) + 1
            cells = [
                f"{statistics.median(phases[p]) * 1e3:7.1f}"
                for p in ("restore", "to_trigger", "inject", "observe", "classify")
            ]
            total = statistics.median(totals) * 1e3
            target = statistics.median(targets) * 1e3
            print(f"  {label:22s} {' '.join(cells)} {total:7.1f} {target:7.1f}  {outcomes}")
        print(
            "  (ms, medians of",
            RUNS,
            "experiments;",
            Outcome.NOT_INJECTED.value,
            "= the trigger fell after the workload ended)",
        )


if __name__ == "__main__":
    main()
