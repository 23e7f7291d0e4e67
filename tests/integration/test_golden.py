"""Golden runs: every built-in workload is stable, and deterministic mode repeats exactly."""

from __future__ import annotations

import pytest

from vmfault.experiment.testbed import golden_run
from vmfault.guest.image import GuestImage, builtin_workload_names
from vmfault.guest.workloads import BUILTIN_WORKLOADS
from vmfault.machine.disks import fresh_disk

pytestmark = pytest.mark.vm

EXPECTED = {
    "checksum": "checksum: 0x",
    "crc32": "crc32: 0x",
    "foo": "fmul output : 2.5937424601\nfadd output : 13.5937424601\n",
    "matmul": "matmul: n=",
    "diskio": "diskio: before: digest 0x",
    "fsio": "fsio: 8 files of 32768 bytes written, synced, read back and verified\n",
}


STANDALONE = [name for name in builtin_workload_names() if name != "netecho"]
"""The built-in workloads that run alone (netecho needs a peer: tests/integration/test_network)."""


@pytest.mark.parametrize("name", STANDALONE)
def test_every_builtin_workload_is_stable(image: GuestImage, name: str) -> None:
    argv = [name, *image.workload(name).default_args]
    disks = [fresh_disk("data", "16M")] if BUILTIN_WORKLOADS[name].needs_disk else []
    first, second = golden_run(image, argv, disks=disks), golden_run(image, argv, disks=disks)
    assert first.exit_status == 0 and second.exit_status == 0, first.stderr
    assert first.output == second.output
    assert first.output.startswith(EXPECTED[name])
    assert first.guest_s > 0 and first.host_s > 0 and first.instructions is None
    assert first.boot_s is not None and first.boot_s > 0


def test_deterministic_transcripts_are_byte_identical(image: GuestImage) -> None:
    first = golden_run(image, ["checksum"], deterministic=True)
    second = golden_run(image, ["checksum"], deterministic=True)
    assert first.console == second.console
    assert "checksum: 0x" in first.console
    assert first.instructions == second.instructions
    assert first.instructions is not None and first.instructions > 1_000_000
    assert first.guest_s == second.guest_s
