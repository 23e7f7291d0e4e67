"""Fault models: what a fault is and how its random parts are chosen (pure, no I/O)."""

from vmfault.faults.model import (
    MEMORY_REGIONS,
    REGISTER_GROUPS,
    REGISTER_WIDTHS,
    BitMode,
    BitModel,
    Context,
    FaultSpec,
    Target,
    TargetKind,
    Trigger,
    TriggerKind,
    parse_duration_s,
)
from vmfault.faults.select import BitChoice, Plan, choose_bits, choose_in_ranges, plan, rng_for

__all__ = [
    "MEMORY_REGIONS",
    "REGISTER_GROUPS",
    "REGISTER_WIDTHS",
    "BitChoice",
    "BitMode",
    "BitModel",
    "Context",
    "FaultSpec",
    "Plan",
    "Target",
    "TargetKind",
    "Trigger",
    "TriggerKind",
    "choose_bits",
    "choose_in_ranges",
    "parse_duration_s",
    "plan",
    "rng_for",
]
