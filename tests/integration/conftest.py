"""Fixtures that climb a ladder: image built, machine booted, machine restored to clean."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from vmfault.arch import Arch
from vmfault.guest.image import GuestImage, ImageSpec
from vmfault.guest.symbols import KernelSymbols
from vmfault.machine import Machine, Snapshot
from vmfault.session import capture_kernel_symbols, machine_config, prepare_image

IDLE_ARGV = ["/bin/busybox", "true"]
"""A workload that exits at once, leaving the agent idle and the kernel in its idle loop."""


@pytest.fixture(scope="session")
def image() -> GuestImage:
    """The built-in guest image (built once, then cached)."""
    return prepare_image()


@pytest.fixture(scope="session", params=list(Arch), ids=[arch.value for arch in Arch])
def arch(request: pytest.FixtureRequest) -> Arch:
    """The guest architecture: a test that applies to both runs once on each (x86_64 and
    aarch64); `@pytest.mark.parametrize("arch", [...], indirect=True)` picks some."""
    return Arch(request.param)


@pytest.fixture(scope="session")
def arch_image(arch: Arch) -> GuestImage:
    """The built-in guest image of `arch` (built once, then cached)."""
    return prepare_image(ImageSpec(arch=arch))


@pytest.fixture(scope="session")
def kernel_symbols(image: GuestImage) -> KernelSymbols:
    """The booted kernel's symbol table."""
    return capture_kernel_symbols(image)


@pytest.fixture(scope="session")
def kernel_symbol(kernel_symbols: KernelSymbols) -> Callable[[str], int]:
    """Look up a kernel symbol's virtual address by name."""
    return kernel_symbols.address


@pytest.fixture(scope="module")
def idle_machine(image: GuestImage) -> Iterator[tuple[Machine, Snapshot]]:
    """A booted guest whose agent is idle, and a snapshot of that clean state."""
    with Machine(machine_config(image, IDLE_ARGV), name="idle") as vm:
        assert vm.channel.wait("idle", timeout_s=60) is not None, vm.console.transcript()
        clean = vm.save_snapshot("clean")
        vm.cont()
        yield vm, clean


@pytest.fixture
def machine(idle_machine: tuple[Machine, Snapshot]) -> Iterator[Machine]:
    """The idle guest, restored to its clean snapshot and running."""
    vm, clean = idle_machine
    vm.restore_snapshot(clean)
    vm.cont()
    yield vm
    if vm.alive:
        vm.halt()
