"""Bad input to `vmfault inject` about machines and networks: one line, exit status 2, before
anything is built or booted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.test_network_options import FAULT, HEAD
from vmfault import cli


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
def test_bad_input_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    (tmp_path / "net.toml").write_text(HEAD + FAULT)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "campaign_image", lambda *_, **__: pytest.fail("built an image"))
    monkeypatch.setattr(cli, "prepare_image", lambda *_, **__: pytest.fail("built an image"))
    with pytest.raises(SystemExit) as exited:
        cli.main(["inject", *args])
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines
