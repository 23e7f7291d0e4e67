"""The dashboard without a browser: the store's browsing reads, the campaign's activity, the
watch that reads only what changed, and the HTTP application (token, API, pages, event
stream) against stores filled with real records through the store API."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from tests.unit.test_report_data import (
    EXPERIMENTS,
    HOSTILE,
    make_store,
    record,
    register_fault,
)
from tests.unit.test_report_html import parse
from vmfault.classify import Outcome
from vmfault.cli import app as cli_app
from vmfault.cli import main
from vmfault.report import build_report
from vmfault.report.html import REPORT_SECTIONS, Layout
from vmfault.report.summary import store_summary
from vmfault.serve import CampaignWatch, LiveServer, campaign_activity
from vmfault.serve.activity import CampaignState, WorkerState
from vmfault.serve.app import CONTENT_SECURITY_POLICY, Campaign, create_app, token_cookie
from vmfault.serve.pages import Links, dashboard_fragments
from vmfault.stats import IntervalMethod
from vmfault.store import ExperimentFilter, SQLiteStore, Writer, writer_of

TOKEN = "t0ken-for-tests"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A campaign database of 14 hand-made records (the report's tests' own)."""
    path = tmp_path / "hand made.db"
    make_store(path, EXPERIMENTS).close()
    return path


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[SQLiteStore]:
    """A campaign being written: the hand-made records, the writer still open."""
    with make_store(tmp_path / "live.db", EXPERIMENTS) as store:
        yield store


def add(
    store: SQLiteStore, experiment_id: int, outcome: Outcome = Outcome.CRASH, **more: Any
) -> None:
    """Record one more register experiment finishing at Unix time 1e9 + experiment_id."""
    rec = record(experiment_id, register_fault("rdx", 1 << 5), outcome, cause="SIGSEGV"
                 if outcome is Outcome.CRASH else None, evidence=HOSTILE)  # fmt: skip
    store.record(
        experiment_id, more.get("stratum", "regs"), rec, worker=more.get("worker", "w0"),
        started_at=more.get("started", 1.0e9 + experiment_id - 1),
        finished_at=more.get("finished", 1.0e9 + experiment_id),
    )  # fmt: skip


# ---------------------------------------------------------------------------- store reads


def test_a_page_of_experiments_filtered_and_paged(db: Path) -> None:
    with SQLiteStore.open_readonly(db) as store:
        everything = list(store.rows())
        page = store.experiment_page(offset=3, limit=4)
        assert page.total == 14 and [r["experiment_id"] for r in page.rows] == [3, 4, 5, 6]
        assert list(page.rows) == everything[3:7]  # the same rows as `rows()` and exports
        crashes = store.experiment_page(ExperimentFilter(outcome="crash"))
        assert [r["experiment_id"] for r in crashes.rows] == [0, 4, 5, 11]
        both = store.experiment_page(ExperimentFilter(stratum="regs", cause="page-fault"))
        assert (both.total, [r["experiment_id"] for r in both.rows]) == (2, [4, 5])
        assert store.experiment_page(ExperimentFilter(machine="guest")).total == 14
        assert store.experiment_page(ExperimentFilter(machine="other")).total == 0
        assert store.experiment_page(ExperimentFilter(stratum="x' OR 1=1 --")).total == 0
        assert store.experiment_page(limit=10**6).limit == 500


def test_filter_values_count_what_is_there(db: Path) -> None:
    with SQLiteStore.open_readonly(db) as store:
        values = store.filter_values()
    assert values["stratum"] == {"mem": 5, "regs": 9}
    assert values["outcome"]["crash"] == 4 and values["outcome"]["not-injected"] == 3
    assert values["cause"] == {"SIGSEGV": 2, "page-fault": 2}
    assert values["machine"] == {"guest": 14}


