"""The protocol every fault kind implements, and what its injection hands back.

A fault kind is one way of corrupting a machine: registers, memory, kernel code,
instruction results, storms of flips, disks (networks, devices and the VMM itself come
next). The pipeline (`vmfault.experiment.pipeline`) knows only this protocol: it restores
the testbed, asks the kind to reach its trigger and to inject (each injection read back),
observes every machine, classifies and records. One kind object serves one machine of a
testbed, so it may keep what it learns from that machine's golden run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Protocol

from vmfault.classify import Classification
from vmfault.experiment.records import Injection, StormSummary
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine
from vmfault.faults.model import FaultSpec

__all__ = ["FaultKind", "Injected", "KindFactory"]


@dataclass(frozen=True)
class Injected:
    """What a kind's injection did: its injections (each read back), what it adds to the
    record, and whether the experiment must start again from the snapshot (before its
    outcome is known, so no outcome is favoured; at most `FaultKind.attempts` runs)."""

    injections: tuple[Injection, ...]
    summary: StormSummary | None = None
    restart: bool = False
    activated: bool | None = None
    """Whether the fault was reached, for a kind that knows it itself (a disk fault some
    request reached); None: as the observation's watch says. A fault not reached is
    `not-activated` whatever the outcome."""


class FaultKind(Protocol):
    """One kind of fault on one machine. Subclass it to get the defaults."""

    latency: ClassVar[bool] = True
    """Whether crash latency is measured from the injection to the first symptom."""
    attempts: ClassVar[int] = 1
    """Runs from the snapshot one experiment may take (see `Injected.restart`)."""

    def prepare(self, spec: FaultSpec) -> None:
        """Learn what `spec` needs from the golden run (profiles, sizes), before the first
        experiment of it, outside any experiment's timing. Called once per spec."""
        return

    def trigger(self, experiment: Experiment) -> str:
        """Run the restored target to the trigger and leave it halted there; an empty
        string, or why the trigger cannot be reached (the fault is then not injected)."""
        ...

    def inject(self, experiment: Experiment) -> Injected:
        """Make the fault, read it back, and call `experiment.mark_injected()` at the
        moment the first one is made. May run the guest on (several faults in one run);
        then it records in `experiment.here` where the run ended."""
        ...

    def not_injected(self, experiment: Experiment, reason: str) -> Injection:
        """The record of this fault when it could not be placed, saying `reason`."""
        ...

    def finish(self, experiment: Experiment, injected: Injected) -> Injected:
        """After the observation of every machine (and before a restart), with the
        target halted: take out what the fault left in the machine (a disk's tap), and
        return the injections completed with what the fault did while the guest ran (a
        disk's requests, a network fault's frames); others change nothing. A snapshot
        restore takes such parts out too, so a failed experiment leaves nothing behind."""
        return injected

    def react(
        self, experiment: Experiment, injected: Injected, verdict: Classification
    ) -> tuple[Classification, Injected]:
        """After the target's classification (`verdict`): a kind whose fault goes to QEMU
        itself (devices, the VMM) judges what QEMU did (`vmm-error` with QEMU's words) and
        keeps the guest's outcome in its injection. Default: nothing changes."""
        return verdict, injected


class KindFactory(Protocol):
    """Makes the kind object that serves one machine."""

    def __call__(self, machine: GuestMachine) -> FaultKind:
        """The kind for `machine`."""
        ...
