"""Control runs (target `none`): the experiment goes through the whole pipeline but nothing
is injected, so it must come out benign.

The trigger is the golden snapshot itself (the restored target stands halted at its
workload's start hook; there is nothing to reach) and the injection is one
`ControlInjection` that holds. The pipeline then observes and classifies the run as for
any kind: a control run that does not come out benign is a false positive of the
classification or of the testbed (a flaky workload, a budget too tight, a VMM problem).
"""

from __future__ import annotations

from typing import ClassVar

from vmfault.experiment.kinds.base import FaultKind, Injected
from vmfault.experiment.records import ControlInjection
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine

__all__ = ["ControlKind"]


class ControlKind(FaultKind):
    """The kind of control runs: no trigger to reach, one injection of nothing."""

    latency: ClassVar[bool] = False
    """No fault, so no latency from it: a crashing control run has none."""

    def __init__(self, machine: GuestMachine) -> None:
        self.machine = machine

    def trigger(self, experiment: Experiment) -> str:
        """Nothing to reach: the restored snapshot is the trigger."""
        return ""

    def inject(self, experiment: Experiment) -> Injected:
        """Inject nothing; evidence counts from the snapshot on."""
        experiment.mark_injected()
        return Injected((ControlInjection(machine=self.machine.name, injected=True),))

    def not_injected(self, experiment: Experiment, reason: str) -> ControlInjection:
        """The control run that could not go ahead (the machine layer failed at the start)."""
        return ControlInjection(machine=self.machine.name, reason=reason)
