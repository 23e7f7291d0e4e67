"""Bad input to `vmfault inject` about machines and networks: one line, exit status 2, before
anything is built or booted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_network_options import FAULT, HEAD


def vmfault(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args],
        capture_output=True, text=True, timeout=120, check=False, cwd=cwd,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-w", "checksum", "--target", "register:rip", "--machine", "server"],
         "no machine 'server': --workload makes one machine, guest"),
        (["-w", "checksum", "--target", "network:loss", "--probability", "0.1"],
         "network:loss needs machines joined by a network"),
        (["--testbed", "net.toml", "--target", "network:loss", "--probability", "0.1",
          "--link", "client-db"], "no machine 'db' for the network fault"),
        (["--testbed", "net.toml", "--target", "register:rip", "--machine", "db"],
         "no machine 'db' in net.toml"),
        (["--testbed", "net.toml", "--target", "network:loss", "--probability", "2"],
         "probability 2.0 is outside [0, 1]"),
        (["--testbed", "net.toml", "--target", "network:partition", "--groups", "client|client"],
         "the partition names machine 'client' twice"),
        (["--testbed", "net.toml", "--target", "network:loss", "--probability", "0.1",
          "--budget", "soon"], "invalid hang budget 'soon'"),
        (["--testbed", "net.toml", "-w", "checksum", "--target", "none"],
         "--testbed gives the machines and their workloads"),
    ],
)  # fmt: skip
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "net.toml").write_text(HEAD + FAULT)
    done = vmfault("inject", *args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
