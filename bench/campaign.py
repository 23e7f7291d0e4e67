"""Campaign throughput, memory and CPU per experiment: 1 and 2 workers, RAM templates against
loadvm, on checksum register flips, all in one run.

The limit of one worker is one golden run per experiment (its guest cannot go faster than
the workload runs): 1 / golden, with the golden run timed as experiments run it (restored
from the snapshot). Prints experiments per second against that limit, the 2-worker speed-up,
the proportional set size (PSS) of the coordinator, workers and QEMUs with what the second
worker adds, and host CPU seconds per experiment by process; asserts nothing.
Targets: 1 worker >= 90% of 1 / golden; 2 workers >= 1.85x one; each worker after the first
adds <= 120 MiB PSS (its QEMU included; the template's pages counted once).

Two fault families: flips at a uniform moment of the whole run (what the machinery costs
per experiment), and the same in user context, where a moment is drawn by rejection among
the run's moments until one is in the workload's user code (checksum spends about a sixth
of its run there, so an experiment looks at about six moments; the price of a uniform draw
over the context, shown apart from the machinery's).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from vmfault.campaign.executor import Completed
from vmfault.campaign.runner import CampaignProgress, prepare_campaign, run_campaign
from vmfault.campaign.spec import load_campaign

EXPERIMENTS = 160
FAMILIES = {"whole run": "", "user context": 'context = "user"'}
CAMPAIGN = """
[campaign]
name = "bench-{restore}-{workers}"
seed = 3
experiments = {experiments}
workers = {workers}
restore = "{restore}"

[guest]
workload = "checksum"

[[faults]]
target = "register:gpr"
{context}
"""
_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending += [int(c) for c in children]
    return found


def role(pid: int) -> str:
    """coordinator, worker or qemu."""
    if pid == os.getpid():
        return "coordinator"
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "gone"
    return "qemu" if name.startswith("qemu") else "worker"


def pss_mib(pid: int) -> float:
    """Proportional set size of one process, MiB (shared pages divided among sharers)."""
    try:
        rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0.0
    return next(int(line.split()[1]) for line in rollup.splitlines()
                if line.startswith("Pss:")) / 1024  # fmt: skip


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S


@dataclass
class Sample:
    """Per role: PSS (MiB) and CPU seconds, at one moment."""

    pss: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))
    cpu: defaultdict[str, float] = field(default_factory=lambda: defaultdict(float))

    @classmethod
    def now(cls) -> Sample:
        sample = cls()
        for pid in descendants(os.getpid()):
            kind = role(pid)
            sample.pss[kind] += pss_mib(pid)
            sample.cpu[kind] += cpu_s(pid)
        return sample


@dataclass
class Result:
    rate: float
    golden_s: float
    pss: dict[str, float]
    cpu_per_experiment: dict[str, float]


def campaign(family: str, restore: str, workers: int, tmp: Path) -> Result:
    file = tmp / f"bench-{restore}-{workers}-{len(FAMILIES[family])}.toml"
    file.write_text(CAMPAIGN.format(restore=restore, workers=workers, experiments=EXPERIMENTS,
                                    context=FAMILIES[family]))  # fmt: skip
    prepared = prepare_campaign(load_campaign(file), tmp / f"{file.stem}.db", resume=False)
    marks: list[float] = []
    samples: list[Sample] = []

    def on_record(progress: CampaignProgress, done: Completed) -> None:
        marks.append(time.monotonic())
        if len(marks) in (EXPERIMENTS // 5, EXPERIMENTS - 2):
            samples.append(Sample.now())

    run_campaign(prepared, on_record=on_record)
    golden = prepared.store.golden(list(prepared.argv))
    prepared.store.close()
    assert golden is not None
    steady = marks[EXPERIMENTS // 5 : EXPERIMENTS - 1]
    count = len(steady) - 1
    first, last = samples
    return Result(
        rate=count / (steady[-1] - steady[0]),
        golden_s=golden.typical_s,
        pss=last.pss,
        cpu_per_experiment={k: (last.cpu[k] - first.cpu[k]) / count for k in last.cpu},
    )


def main() -> None:
    results: dict[tuple[str, str, int], Result] = {}
    runs = [("whole run", "template"), ("whole run", "loadvm"), ("user context", "template")]
    with tempfile.TemporaryDirectory() as tmp:
        for family, restore in runs:
            for workers in (1, 2):
                results[family, restore, workers] = campaign(family, restore, workers, Path(tmp))
    print(f"campaign throughput (checksum, register:gpr, TCG, {EXPERIMENTS} experiments a "
          "campaign, rates after the first fifth)")  # fmt: skip
    for family, restore in runs:
        one, two = results[family, restore, 1], results[family, restore, 2]
        limit = 1 / one.golden_s
        print(f"  {family}, {restore}: golden run {one.golden_s * 1e3:.0f} ms -> limit "
              f"{limit:.2f}/s per worker")  # fmt: skip
        print(f"    1 worker : {one.rate:6.2f} experiments/s = {one.rate / limit:.0%} of the "
              f"limit (target >= 90%)")  # fmt: skip
        print(f"    2 workers: {two.rate:6.2f} experiments/s = {two.rate / one.rate:.2f}x one "
              f"(target >= 1.85x), {two.rate / (2 * limit):.0%} of 2 / golden")  # fmt: skip
        added = sum(two.pss.values()) - sum(one.pss.values())
        print(f"    PSS: 1 worker {sum(one.pss.values()):.0f} MiB "
              f"({', '.join(f'{k} {v:.0f}' for k, v in sorted(one.pss.items()))}); "
              f"the second worker adds {added:.0f} MiB (target <= 120)")  # fmt: skip
        cpu = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in sorted(two.cpu_per_experiment.items()))
        print(f"    host CPU ms per experiment with 2 workers: {cpu}")
    for workers in (1, 2):
        ratio = (
            results["whole run", "template", workers].rate
            / results["whole run", "loadvm", workers].rate
        )
        print(f"  template / loadvm, {workers} worker(s): {ratio:.2f}x the experiments per second")
    context = results["user context", "template", 1].rate / results["whole run", "template", 1].rate
    print(f"  user context / whole run, 1 worker: {context:.2f}x the experiments per second "
          "(the draws among moments until one is in user code)")  # fmt: skip


if __name__ == "__main__":
    main()
