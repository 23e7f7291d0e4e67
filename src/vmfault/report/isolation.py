"""What an isolation campaign found: violations of the control machine, and whether its
runtimes under faults are equivalent to its fault-free ones.

Read from the control's `IsolationRun` of every experiment (the store keeps it in the
first injection's detail) and the campaign spec the store keeps (`[isolation]`, and which
fault families aim at the control in a validation campaign, `check = true`). Runtimes
count only the control's runs that kept to its golden run; those of faults aimed at the
control are left out. The interval is at 2 * confidence - 1 (90% for 95%): an equivalence
test at 1 - confidence, as TOST has it.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmfault.experiment.records import BASELINE_STRATUM, IsolationRun
from vmfault.stats import Equivalence, runtime_equivalence

__all__ = [
    "RUNTIME_UNITS",
    "IsolationSummary",
    "Violation",
    "isolation_settings",
    "isolation_summary",
    "runtime_quantiles",
]

RUNTIME_UNITS = {"vcpu": "vCPU s", "guest": "guest s", "host": "host s", "instructions": "insns"}
"""The unit of each runtime measure, as tables show it."""
VIOLATIONS_SHOWN = 50
"""Violations listed with their evidence (the count covers them all)."""


@dataclass(frozen=True)
class Violation:
    """One experiment in which the control differed from its golden run."""

    experiment_id: int
    stratum: str
    reason: str
    evidence: str
    aimed: bool
    """The experiment's fault went to the control (a validation campaign's check)."""
    baseline: bool = False
    """The experiment injected nothing: the difference was not caused by a fault (a false
    alarm of the check, or a control that does not repeat its golden run)."""

    def to_json(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "experiment": self.experiment_id,
            "stratum": self.stratum,
            "reason": self.reason,
            "evidence": self.evidence,
            "aimed": self.aimed,
            "baseline": self.baseline,
        }


@dataclass(frozen=True)
class IsolationSummary:
    """An isolation campaign's verdict: violations and runtime equivalence.

    `faulted` and `baseline` are the control's runtimes (in `runtime`'s unit) under faults
    and in the fault-free baseline; `load_1m` the host's one-minute load averages seen at
    the experiments' ends; `host_cpus` the cores the control was pinned to (() not pinned).
    """

    control: str
    runtime: str
    runs: int
    violations: tuple[Violation, ...]
    equivalence: Equivalence
    faulted: tuple[float, ...]
    baseline: tuple[float, ...]
    load_1m: tuple[float, ...]
    host_cpus: tuple[int, ...]
    aimed_strata: tuple[str, ...] = ()
    aimed_runs: int = 0

    @property
    def fault_free(self) -> int:
        """Violations in fault-free (baseline) experiments: no fault caused them."""
        return sum(1 for v in self.violations if v.baseline)

    @property
    def caught(self) -> int:
        """Violations among the experiments whose faults aimed at the control."""
        return sum(1 for v in self.violations if v.aimed)

    def load_range(self) -> tuple[float, float, float] | None:
        """The least, median and greatest load average seen (None: none recorded)."""
        if not self.load_1m:
            return None
        return min(self.load_1m), statistics.median(self.load_1m), max(self.load_1m)

    def to_json(self) -> dict[str, Any]:
        """`campaign status --json`'s `isolation`: `violations` (a count), `runtime_ratio`,
        `interval`, `equivalent`, `method`, with `baseline_violations` (those of fault-free
        experiments: false alarms), `control`, `runtime`, `margin`, `level`,
        `runs` (control runs checked, faulted and baseline runtimes), `host_load`,
        `host_cpus`, `examples` (the violations with their evidence) and, with faults
        aimed at the control, `check` (`strata`, `experiments`, `caught`)."""
        equivalence = self.equivalence.to_json()
        load = self.load_range()
        data: dict[str, Any] = {
            "control": self.control,
            "runtime": self.runtime,
            "violations": len(self.violations),
            "baseline_violations": self.fault_free,
            "runtime_ratio": equivalence["runtime_ratio"],
            "interval": equivalence["interval"],
            "equivalent": equivalence["equivalent"],
            "method": equivalence["method"],
            "margin": equivalence["margin"],
            "level": equivalence["level"],
            "runs": {"checked": self.runs, **equivalence["runs"]},
            "medians": {
                "faulted": statistics.median(self.faulted) if self.faulted else None,
                "baseline": statistics.median(self.baseline) if self.baseline else None,
            },
            "host_load": None
            if load is None
            else {"min": load[0], "median": load[1], "max": load[2]},
            "host_cpus": list(self.host_cpus),
            "examples": [v.to_json() for v in self.violations[:VIOLATIONS_SHOWN]],
        }
        if self.aimed_strata:
            data["check"] = {
                "strata": list(self.aimed_strata),
                "experiments": self.aimed_runs,
                "caught": self.caught,
            }
        return data


def isolation_settings(spec: object) -> tuple[str, float, str, int, tuple[str, ...]] | None:
    """(control, margin, runtime, seed, strata aimed at the control) of a campaign spec in
    its JSON form, or None without an `[isolation]` table."""
    if not isinstance(spec, dict):
        return None
    table = spec.get("isolation")
    if not isinstance(table, dict) or not isinstance(table.get("control"), str):
        return None
    control = table["control"]
    campaign = spec.get("campaign") if isinstance(spec.get("campaign"), dict) else {}
    seed = campaign.get("seed", 0) if isinstance(campaign, dict) else 0
    aimed = []
    for family in spec.get("faults") or ():
        if isinstance(family, dict) and family.get("machine") == control:
            name = family.get("name") or family.get("target")
            if isinstance(name, str) and str(family.get("target", "")).strip() != "none":
                aimed.append(name)
    return (
        control,
        float(table.get("margin", 0.05)),
        str(table.get("runtime", "vcpu")),
        int(seed) if isinstance(seed, int) else 0,
        tuple(aimed),
    )


def _runtime(run: IsolationRun, measure: str) -> float | None:
    value = {
        "vcpu": run.vcpu_s,
        "guest": run.guest_s,
        "host": run.host_s,
        "instructions": run.instructions,
    }.get(measure)
    return None if value is None else float(value)


def isolation_summary(
    spec: object,
    runs: Iterable[tuple[int, str, IsolationRun]],
    *,
    confidence: float,
    counts_by_stratum: Mapping[str, Mapping[str, int]] | None = None,
) -> IsolationSummary | None:
    """The isolation verdict of a campaign from its spec (JSON form) and the control's runs
    (experiment id, stratum, run); None for a campaign without `[isolation]`."""
    settings = isolation_settings(spec)
    if settings is None:
        return None
    control, margin, measure, seed, aimed_strata = settings
    faulted: list[float] = []
    baseline: list[float] = []
    violations: list[Violation] = []
    loads: list[float] = []
    cpus: tuple[int, ...] = ()
    checked = 0
    for experiment_id, stratum, run in runs:
        checked += 1
        aimed = stratum in aimed_strata
        if run.load_1m is not None:
            loads.append(run.load_1m)
        cpus = run.host_cpus or cpus
        fault_free = run.baseline or stratum == BASELINE_STRATUM
        if run.violation:
            violations.append(
                Violation(experiment_id, stratum, run.violation, run.evidence, aimed, fault_free)
            )
            continue
        value = _runtime(run, measure)
        if value is None or aimed:
            continue
        (baseline if fault_free else faulted).append(value)
    level = round(max(0.5, 2 * confidence - 1), 6)
    found = runtime_equivalence(faulted, baseline, margin=margin, level=level, seed=seed)
    counts = counts_by_stratum or {}
    return IsolationSummary(
        control=control,
        runtime=measure,
        runs=checked,
        violations=tuple(violations),
        equivalence=found,
        faulted=tuple(faulted),
        baseline=tuple(baseline),
        load_1m=tuple(loads),
        host_cpus=cpus,
        aimed_strata=aimed_strata,
        aimed_runs=sum(sum(counts.get(name, {}).values()) for name in aimed_strata),
    )


def runtime_quantiles(values: Sequence[float]) -> tuple[float, float, float] | None:
    """The least, median and greatest of `values` (None when there are none)."""
    if not values:
        return None
    return min(values), statistics.median(values), max(values)