def test_rows_by_id_and_by_finish_time(writer: SQLiteStore) -> None:
    add(writer, 20, finished=2.0e9)
    add(writer, 21, finished=2.0e9 + 5)
    assert [r["experiment_id"] for r in writer.rows_for([21, 20, 99, 20])] == [20, 21]
    assert writer.rows_for([20])[0] == next(r for r in writer.rows() if r["experiment_id"] == 20)
    assert writer.finished_since(2.0e9) == {20, 21}
    assert writer.finish_times(2) == [2.0e9 + 5, 2.0e9]
    newest = writer.experiment_page(newest_first=True, limit=2)
    assert [r["experiment_id"] for r in newest.rows] == [21, 20]


def test_data_version_moves_when_another_connection_commits(writer: SQLiteStore) -> None:
    with SQLiteStore.open_readonly(writer.path) as reader:
        first = reader.data_version()
        assert reader.data_version() == first
        add(writer, 30)
        assert reader.data_version() != first


def test_the_writer_of_a_database(writer: SQLiteStore, db: Path) -> None:
    found = writer_of(writer.path)
    assert isinstance(found, Writer) and found.pid == os.getpid()
    assert writer_of(db) is None  # closed: its lock file is gone
    lock = db.with_name(db.name + "-writer.lock")
    lock.write_text("999999999\n")  # a writer killed without releasing
    assert writer_of(db) is None


def test_worker_activity(writer: SQLiteStore) -> None:
    add(writer, 40, worker="worker-1", started=3.0e9, finished=3.0e9 + 2)
    add(writer, 41, Outcome.VMM_ERROR, worker="worker-1", started=3.0e9 + 2, finished=3.0e9 + 4)
    add(writer, 42, worker="worker-2", started=3.0e9 + 10, finished=3.0e9 + 13)
    found = {w.worker: w for w in writer.worker_activity(since=3.0e9)}
    assert list(found) == ["worker-1", "worker-2"]
    one = found["worker-1"]
    assert (one.experiments, one.last_experiment, one.last_outcome) == (2, 41, "vmm-error")
    assert (one.first_started_at, one.last_finished_at, one.mean_duration_s) == (
        3.0e9, 3.0e9 + 4, 2.0,
    )  # fmt: skip
    assert {w.worker for w in writer.worker_activity()} == {"w0", "worker-1", "worker-2"}


# ---------------------------------------------------------------------------- activity


def test_activity_of_a_running_campaign(writer: SQLiteStore) -> None:
    since = 3.0e9
    add(writer, 40, worker="worker-1", started=since, finished=since + 2)
    add(writer, 41, Outcome.VMM_ERROR, worker="worker-1", started=since + 2, finished=since + 4)
    add(writer, 42, worker="worker-2", started=since + 10, finished=since + 12)
    activity = campaign_activity(writer, total=40, done=17, writer=Writer(1234, since))
    assert activity.state is CampaignState.RUNNING and activity.writer_pid == 1234
    assert activity.rate_per_s == pytest.approx(2 / 10)  # 3 records of this run over 10 s
    assert activity.eta_at == pytest.approx(since + 12 + 23 / 0.2)
    states = {w.activity.worker: w.state for w in activity.workers}
    assert states == {"worker-1": WorkerState.REPLACED, "worker-2": WorkerState.RUNNING}
    data = activity.to_json()
    assert data["state"] == "running" and data["remaining"] == 23
    assert data["workers"][0]["state"] == "replaced"


def test_activity_without_a_writer(db: Path) -> None:
    with SQLiteStore.open_readonly(db) as store:
        stopped = campaign_activity(store, total=20, done=14)
        finished = campaign_activity(store, total=14, done=14)
    assert stopped.state is CampaignState.STOPPED and stopped.remaining == 6
    assert finished.state is CampaignState.FINISHED
    assert stopped.rate_per_s is None and stopped.eta_at is None
    assert [w.state for w in stopped.workers] == [WorkerState.DONE]


# ---------------------------------------------------------------------------- the watch


