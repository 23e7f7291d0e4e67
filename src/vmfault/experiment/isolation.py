"""The control machine of an isolation campaign: did it keep to its golden run, and how
long did it take, while faults went into another machine of its testbed.

A control that differs from its golden run in its output, exit status or console is an
isolation violation: its run becomes a `vmm-error` (the VMM let one guest's fault reach
another) with what differed as the reason and the proof as the evidence; a violation is
never hidden behind a benign run of the target.

Runtime is measured as vCPU time: the CPU time QEMU's vCPU threads of the control had
from its restore to its workload's exit, as the host's scheduler accounts it. Under TCG
the guest's clock (and so its own CLOCK_MONOTONIC) follows host wall time while the guest
runs, so on a loaded host (the shared 2-core machines) every moment the vCPU thread waits
for a core counts as guest time and host time alike, and a neighbour's burst of work would
read as a slower control: a violation faked by noise. vCPU time counts only the work the
control did. In deterministic mode the guest instructions executed are recorded too (exact,
and the verdict can be drawn on them), and guest and host seconds are always kept beside.
"""

from __future__ import annotations

import dataclasses
import os
import re

from vmfault.classify import Classification, Outcome
from vmfault.experiment.records import GoldenRun, IsolationRun, MachineRun
from vmfault.experiment.state import Progress
from vmfault.session import WorkloadResult

__all__ = ["HOST_TIMING_LINES", "ISOLATION_CAUSE", "console_difference", "isolation_run"]

ISOLATION_CAUSE = "isolation"
"""The cause of a control's run that broke isolation (its outcome is vmm-error)."""
_TIMESTAMP = re.compile(r"^\[\s*\d+\.\d+\]\s*")
HOST_TIMING_LINES = re.compile(
    r"^(clocksource: |tsc: Marking TSC unstable|sched_clock: Marking unstable"
    r"|hrtimer: interrupt took |rcu: INFO: rcu_\w+ (self-)?detected stalls?\b)"
)
"""Console lines in which the guest kernel reports its clocks jumping: the clocksource
watchdog's long readouts and skews, a slow timer interrupt, an RCU stall. Under TCG they
follow the host, not the guest: a vCPU thread that waited for a core on a loaded host, or
a restored guest whose clock leaps (guest seconds of 25 in a run of half a host second
were measured); they come in fault-free runs alike. So the console comparison leaves out
such a report, from its first line to the next line the golden run printed (its dump,
backtrace included): no evidence of a fault crossing machines. A crash, panic or oops
still counts: the classification sees those."""


def _lines(text: str) -> list[str]:
    """Console lines without printk timestamps, carriage returns and blank lines."""
    found = []
    for raw in text.replace("\r", "").splitlines():
        line = _TIMESTAMP.sub("", raw).strip()
        if line:
            found.append(line)
    return found


def console_difference(golden_console: str, console: str) -> str:
    """The first console line of a run that its golden run never printed ("" if none),
    host timing reports (HOST_TIMING_LINES, up to the next line the golden run printed)
    left out."""
    known = set(_lines(golden_console))
    in_report = False
    for line in _lines(console):
        if line in known:
            in_report = False
        elif HOST_TIMING_LINES.match(line):
            in_report = True
        elif not in_report:
            return line
    return ""


def isolation_run(
    run: MachineRun,
    verdict: Classification,
    progress: Progress,
    golden: GoldenRun,
    result: WorkloadResult | None,
    *,
    console: str,
    baseline: bool,
    observed: bool,
    host_cpus: tuple[int, ...] = (),
) -> tuple[MachineRun, IsolationRun]:
    """The control's run (a vmm-error if it broke isolation) and its `IsolationRun`.

    `observed`: the control ran to its end under the experiment (False when the fault
    could not be placed and the run was abandoned: then no runtime and no verdict).
    `console` is the control's console since its restore; console lines are compared
    only for machines without a console script (a script's shell echoes what it types).
    """
    violation = evidence = ""
    if observed and verdict.outcome is not Outcome.BENIGN:
        violation = f"the control's run was {verdict.outcome.value}: {verdict.reason}"
        evidence = verdict.evidence
    elif observed and progress.machine.dialogue is None:
        line = console_difference(golden.console, console)
        if line:
            violation = "the control's console printed what its golden run did not"
            evidence = line
    if violation:
        run = dataclasses.replace(
            run, outcome=Outcome.VMM_ERROR, reason=f"isolation violation: {violation}",
            cause=ISOLATION_CAUSE, evidence=evidence,
        )  # fmt: skip
    vcpu_s = host_s = None
    instructions = None
    if observed and progress.ended_at is not None:
        host_s = progress.ended_at - progress.started
        if progress.ended_vcpu_s is not None:
            vcpu_s = progress.ended_vcpu_s - progress.start_vcpu_s
        if progress.ended_instructions is not None and progress.start_instructions is not None:
            instructions = progress.ended_instructions - progress.start_instructions
    finished = observed and result is not None and result.exit_code is not None
    return run, IsolationRun(
        machine=run.machine, baseline=baseline, vcpu_s=vcpu_s,
        guest_s=result.guest_duration_s if finished and result is not None else None,
        host_s=host_s, instructions=instructions, violation=violation, evidence=evidence,
        load_1m=os.getloadavg()[0], host_cpus=host_cpus,
    )  # fmt: skip
