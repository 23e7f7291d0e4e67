"""The live dashboard in a real headless Chromium (Debian's, driven by playwright) against a
real campaign: `campaign run --serve` on the built-in checksum workload, register faults
and a control family. The page's numbers move while the campaign runs and end equal to
`vmfault campaign status --json`; a workload that prints `<script>` shows it as text; no
console error, no request to another host, nothing without the token; the servers stop
cleanly (Ctrl-C included) and leave no process behind."""

from __future__ import annotations

import json
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from tests.conftest import leaked_qemu_processes
from vmfault.guest.image import GuestImage

pytestmark = pytest.mark.vm

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium is not installed (Debian package `chromium`)"
)
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RESULTS = Path(__file__).resolve().parents[2] / "results"

LIVE = """
[campaign]
name = "live-checksum"
seed = 11
experiments = 24
workers = 2

[guest]
workload = "checksum"

[[faults]]
name = "gpr"
target = "register:gpr"
context = "user"

[[faults]]
name = "control"
target = "none"
experiments = 6
"""

HOSTILE_C = r"""
#include <stdio.h>
int main(void) {
    volatile unsigned long sum = 0;
    for (unsigned long i = 0; i < 3000000UL; i++) sum += i * 2654435761UL;
    printf("<script>alert(\"vmfault\")</script><img src=x onerror=alert(2)> sum=%lu\n", sum);
    return 0;
}
"""
HOSTILE_LINE = '<script>alert("vmfault")</script><img src=x onerror=alert(2)>'

HOSTILE = """
[campaign]
name = "hostile-output"
seed = 5
experiments = 3
workers = 1

[guest]
workload = "hostile.c"

[[faults]]
name = "gpr"
target = "register:gpr"

[[faults]]
name = "control"
target = "none"
experiments = 2
"""

LONG = """
[campaign]
name = "interrupted"
seed = 2
experiments = 200
workers = 1

[guest]
workload = "checksum"

[[faults]]
name = "control"
target = "none"
"""


def vmfault(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmfault", *args],
        capture_output=True, text=True, timeout=600, check=False, cwd=cwd,
    )  # fmt: skip


def status(db: Path) -> dict[str, Any]:
    result = vmfault("campaign", "status", str(db), "--json", cwd=db.parent)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def read_url(stream: Any, pattern: str, timeout_s: float) -> tuple[str, list[str]]:
    """The first dashboard address printed on `stream` within `timeout_s`, and the lines."""
    seen: list[str] = []
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not selector.select(max(0.0, deadline - time.monotonic())):
                break
            line = stream.readline()
            if not line:
                break
            seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found.group(0), seen
    raise AssertionError(f"no dashboard address printed: {''.join(seen)}")


def port_closed(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


URL = r"http://127\.0\.0\.1:\d+/\?token=[A-Za-z0-9_-]+"


class Browser:
    """One headless Chromium page that records its console messages and requests."""

    def __init__(self, pw: Any, profile: Path) -> None:
        self.context = pw.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": 1200, "height": 1400},
        )  # fmt: skip
        self.page = self.context.new_page()
        self.console: list[str] = []
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("dialog", self._dialog)

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.console.append(f"{message.type}: {message.text}")

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def done(self) -> int:
        return int(self.page.inner_text('section#live [data-value="done"]'))

    def outcome_counts(self) -> dict[str, int]:
        counts = self.page.eval_on_selector_all(
            "#overall-outcomes tr[data-outcome]",
            "rows => rows.map(r => [r.dataset.outcome, Number(r.dataset.count)])",
        )
        return {name: count for name, count in counts if count}

    def foreign_requests(self, base: str) -> list[str]:
        return [u for u in self.requests if not u.startswith((base + "/", "data:"))]

    def close(self) -> None:
        self.context.close()


@pytest.fixture(scope="module")
def pw() -> Iterator[Any]:
    with playwright_api.sync_playwright() as running:
        yield running


