"""Experiments: a testbed of named machines, the one pipeline every fault kind plugs into,
and the records it produces.

- `vmfault.experiment.records`: what golden runs and experiments produced (pure data, a
  leaf: the store and the report read it without the engine);
- `vmfault.experiment.testbed`: the machines, booted once, restored per experiment;
- `vmfault.experiment.pipeline`: `Experimenter`, restore -> trigger -> inject -> observe ->
  classify -> record;
- `vmfault.experiment.kinds`: the fault kinds and their registry.

Names resolve on first use, so importing the records loads nothing of the engine.
"""

from typing import TYPE_CHECKING

from vmfault._lazy import lazy_attributes

if TYPE_CHECKING:
    from vmfault.experiment.pipeline import Experimenter, vmm_error_record
    from vmfault.experiment.records import (
        ExperimentRecord,
        GoldenRun,
        Injection,
        MachineRun,
        StormSummary,
    )
    from vmfault.experiment.testbed import MachineSpec, Testbed, golden_run

__all__ = [
    "ExperimentRecord",
    "Experimenter",
    "GoldenRun",
    "Injection",
    "MachineRun",
    "MachineSpec",
    "StormSummary",
    "Testbed",
    "golden_run",
    "vmm_error_record",
]

_MODULES = {
    "vmfault.experiment.pipeline": ("Experimenter", "vmm_error_record"),
    "vmfault.experiment.records": ("ExperimentRecord", "GoldenRun", "Injection", "MachineRun",
                                   "StormSummary"),
    "vmfault.experiment.testbed": ("MachineSpec", "Testbed", "golden_run"),
}  # fmt: skip
__getattr__, __dir__ = lazy_attributes(
    __name__, {name: module for module, names in _MODULES.items() for name in names}
)
