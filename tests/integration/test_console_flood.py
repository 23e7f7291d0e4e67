"""A guest that floods its serial console still halts when asked.

aarch64's PL011 hands each byte to QEMU's console socket with a blocking write that holds
QEMU's global lock: while nothing reads the socket and it is full, QEMU cannot take the
gdbstub's interrupt, so a halt that waited on the gdbstub alone never came back."""

from __future__ import annotations

import time

import pytest

from vmfault.arch import Arch
from vmfault.guest.image import GuestImage
from vmfault.machine import Machine
from vmfault.machine.gdbproto import StopReason
from vmfault.session import machine_config

pytestmark = pytest.mark.vm

LINE = "0123456789abcdef" * 4
FLOOD = ("/bin/busybox", "sh", "-c", f"while :; do echo {LINE}; done > /dev/console")
FLOODING_BYTES = 1 << 16
"""Console bytes that show the flood under way."""
UNREAD_S = 3.0
"""Seconds nothing reads the console: the guest writes ~130 KB/s, QEMU's socket holds
~210 KB."""


@pytest.mark.parametrize("arch", [Arch.AARCH64], indirect=True)
def test_a_guest_flooding_its_console_halts(arch_image: GuestImage) -> None:
    with Machine(machine_config(arch_image, FLOOD), name="flood") as vm:
        flooding = vm.wait(lambda: vm.console.size > FLOODING_BYTES, 120)
        assert flooding, vm.console.transcript()[-500:]
        time.sleep(UNREAD_S)  # nobody reads the console meanwhile: its socket fills up
        stop = vm.halt()
        assert stop.reason is StopReason.INTERRUPT
        mark = vm.console.size
        vm.cont()
        assert vm.wait(lambda: vm.console.size > mark, 30)  # the flood goes on after it
        vm.halt()
