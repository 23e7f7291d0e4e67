"""Continuing from a breakpoint always runs on, on a loaded host too.

QEMU 7.2 under TCG sometimes answers a single step off a breakpoint with nothing run (a few
steps in a hundred with every core busy); a continue that trusted that step fired the same
breakpoint again at once, and a workload stopped at its exit hook never reported its exit:
a control run counted as a hang. The checksum workload calls `fold` once per round with the
round's number as its fourth argument (ecx), so the hits of a breakpoint there must count
0, 1, 2, ... with no number twice.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from vmfault.experiment.testbed import Testbed
from vmfault.guest.image import GuestImage
from vmfault.machine import RunEnd

pytestmark = pytest.mark.vm

RUNS = 12
"""Workload runs from the snapshot: 16 rounds each, about 200 continues from `fold` (a stop
and the step off it cost about 0.1 s under TCG)."""
ROUNDS = 16
"""The checksum workload's default number of rounds."""
STOP_TIMEOUT_S = 60.0


@contextmanager
def loaded_host() -> Iterator[None]:
    """Every core kept busy by a spinning process (each killed by its PID afterwards)."""
    spin = [sys.executable, "-c", "while True: pass"]
    hogs = [subprocess.Popen(spin) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def test_every_continue_from_a_breakpoint_runs_to_the_next_hit(image: GuestImage) -> None:
    with Testbed.single(image, ["checksum"]) as testbed, loaded_host():
        machine = testbed.machine()
        vm = machine.vm
        fold = machine.code_address("fold")
        vm.gdb.set_breakpoint(fold)
        for _ in range(RUNS):
            machine.restore()
            rounds = []
            while True:
                run = vm.run_for(STOP_TIMEOUT_S)
                assert run.end is RunEnd.BREAKPOINT, run
                if run.pc == machine.hooks.exited:
                    break
                assert run.pc == fold, run
                rounds.append(vm.gdb.read_register("rcx") & 0xFFFF_FFFF)
            assert rounds == list(range(ROUNDS))
            assert machine.collect_exit()
            assert machine.result() is not None