def test_the_watch_reads_only_what_changed(writer: SQLiteStore) -> None:
    watch = CampaignWatch(writer.path, db_label="results/live.db")
    try:
        first = watch.poll()
        assert first is not None and first.revision == 1 and watch.rows_read == 14
        assert watch.poll() is None  # nothing committed: not even a query of the tables
        add(writer, 50)
        add(writer, 51, Outcome.BENIGN, stratum="mem")
        second = watch.poll()
        assert second is not None and second.revision == 2
        assert watch.rows_read == 16  # the two new rows, the old ones not read again
        fresh = build_report(writer, db="results/live.db")
        assert second.report == fresh
        assert (
            second.summary.to_json()
            == store_summary(writer, confidence=0.95, method=IntervalMethod.WILSON).to_json()
        )
        assert second.activity.state is CampaignState.RUNNING
        assert watch.current() is second
    finally:
        watch.close()


def test_dashboard_sections_are_the_reports_own(db: Path) -> None:
    with SQLiteStore.open_readonly(db) as store:
        report = build_report(store, db=str(db))
        activity = campaign_activity(store, total=20, done=14)
    fragments = dashboard_fragments(report, activity, Links("a"))
    layout = Layout(experiment_href=lambda _, i: Links("a").experiment(i))
    for section in REPORT_SECTIONS:
        assert fragments[section.ident] == section.render(report, layout)
    assert '<a href="/campaigns/a/experiments/0">0</a>' in fragments["crashes"]


# ---------------------------------------------------------------------------- HTTP


@pytest.fixture
def client(db: Path) -> Iterator[TestClient]:
    watch = CampaignWatch(db, db_label=str(db))
    served = create_app([Campaign("a", str(db), watch)], token=TOKEN, port=PORT)
    with TestClient(served, base_url=BASE, follow_redirects=False) as opened:
        yield opened
    watch.close()


def authed(client: TestClient) -> TestClient:
    client.cookies.set(token_cookie(PORT), TOKEN)
    return client


ROUTES = [
    "/",
    "/campaigns/a/",
    "/campaigns/a/experiments",
    "/campaigns/a/experiments/0",
    "/campaigns/a/not-injected",
    "/api/status",
    "/api/activity",
    "/api/campaigns",
    "/api/experiments",
    "/api/experiments/0",
    "/events",
    "/static/dashboard.js",
    "/static/report.css",
    "/nowhere",
]


@pytest.mark.parametrize("path", ROUTES)
def test_every_route_refuses_a_request_without_the_token(client: TestClient, path: str) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, {"cookie": f"{token_cookie(PORT)}=x"}):
        response = client.get(path, headers=headers)
        assert response.status_code == 403, (path, headers)
        assert "token" in response.text and "<" not in response.text
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert client.get(path, params={"token": "nearly" + TOKEN}).status_code == 403


def test_a_foreign_host_is_refused_even_with_the_token(client: TestClient) -> None:
    response = client.get("/api/status", params={"token": TOKEN}, headers={"host": "evil.test"})
    assert response.status_code == 403
    ok = client.get("/api/status", params={"token": TOKEN}, headers={"host": f"localhost:{PORT}"})
    assert ok.status_code == 200


