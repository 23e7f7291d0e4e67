"""Memory fault storms (flip_simulation): single-bit flips in a region on a schedule in guest
time, then the outcome; with a period, the snapshot-mode failure rate per flip.

Guest time is exact in deterministic mode (1 ns per instruction); otherwise it is the host
time the guest actually ran (QEMU's virtual clock runs only while it does), measured
around each run segment, the last 2 ms of each gap waited for by polling. Each flip is
placed its gap after the previous one as it actually happened, so a late halt delays the
schedule but never distorts the spacing of the next gap. A flip off its time by more than
STORM_RETRY_ERROR_S restarts the storm from the snapshot (before its outcome is known, so
no outcome is favoured), up to `attempts` runs in all. Flips go on after the workload ends.
A process storm learns the workload's page tables at its exec, so its flips wait for no
CPU context; after the workload ends there are no pages left to flip.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from vmfault.errors import MachineError, UsageError, VmfaultError
from vmfault.experiment.kinds.base import FaultKind, Injected
from vmfault.experiment.kinds.memory import learn_process, process_pages, region_ranges
from vmfault.experiment.records import FlipInjection, StormSummary, TriggerPoint
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine
from vmfault.faults.model import FaultSpec
from vmfault.faults.schedule import RateModel, Schedule, Storm
from vmfault.faults.select import choose_in_ranges
from vmfault.machine import RunEnd

__all__ = [
    "STORM_APPROACH",
    "STORM_APPROACH_MIN_S",
    "STORM_ATTEMPTS",
    "STORM_RETRY_ERROR_S",
    "STORM_TOLERANCE_S",
    "StormKind",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

STORM_WARM_UP_S = 0.001
"""Guest time run after a restore before the first flip is scheduled: the first run after a
restore also rebuilds QEMU's discarded translated code, during which a halt waits; taking
that here keeps it out of the first flip's gap."""
STORM_TOLERANCE_S = 0.0001
"""A storm flip is placed once guest time is within this of its target."""
STORM_APPROACH = 0.8
"""Deterministic storms: the fraction of the guest time left to a flip that one run aims at."""
STORM_APPROACH_MIN_S = 0.0005
"""Deterministic storms: below this much guest time left, a run aims at the flip itself."""
STORM_RETRY_ERROR_S = 0.001
"""A flip later or earlier than this restarts the storm from the snapshot."""
STORM_ATTEMPTS = 3


@dataclass(frozen=True)
class _Plan:
    """A storm family resolved for this machine: region, ranges, schedule and rate model."""

    region: str
    ranges: tuple[tuple[int, int], ...]
    schedule: Schedule
    model: RateModel | None


