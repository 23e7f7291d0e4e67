"""Kernel-code faults (Gigan): a bit of one byte of a kernel function's instructions.

`kernel-code:FUNCTION` draws the byte uniformly in that function; `kernel-code:hot` first
draws the function, weighted by how often the golden run executed it (a sampled kernel
profile, `vmfault.profile.kernel`, taken once and cached). Bytes are written through the
gdbstub, which makes QEMU drop the stale translations of the code it changes.

The functions are those of the kernel image: its bytes sit at a fixed physical address
(`nokaslr`), while a module's code is wherever this boot's vmalloc put it, which may not
be where the captured symbols say (about one boot in five, measured). A module function
named as a target is a one-line error, and `hot` draws among the image's functions only.
"""

from __future__ import annotations

import random

from vmfault.errors import UsageError
from vmfault.experiment.kinds.memory import Cell, MemoryKind
from vmfault.experiment.state import Experiment
from vmfault.faults.model import FaultSpec
from vmfault.profile.kernel import KernelProfile, load_or_profile_kernel

__all__ = ["KernelCodeKind"]


class KernelCodeKind(MemoryKind):
    """Faults in the bytes of kernel functions."""

    _profile: KernelProfile | None = None

    def prepare(self, spec: FaultSpec) -> None:
        """`kernel-code:hot` needs the kernel profile of the workload (taken once) with a
        function of the kernel image in it; UsageError for a function of a module."""
        super().prepare(spec)
        name = spec.target.name
        if name == "hot":
            if not self._image_weights():
                raise UsageError(
                    "the workload's kernel profile has no function of the kernel image",
                    hint="name a kernel function: kernel-code:FUNCTION",
                )
            return
        symbol = self.machine.symbols.get(name)
        if symbol is not None and symbol.module:
            raise UsageError(
                f"kernel function {name} is in module {symbol.module}: kernel-code faults "
                "flip bytes of the kernel image (a module's code can move between boots)",
                hint="name a function of the kernel image, or use kernel-code:hot",
            )

    def _image_weights(self) -> list[tuple[str, float]]:
        """The profile's functions of the kernel image with their sample shares (modules'
        functions left out)."""
        symbols = self.machine.symbols
        return [
            (name, weight)
            for name, weight in self.profile().weights()
            if (symbol := symbols.get(name)) is not None and not symbol.module
        ]

    def profile(self) -> KernelProfile:
        """Where the kernel spends its time under this machine's workload (cached)."""
        if self._profile is None:
            machine = self.machine
            self._profile = load_or_profile_kernel(
                machine.image, machine.argv, symbols=machine.symbols
            )
        return self._profile

    def choose(self, experiment: Experiment, rng: random.Random) -> Cell:
        """A byte of the function (drawn by its profile weight for `hot`)."""
        symbols = self.machine.symbols
        name = experiment.spec.target.name
        if name == "hot":
            names, weights = zip(*self._image_weights(), strict=True)
            name = rng.choices(names, weights=weights)[0]
        symbol = symbols.get(name)
        if symbol is None or not symbol.is_function:
            raise UsageError(f"no kernel function {name!r}", hint="give a kernel function name")
        offset = rng.randrange(max(1, symbols.size_of(symbol)))
        virtual = symbol.address + offset
        return Cell(symbols.physical_of(virtual), virtual, f"{name}+{offset:#x}", 1)