def test_the_token_in_a_page_address_becomes_a_cookie(client: TestClient) -> None:
    response = client.get("/campaigns/a/experiments", params={"token": TOKEN, "outcome": "crash"})
    assert response.status_code == 303
    assert response.headers["location"] == "/campaigns/a/experiments?outcome=crash"
    cookie = response.headers["set-cookie"]
    assert f"{token_cookie(PORT)}={TOKEN}" in cookie
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    page = client.get(response.headers["location"])  # the cookie goes along
    assert page.status_code == 200 and 'data-value="matched">4<' in page.text
    api = client.get("/api/status", params={"token": TOKEN})
    assert api.status_code == 200  # the API answers a token in the query, no redirect
    bearer = client.get("/api/status", headers={"authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200


def test_api_status_is_campaign_status_json(client: TestClient, db: Path) -> None:
    data = authed(client).get("/api/status").json()
    result = CliRunner().invoke(cli_app, ["campaign", "status", str(db), "--json"])
    assert result.exit_code == 0, result.output
    assert data == json.loads(result.stdout)
    assert data["done"] == 14 and data["outcomes"]["crash"] == 4
    cp = client.get("/api/status", params={"confidence": "0.9", "method": "clopper-pearson"})
    result = CliRunner().invoke(
        cli_app,
        ["campaign", "status", str(db), "--json", "--confidence", "0.9", "--method",
         "clopper-pearson"],
    )  # fmt: skip
    assert cp.json() == json.loads(result.stdout)
    for bad in ({"confidence": "2"}, {"method": "guess"}, {"campaign": "z"}, {"nope": "1"}):
        response = client.get("/api/status", params=bad)
        assert response.status_code in (400, 404) and "error" in response.json(), bad


def test_api_experiments_filters_and_pages(client: TestClient, db: Path) -> None:
    authed(client)
    page = client.get("/api/experiments", params={"outcome": "crash", "limit": 2}).json()
    assert (page["total"], page["offset"], page["limit"]) == (4, 0, 2)
    assert page["filter"] == {"outcome": "crash"}
    with SQLiteStore.open_readonly(db) as store:
        rows = [r for r in store.rows() if r["outcome"] == "crash"][:2]
    assert page["experiments"] == json.loads(json.dumps(rows))
    second = client.get("/api/experiments", params={"outcome": "crash", "offset": 2}).json()
    assert [r["experiment_id"] for r in second["experiments"]] == [5, 11]
    regs = client.get("/api/experiments", params={"stratum": "regs", "cause": "SIGSEGV"}).json()
    assert [r["experiment_id"] for r in regs["experiments"]] == [0]
    for bad in ({"outcome": "exploded"}, {"limit": "0"}, {"limit": "501"}, {"offset": "-1"},
                {"order": "random"}, {"stratun": "regs"}):  # fmt: skip
        response = client.get("/api/experiments", params=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]


def test_api_one_experiment(client: TestClient, db: Path) -> None:
    found = authed(client).get("/api/experiments/0").json()
    with SQLiteStore.open_readonly(db) as store:
        assert found["record"] == json.loads(json.dumps(store.record_json(0)))
    assert found["row"]["outcome"] == "crash" and found["record"]["evidence"] == HOSTILE
    assert found["replay"] == f"vmfault replay '{db}' 0"
    missing = client.get("/api/experiments/999")
    assert missing.status_code == 404 and "999" in missing.json()["error"]


def only_our_script(page: str) -> None:
    parsed = parse(page)
    scripts = [(tag, name, value) for tag, name, value in parsed.attrs if tag == "script"]
    assert scripts == [("script", "src", "/static/dashboard.js"), ("script", "defer", "")]
    assert parsed.tags["script"] == 1
    for _, name, value in parsed.attrs:
        assert not name.startswith("on"), name
        if name in ("href", "src", "action"):
            assert value.startswith(("/", "#", "data:")), value


def test_pages_escape_what_the_guest_printed(client: TestClient) -> None:
    authed(client)
    for path in ("/", "/campaigns/a/experiments/0", "/campaigns/a/experiments?outcome=crash"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        page = response.text
        only_our_script(page)
        assert "<script>alert" not in page
    experiment = client.get("/campaigns/a/experiments/0").text
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in experiment
    assert HOSTILE in "".join(parse(experiment).text)
    assert "vmfault replay" in experiment and "SIGSEGV" in experiment


def test_pages_show_the_store_numbers(client: TestClient, db: Path) -> None:
    authed(client)
    dashboard = parse(client.get("/").text)
    shown = {
        row["data-outcome"]: int(row["data-count"])
        for row in dashboard.tables["overall-outcomes"]
        if "data-outcome" in row
    }
    with SQLiteStore.open_readonly(db) as store:
        assert shown == store.outcome_counts()
    table = parse(client.get("/campaigns/a/experiments", params={"stratum": "mem"}).text)
    rows = table.tables["experiments"][1:]
    assert [r["data-experiment"] for r in rows] == ["9", "10", "11", "12", "13"]
    grouped = client.get("/campaigns/a/not-injected").text
    assert "the workload process is not running" in grouped
    assert client.get("/campaigns/a/experiments/77").status_code == 404
    assert client.get("/campaigns/b/").status_code == 404
    assert client.get("/campaigns/a/experiments", params={"outcome": "x"}).status_code == 400
    assert client.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")


def test_two_databases_compare(db: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    make_store(other, EXPERIMENTS[:9]).close()
    watches = [CampaignWatch(db), CampaignWatch(other)]
    served = create_app(
        [Campaign("a", str(db), watches[0]), Campaign("b", str(other), watches[1])],
        token=TOKEN, port=PORT,
    )  # fmt: skip
    try:
        with TestClient(served, base_url=BASE) as client:
            authed(client)
            page = client.get("/").text
            assert "hand-made vs" not in page or "A: hand-made" in page
            assert 'id="compare-all"' in page
            only_our_script(page)
            b = client.get("/api/status", params={"campaign": "b"}).json()
            assert b["done"] == 9
            assert client.get("/campaigns/b/experiments/0").status_code == 200
    finally:
        for watch in watches:
            watch.close()


# ---------------------------------------------------------------------------- the server


def read_event(lines: Iterator[str]) -> tuple[str, dict[str, Any]]:
    """The next event (name, data) of a server-sent event stream, comments skipped."""
    name, data = "", ""
    for line in lines:
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            return name, json.loads(data)
    raise AssertionError("the stream ended")


def test_events_follow_the_database_and_end_when_the_server_stops(writer: SQLiteStore) -> None:
    server = LiveServer([writer.path], port=0, token=TOKEN).start()
    try:
        base = server.url.split("/?")[0]
        assert base.startswith("http://127.0.0.1:")
        headers = {"authorization": f"Bearer {TOKEN}"}
        with (
            httpx.Client(base_url=base, headers=headers, timeout=30) as http,
            http.stream("GET", "/events", params={"view": "dashboard"}) as stream,
        ):
            assert stream.headers["content-type"].startswith("text/event-stream")
            lines = stream.iter_lines()
            name, first = read_event(lines)
            assert name == "update" and first["campaigns"]["a"]["done"] == 14
            assert set(first["sections"]) >= {"live", "outcomes", "summary"}
            assert first["campaigns"]["a"]["state"] == "running"
            add(writer, 60)
            name, second = read_event(lines)
            assert name == "update" and second["campaigns"]["a"]["done"] == 15
            assert (
                second["campaigns"]["a"]["status"]
                == store_summary(writer, confidence=0.95, method=IntervalMethod.WILSON).to_json()
            )
            assert "outcomes" in second["sections"]  # changed, so sent again
            assert "golden" not in second["sections"]  # unchanged, so not
            server.stop()
            assert read_event(lines)[0] == "bye"
    finally:
        server.stop()
    assert not [t for t in threading.enumerate() if t.name == "vmfault-serve"]
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", server.port), 1):
        pass


def test_serve_refuses_bad_input_in_one_line(db: Path, tmp_path: Path, capsys: Any) -> None:
    foreign = tmp_path / "foreign.db"
    foreign.write_bytes(b"not a database at all" * 100)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [
            (["serve", str(tmp_path / "none.db")], "no campaign database"),
            (["serve", str(db), str(db), str(db)], "3 databases"),
            (["serve", str(foreign)], "not a vmfault campaign database"),
            (["serve", str(db), "--port", str(port)], f"port {port} on 127.0.0.1 is in use"),
        ]
        for args, message in cases:
            with pytest.raises(SystemExit) as exit_info:
                main(args)
            assert exit_info.value.code == 2
            error = capsys.readouterr().err
            assert message in error and len(error.strip().splitlines()) == 1, error
    assert not [t for t in threading.enumerate() if t.name == "vmfault-serve"]
