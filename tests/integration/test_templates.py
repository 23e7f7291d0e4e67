"""Restores through RAM templates: clones start at the template's state, every restore puts
RAM and registers back exactly, and code a fault rewrote never runs in the next experiment
(RAM written from outside QEMU is not seen by its detection of self-modifying code)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmfault.arch import Arch
from vmfault.classify import Outcome
from vmfault.errors import RestoreMismatchError
from vmfault.experiment.pipeline import Experimenter
from vmfault.experiment.testbed import RestoreMethod
from vmfault.faults import FaultSpec
from vmfault.guest.image import GuestImage
from vmfault.machine import SnapshotKind
from vmfault.machine.cowram import CowRam
from vmfault.machine.rundir import ram_root

pytestmark = pytest.mark.vm

UD2 = "value:0x0b0f0b0f0b0f0b0f"
"""Eight bytes of `ud2` instructions: any code they land in traps at once."""
TRAPS = {Arch.X86_64: UD2, Arch.AARCH64: "value:0x0"}
"""Eight bytes that trap wherever code runs into them (aarch64: two `udf #0`)."""
SYSCALL_ENTRY = {Arch.X86_64: "do_syscall_64", Arch.AARCH64: "invoke_syscall"}
"""A kernel function every system call of the workload runs."""
CONTROL = FaultSpec.from_options(target="none")


@pytest.fixture(scope="module")
def checksum(arch_image: GuestImage) -> Iterator[Experimenter]:
    """An experimenter on checksum whose machine is a clone of a RAM template, on each
    architecture (on aarch64 the clone's loadvm rewrites the device tree into RAM, which
    the restore puts back)."""
    with Experimenter.single(arch_image, ["checksum"]) as experimenter:
        yield experimenter


def test_a_clone_starts_exactly_at_its_template(checksum: Experimenter) -> None:
    machine = checksum.testbed.machine()
    assert machine.template is not None and machine.snapshot is not None
    assert machine.snapshot.kind is SnapshotKind.TEMPLATE
    assert machine.template.ram.is_relative_to(ram_root())
    machine.restore(verify=True)  # registers and every page of RAM against the template
    record = checksum.run(CONTROL, seed=1)
    assert record.outcome is Outcome.BENIGN, record.reason
    assert record.output == checksum.golden.output


@pytest.mark.parametrize("where", ["kernel", "workload"])
def test_code_a_fault_rewrote_never_runs_in_the_next_experiment(
    checksum: Experimenter, where: str
) -> None:
    machine = checksum.testbed.machine()
    arch = machine.image.arch
    if where == "kernel":  # the entry of every system call the workload makes
        physical = machine.symbols.physical_of(machine.symbols.address(SYSCALL_ENTRY[arch]))
        spec = FaultSpec.from_options(target=f"memory:{physical:#x}", bits=TRAPS[arch])
    else:  # the workload's own code: checksum's fold loop
        spec = FaultSpec.from_options(
            target="memory:@fold+0", bits=TRAPS[arch], trigger="exec:main"
        )
    broken = checksum.run(spec, seed=3)
    assert broken.injection.injected, broken.reason
    assert broken.outcome is Outcome.CRASH, (broken.reason, broken.evidence)
    if where == "workload":
        assert broken.machines[0].signal in ("SIGILL", "SIGSEGV"), broken.reason
    # The restore after a fault that wrote code is verified (RAM and registers): this one
    # passes, and the next runs are the golden run again.
    assert machine.verify_next
    for index in range(3):
        record = checksum.run(CONTROL, seed=1, index=index)
        assert not machine.verify_next
        assert record.outcome is Outcome.BENIGN, (record.reason, record.evidence)
        assert record.output == checksum.golden.output


def test_a_sample_of_restores_is_byte_identical(checksum: Experimenter) -> None:
    machine = checksum.testbed.machine()
    families = ["memory:ram", "memory:process", "register:gpr", "memory:kernel-data"]
    arch = machine.image.arch
    for index, target in enumerate(families):
        fault = FaultSpec.from_options(target=target, arch=arch)
        record = checksum.run(fault, seed=7, index=index)
        assert record.outcome is not Outcome.VMM_ERROR, record.reason
        machine.restore(verify=True)
    assert machine.vm.ram_written_bytes is not None and machine.vm.ram_written_bytes > 0


def test_a_restore_that_leaves_ram_behind_is_caught(
    checksum: Experimenter, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = checksum.testbed.machine()
    record = checksum.run(FaultSpec.from_options(target="memory:ram"), seed=2)
    assert record.injection.injected, record.reason
    # A restore that forgot to copy the written pages back must not pass for a good one.
    monkeypatch.setattr(CowRam, "reset", lambda self: 0)
    with pytest.raises(RestoreMismatchError, match="RAM page"):
        machine.restore(verify=True)
    monkeypatch.undo()
    machine.restore(verify=True)


def test_the_loadvm_fallback_restores_as_before(image: GuestImage) -> None:
    with Experimenter.single(image, ["checksum"], restore=RestoreMethod.LOADVM) as experimenter:
        machine = experimenter.testbed.machine()
        assert machine.template is None and machine.snapshot is not None
        assert machine.snapshot.kind is SnapshotKind.INTERNAL
        crash = experimenter.run(
            FaultSpec.from_options(target="register:rip", bits="40", context="user"), seed=4
        )
        assert crash.outcome is Outcome.CRASH, crash.reason
        control = experimenter.run(CONTROL, seed=1)
        assert control.outcome is Outcome.BENIGN, control.reason


CAMPAIGN = """
[campaign]
name = "code-flips"
seed = 9
experiments = 30
workers = 2

[guest]
workload = "checksum"

[[faults]]
target = "memory:kernel-text"

[[faults]]
target = "kernel-code:hot"

[[faults]]
target = "memory:@fold"
bits = "{ud2}"
trigger = "exec:main"

[[faults]]
target = "none"
experiments = 16
"""


def test_control_runs_after_code_flips_in_a_campaign_are_all_benign(tmp_path: Path) -> None:
    file = tmp_path / "code-flips.toml"
    file.write_text(CAMPAIGN.format(ud2=UD2))
    db = tmp_path / "code-flips.db"
    argv = [sys.executable, "-m", "vmfault", "campaign", "run", str(file), "--db", str(db)]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
        _, stderr = run.communicate(timeout=900)
    assert run.returncode == 0, stderr
    # The campaign's template (in the RAM root) went with it.
    assert not list(ram_root().glob(f"m{run.pid}-*"))
    status = subprocess.run(
        [sys.executable, "-m", "vmfault", "campaign", "status", str(db), "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    data = json.loads(status.stdout)
    assert data["done"] == data["total"] == 46
    control = data["false_positive"]
    assert control["runs"] == 16 and control["failures"] == 0, control
