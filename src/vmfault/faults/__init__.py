"""Fault models: what a fault is and how its random parts are chosen (pure, no I/O)."""

from vmfault.faults.model import (
    INSTRUCTION_OPS,
    MEMORY_REGIONS,
    REGISTER_GROUPS,
    REGISTER_WIDTHS,
    BitMode,
    BitModel,
    Context,
    FaultSpec,
    InstructionFault,
    OptionError,
    Target,
    TargetKind,
    Trigger,
    TriggerKind,
    canonical_op,
)
from vmfault.faults.select import BitChoice, Plan, choose_bits, choose_in_ranges, plan, rng_for
from vmfault.faults.units import Budget, parse_duration_s, parse_ranges

__all__ = [
    "INSTRUCTION_OPS",
    "MEMORY_REGIONS",
    "REGISTER_GROUPS",
    "REGISTER_WIDTHS",
    "BitChoice",
    "BitMode",
    "BitModel",
    "Budget",
    "Context",
    "FaultSpec",
    "InstructionFault",
    "OptionError",
    "Plan",
    "Target",
    "TargetKind",
    "Trigger",
    "TriggerKind",
    "canonical_op",
    "choose_bits",
    "choose_in_ranges",
    "parse_duration_s",
    "parse_ranges",
    "plan",
    "rng_for",
]
