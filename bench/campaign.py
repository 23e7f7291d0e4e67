"""Campaign throughput: experiments per second with 1 and 2 workers on checksum register flips.

Prints the rates, their ratio, the ideal 1 / (restore + golden runtime) per worker and the
peak memory of a worker (its QEMU included); asserts nothing. Targets: >= 70% of the ideal
per worker, 2 workers >= 1.8x one, >= 20 experiments/s in total, memory per worker <=
guest RAM + 100 MiB.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from vmfault.campaign.executor import Completed
from vmfault.campaign.runner import CampaignProgress, prepare_campaign, run_campaign
from vmfault.campaign.spec import load_campaign
from vmfault.experiment.pipeline import Experimenter
from vmfault.faults import BitModel, Context, FaultSpec, Target, Trigger
from vmfault.session import prepare_image

EXPERIMENTS = 120
CAMPAIGN = """
[campaign]
name = "bench-{workers}"
seed = 3
experiments = {experiments}
workers = {workers}

[guest]
workload = "checksum"

[[faults]]
target = "register:gpr"
context = "user"
"""


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its descendants, MiB."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        total += next(int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmRSS:"))  # fmt: skip
        pending += [int(c) for c in children]
    return total / 1024


def throughput(workers: int, tmp: Path) -> tuple[float, float]:
    file = tmp / f"bench-{workers}.toml"
    file.write_text(CAMPAIGN.format(workers=workers, experiments=EXPERIMENTS))
    prepared = prepare_campaign(load_campaign(file), tmp / f"bench-{workers}.db", resume=False)
    marks: list[float] = []
    peak = [0.0]

    def on_record(progress: CampaignProgress, done: Completed) -> None:
        marks.append(time.monotonic())
        if progress.done % 20 == 0:
            peak[0] = max(peak[0], rss_mib(os.getpid()))

    run_campaign(prepared, on_record=on_record)
    prepared.store.close()
    steady = marks[len(marks) // 5 :]  # after boots and the first experiments
    return (len(steady) - 1) / (steady[-1] - steady[0]), peak[0]


def ideal_per_worker() -> tuple[float, float, float]:
    image = prepare_image()
    spec = FaultSpec(Target.parse("register:gpr"), BitModel(), Trigger(), Context.USER)
    with Experimenter.single(image, ["checksum"]) as experimenter:
        restores = [experimenter.run(spec, seed=1, index=i).phases_s["restore"]
                    for i in range(15)]  # fmt: skip
        assert experimenter.golden is not None
        golden = experimenter.golden.host_s
    restore = statistics.median(restores)
    return 1 / (restore + golden), restore, golden


def main() -> None:
    ideal, restore, golden = ideal_per_worker()
    with tempfile.TemporaryDirectory() as tmp:
        one, mem_one = throughput(1, Path(tmp))
        two, mem_two = throughput(2, Path(tmp))
    print("campaign throughput (checksum, register:gpr in user context, TCG)")
    print(f"  restore {restore * 1e3:.1f} ms + golden run {golden * 1e3:.1f} ms "
          f"-> ideal {ideal:.2f} experiments/s per worker")  # fmt: skip
    print(f"  1 worker : {one:6.2f} experiments/s  ({one / ideal:.0%} of ideal; target >= 70%)")
    print(f"  2 workers: {two:6.2f} experiments/s  ({two / one:.2f}x one; target >= 1.8x)")
    print(f"  total target >= 20 experiments/s: {'ok' if two >= 20 else 'MISSED'}")
    print(f"  memory, coordinator + workers + QEMUs: {mem_one:.0f} MiB (1 worker), "
          f"{mem_two:.0f} MiB (2 workers); guest RAM 128 MiB each")  # fmt: skip


if __name__ == "__main__":
    main()
