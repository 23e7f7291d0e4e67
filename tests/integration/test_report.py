"""The report of a real campaign: the numbers of `vmfault campaign status --json`, every outcome
class shown, and a page that headless Chromium renders without errors or network requests."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_report_html import assert_self_contained, parse
from vmfault.classify import Outcome
from vmfault.guest.image import GuestImage
from vmfault.report import build_report, report_command
from vmfault.store import SQLiteStore

pytestmark = pytest.mark.vm

CAMPAIGN = """
[campaign]
name = "report-e2e"
seed = 3
experiments = 30
workers = 2

[guest]
workload = "checksum"
args = ["--self-check"]

[[faults]]
name = "gpr"
target = "register:gpr"
context = "user"

[[faults]]
name = "process-memory"
target = "memory:process"
"""

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--enable-logging=stderr",
    "--v=0",
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian package `chromium`)"
)


def vmfault(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=cwd,
    )


@pytest.fixture(scope="module")
def campaign_db(image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 30-experiment campaign of two fault families, run through the CLI."""
    del image
    work = tmp_path_factory.mktemp("report-campaign")
    (work / "campaign.toml").write_text(CAMPAIGN)
    result = vmfault("campaign", "run", "campaign.toml", "--db", "e2e.db", "--json", cwd=work)
    assert result.returncode == 0, result.stderr
    return work / "e2e.db"


@pytest.fixture(scope="module")
def status(campaign_db: Path) -> dict[str, Any]:
    result = vmfault("campaign", "status", str(campaign_db), "--json", cwd=campaign_db.parent)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def report_file(campaign_db: Path) -> Path:
    out = campaign_db.parent / "report" / "e2e.html"
    assert report_command([campaign_db], out, "html") == [out]
    return out


def test_report_numbers_equal_campaign_status(
    campaign_db: Path, status: dict[str, Any], report_file: Path
) -> None:
    assert status["total"] == 30 and status["done"] == 30
    with SQLiteStore.open_readonly(campaign_db) as store:
        report = build_report(store)
    summary = {key: value for key, value in status.items() if key != "vmm_reactions"}
    assert report.summary.to_json() == summary  # status adds the VMM reactions to it
    reactions = status["vmm_reactions"]
    assert reactions == [group.to_json() for group in report.vmm_reactions]
    page = report_file.read_text(encoding="utf-8")
    assert_self_contained(page)
    parsed = parse(page)
    rows = parsed.tables["overall-outcomes"]
    shown = {row["data-outcome"]: int(row["data-count"]) for row in rows if "data-outcome" in row}
    assert list(shown) == [o.value for o in Outcome]
    assert shown == {o.value: status["outcomes"].get(o.value, 0) for o in Outcome}
    assert sum(shown.values()) == 30
    strata = [row["data-stratum"] for row in parsed.tables["strata-outcomes"] if row]
    assert strata == sorted(status["strata"]) == ["gpr", "process-memory"]
    for dist in report.strata:
        assert dist.stratum is not None
        expected = status["strata"][dist.stratum]
        assert dist.done == expected["done"]
        assert {o.outcome: o.count for o in dist.outcomes if o.count} == expected["outcomes"]
    for name, rate in report.summary.rates.items():
        assert [rate.low, rate.high] == status["intervals"][name]
        row = next(r for r in rows if r.get("data-outcome") == name)
        assert row["data-count"] == str(rate.successes)
    assert report.heatmap is not None and "gpr" in {s.stratum for s in report.strata}


def test_static_figures_of_the_campaign(campaign_db: Path) -> None:
    pytest.importorskip("matplotlib")
    written = report_command([campaign_db, campaign_db], campaign_db.parent / "fig", "png")
    assert written[0].name == "fig-outcomes.png"
    assert all(path.stat().st_size > 1000 for path in written)


# ---------------------------------------------------------------------------- Chromium


def png_pixels(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """(width, height, channels, rows) of an 8-bit, non-interlaced PNG, with the stdlib only."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, chunks, header = 8, [], None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            chunks.append(body)
        elif kind == b"IEND":
            break
    assert header is not None
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and interlace == 0 and color in (0, 2, 4, 6), header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows: list[bytes] = []
    prev = bytes(stride)
    pos = 0
    for _ in range(height):
        kind, line = raw[pos], bytearray(raw[pos + 1 : pos + 1 + stride])
        pos += stride + 1
        if kind == 1:
            for i in range(channels, stride):
                line[i] = (line[i] + line[i - channels]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif kind == 3:
            for i in range(stride):
                left = line[i - channels] if i >= channels else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - channels] if i >= channels else 0
                b, c = prev[i], prev[i - channels] if i >= channels else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        prev = bytes(line)
        rows.append(prev)
    return width, height, channels, rows


def chromium(page: Path, work: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={work / 'profile'}", *extra,
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def page_requests(netlog: Path) -> list[str]:
    """URLs the page itself asked for (Chromium's own background requests left out)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    found = []
    for event in log["events"]:
        params = event.get("params", {})
        if event["type"] == start and "url" in params:
            key = params.get("network_isolation_key", "") + params.get("site_for_cookies", "")
            if "file://" in key or params.get("initiator") == "null":
                found.append(params["url"])
    return found


def page_errors(stderr: str) -> list[str]:
    """Console messages (errors, CSP violations, blocked loads) the page logged."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "net::ERR_" in line]


@needs_chromium
def test_the_request_detector_catches_a_page_that_fetches(tmp_path: Path) -> None:
    control = tmp_path / "control.html"
    control.write_text(
        '<!DOCTYPE html><title>c</title><img src="http://vmfault.invalid/probe.png">'
        '<script>console.error("control error")</script>'
    )
    netlog = tmp_path / "netlog.json"
    result = chromium(control, tmp_path, f"--log-net-log={netlog}", "--dump-dom")
    assert result.returncode == 0, result.stderr
    assert page_requests(netlog) == ["http://vmfault.invalid/probe.png"]
    assert any("control error" in line for line in page_errors(result.stderr)), result.stderr


@needs_chromium
def test_report_renders_in_headless_chromium(report_file: Path, tmp_path: Path) -> None:
    shot, netlog = tmp_path / "report.png", tmp_path / "netlog.json"
    result = chromium(
        report_file,
        tmp_path,
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        f"--log-net-log={netlog}",
    )
    assert result.returncode == 0, result.stderr
    assert page_errors(result.stderr) == []
    assert page_requests(netlog) == []
    width, height, channels, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1200, 2000)
    samples = [
        row[x * channels : x * channels + 3] for row in rows[::8] for x in range(0, width, 8)
    ]
    grey = [sum(pixel) / 3 for pixel in samples]
    mean = sum(grey) / len(grey)
    variance = sum((g - mean) ** 2 for g in grey) / len(grey)
    background = max(set(samples), key=samples.count)
    assert variance > 200, f"blank screenshot (variance {variance:.1f})"
    assert len(set(samples)) > 50
    assert sum(pixel != background for pixel in samples) > len(samples) // 20

    dom = chromium(report_file, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    assert page_errors(dom.stderr) == []
    assert 'id="overall-outcomes"' in dom.stdout and "report-e2e" in dom.stdout
    assert "<script" not in dom.stdout
