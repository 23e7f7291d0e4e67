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
    Target,
    TargetKind,
    Trigger,
    TriggerKind,
    canonical_op,
    parse_duration_s,
)
from vmfault.faults.select import BitChoice, Plan, choose_bits, choose_in_ranges, plan, rng_for

__all__ = [
    "INSTRUCTION_OPS",
    "MEMORY_REGIONS",
    "REGISTER_GROUPS",
    "REGISTER_WIDTHS",
    "BitChoice",
    "BitMode",
    "BitModel",
    "Context",
    "FaultSpec",
    "InstructionFault",
    "Plan",
    "Target",
    "TargetKind",
    "Trigger",
    "TriggerKind",
    "canonical_op",
    "choose_bits",
    "choose_in_ranges",
    "parse_duration_s",
    "plan",
    "rng_for",
]