@pytest.fixture(scope="module")
def hostile_db(image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished campaign of a workload whose output is markup."""
    del image
    work = tmp_path_factory.mktemp("hostile")
    (work / "hostile.c").write_text(HOSTILE_C)
    (work / "hostile.toml").write_text(HOSTILE)
    result = vmfault("campaign", "run", "hostile.toml", "--db", "hostile.db", "--json", cwd=work)
    assert result.returncode == 0, result.stderr
    return work / "hostile.db"


@pytest.fixture(scope="module")
def live_db(image: GuestImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    del image
    return tmp_path_factory.mktemp("live") / "live.db"


@needs_chromium
def test_the_dashboard_follows_a_running_campaign(live_db: Path, pw: Any, tmp_path: Path) -> None:
    work = live_db.parent
    (work / "live.toml").write_text(LIVE)
    campaign = subprocess.Popen(
        [sys.executable, "-m", "vmfault", "campaign", "run", "live.toml", "--db", live_db.name,
         "--serve", "--port", "0", "--json"],
        cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    browser = None
    try:
        assert campaign.stderr is not None
        url, _ = read_url(campaign.stderr, URL, 300)
        base = url.split("/?")[0]
        port = int(urllib.parse.urlsplit(url).port or 0)

        # nothing without the token, not even the assets or the event stream
        for path in ("/", "/api/status", "/events", "/static/dashboard.js", "/campaigns/a/"):
            refused = httpx.get(base + path, timeout=10)
            assert refused.status_code == 403, path
        token = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["token"][0]
        api = httpx.Client(base_url=base, headers={"authorization": f"Bearer {token}"})

        browser = Browser(pw, tmp_path / "profile")
        page = browser.page
        page.goto(url)
        assert page.url == base + "/"  # the token became a cookie and left the address
        page.evaluate("window.vmfaultNoReload = true")
        total = int(page.inner_text('section#live [data-value="total"]'))
        assert total == 30

        # the numbers move without a reload while records land
        seen = [browser.done()]
        deadline = time.monotonic() + 400
        shot = RESULTS / "serve-live-campaign.png"
        shot.unlink(missing_ok=True)  # taken again by this run, during the campaign
        matched_status = False
        while time.monotonic() < deadline and seen[-1] < total:
            page.wait_for_timeout(700)
            seen.append(browser.done())
            running = page.get_attribute("section#live .live-state", "data-state") == "running"
            if running and 8 <= seen[-1] < total - 4 and not shot.exists():
                RESULTS.mkdir(exist_ok=True)
                page.screenshot(path=str(shot), full_page=False)
            if running and not matched_status:
                # records only add up: the same count means the same records, the same status
                before = api.get("/api/status").json()
                cli = status(live_db)
                after = api.get("/api/status").json()
                for served in (before, after):
                    if served["done"] == cli["done"] and cli["done"] < total:
                        assert served == cli
                        matched_status = True
        assert seen[-1] == total, seen
        distinct = sorted(set(seen))
        assert len(distinct) >= 4, f"the page did not follow the campaign: {seen}"
        assert seen == sorted(seen)
        assert page.evaluate("window.vmfaultNoReload") is True
        assert matched_status, "/api/status never agreed with campaign status --json"
        assert shot.exists(), "no screenshot was taken during the campaign"

        stdout, stderr = campaign.communicate(timeout=120)
        assert campaign.returncode == 0, stderr
        final = json.loads(stdout)
        assert final == status(live_db)
        assert final["done"] == total

        # the server stopped with the campaign; the page got its last update and says so
        page.wait_for_selector("#connection[data-state=closed]", timeout=15_000)
        assert browser.done() == total
        assert browser.outcome_counts() == final["outcomes"]
        control = final["false_positive"]
        assert control["runs"] == 6
        shown = page.inner_text("section#summary")
        assert f"{control['failures']} of {control['runs']} control runs not benign" in shown
        assert page.get_attribute("section#live .live-state", "data-state") == "finished"
        assert port_closed(port)
        assert browser.console == []
        assert browser.foreign_requests(base) == []
        assert browser.dialogs == []
    finally:
        if campaign.poll() is None:
            campaign.send_signal(signal.SIGINT)
            campaign.communicate(timeout=60)
        if browser is not None:
            browser.close()
    assert not leaked_qemu_processes()


@needs_chromium
def test_serve_two_finished_campaigns_and_stop_with_ctrl_c(
    live_db: Path, hostile_db: Path, pw: Any, tmp_path: Path
) -> None:
    if not live_db.exists():
        pytest.skip("the live campaign did not run")
    server = subprocess.Popen(
        [sys.executable, "-m", "vmfault", "serve", str(hostile_db), str(live_db), "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    browser = None
    try:
        assert server.stdout is not None
        url, _ = read_url(server.stdout, URL, 60)
        base = url.split("/?")[0]
        port = int(urllib.parse.urlsplit(url).port or 0)
        assert httpx.get(base + "/api/status", timeout=10).status_code == 403
        browser = Browser(pw, tmp_path / "profile")
        page = browser.page
        page.goto(url)
        assert "vs" in page.inner_text("header.top h1")
        page.wait_for_selector("#connection[data-state=live]", timeout=15_000)
        assert page.locator("#compare-all").count() == 1

        # the hostile campaign's golden output and records show markup as text
        page.goto(base + "/campaigns/a/")
        golden = page.inner_text("section#golden pre")
        assert HOSTILE_LINE in golden
        page.goto(base + "/campaigns/a/experiments")
        experiments = page.eval_on_selector_all(
            "#experiments tr[data-experiment]", "rows => rows.map(r => r.dataset.experiment)"
        )
        assert len(experiments) == 5
        page.goto(f"{base}/campaigns/a/experiments/{experiments[-1]}")
        assert HOSTILE_LINE in page.inner_text("#stdout")
        assert "vmfault replay" in page.inner_text("#replay")
        scripts = page.eval_on_selector_all("script", "nodes => nodes.map(n => n.src)")
        assert scripts == [base + "/static/dashboard.js"]
        assert page.locator("img").count() == 0

        # filters work on the server
        page.goto(base + "/campaigns/b/experiments?stratum=control")
        strata = page.eval_on_selector_all(
            "#experiments tbody tr td:nth-child(2)", "cells => cells.map(c => c.textContent)"
        )
        assert strata and set(strata) == {"control"}
        assert browser.console == []
        assert browser.dialogs == []
        assert browser.foreign_requests(base) == []

        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=30)
        assert server.returncode == 0, stderr
        assert "stopped" in stderr and "Traceback" not in stderr
        assert port_closed(port)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
        if browser is not None:
            browser.close()


def test_ctrl_c_stops_a_campaign_and_its_dashboard(image: GuestImage, tmp_path: Path) -> None:
    del image
    (tmp_path / "long.toml").write_text(LONG)
    db = tmp_path / "long.db"
    campaign = subprocess.Popen(
        [sys.executable, "-m", "vmfault", "campaign", "run", "long.toml", "--db", db.name,
         "--serve", "--port", "0"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert campaign.stderr is not None
        url, _ = read_url(campaign.stderr, URL, 300)
        base = url.split("/?")[0]
        port = int(urllib.parse.urlsplit(url).port or 0)
        with httpx.Client(base_url=base, params={"token": url.rsplit("=", 1)[1]}) as api:
            deadline = time.monotonic() + 300
            while api.get("/api/status", timeout=10).json()["done"] < 3:
                assert time.monotonic() < deadline, "the campaign made no progress"
                time.sleep(0.5)
            activity = api.get("/api/activity", timeout=10).json()
            assert activity["state"] == "running" and activity["writer_pid"] == campaign.pid
            assert {w["state"] for w in activity["workers"]} == {"running"}
        campaign.send_signal(signal.SIGINT)
        _, stderr = campaign.communicate(timeout=180)  # workers and server stop, loaded host
        assert campaign.returncode == 130, stderr
        assert "vmfault campaign resume" in stderr and "Traceback" not in stderr
        assert port_closed(port)
    finally:
        if campaign.poll() is None:
            campaign.kill()
            campaign.communicate()
    assert not leaked_qemu_processes()
    done = status(db)["done"]
    assert 3 <= done < 200
