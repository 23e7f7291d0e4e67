"""One fault, one experiment, on real guests: every fault lands, every outcome has a reason."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmfault.arch import Arch
from vmfault.classify import Activation, Outcome
from vmfault.experiment.pipeline import Experimenter
from vmfault.experiment.records import ExperimentRecord, MemoryInjection
from vmfault.faults import BitModel, Context, FaultSpec, Target, Trigger
from vmfault.guest.image import GuestImage, ImageSpec, UserWorkload
from vmfault.session import prepare_image

pytestmark = pytest.mark.vm


@pytest.fixture(scope="module")
def checksum(arch_image: GuestImage) -> Iterator[Experimenter]:
    """One long-lived experimenter on `checksum --self-check` (restored per experiment), on
    each architecture."""
    with Experimenter.single(arch_image, ["checksum", "--self-check"]) as experimenter:
        yield experimenter


def spec(
    target: str,
    bits: str | None = None,
    trigger: str | None = None,
    context: Context = Context.ANY,
    arch: Arch = Arch.X86_64,
) -> FaultSpec:
    return FaultSpec(
        Target.parse(target, arch=arch), BitModel.parse(bits), Trigger.parse(trigger), context
    )


def arch_of(experimenter: Experimenter) -> Arch:
    return experimenter.testbed.image.arch


UNUSED_RAM = 0x7F00000
"""An offset into guest RAM near its top: free pages the idle kernel and a short workload
never touch (guest-physical 0x7f00000 on x86-64, RAM base 0x40000000 higher on aarch64)."""


def run_until_injected(
    experimenter: Experimenter, fault: FaultSpec, *, seed: int = 1, wanted: int = 3
) -> list[ExperimentRecord]:
    records = []
    for index in range(wanted * 4):
        record = experimenter.run(fault, seed=seed, index=index)
        if record.outcome is not Outcome.NOT_INJECTED:
            records.append(record)
        if len(records) == wanted:
            break
    assert len(records) == wanted, "faults could not be injected"
    return records


def assert_landed(record: ExperimentRecord) -> None:
    injection = record.injection
    assert injection.injected
    assert injection.before is not None and injection.after is not None
    assert injection.readback == injection.after
    assert injection.before ^ injection.after == injection.mask


@pytest.mark.parametrize("register", ["pc", "stack_pointer"])
def test_pointer_flips_in_the_workload_crash_with_a_signal(
    checksum: Experimenter, register: str
) -> None:
    arch = arch_of(checksum)
    name = getattr(arch.platform, register)  # rip, rsp / pc, sp
    fault = spec(f"register:{name}", "40", "exec:fold#3", Context.USER, arch)
    for record in run_until_injected(checksum, fault):
        assert_landed(record)
        assert record.injection.trigger.user_mode
        assert record.outcome is Outcome.CRASH, record.reason
        assert record.cause in ("SIGSEGV", "SIGBUS"), record.reason
        assert record.latency is not None and record.latency.value > 0


def test_a_flip_in_the_data_array_is_detected_by_the_self_check(checksum: Experimenter) -> None:
    fault = spec("memory:@checksum_values", "k1,16-47", "exec:fold#3")
    for record in run_until_injected(checksum, fault):
        assert_landed(record)
        assert record.injection.location.startswith("checksum_values+")
        assert record.outcome is Outcome.DETECTED, record.reason
        assert "DETECTED mismatch" in record.evidence
        assert record.activation is Activation.MANIFESTED


def test_a_flip_in_the_data_array_without_self_check_is_sdc(image: GuestImage) -> None:
    with Experimenter.single(image, ["checksum"]) as experimenter:
        fault = spec("memory:@checksum_values", "k1,16-47", "exec:fold#3")
        records = run_until_injected(experimenter, fault, wanted=3)
        assert experimenter.golden is not None
        golden = experimenter.golden.output
    for record in records:
        assert_landed(record)
        assert record.activation is Activation.MANIFESTED  # fold reads every element
        assert record.outcome is Outcome.SDC, record.reason
        assert record.output.startswith("checksum: 0x") and record.output != golden
        assert "differs from the golden run" in record.reason


def test_flips_in_unused_ram_are_benign(checksum: Experimenter) -> None:
    address = arch_of(checksum).platform.ram_base + UNUSED_RAM
    fault = spec(f"memory:{address:#x}", None, "exec:fold#3")
    for record in run_until_injected(checksum, fault):
        assert_landed(record)
        assert isinstance(record.injection, MemoryInjection)
        assert record.injection.address == address
        assert record.outcome is Outcome.BENIGN, record.reason


def test_a_late_exec_trigger_leaves_the_whole_budget_after_it(checksum: Experimenter) -> None:
    # Ten stops at fold cost about 1 s of host time, several golden runs: the budget
    # counts from the trigger, so the benign run after it is not cut short as a hang.
    address = arch_of(checksum).platform.ram_base + UNUSED_RAM
    fault = spec(f"memory:{address:#x}", None, "exec:fold#10")
    for record in run_until_injected(checksum, fault):
        assert_landed(record)
        assert record.outcome is Outcome.BENIGN, record.reason


def test_memory_process_flips_change_the_byte_they_name(checksum: Experimenter) -> None:
    fault = spec("memory:process", "3", "exec:fold#3")
    for record in run_until_injected(checksum, fault):
        assert_landed(record)
        injection = record.injection
        assert isinstance(injection, MemoryInjection)
        assert injection.virtual is not None and 0x10000000 <= injection.virtual < 0x7FFFFFFFFFFF
        assert injection.mask == 1 << 3  # bit 3 of the word: bit 3 of its first byte
        assert (injection.before ^ injection.after) & 0xFF == 0x08  # type: ignore[operator]


def test_a_kernel_pc_flip_crashes_the_kernel_with_a_cause(checksum: Experimenter) -> None:
    arch = arch_of(checksum)
    fault = spec(f"register:{arch.platform.pc}", "40", "time:10ms", Context.KERNEL, arch)
    record = run_until_injected(checksum, fault, wanted=1)[0]
    assert_landed(record)
    assert record.injection.trigger.user_mode is False
    # aarch64's pc is 56 bits: the flip leaves the kernel address's top byte (all ones).
    assert record.injection.width == (56 if arch is Arch.AARCH64 else 64)
    assert record.outcome is Outcome.CRASH, record.reason
    assert record.cause in ("page-fault", "general-protection", "null-dereference", "panic")
    assert record.evidence
    assert record.latency is not None
    # A panicked guest (pvpanic on x86-64, the PSCI reset on aarch64) is restored as usual.
    control = checksum.run(FaultSpec.from_options(target="none"), seed=1)
    assert control.outcome is Outcome.BENIGN, control.reason


HANG_C = """
#include <stdio.h>
volatile unsigned long spin_limit = 2000000;
int main(void) {
    unsigned long i, x = 0;
    for (i = 0; i < spin_limit; i++) x += i;
    printf("spun %lu\\n", x);
    return 0;
}
"""


def test_a_hang_is_classified_within_its_budget(tmp_path: Path) -> None:
    source = tmp_path / "spin.c"
    source.write_text(HANG_C)
    image = prepare_image(ImageSpec(user_workloads=(UserWorkload(name="spin", path=source),)))
    with Experimenter.single(image, ["spin"], budget_factor=2.0) as experimenter:
        assert experimenter.golden is not None
        budget = 2.0 * experimenter.golden.host_s + 0.2
        fault = spec("memory:@spin_limit", "62", "exec:main")
        record = experimenter.run(fault, seed=1)
    assert_landed(record)
    assert record.outcome is Outcome.HANG, record.reason
    assert record.phases_s["observe"] < budget + 1.0


def test_seeded_deterministic_experiments_repeat_exactly(image: GuestImage) -> None:
    fault = spec("register:gpr", None, "exec:main")
    with Experimenter.single(image, ["checksum"], deterministic=True) as experimenter:
        first = [experimenter.run(fault, seed=5, index=i).to_json() for i in range(2)]
    with Experimenter.single(image, ["checksum"], deterministic=True) as experimenter:
        again = [experimenter.run(fault, seed=5, index=i).to_json() for i in range(2)]
    for a, b in zip(first, again, strict=True):
        for key in ("outcome", "reason", "fault", "output", "exit_status", "latency"):
            assert a[key] == b[key], key
        assert a["trigger"]["instructions"] == b["trigger"]["instructions"]
        assert a["trigger"]["instructions"] is not None


def vmfault(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_inject_cli_json(image: GuestImage) -> None:
    result = vmfault(
        "inject",
        "--workload",
        "checksum",
        "--target",
        "register:rip",
        "--bits",
        "40",
        "--trigger",
        "exec:fold#3",
        "--context",
        "user",
        "--seed",
        "3",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    for key in (
        "outcome",
        "reason",
        "fault",
        "trigger",
        "latency",
        "output",
        "exit_status",
        "seed",
    ):
        assert key in data
    assert set(data["fault"]) >= {"target", "location", "bits", "before", "after"}
    assert data["fault"]["bits"] == [40]
    assert data["seed"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "register:rzz"], "unknown register 'rzz'"),
        (["--target", "memory:heap"], "invalid memory target"),
        (["--target", "register:eflags", "--bits", "40"], "bit 40 is out of range"),
        (["--target", "register:rip", "--bits", "x"], "invalid bits"),
        (["--target", "register:rip", "--trigger", "soon"], "invalid trigger"),
        # x86-64's virtio_ring is a module: its code moves between boots.
        (["--target", "kernel-code:virtqueue_kick_prepare"],
         "kernel function virtqueue_kick_prepare is in module virtio_ring"),
    ],
)  # fmt: skip
def test_bad_fault_input_is_one_line_exit_2(args: list[str], message: str) -> None:
    result = vmfault("inject", "--workload", "checksum", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_a_named_kernel_function_is_corrupted_in_place(checksum: Experimenter) -> None:
    fault = spec("kernel-code:ksys_write", "k1", "time:5ms")
    record = run_until_injected(checksum, fault, wanted=1)[0]
    assert_landed(record)
    injection = record.injection
    assert isinstance(injection, MemoryInjection)
    assert injection.location.startswith("ksys_write+")
    assert injection.virtual is not None and injection.address is not None
    offset = arch_of(checksum).platform.kernel_image_offset  # 0xffffffff80000000 on x86-64
    assert injection.virtual - injection.address == offset
    assert injection.width == 8
