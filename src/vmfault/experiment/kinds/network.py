"""Network faults (`network:KIND`): frames between the machines of a testbed lost, corrupted,
delayed, duplicated, reordered, slowed or cut off, on a link, a card or every link.

The fault acts in the testbed's switch (`vmfault.network.Switch`) through a
`vmfault.faults.network.NetworkFilter`: installed at the trigger (a moment of the machine
the fault names, or of the judged machine), it acts for the fault's period and counts what
it did per link direction, which `finish` records once every machine's run ended. A
restore of the testbed removes it (the switch's `quiesce`), so it never outlives its
experiment.
"""

from __future__ import annotations

import dataclasses
import time
from typing import ClassVar

from vmfault.errors import UsageError
from vmfault.experiment.kinds.base import FaultKind, Injected
from vmfault.experiment.records import CorruptedBit, LinkCounts, NetworkInjection, TriggerPoint
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine
from vmfault.experiment.triggers import reach_trigger, trigger_text
from vmfault.faults.model import FaultSpec
from vmfault.faults.network import NetworkFault, NetworkFilter
from vmfault.network import Switch

__all__ = ["NetworkKind"]

_FAULT_COUNTS = ("seen", "dropped", "corrupted", "delayed", "duplicated", "reordered")
"""What a network fault counts per link direction."""


class NetworkKind(FaultKind):
    """A network fault, triggered on one machine, acting in the testbed's switch."""

    latency: ClassVar[bool] = False
    """A network fault has no moment of impact: it acts for a while."""

    def __init__(self, machine: GuestMachine) -> None:
        self.machine = machine
        self.filter: NetworkFilter | None = None

    def prepare(self, spec: FaultSpec) -> None:
        """UsageError unless the testbed has a network with every machine the fault names."""
        fault = _fault(spec)
        _switch(self.machine)
        testbed = self.machine.testbed
        assert testbed is not None
        fault.check(list(testbed.machines))

    def trigger(self, experiment: Experiment) -> str:
        """A time, exec or icount trigger on the machine the fault names (else the judged
        machine), as for any fault."""
        return reach_trigger(experiment)

    def inject(self, experiment: Experiment) -> Injected:
        """Install the fault in the switch, acting from now for its period."""
        fault = _fault(experiment.spec)
        switch = _switch(self.machine)
        point = experiment.trigger_point(trigger_text(experiment.plan))
        scale = self.machine.host_per_guest_s()
        now = time.monotonic()
        end = None if fault.duration_s is None else now + fault.duration_s * scale
        self.filter = NetworkFilter(
            fault, experiment.rng("network"), start=now, end=end, scale=scale
        )
        switch.install(self.filter)
        experiment.mark_injected()
        return Injected((self._injection(experiment, fault, point, injected=True),))

    def finish(self, experiment: Experiment, injected: Injected) -> Injected:
        """Remove the fault from the switch and record what it did to the frames."""
        network_filter, self.filter = self.filter, None
        if network_filter is None:
            return injected
        _switch(self.machine).install(None)
        links = tuple(
            LinkCounts(c.source, c.destination, **{k: getattr(c, k) for k in _FAULT_COUNTS})
            for c in network_filter.counters()
        )
        corruptions = tuple(
            CorruptedBit(item.source, item.destination, item.frame, offset, bit)
            for item in network_filter.corruptions
            for offset, bit in item.flips
        )
        first, *rest = injected.injections
        if not isinstance(first, NetworkInjection):
            return injected
        done = dataclasses.replace(first, links=links, corruptions=corruptions)
        return dataclasses.replace(injected, injections=(done, *rest))

    def not_injected(self, experiment: Experiment, reason: str) -> NetworkInjection:
        """The network fault that was never installed."""
        point = TriggerPoint(spec=trigger_text(experiment.plan))
        return self._injection(experiment, _fault(experiment.spec), point, reason=reason)

    def _injection(
        self,
        experiment: Experiment,
        fault: NetworkFault,
        point: TriggerPoint,
        *,
        injected: bool = False,
        reason: str = "",
    ) -> NetworkInjection:
        return NetworkInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            location=fault.spelling, mode=fault.kind.value, injected=injected, reason=reason,
            trigger=point, link=None if fault.link is None else "-".join(fault.link),
            direction=fault.direction.value, period_s=fault.duration_s,
        )  # fmt: skip


def _fault(spec: FaultSpec) -> NetworkFault:
    if spec.network is None:
        raise UsageError(f"{spec.target.spelling} is not a network fault")
    return spec.network


def _switch(machine: GuestMachine) -> Switch:
    testbed = machine.testbed
    if testbed is None or testbed.switch is None:
        raise UsageError(
            "a network fault needs machines joined by a network",
            hint="give two or more [[machine]] tables (their testbed has a network)",
        )
    return testbed.switch
