"""The `vmfault` command as users run it: golden runs, JSON, errors, signals."""

from __future__ import annotations

import json
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from vmfault.arch import Arch
from vmfault.guest.image import GuestImage

pytestmark = pytest.mark.vm

VMFAULT = [sys.executable, "-m", "vmfault"]


def vmfault(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [*VMFAULT, *args], capture_output=True, text=True, timeout=300, check=False
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_run_checksum_json_twice_is_identical(image: GuestImage) -> None:
    first = json.loads(vmfault("run", "checksum", "--json").stdout)
    second = json.loads(vmfault("run", "checksum", "--json").stdout)
    for run in (first, second):
        assert run["workload"] == "checksum"
        assert run["exit_status"] == 0
        assert run["accel"] == "tcg"
        assert run["guest_s"] > 0 and run["host_s"] > 0 and run["machine"] == "guest"
        assert run["output"].startswith("checksum: 0x")
    assert first["output"] == second["output"]


def test_run_foo_prints_fsefi_reference_output(arch_image: GuestImage, arch: Arch) -> None:
    result = vmfault("run", "foo", "--arch", arch.value)
    assert result.stdout == "fmul output : 2.5937424601\nfadd output : 13.5937424601\n"


def test_self_check_detection_exit_is_reported(image: GuestImage) -> None:
    data = json.loads(vmfault("run", "checksum", "--self-check", "--json").stdout)
    assert data["exit_status"] == 0
    assert data["argv"] == ["checksum", "--self-check"]


def test_deterministic_run_reports_instructions(image: GuestImage) -> None:
    first = json.loads(vmfault("run", "--deterministic", "--json", "foo").stdout)
    second = json.loads(vmfault("run", "--deterministic", "--json", "foo").stdout)
    assert first["instructions"] > 0
    assert first["instructions"] == second["instructions"]
    assert first["guest_s"] == second["guest_s"]


def test_user_c_workload(image: GuestImage, tmp_path: Path) -> None:
    source = tmp_path / "hello.c"
    source.write_text(
        "#include <stdio.h>\nint main(int c, char **v)"
        '{ printf("hi %s\\n", c > 1 ? v[1] : "-"); return 4; }\n'
    )
    result = vmfault("run", "--json", str(source), "there", check=False)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["output"] == "hi there\n"
    assert data["exit_status"] == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "no-such-workload"], "no-such-workload"),
        (["run", "./missing.c"], "missing.c"),
        (["run", "--accel", "warp", "foo"], "warp"),
        (["image", "build", "--config", "/nonexistent.toml"], "nonexistent.toml"),
        (["run", "--arch", "riscv64", "foo"], "riscv64"),
        # What aarch64 guests lack, named in one line.
        (["run", "foo", "--arch", "aarch64", "--accel", "kvm"],
         "KVM runs only x86_64 guests on this host, not aarch64"),
        (["image", "build", "--arch", "aarch64", "--kernel", __file__],
         "a kernel of your own works only for x86-64 guests"),
        (["image", "build", "--arch", "aarch64", "--disk", __file__],
         "disks work only on x86-64 guests"),
        (["inject", "-w", "checksum", "--arch", "aarch64", "--target", "register:rip"],
         "unknown register 'rip' on aarch64 guests"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line_exit_2(image: GuestImage, args: list[str], message: str) -> None:
    result = vmfault(*args, check=False)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


def test_sigterm_mid_run_leaves_nothing(image: GuestImage) -> None:
    from vmfault.machine.rundir import run_root

    proc = subprocess.Popen(
        [*VMFAULT, "run", "checksum", "--rounds", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Wait until its QEMU exists (a process that uses its run directory), polling rather
    # than sleeping blindly.
    qemu_dir = None
    for _ in range(300):
        found = list(run_root().glob(f"m{proc.pid}-*"))
        if found and processes_using(found[0]):
            qemu_dir = found[0]
            break
        select.select([], [], [], 0.1)
    assert qemu_dir is not None
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert not qemu_dir.exists()
    assert processes_using(qemu_dir) == []


def processes_using(run_dir: Path) -> list[str]:
    """Processes whose command line names `run_dir` (QEMU's sockets live there)."""
    marker = str(run_dir).encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes():
                found.append(entry.name)
        except OSError:
            continue
    return found


def test_doctor_reports_tcg_working(image: GuestImage) -> None:
    result = vmfault("doctor")
    assert "accelerator tcg" in result.stdout
    assert "boots the guest" in result.stdout
    assert "QEMU emulator version" in result.stdout
