"""Seeded choices that turn a FaultSpec into one concrete fault (pure, no I/O).

Every random choice of experiment `index` under `seed` comes from its own generator
derived from (seed, index, purpose), so the same experiment makes the same choices
wherever and whenever it runs, and choices made late (a page of the process, known only
at the trigger) do not shift the ones made early.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

from vmfault.faults.model import (
    MEMORY_CELL_BITS,
    BitMode,
    BitModel,
    FaultSpec,
    TargetKind,
    TriggerKind,
)

__all__ = ["BitChoice", "Plan", "choose_bits", "choose_in_ranges", "plan", "rng_for"]


def rng_for(seed: int, index: int, purpose: str) -> random.Random:
    """A generator private to (seed, index, purpose)."""
    digest = hashlib.sha256(f"{seed}/{index}/{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


@dataclass(frozen=True)
class BitChoice:
    """The bits a fault changes in a location `width` bits wide, and how."""

    mask: int
    mode: BitMode
    width: int
    value: int | None = None

    @property
    def positions(self) -> tuple[int, ...]:
        """Bit positions set in the mask, lowest first."""
        return tuple(i for i in range(self.width) if self.mask >> i & 1)

    def apply(self, before: int) -> int:
        """The location's value after the fault, given its value before."""
        full = (1 << self.width) - 1
        if self.mode is BitMode.VALUE:
            return (self.value or 0) & full
        if self.mode is BitMode.STUCK_0:
            return before & ~self.mask & full
        if self.mode is BitMode.STUCK_1:
            return (before | self.mask) & full
        return (before ^ self.mask) & full


def choose_bits(model: BitModel, width: int, rng: random.Random) -> BitChoice:
    """Draw the bits of `model` for a location `width` bits wide."""
    if model.mode is BitMode.VALUE:
        return BitChoice((1 << width) - 1, model.mode, width, model.value)
    if model.positions:
        return BitChoice(sum(1 << p for p in model.positions), model.mode, width)
    low = model.low or 0
    high = model.high if model.high is not None else width - 1
    high = min(high, width - 1)
    if model.mode is BitMode.BURST:
        start = rng.randint(low, max(low, high - model.count + 1))
        mask = sum(1 << p for p in range(start, min(start + model.count, high + 1)))
        return BitChoice(mask, model.mode, width)
    picked = rng.sample(range(low, high + 1), model.count)
    return BitChoice(sum(1 << p for p in picked), model.mode, width)


def choose_in_ranges(ranges: Sequence[tuple[int, int]], rng: random.Random, *, align: int) -> int:
    """A uniformly chosen `align`-aligned address inside the [start, end) ranges."""
    cells = [(start + align - 1) // align for start, _ in ranges]
    counts = [max(0, end // align - first) for (_, end), first in zip(ranges, cells, strict=True)]
    total = sum(counts)
    if total == 0:
        raise ValueError("no memory to choose from")
    pick = rng.randrange(total)
    for first, count in zip(cells, counts, strict=True):
        if pick < count:
            return (first + pick) * align
        pick -= count
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Plan:
    """What can be decided before the experiment runs.

    `register` is set for register faults; `width` is the location's width in bits; the
    trigger's time or instruction count is fixed here (drawn over the golden run when the
    spec left it open). Memory addresses are chosen later, from the machine's memory;
    instruction-result bits once the instruction is known (width 0 and no bits here). A
    control run (target `none`) has width 0, no bits and no trigger; a disk fault in
    requests has width 0 and no bits, a corruption the bits of a 64-bit word.
    """

    spec: FaultSpec
    seed: int
    index: int
    register: str | None
    width: int
    bits: BitChoice
    trigger_time_s: float | None
    trigger_instructions: int | None


def plan(
    spec: FaultSpec,
    *,
    seed: int,
    index: int,
    golden_duration_s: float,
    golden_instructions: int | None,
) -> Plan:
    """The concrete choices for experiment `index` of `spec` under `seed`.

    A time trigger left open is a uniform moment of the golden execution
    (`golden_duration_s`, host seconds); an instruction trigger left open is uniform over
    `golden_instructions`. (A fault with a context draws further moments while it runs,
    `vmfault.experiment.triggers`.)"""
    rng = rng_for(seed, index, "plan")
    register = None
    width = MEMORY_CELL_BITS
    if spec.target.kind is TargetKind.NONE:
        # A control run chooses nothing: no location, no bits, no trigger time.
        return Plan(spec, seed, index, None, 0, BitChoice(0, spec.bits.mode, 0), None, None)
    if spec.target.kind is TargetKind.NETWORK:
        width = 0  # frames: what a network fault does is decided frame by frame
    if spec.target.kind is TargetKind.INSTRUCTION:
        # The result's width is known only once the faulted instruction is: its bits are
        # drawn then (`vmfault.faults.instructions.choose_result_bits`).
        empty = BitChoice(0, spec.bits.mode, 0, spec.bits.value)
        return Plan(spec, seed, index, None, 0, empty, None, None)
    if spec.target.kind is TargetKind.REGISTER:
        register = rng.choice(spec.target.registers())
        width = spec.target.register_width(register)
    elif spec.target.kind is TargetKind.KERNEL_CODE:
        width = 8  # one byte of an instruction
    elif spec.target.kind is TargetKind.DISK and spec.target.disk_fault != "corrupt":
        width = 0  # a fault in requests: no bits
    if width:
        bits = choose_bits(spec.bits, width, rng_for(seed, index, "bits"))
    else:
        bits = BitChoice(0, spec.bits.mode, 0)
    trigger = spec.trigger
    time_s = instructions = None
    timing = rng_for(seed, index, "trigger")
    if trigger.kind is TriggerKind.TIME:
        time_s = trigger.time_s
        if time_s is None:
            time_s = timing.uniform(0.0, golden_duration_s)
    elif trigger.kind is TriggerKind.INSTRUCTIONS:
        instructions = trigger.instructions
        if instructions is None:
            instructions = timing.randrange(max(1, golden_instructions or 1))
    return Plan(spec, seed, index, register, width, bits, time_s, instructions)
