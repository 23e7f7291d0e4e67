"""Campaigns end to end: real workers and guests, a store that never loses or duplicates."""

from __future__ import annotations

import csv
import json
import select
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import leaked_qemu_processes
from vmfault.arch import Arch
from vmfault.guest.image import GuestImage

pytestmark = pytest.mark.vm

CAMPAIGN = """
[campaign]
name = "{name}"
seed = 7
experiments = {experiments}
workers = 2

[guest]
workload = "checksum"
arch = "{arch}"

[[faults]]
name = "gpr"
target = "register:gpr"
context = "user"

[[faults]]
name = "ram"
target = "memory:ram"
"""


def vmfault(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )


def campaign_file(tmp_path: Path, name: str, experiments: int, arch: Arch = Arch.X86_64) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(CAMPAIGN.format(name=name, experiments=experiments, arch=arch.value))
    return path


def committed(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            return int(conn.execute("SELECT count(*) FROM outcome").fetchone()[0])
    except sqlite3.Error:
        return 0


def wait_for(predicate: object, timeout_s: float) -> bool:
    assert callable(predicate)
    for _ in range(int(timeout_s * 10)):
        if predicate():
            return True
        select.select([], [], [], 0.1)
    return bool(predicate())


def exported_ids(db: Path, tmp_path: Path) -> list[int]:
    out = tmp_path / "export.csv"
    result = vmfault("campaign", "export", str(db), "--format", "csv", "-o", str(out), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with out.open() as stream:
        return [int(row["experiment_id"]) for row in csv.DictReader(stream)]


def status(db: Path, tmp_path: Path) -> dict[str, Any]:
    result = vmfault("campaign", "status", str(db), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_small_campaign_end_to_end(arch_image: GuestImage, arch: Arch, tmp_path: Path) -> None:
    file = campaign_file(tmp_path, "small", 20, arch)
    result = vmfault("campaign", "run", str(file), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    db = tmp_path / "small.db"
    assert summary["total"] == 20 and summary["done"] == 20
    assert sorted(exported_ids(db, tmp_path)) == list(range(20))
    data = status(db, tmp_path)
    assert data["outcomes"] == summary["outcomes"]
    assert sum(data["outcomes"].values()) == 20
    for name, (low, high) in data["intervals"].items():
        assert 0.0 <= low <= data["rates"][name] <= high <= 1.0
    assert set(data["strata"]) == {"gpr", "ram"}
    assert data["method"] == "wilson"
    for fmt in ("jsonl", "parquet"):
        out = tmp_path / f"export.{fmt}"
        done = vmfault("campaign", "export", str(db), "--format", fmt, "-o", str(out), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert out.stat().st_size > 0
    again = vmfault("campaign", "run", str(file), cwd=tmp_path)
    assert again.returncode == 2 and "campaign resume" in again.stderr


def test_kill_9_mid_campaign_then_resume_runs_exactly_the_missing(
    image: GuestImage, tmp_path: Path
) -> None:
    file = campaign_file(tmp_path, "killed", 60)
    db = tmp_path / "killed.db"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "vmfault", "campaign", "run", str(file)], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        assert wait_for(lambda: committed(db) >= 15, 240), "the campaign made no progress"
    finally:
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait()
    before = committed(db)
    assert 15 <= before < 60
    assert wait_for(lambda: not leaked_qemu_processes(), 30), leaked_qemu_processes()
    result = vmfault("campaign", "resume", str(db), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ids = exported_ids(db, tmp_path)
    assert len(ids) == 60 and len(set(ids)) == 60
    data = status(db, tmp_path)
    assert data["done"] == 60 and data["total"] == 60
    assert not leaked_qemu_processes()


def qemu_children_of(pids: set[int]) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid in pids and cmd.startswith(b"qemu-system"):
            found.append(int(entry.name))
    return found


def worker_pids(coordinator: int) -> set[int]:
    return {int(p) for p in Path(f"/proc/{coordinator}/task/{coordinator}/children")
            .read_text().split()}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            '[campaign]\nname = "x"\nexperiments = 5\nwrokers = 2\n[guest]\nworkload = "checksum"\n'
            '[[faults]]\ntarget = "register:rip"\n',
            "wrokers",
        ),
        (
            '[campaign]\nname = "x"\nexperiments = 5\nworkers = "two"\n[guest]\nworkload = '
            '"checksum"\n[[faults]]\ntarget = "register:rip"\n',
            "campaign.workers",
        ),
        (
            '[campaign]\nname = "x"\nexperiments = 5\n[guest]\nworkload = "checksum"\n'
            '[[faults]]\ntarget = "register:eflags"\nbits = "40"\n',
            "bit 40 is out of range",
        ),
        (
            '[campaign]\nname = "x"\nexperiments = 5\n[guest]\nworkload = "checksum"\n'
            '[[faults]]\ntarget = "register:rzz"\n',
            "unknown register",
        ),
        (
            '[campaign]\nname = "x"\nexperiments = 5\n[guest]\nworkload = "nothere"\n'
            '[[faults]]\ntarget = "register:rip"\n',
            "nothere",
        ),
    ],
    ids=["unknown-key", "wrong-type", "bit-out-of-range", "unknown-register", "missing-workload"],
)
def test_malformed_campaign_files_give_one_line(tmp_path: Path, body: str, message: str) -> None:
    file = tmp_path / "bad.toml"
    file.write_text(body)
    result = vmfault("campaign", "run", str(file), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert message in lines[0] and "bad.toml" in lines[0]
    assert not (tmp_path / "x.db").exists()


def test_campaign_schema_is_json_schema(tmp_path: Path) -> None:
    result = vmfault("campaign", "schema", cwd=tmp_path)
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert "properties" in schema and "faults" in schema["properties"]


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(image: GuestImage, tmp_path: Path) -> None:
    file = campaign_file(tmp_path, "interrupted", 60)
    db = tmp_path / "interrupted.db"
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "vmfault", "campaign", "run", str(file)], cwd=tmp_path,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert wait_for(lambda: committed(db) >= 5, 240)
    coordinator.send_signal(signal.SIGINT)
    _, stderr = coordinator.communicate(timeout=60)
    assert coordinator.returncode == 130, stderr
    assert f"vmfault campaign resume {db.name}" in stderr.strip().splitlines()[-1]
    assert wait_for(lambda: not leaked_qemu_processes(), 30), leaked_qemu_processes()
    done = committed(db)
    assert 5 <= done < 60
    result = vmfault("campaign", "resume", str(db), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(exported_ids(db, tmp_path)) == list(range(60))


DETERMINISTIC = """
[campaign]
name = "replayable"
seed = 2
experiments = 4
workers = 1

[guest]
workload = "checksum"
deterministic = true

[[faults]]
target = "register:gpr"
trigger = "exec:main"
"""


def test_replay_of_a_deterministic_experiment_repeats_its_outcome(
    image: GuestImage, tmp_path: Path
) -> None:
    file = tmp_path / "replayable.toml"
    file.write_text(DETERMINISTIC)
    assert vmfault("campaign", "run", str(file), cwd=tmp_path).returncode == 0
    result = vmfault("replay", "replayable.db", "3", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["same_outcome"] is True
    replayed, recorded = data["replayed"], data["recorded"]
    assert replayed["outcome"] == recorded["outcome"]
    assert replayed["fault"]["before"] == recorded["fault"]["before"]
    assert replayed["fault"]["after"] == recorded["fault"]["after"]
    assert replayed["output"] == recorded["output"]
    missing = vmfault("replay", "replayable.db", "99", cwd=tmp_path)
    assert missing.returncode == 2 and "99" in missing.stderr
