"""The experiment pipeline: restore -> reach the trigger -> inject -> read back -> observe ->
finish -> classify -> record, one way for every fault kind.

An `Experimenter` owns a started `Testbed`. Each experiment restores every machine (the
ones the fault does not go to run free from the snapshot), has the fault's kind
(`vmfault.experiment.kinds`) reach its trigger on the target machine and inject, observes
every machine until its outcome is certain, classifies each against its own golden run
and records what each did; the experiment's outcome is the judged machine's.

Guarantees: an injection is recorded with its value before, the value written and the
value read back; a fault that could not be placed, or did not read back as written, makes
the experiment `not-injected`, which is never counted as an outcome. A VMM failure is
never turned into a guest outcome: QEMU dying raises MachineError to the caller (a
campaign records it as `vmm-error`), or is classified `vmm-error` when seen in the
observation. Experiment `index` under `seed` makes the same choices every time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from vmfault.classify import (
    Activation,
    Classification,
    CrashTable,
    Latency,
    LatencyUnit,
    Outcome,
    activation_of,
    classify,
)
from vmfault.errors import UsageError, VmfaultError
from vmfault.experiment.isolation import isolation_run
from vmfault.experiment.kinds import KINDS, FaultKind, Injected, kind_name
from vmfault.experiment.observe import Observed, observe, release
from vmfault.experiment.records import (
    DEFAULT_MACHINE,
    ExperimentRecord,
    GoldenRun,
    Injection,
    IsolationRun,
    LinkCounts,
    MachineRun,
    StormSummary,
    Traffic,
)
from vmfault.experiment.state import Experiment, Phases, Symptom
from vmfault.experiment.testbed import (
    DEFAULT_BUDGET_FACTOR,
    GuestMachine,
    RestoreMethod,
    StartedOnEnter,
    Testbed,
)
from vmfault.faults.model import FaultSpec
from vmfault.faults.select import plan
from vmfault.faults.units import Budget
from vmfault.guest.image import GuestImage
from vmfault.machine import Accel, Machine
from vmfault.machine.disks import GuestDisk

__all__ = ["Experimenter", "build_record", "infra_failure_record", "vmm_error_record"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

RETIME_EVERY = 25
"""Experiments between two timings of a fault-free run (the host's speed drifts)."""


class Experimenter(StartedOnEnter):
    """Runs experiments on a testbed. Use as a context manager: entering starts the testbed
    (boots, snapshots, golden runs); leaving destroys every machine."""

    def __init__(
        self,
        testbed: Testbed,
        *,
        budget_factor: float | Budget = DEFAULT_BUDGET_FACTOR,
        crash_table: CrashTable | None = None,
        control: str | None = None,
    ) -> None:
        if control is not None:
            testbed.machine(control)  # UsageError for a machine the testbed lacks
        self.control = control
        """The control machine of an isolation campaign (None: no isolation check): a
        control that differs from its golden run is a violation, recorded as vmm-error;
        its runtimes are recorded (`ExperimentRecord.isolation`)."""
        self.budget = (
            budget_factor if isinstance(budget_factor, Budget) else Budget(factor=budget_factor)
        )
        """The hang budget: golden runs, or guest seconds (`Budget.parse("20s")`)."""
        self.testbed = testbed
        self.crash_table = crash_table
        self._kinds: dict[tuple[str, str], FaultKind] = {}
        self._prepared: set[tuple[str, FaultSpec]] = set()
        self._since_timing = 0

    @classmethod
    def single(
        cls,
        image: GuestImage,
        argv: Sequence[str],
        *,
        deterministic: bool = False,
        accel: Accel = Accel.TCG,
        budget_factor: float | Budget = DEFAULT_BUDGET_FACTOR,
        crash_table: CrashTable | None = None,
        console_log: Path | None = None,
        restore: RestoreMethod = RestoreMethod.TEMPLATE,
        disks: Sequence[GuestDisk] = (),
    ) -> Experimenter:
        """An experimenter on a testbed of one machine running `argv`, with `disks`."""
        testbed = Testbed.single(
            image,
            argv,
            deterministic=deterministic,
            accel=accel,
            console_log=console_log,
            disks=disks,
            restore=restore,
        )
        return cls(testbed, budget_factor=budget_factor, crash_table=crash_table)

    def start(self) -> Mapping[str, GoldenRun]:
        """Start the testbed; every machine's golden run."""
        return self.testbed.start()

    def close(self) -> None:
        """Destroy every machine."""
        self.testbed.close()

    @property
    def golden(self) -> GoldenRun:
        """The golden run of the default machine (the judged one, or the first)."""
        return self.testbed.machine().require_golden()

    @property
    def machine(self) -> Machine:
        """The QEMU machine of the default machine."""
        return self.testbed.machine().vm

    def kind(self, spec: FaultSpec, machine: GuestMachine) -> FaultKind:
        """The kind of `spec` serving `machine`, prepared for `spec` (once)."""
        name = kind_name(spec)
        key = (name, machine.name)
        if key not in self._kinds:
            self._kinds[key] = KINDS[name](machine)
        kind = self._kinds[key]
        if (machine.name, spec) not in self._prepared:
            kind.prepare(spec)
            self._prepared.add((machine.name, spec))
        return kind

    def run(self, spec: FaultSpec, *, seed: int, index: int = 0) -> ExperimentRecord:
        """Experiment `index` of `spec` under `seed`. Raises UsageError for a fault the
        testbed cannot take, MachineError if a machine fails under the experiment."""
        target = self.testbed.machine(spec.machine)
        for machine in self.testbed:
            machine.require_golden()
        self._since_timing += 1
        if self._since_timing > RETIME_EVERY:
            self.testbed.retime()
            self._since_timing = 0
        golden = target.require_golden()
        kind = self.kind(spec, target)
        choices = plan(
            spec, seed=seed, index=index, golden_duration_s=golden.span_s,
            golden_instructions=golden.instructions,
        )  # fmt: skip
        phases = Phases()
        attempt = 0
        experiment: Experiment | None = None
        try:
            while True:
                attempt += 1
                self.testbed.restore()
                experiment = Experiment(self.testbed, target, spec, choices, budget=self.budget,
                                        attempt=attempt, release=release)  # fmt: skip
                experiment.release()
                phases.lap("restore")
                injected = _inject(kind, experiment, phases)
                if not injected.restart or attempt >= kind.attempts:
                    break
                experiment.end_crew()
                kind.finish(experiment, injected)
            held = any(i.injected for i in injected.injections)
            if not held:
                experiment.end_crew()
            observed = {target.name: observe(experiment, experiment.here, injected=held)}
            if experiment.crew is not None:
                observed.update(experiment.crew.join())
                experiment.crew = None
            for name, progress in experiment.progress.items():
                if name not in observed:  # no crew: a machine not observed yet
                    observed[name] = observe(experiment, progress, injected=held)
        finally:
            if experiment is not None:
                experiment.end_crew()
        phases.lap("observe")
        _verify_after_code_writes(target, injected)
        injected = kind.finish(experiment, injected)
        experiment.note_length()
        landed = (
            dataclasses.replace(i, trigger=experiment.landed(i.trigger))
            for i in injected.injections
        )
        injected = dataclasses.replace(injected, injections=tuple(landed))
        return self._record(experiment, kind, injected, observed, phases)

    def _record(
        self,
        experiment: Experiment,
        kind: FaultKind,
        injected: Injected,
        observed: Mapping[str, Observed],
        phases: Phases,
    ) -> ExperimentRecord:
        """Classify every machine and build the experiment's record."""
        target = experiment.target
        first = injected.injections[0]
        held = any(i.injected for i in injected.injections)
        runs: list[MachineRun] = []
        verdict: Classification | None = None
        isolation: IsolationRun | None = None
        for machine in self.testbed:
            observation = observed[machine.name].observation
            # A QEMU that died under the fault is judged too (vmm-error, with its end as
            # evidence), so the record keeps the fault that killed it.
            golden = machine.golden or machine.require_golden()
            judged = classify(golden, observation, table=self.crash_table)
            if machine is target:
                judged, injected = kind.react(experiment, injected, judged)
                verdict = judged
            result = machine.result()
            run = MachineRun(
                machine=machine.name, outcome=judged.outcome,
                reason=judged.reason if held else first.reason or judged.reason,
                cause=judged.cause, evidence=judged.evidence,
                output=observation.stdout.decode("utf-8", errors="replace"),
                stderr=observation.stderr.decode("utf-8", errors="replace"),
                exit_status=None if result is None else result.exit_status,
                signal=None if result is None else result.signal,
            )  # fmt: skip
            if machine.name == self.control:
                progress = experiment.progress[machine.name]
                run, isolation = isolation_run(
                    run, judged, progress, machine.require_golden(), result,
                    console=observation.console, baseline=experiment.spec.control,
                    observed=held and not progress.aborted, host_cpus=machine.spec.host_cpus,
                )  # fmt: skip
            runs.append(run)
        assert verdict is not None
        latency = None
        if kind.latency:
            latency = _latency(verdict, experiment.injected_at, experiment.here.symptom)
        read_first = observed[target.name].read_first
        if injected.activated is not None:
            read_first = injected.activated
        activation = activation_of(verdict.outcome, read_before_overwrite=read_first)
        if injected.activated is False and verdict.outcome.counts:
            activation = Activation.NOT_ACTIVATED  # nothing reached the fault
        phases.lap("classify")
        return build_record(
            experiment.spec, seed=experiment.seed, index=experiment.index,
            injections=injected.injections, machines=runs,
            judged=self._judged(runs, target.name), latency=latency, activation=activation,
            phases_s=phases.seconds, storm=injected.summary, traffic=self._traffic(injected),
            isolation=isolation,
        )  # fmt: skip

    def _traffic(self, injected: Injected) -> Traffic | None:
        """The frames each link direction carried in the experiment, with what the fault
        did to them (a testbed with a network; None otherwise)."""
        switch = self.testbed.switch
        if switch is None:
            return None
        faults = {
            (link.source, link.destination): link
            for injection in injected.injections
            for link in getattr(injection, "links", ())
            if isinstance(link, LinkCounts)
        }
        links = []
        for (source, destination), counted in sorted(switch.counters().items()):
            fault = faults.get((source, destination), LinkCounts(source, destination))
            links.append(dataclasses.replace(
                fault, seen=counted.seen, delivered=counted.delivered, overflow=counted.overflow
            ))  # fmt: skip
        return Traffic(tuple(links))

    def _judged(self, runs: Sequence[MachineRun], target: str) -> str:
        """The machine whose outcome is the experiment's: the testbed's judge, else the
        worst outcome (the target's on a tie; a fault not injected is judged there)."""
        if self.testbed.judge is not None:
            return self.testbed.judge
        by_name = {run.machine: run for run in runs}
        if by_name[target].outcome is Outcome.NOT_INJECTED:
            return target
        return max(runs, key=lambda run: (run.outcome.severity, run.machine == target)).machine


def _verify_after_code_writes(target: GuestMachine, injected: Injected) -> None:
    """A fault that wrote code makes the next restore of its machine verified: RAM written
    from outside QEMU is not seen by its detection of self-modifying code, so this is where
    a stale translation would show."""
    for injection in injected.injections:
        physical = getattr(injection, "address", None)
        virtual = getattr(injection, "virtual", None)
        if injection.injected and target.holds_code(physical, virtual):
            target.verify_next = True
            return


def _inject(kind: FaultKind, experiment: Experiment, phases: Phases) -> Injected:
    """Reach the trigger and inject. A fault that cannot be placed (its trigger not
    reached, an error of the machine layer while QEMU lives) is recorded as not injected;
    usage errors and a dead QEMU propagate."""
    problem = kind.trigger(experiment)
    phases.lap("to_trigger")
    if problem:
        injected = Injected((kind.not_injected(experiment, problem),))
    else:
        try:
            injected = kind.inject(experiment)
        except UsageError:
            raise
        except VmfaultError as exc:
            if not experiment.vm.alive:
                raise
            injected = Injected((kind.not_injected(experiment, exc.one_line()),))
    phases.lap("inject")
    return injected


def _latency(
    verdict: Classification, injected_at: Symptom | None, symptom: Symptom | None
) -> Latency | None:
    """Injection to the first symptom of a crash or detection: guest instructions in
    deterministic mode, host nanoseconds otherwise."""
    if verdict.outcome not in (Outcome.CRASH, Outcome.DETECTED):
        return None
    if symptom is None or injected_at is None:
        return None
    if symptom.instructions is not None and injected_at.instructions is not None:
        return Latency(symptom.instructions - injected_at.instructions, LatencyUnit.INSTRUCTIONS)
    return Latency(round((symptom.at_s - injected_at.at_s) * 1e9), LatencyUnit.WALL_NS)


def build_record(
    spec: FaultSpec,
    *,
    seed: int,
    index: int,
    injections: Sequence[Injection],
    machines: Sequence[MachineRun],
    judged: str,
    latency: Latency | None = None,
    activation: Activation = Activation.UNKNOWN,
    phases_s: Mapping[str, float] | None = None,
    storm: StormSummary | None = None,
    traffic: Traffic | None = None,
    isolation: IsolationRun | None = None,
) -> ExperimentRecord:
    """The record of one experiment (the one place records are made). The spec is kept in
    its JSON form exactly (lists, not tuples), so a stored record reloads equal."""
    return ExperimentRecord(
        index=index, seed=seed, spec=json.loads(json.dumps(spec.to_json())),
        injections=tuple(injections),
        machines=tuple(machines), judged=judged, latency=latency, activation=activation,
        phases_s=dict(phases_s or {}), storm=storm, traffic=traffic, isolation=isolation,
    )  # fmt: skip


def vmm_error_record(
    spec: FaultSpec,
    *,
    seed: int,
    index: int,
    reason: str,
    machine: str = DEFAULT_MACHINE,
    evidence: str = "",
) -> ExperimentRecord:
    """The record of an experiment during which the VMM itself failed; `evidence` is QEMU's
    end (`vmfault.classify.qemu_evidence`), if known."""
    return _failure_record(spec, Outcome.VMM_ERROR, seed=seed, index=index, reason=reason,
                           machine=machine, evidence=evidence)  # fmt: skip


def infra_failure_record(
    spec: FaultSpec, *, seed: int, index: int, reason: str, machine: str = DEFAULT_MACHINE
) -> ExperimentRecord:
    """The record of an experiment given up after the infrastructure lost it on every
    attempt (`infra-failure`: never counted as an outcome)."""
    return _failure_record(spec, Outcome.INFRA_FAILURE, seed=seed, index=index, reason=reason,
                           machine=machine, evidence="")  # fmt: skip


def _failure_record(
    spec: FaultSpec,
    outcome: Outcome,
    *,
    seed: int,
    index: int,
    reason: str,
    machine: str,
    evidence: str,
) -> ExperimentRecord:
    injection = Injection(target=spec.target.spelling, machine=machine,
                          mode=spec.bits.mode.value, reason=reason)  # fmt: skip
    run = MachineRun(machine=machine, outcome=outcome, reason=reason, evidence=evidence)
    return build_record(spec, seed=seed, index=index, injections=[injection], machines=[run],
                        judged=machine)  # fmt: skip
