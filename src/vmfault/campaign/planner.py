"""Which experiment is which: strata, experiment numbers, seeds and sample sizes (pure).

Experiments are numbered 0..total-1, stratum by stratum in the order of the campaign's
`[[faults]]` tables. Experiment i's fault is drawn from the campaign seed and i alone, so
it is the same fault wherever and whenever it runs, and a campaign resumes by running the
numbers that have no result yet.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vmfault.campaign.spec import CampaignSpec, FaultFamily
from vmfault.classify import Outcome
from vmfault.experiment.records import BASELINE_STRATUM
from vmfault.faults.model import FaultSpec
from vmfault.faults.select import Plan, plan
from vmfault.stats import normal_quantile, outcome_rates

__all__ = [
    "CampaignPlan",
    "PlannedExperiment",
    "Stratum",
    "plan_campaign",
    "sample_size",
    "should_stop",
    "stratum_converged",
]


def sample_size(
    *, margin: float, confidence: float, population: int | None = None, p: float = 0.5
) -> int:
    """Experiments needed for a rate within +/-`margin` at `confidence` (Leveugle et al. 2009).

    n = N t^2 p(1-p) / (e^2 (N-1) + t^2 p(1-p)), or t^2 p(1-p) / e^2 for an infinite
    population (`population` None), rounded up; p = 0.5 is the worst case. Margin and p
    are fractions. 385 for +/-5% at 95%, 1,068 for +/-3%, 9,604 for +/-1%.
    """
    if not 0.0 < margin < 1.0:
        raise ValueError(f"margin must be between 0 and 1 (exclusive), got {margin}")
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be between 0 and 1 (exclusive), got {p}")
    if population is not None and population < 1:
        raise ValueError(f"population must be >= 1, got {population}")
    t = normal_quantile(confidence)
    spread = t * t * p * (1 - p)
    if population is None:
        n = spread / (margin * margin)
    else:
        n = population * spread / (margin * margin * (population - 1) + spread)
    # Round up, but not over a float error: 384.0000000001 is 384 runs.
    return max(1, math.ceil(round(n, 9)))


@dataclass(frozen=True)
class Stratum:
    """One fault family of a campaign and its experiments `first`..`first + count - 1`."""

    index: int
    name: str
    family: FaultFamily
    first: int
    count: int

    @property
    def ids(self) -> range:
        """The experiment numbers of this stratum."""
        return range(self.first, self.first + self.count)


@dataclass(frozen=True)
class PlannedExperiment:
    """Experiment `experiment_id`: its stratum, fault family and the seed of its choices.

    `seed` is the campaign seed and `index` the experiment number; together they fix every
    random choice (`vmfault.faults.select.plan`).
    """

    experiment_id: int
    stratum: Stratum
    spec: FaultSpec
    seed: int
    index: int

    def choose(self, *, golden_duration_s: float, golden_instructions: int | None) -> Plan:
        """The concrete fault of this experiment, given its golden run."""
        return plan(
            self.spec,
            seed=self.seed,
            index=self.index,
            golden_duration_s=golden_duration_s,
            golden_instructions=golden_instructions,
        )


@dataclass(frozen=True)
class CampaignPlan:
    """Every experiment of a campaign: strata numbered contiguously from 0 to `total` - 1.

    `seed` is the campaign seed. Construction checks that the strata are contiguous.
    """

    strata: tuple[Stratum, ...]
    total: int
    seed: int
    shuffled: bool = False
    """Run the experiments in an order drawn at random from the seed (isolation
    campaigns: the fault-free baseline interleaved at random among the faults), not in
    round-robin order over the strata."""

    def __post_init__(self) -> None:
        first = 0
        for position, stratum in enumerate(self.strata):
            if stratum.index != position or stratum.first != first or stratum.count < 0:
                raise ValueError(f"stratum {stratum.name!r} does not follow the one before it")
            first += stratum.count
        if first != self.total:
            raise ValueError(f"strata hold {first} experiments, not {self.total}")
        names = [stratum.name for stratum in self.strata]
        if len(set(names)) != len(names):
            raise ValueError("stratum names must be unique")

    def stratum_of(self, experiment_id: int) -> Stratum:
        """The stratum experiment `experiment_id` belongs to; ValueError outside the plan."""
        for stratum in self.strata:
            if stratum.first <= experiment_id < stratum.first + stratum.count:
                return stratum
        raise ValueError(f"experiment {experiment_id} is not in the plan (0..{self.total - 1})")

    def stratum(self, name: str) -> Stratum:
        """The stratum called `name`; KeyError if there is none."""
        for stratum in self.strata:
            if stratum.name == name:
                return stratum
        raise KeyError(name)

    def experiment(self, experiment_id: int) -> PlannedExperiment:
        """Experiment `experiment_id`; ValueError outside 0..total-1."""
        stratum = self.stratum_of(experiment_id)
        return PlannedExperiment(
            experiment_id=experiment_id,
            stratum=stratum,
            spec=stratum.family.fault_spec(),
            seed=self.seed,
            index=experiment_id,
        )

    def missing(self, done: Iterable[int]) -> list[int]:
        """The planned experiment numbers not in `done`, in order (ids outside are ignored)."""
        finished = set(done)
        return [i for i in range(self.total) if i not in finished]

    def interleaved(self, ids: Iterable[int] | None = None) -> list[int]:
        """`ids` (default: all) in round-robin order over the strata, each stratum in order.

        Every stratum gains results at the same pace, which an early stop needs. A
        `shuffled` plan gives them in the order of a permutation of all experiments drawn
        from the seed alone (a resumed campaign keeps the order of its first run).
        """
        if self.shuffled:
            drawn = list(range(self.total))
            random.Random(f"{self.seed}:order").shuffle(drawn)
            wanted = set(drawn) if ids is None else set(ids)
            return [i for i in drawn if i in wanted]
        chosen = range(self.total) if ids is None else sorted(set(ids))
        queues: list[list[int]] = [[] for _ in self.strata]
        for experiment_id in chosen:
            queues[self.stratum_of(experiment_id).index].append(experiment_id)
        order: list[int] = []
        for rank in range(max((len(queue) for queue in queues), default=0)):
            order.extend(queue[rank] for queue in queues if rank < len(queue))
        return order


def plan_campaign(spec: CampaignSpec) -> CampaignPlan:
    """Number the experiments of `spec`.

    A stratum's count is its family's `experiments`; else the campaign's `experiments`
    shared evenly by the families without their own (the first ones get the remainder);
    else `sample_size(margin, confidence)`. An isolation campaign adds the stratum
    `baseline` (target none, on the machine faults go to by default), its share of the
    campaign's `experiments` (taken from the families without their own), or that share of
    every experiment when the families have their own counts or a margin sizes them; its
    experiments run interleaved at random among the others (`CampaignPlan.shuffled`).
    """
    settings = spec.campaign
    isolation = spec.isolation
    share_of_baseline = 0.0 if isolation is None else isolation.baseline
    shared = [family for family in spec.faults if family.experiments is None]
    pool = settings.experiments
    baseline = 0
    if share_of_baseline and pool is not None and shared:
        baseline = min(max(1, round(share_of_baseline * pool)), pool - len(shared))
        pool -= baseline
    strata: list[Stratum] = []
    first = 0
    for index, family in enumerate(spec.faults):
        if family.experiments is not None:
            count = family.experiments
        elif pool is not None:
            share, remainder = divmod(pool, len(shared))
            count = share + (1 if shared.index(family) < remainder else 0)
        else:
            if settings.margin is None:
                raise AssertionError("a validated campaign has experiments or margin")
            count = sample_size(margin=settings.margin, confidence=settings.confidence)
        strata.append(Stratum(index, family.name, family, first, count))
        first += count
    if isolation is None:
        return CampaignPlan(tuple(strata), first, settings.seed)
    if share_of_baseline and not baseline:
        baseline = max(1, math.ceil(round(share_of_baseline / (1 - share_of_baseline) * first, 9)))
    if baseline:
        machine = spec.fault_machine(None, avoid=isolation.control)
        family = FaultFamily(
            name=BASELINE_STRATUM, target="none", machine=machine, experiments=baseline
        )
        strata.append(Stratum(len(strata), BASELINE_STRATUM, family, first, baseline))
        first += baseline
    return CampaignPlan(tuple(strata), first, settings.seed, shuffled=True)


def stratum_converged(counts: Mapping[str, int], *, margin: float, confidence: float) -> bool:
    """Whether every counted outcome class's Wilson half-width is <= `margin` (a fraction).

    Classes absent from `counts` count as 0; a stratum without results has not converged.
    """
    full = {outcome.value: 0 for outcome in Outcome if outcome.counts} | dict(counts)
    rates = outcome_rates(full, confidence=confidence)
    if not rates or next(iter(rates.values())).trials == 0:
        return False
    return all(rate.half_width <= margin for rate in rates.values())


def should_stop(
    counts_per_stratum: Mapping[str, Mapping[str, int]], *, margin: float, confidence: float
) -> bool:
    """Whether every stratum has converged (`stratum_converged`): a campaign may stop early.

    `counts_per_stratum` maps each stratum name to its outcome counts and must hold every
    stratum of the campaign (an empty mapping for one without results). Only for campaigns
    with `stop_early`.
    """
    if not counts_per_stratum:
        return False
    return all(
        stratum_converged(counts, margin=margin, confidence=confidence)
        for counts in counts_per_stratum.values()
    )