class StormKind(FaultKind):
    """Storms of single-bit memory flips."""

    latency = False
    attempts = STORM_ATTEMPTS

    def __init__(self, machine: GuestMachine) -> None:
        self.machine = machine
        self._plans: dict[FaultSpec, _Plan] = {}
        self._warm_s = 0.0
        self._root: int | None = None

    def region_bytes(self, region: str, ranges: tuple[tuple[int, int], ...] = ()) -> int:
        """The size in bytes of a storm region (what a physical upset rate applies to)."""
        if region == "process":
            raise UsageError(
                "a physical rate needs a region of fixed size, and memory:process changes "
                "as the workload runs",
                hint="use an interval with memory:process, or a rate with another region",
            )
        return sum(end - start for start, end in region_ranges(self.machine, region, ranges))

    def plan(self, spec: FaultSpec) -> _Plan:
        """The storm of `spec` on this machine: a rate becomes a Poisson schedule over the
        region's size (`Storm.resolve`)."""
        found = self._plans.get(spec)
        if found is None:
            storm = _storm(spec)
            ranges = spec.target.ranges
            region = "custom" if ranges else spec.target.name
            size = self.region_bytes(region, ranges) if storm.rate is not None else 0
            schedule, model = storm.resolve(size)
            found = self._plans[spec] = _Plan(region, ranges, schedule, model)
        return found

    def prepare(self, spec: FaultSpec) -> None:
        """Resolve the schedule (a rate needs the region's size)."""
        self.plan(spec)

    def trigger(self, experiment: Experiment) -> str:
        """A process storm learns the workload's page tables at its exec; then warm up:
        run an instant (see STORM_WARM_UP_S)."""
        self._root = None
        if self.plan(experiment.spec).region == "process":
            process = learn_process(experiment, self.machine)
            if isinstance(process, str):
                return process
            self._root = process.page_tables
        run = experiment.vm.run_for(STORM_WARM_UP_S)
        counted = experiment.instructions()
        self._warm_s = run.ran_s if counted is None else counted / 1e9
        return ""

    def inject(self, experiment: Experiment) -> Injected:
        """The flips on schedule; restart if one was too far off its time."""
        spec = experiment.spec
        plan = self.plan(spec)
        storm = _storm(spec)
        vm = experiment.vm
        here = experiment.here
        counted = here.start_instructions is not None
        # Guest seconds per host second while running: 1 under plain TCG. Under icount it
        # is the instruction rate, which varies (code being translated runs slower): the
        # fastest rate seen so far converts, and long hops aim at most STORM_APPROACH of
        # the way, so the guest closes in on a flip from below instead of overshooting.
        speed = 1.0 / self.machine.host_per_guest_s()
        guest_s = self._warm_s
        exited = panicked = gone = False
        flips: list[FlipInjection] = []
        last = experiment.attempt >= self.attempts
        for number, gap in enumerate(plan.schedule.gaps(storm.flips, experiment.rng("storm"))):
            target_s = (flips[-1].time_s if flips else 0.0) + gap
            while target_s - guest_s > STORM_TOLERANCE_S and not (panicked or gone):
                left = target_s - guest_s
                if counted and left > STORM_APPROACH_MIN_S:
                    left *= STORM_APPROACH
                run = vm.run_for(left / speed, precise=True)
                now = experiment.instructions()
                if now is not None:
                    before_s, guest_s = guest_s, now / 1e9
                    if run.end is RunEnd.TIME and run.ran_s > 0:
                        speed = max(speed, (guest_s - before_s) / run.ran_s)
                else:
                    guest_s += run.ran_s
                if run.end is RunEnd.EXITED:
                    gone = True  # QEMU died: the observation reports it
                elif run.end is not RunEnd.TIME:
                    exited = exited or run.pc == self.machine.hooks.exited
                    panicked = vm.qmp("query-status")["status"] == "guest-panicked"
            if panicked or gone:
                break
            flip = self._flip(experiment, plan, number, target_s, guest_s, ended=exited)
            if not flips:
                experiment.mark_injected()
            flips.append(flip)
            guest_s = max(guest_s, flip.time_s)
            late = abs(flip.time_s - target_s) > STORM_RETRY_ERROR_S
            if late and not last:
                logger.info("storm flip %d late by %.3f ms: storm restarted", number,
                            (flip.time_s - target_s) * 1e3)  # fmt: skip
                return Injected(tuple(flips), restart=True)
        here.panicked = panicked
        here.at_exit = exited and not panicked
        summary = _summary(plan, flips, guest_s, counted=counted, attempt=experiment.attempt)
        if not flips:
            return Injected((self.not_injected(experiment, "no flip was made"),), summary)
        return Injected(tuple(flips), summary)

    def _flip(
        self,
        experiment: Experiment,
        plan: _Plan,
        number: int,
        scheduled_s: float,
        guest_s: float,
        *,
        ended: bool,
    ) -> FlipInjection:
        """One flip: a random bit of a random byte of the region, read back. A process
        flip after the workload `ended` is not made: its page tables are gone."""
        gdb = experiment.vm.gdb
        rng = experiment.rng(f"flip-{number}")
        virtual = None
        trigger = f"storm:{plan.schedule.describe()}"
        unmade = FlipInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name, width=8,
            scheduled_s=scheduled_s, trigger=self._point(experiment, trigger, guest_s),
        )  # fmt: skip
        try:
            if plan.region == "process":
                if ended:
                    raise MachineError("the workload ended before the flip")
                pages = process_pages(self.machine, self._root)
                virtual = choose_in_ranges([(p.virtual, p.virtual_end) for p in pages], rng,
                                           align=1)  # fmt: skip
                address = next(p for p in pages if p.contains(virtual)).physical_of(virtual)
            else:
                address = choose_in_ranges(
                    region_ranges(self.machine, plan.region, plan.ranges), rng, align=1
                )
        except (VmfaultError, ValueError) as exc:
            if isinstance(exc, VmfaultError) and not experiment.vm.alive:
                raise
            reason = exc.one_line() if isinstance(exc, VmfaultError) else str(exc)
            return dataclasses.replace(
                unmade, reason=reason, trigger=self._point(experiment, trigger, guest_s)
            )
        bit = rng.randrange(8)
        before = gdb.read_memory(address, 1, physical=True)[0]
        after = before ^ (1 << bit)
        gdb.write_memory(address, bytes([after]), physical=True)
        readback = gdb.read_memory(address, 1, physical=True)[0]
        held = readback == after
        return dataclasses.replace(
            unmade, location=f"{address:#x}", address=address, virtual=virtual,
            mask=1 << bit, before=before, after=after, readback=readback, injected=held,
            reason="" if held else f"read back {readback:#x}",
            trigger=self._point(experiment, trigger, guest_s),
        )  # fmt: skip

    def _point(self, experiment: Experiment, spec: str, guest_s: float) -> TriggerPoint:
        """A flip's moment: guest seconds from the workload's start, and where that lies
        in the golden execution."""
        counted = int(guest_s * 1e9) if experiment.here.start_instructions is not None else None
        progress = experiment.golden_fraction(guest_s, counted)
        return TriggerPoint(spec=spec, time_s=guest_s, progress=progress)

    def not_injected(self, experiment: Experiment, reason: str) -> FlipInjection:
        """A storm none of whose flips was made."""
        plan = self.plan(experiment.spec)
        return FlipInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name, width=8,
            reason=reason, trigger=TriggerPoint(spec=f"storm:{plan.schedule.describe()}"),
        )  # fmt: skip


def _storm(spec: FaultSpec) -> Storm:
    assert spec.storm is not None, "a storm spec always carries its storm"
    return spec.storm


def _summary(
    plan: _Plan, flips: list[FlipInjection], guest_s: float, *, counted: bool, attempt: int
) -> StormSummary:
    """The schedule and timing of the storm. Errors are per gap between flips; the first
    flip's own error is kept apart, since the first run after a restore competes with QEMU
    rebuilding its code cache."""
    errors = [abs(f.time_s - f.scheduled_s) for f in flips[1:]]
    return StormSummary(
        region=plan.region, schedule=plan.schedule.describe(), flips=len(flips),
        guest_s=flips[-1].time_s if flips else 0.0,
        real_world_s=None if plan.model is None else plan.model.real_world_s(guest_s),
        max_error_s=max(errors, default=0.0),
        mean_error_s=sum(errors) / len(errors) if errors else 0.0,
        first_flip_error_s=abs(flips[0].time_s - flips[0].scheduled_s) if flips else 0.0,
        guest_time="instructions" if counted else "running-time", attempts=attempt,
    )  # fmt: skip
