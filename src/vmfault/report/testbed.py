"""What the machines of a campaign's testbed did, and what crossed its network, from the
analysis rows (`vmfault.store.COLUMNS`: `machine_outcomes`, `frames`, `frames_*`,
`traffic_json`), so the report and the export say the same.

- per machine: its outcomes over the experiments (every machine of each experiment is
  classified against its own golden run), the share that was not benign with its interval,
  and how many experiments it judged;
- the network: frames per experiment (per stratum: mean, least, most) and the frames per
  link direction summed over the campaign, with what network faults did to them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from vmfault.classify import Outcome
from vmfault.stats import IntervalMethod, Rate
from vmfault.stats import rate as rate_of

__all__ = [
    "LINK_COUNTS",
    "LinkTotals",
    "MachineOutcomes",
    "NetworkTotals",
    "StratumFrames",
    "testbed_totals",
]

LINK_COUNTS = ("seen", "delivered", "dropped", "corrupted", "delayed", "duplicated", "reordered",
               "overflow")  # fmt: skip
"""The counters of a link direction, in order."""
_COUNTED = [o.value for o in Outcome if o.counts]


@dataclass(frozen=True)
class MachineOutcomes:
    """One machine's outcomes over a campaign: `counts` per outcome (counted ones, in
    `Outcome` order, zeros included; `not-injected` apart), `failure` the share of counted
    outcomes that are not benign, `judged` how many experiments took its outcome."""

    machine: str
    counts: Mapping[str, int]
    not_injected: int
    failure: Rate
    judged: int

    @property
    def total(self) -> int:
        """Counted outcomes."""
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "outcomes": dict(self.counts),
            "not_injected": self.not_injected,
            "failure_rate": self.failure.rate,
            "interval": [self.failure.low, self.failure.high],
            "judged": self.judged,
        }


@dataclass(frozen=True)
class LinkTotals:
    """Frames on one direction of a link, summed over the campaign's experiments."""

    source: str
    destination: str
    counts: Mapping[str, int]
    """Every counter of LINK_COUNTS."""

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {"source": self.source, "destination": self.destination, **self.counts}


@dataclass(frozen=True)
class StratumFrames:
    """Frames per experiment in one stratum, and what its network faults did in all."""

    stratum: str
    experiments: int
    frames_mean: float
    frames_min: int
    frames_max: int
    fault: Mapping[str, int]
    """Frames network faults dropped, corrupted, delayed, duplicated and reordered."""

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "experiments": self.experiments,
            "frames_mean": self.frames_mean,
            "frames_min": self.frames_min,
            "frames_max": self.frames_max,
            **self.fault,
        }


@dataclass(frozen=True)
class NetworkTotals:
    """The network of a campaign's testbed: experiments on it, frames in all, per link
    direction and per stratum."""

    experiments: int
    frames: int
    links: tuple[LinkTotals, ...]
    strata: tuple[StratumFrames, ...]

    def to_json(self) -> dict[str, Any]:
        """Plain data (`campaign status --json`'s `network`)."""
        return {
            "experiments": self.experiments,
            "frames": self.frames,
            "links": [link.to_json() for link in self.links],
            "strata": {item.stratum: item.to_json() for item in self.strata},
        }


@dataclass
class _Frames:
    values: list[int] = field(default_factory=list)
    fault: Counter[str] = field(default_factory=Counter)


_FAULT_COLUMNS = ("dropped", "corrupted", "delayed", "duplicated", "reordered")


def testbed_totals(
    rows: Iterable[Mapping[str, object]],
    *,
    confidence: float = 0.95,
    method: IntervalMethod = IntervalMethod.WILSON,
) -> tuple[tuple[MachineOutcomes, ...], NetworkTotals | None]:
    """Per machine outcomes (machines sorted by name) and the network's totals (None
    without a network), from analysis rows."""
    outcomes: dict[str, Counter[str]] = {}
    judged: Counter[str] = Counter()
    links: dict[tuple[str, str], Counter[str]] = {}
    strata: dict[str, _Frames] = {}
    for row in rows:
        judged[str(row.get("judged") or "")] += 1
        for machine, outcome in _machine_outcomes(row.get("machine_outcomes")).items():
            outcomes.setdefault(machine, Counter())[outcome] += 1
        frames = row.get("frames")
        if not isinstance(frames, int):
            continue
        seen = strata.setdefault(str(row.get("stratum")), _Frames())
        seen.values.append(frames)
        for name in _FAULT_COLUMNS:
            value = row.get(f"frames_{name}")
            if isinstance(value, int):
                seen.fault[name] += value
        for link in _links(row.get("traffic_json")):
            key = (str(link.get("source")), str(link.get("destination")))
            counter = links.setdefault(key, Counter())
            for name in LINK_COUNTS:
                value = link.get(name)
                if isinstance(value, int):
                    counter[name] += value
    machines = tuple(
        MachineOutcomes(
            machine=name,
            counts={o: counts.get(o, 0) for o in _COUNTED},
            not_injected=counts.get(Outcome.NOT_INJECTED.value, 0),
            failure=rate_of(
                sum(counts.get(o, 0) for o in _COUNTED if o != Outcome.BENIGN.value),
                sum(counts.get(o, 0) for o in _COUNTED),
                confidence=confidence,
                method=method,
            ),
            judged=judged.get(name, 0),
        )
        for name, counts in sorted(outcomes.items())
    )
    if not strata:
        return machines, None
    network = NetworkTotals(
        experiments=sum(len(item.values) for item in strata.values()),
        frames=sum(sum(item.values) for item in strata.values()),
        links=tuple(
            LinkTotals(source, destination, {name: counter.get(name, 0) for name in LINK_COUNTS})
            for (source, destination), counter in sorted(links.items())
        ),
        strata=tuple(
            StratumFrames(
                stratum=name,
                experiments=len(item.values),
                frames_mean=sum(item.values) / len(item.values),
                frames_min=min(item.values),
                frames_max=max(item.values),
                fault={k: item.fault.get(k, 0) for k in _FAULT_COLUMNS},
            )
            for name, item in sorted(strata.items())
        ),
    )
    return machines, network


def _machine_outcomes(value: object) -> dict[str, str]:
    if not isinstance(value, str) or not value:
        return {}
    try:
        found = json.loads(value)
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def _links(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, str) or not value:
        return []
    try:
        found = json.loads(value)
    except ValueError:
        return []
    return [item for item in found if isinstance(item, dict)] if isinstance(found, list) else []
