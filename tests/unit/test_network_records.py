"""Records of networked experiments: a network fault's counts and an experiment's traffic
round-trip through the store (no schema change: `detail_json`), and the outcomes of daemons
and console scripts."""

from __future__ import annotations

import json
from pathlib import Path

from tests.unit.test_store import create_store, raw
from vmfault.classify import Observation, Outcome, classify
from vmfault.experiment.records import (
    CorruptedBit,
    ExperimentRecord,
    GoldenRun,
    LinkCounts,
    MachineRun,
    NetworkInjection,
    Traffic,
    TriggerPoint,
)
from vmfault.report.data import build_report
from vmfault.report.html import render_html
from vmfault.report.summary import store_summary, summary_tables
from vmfault.stats import IntervalMethod
from vmfault.store.sqlite import TRAFFIC_KEY


def network_record(i: int) -> ExperimentRecord:
    injection = NetworkInjection(
        target="network:corrupt",
        machine="client",
        location="client-server",
        mode="corrupt",
        injected=True,
        link="client-server",
        direction="both",
        period_s=1.0,
        trigger=TriggerPoint(spec="time:0.5s", time_s=0.5, progress=0.4),
        links=(
            LinkCounts("client", "server", seen=40, corrupted=2),
            LinkCounts("server", "client", seen=38, corrupted=1),
        ),
        corruptions=(
            CorruptedBit("client", "server", 3, 60, 2),
            CorruptedBit("client", "server", 9, 70, 0),
            CorruptedBit("server", "client", 4, 14, 7),
        ),
    )
    traffic = Traffic((
        LinkCounts("client", "server", seen=90, delivered=90, corrupted=2),
        LinkCounts("server", "client", seen=88, delivered=87, corrupted=1, overflow=1),
    ))  # fmt: skip
    runs = (
        MachineRun("client", Outcome.DETECTED, "exit status 2", output="netecho: DETECTED\n",
                   exit_status=2),
        MachineRun("server", Outcome.BENIGN, "the daemon ran until the machines it serves were "
                   "done"),
    )  # fmt: skip
    return ExperimentRecord(
        index=i, seed=1, spec={"target": "network:corrupt"}, injections=(injection,),
        machines=runs, judged="client", phases_s={"observe": 1.0}, traffic=traffic,
    )  # fmt: skip


def test_a_network_fault_and_its_traffic_round_trip(tmp_path: Path) -> None:
    record = network_record(3)
    with create_store(tmp_path / "net.db") as store:
        store.record(3, "network:corrupt", record, worker="w", started_at=1.0, finished_at=2.0)
        assert store.load(3) == record
        assert store.record_json(3) == record.to_json()
    (detail,) = raw(tmp_path / "net.db", "SELECT detail_json FROM injection")[0]
    stored = json.loads(detail)
    assert stored["frames_seen"] == 78 and stored["frames_corrupted"] == 3
    assert stored[TRAFFIC_KEY]["frames"] == 178
    data = record.to_json()
    assert data["network"]["corrupted"] == 3 and len(data["network"]["corruptions"]) == 3
    assert data["traffic"]["links"][1]["overflow"] == 1
    assert data["machines"]["server"]["outcome"] == "benign"


GOLDEN = GoldenRun(machine="client", argv=("sh",), stdout=b"", stderr=b"", exit_code=0,
                   signal=None, guest_s=1.0, host_s=1.0)  # fmt: skip
DAEMON = GoldenRun(machine="server", argv=("netecho", "--serve"), stdout=b"", stderr=b"",
                   exit_code=None, signal=None, guest_s=1.0, host_s=1.0)  # fmt: skip


def test_a_script_that_timed_out_is_a_hang_with_the_console_as_evidence() -> None:
    seen = Observation(
        injected=True, finished=False, script_failure="script step 2 timed out (10 s)",
        script_tail="/ # wget http://server/\nwget: can't connect\n/ #",
    )  # fmt: skip
    verdict = classify(GOLDEN, seen)
    assert verdict.outcome is Outcome.HANG
    assert verdict.reason == "script step 2 timed out (10 s)"
    assert verdict.evidence == "/ # wget http://server/ | wget: can't connect | / #"
    crashed = Observation(injected=True, finished=False, script_failure="script step 2 timed out",
                          guest_panicked=True)  # fmt: skip
    assert classify(GOLDEN, crashed).outcome is Outcome.CRASH  # the crash explains it


def test_a_daemon_stopped_while_it_ran_is_benign_and_one_that_ended_is_not() -> None:
    stopped = Observation(injected=True, finished=False, stopped=True)
    assert classify(DAEMON, stopped).outcome is Outcome.BENIGN
    ended = Observation(injected=True, finished=True, exit_code=1)
    verdict = classify(DAEMON, ended)
    assert verdict.outcome is Outcome.DETECTED and "no exit status" in verdict.reason
    killed = Observation(injected=True, finished=True, signal="SIGSEGV")
    assert classify(DAEMON, killed).outcome is Outcome.CRASH
    panicked = Observation(injected=True, finished=False, stopped=True, guest_panicked=True)
    assert classify(DAEMON, panicked).outcome is Outcome.CRASH


def test_a_daemon_golden_run_keeps_no_exit_status(tmp_path: Path) -> None:
    with create_store(tmp_path / "net.db") as store:
        stored = store.save_golden(DAEMON)
        assert stored.exit_code is None and stored.signal is None
        assert store.save_golden(DAEMON) == stored  # the same again changes nothing


def test_the_analysis_row_of_a_networked_experiment(tmp_path: Path) -> None:
    record = network_record(4)
    with create_store(tmp_path / "net.db") as store:
        store.record(4, "network:corrupt", record, worker="w", started_at=1.0, finished_at=2.0)
        (row,) = store.rows()
    assert (row["machine"], row["judged"]) == ("client", "client")
    assert json.loads(str(row["machine_outcomes"])) == {"client": "detected", "server": "benign"}
    assert row["frames"] == 178
    assert (row["frames_dropped"], row["frames_corrupted"]) == (0, 3)
    links = json.loads(str(row["traffic_json"]))
    assert [(link["source"], link["seen"]) for link in links] == [("client", 90), ("server", 88)]


def test_status_and_report_show_machines_and_network(tmp_path: Path) -> None:
    with create_store(tmp_path / "net.db") as store:
        for i in range(3):
            store.record(i, "network:corrupt", network_record(i), worker="w", started_at=1.0,
                         finished_at=2.0)  # fmt: skip
        summary = store_summary(store, confidence=0.95, method=IntervalMethod.WILSON)
        report = build_report(store)
    data = summary.to_json()
    client = data["machines"]["client"]
    assert client["outcomes"]["detected"] == 3 and client["judged"] == 3
    assert client["failure_rate"] == 1.0 and client["interval"][0] > 0.3
    assert data["machines"]["server"]["outcomes"]["benign"] == 3
    network = data["network"]
    assert network["experiments"] == 3 and network["frames"] == 3 * 178
    assert network["links"][0] == {
        "source": "client", "destination": "server", "seen": 270, "delivered": 270,
        "dropped": 0, "corrupted": 6, "delayed": 0, "duplicated": 0, "reordered": 0,
        "overflow": 0,
    }  # fmt: skip
    assert network["strata"]["network:corrupt"]["frames_mean"] == 178
    assert network["strata"]["network:corrupt"]["corrupted"] == 9
    titles = [str(table.title) for table in summary_tables(summary)]
    assert "per machine (wilson, 95%)" in titles
    assert any(title.startswith("network: 534 frames") for title in titles)
    page = render_html([report])
    assert "Outcomes per machine" in page and "Frames per link direction" in page
