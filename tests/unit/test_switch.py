"""The switch with real sockets and no QEMU: the tests hold the machines' ends of its ports."""

from __future__ import annotations

import os
import random
import select
import socket
import time
from collections.abc import Iterator, Sequence

import pytest

from vmfault.faults.network import NetworkFault, NetworkFilter, NetworkKind
from vmfault.network import Switch
from vmfault.network.switch import Delivery

NAMES = ("server", "client", "db")
WAIT_S = 5.0


@pytest.fixture
def switch() -> Iterator[Switch]:
    with Switch(NAMES) as started:
        yield started


def card(switch: Switch, name: str) -> socket.socket:
    """The machine's end of its port, as QEMU would hold it (a duplicate: ours to close)."""
    sock = socket.socket(fileno=os.dup(switch.ports[name].guest_fd))
    sock.setblocking(False)
    return sock


def frame(switch: Switch, source: str, destination: str | None, body: bytes = b"x") -> bytes:
    to = b"\xff" * 6 if destination is None else switch.ports[destination].mac
    return to + switch.ports[source].mac + b"\x08\x00" + body


def receive(sock: socket.socket, count: int = 1, timeout_s: float = WAIT_S) -> list[bytes]:
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        got.append(sock.recv(65536))
    return got


def nothing(sock: socket.socket, wait_s: float = 0.2) -> bool:
    return not receive(sock, 1, wait_s)


def test_ports_have_addresses_cards_and_sockets(switch: Switch) -> None:
    assert [p.address for p in switch.ports.values()] == ["10.0.0.1/24", "10.0.0.2/24",
                                                          "10.0.0.3/24"]  # fmt: skip
    assert len({p.mac for p in switch.ports.values()}) == 3
    assert switch.ports["client"].host == "10.0.0.2"


def test_frames_go_to_their_destination_and_broadcasts_to_all_others(switch: Switch) -> None:
    server, client, db = (card(switch, name) for name in NAMES)
    with server, client, db:
        unicast = frame(switch, "client", "server", b"hello")
        client.send(unicast)
        assert receive(server) == [unicast]
        assert nothing(db) and nothing(client)
        broadcast = frame(switch, "db", None, b"who has")
        db.send(broadcast)
        assert receive(server) == [broadcast] and receive(client) == [broadcast]
        assert nothing(db)
        counters = switch.counters()
        assert counters[("client", "server")].seen == counters[("client", "server")].delivered == 1
        assert {key for key in counters} == {("client", "server"), ("db", "server"),
                                             ("db", "client")}  # fmt: skip


class Hold:
    """A filter that delays every frame by `delay_s` and drops the ones to `drop`."""

    def __init__(self, delay_s: float, drop: str = "") -> None:
        self.delay_s = delay_s
        self.drop = drop

    def process(
        self, source: str, destination: str, frame: bytes, now: float
    ) -> Sequence[Delivery]:
        if destination == self.drop:
            return ()
        return (NetworkFilterDelivery(now + self.delay_s, frame),)


class NetworkFilterDelivery:
    def __init__(self, at: float, frame: bytes) -> None:
        self.at = at
        self.frame = frame


def test_a_filter_holds_and_drops_frames(switch: Switch) -> None:
    server, client, db = (card(switch, name) for name in NAMES)
    with server, client, db:
        switch.install(Hold(0.3, drop="db"))
        sent = time.monotonic()
        client.send(frame(switch, "client", None))
        assert receive(server)
        assert time.monotonic() - sent >= 0.25
        assert nothing(db, 0.5)
        switch.install(None)
        client.send(frame(switch, "client", "db"))
        assert receive(db)


def test_quiesce_and_resume_leave_nothing_of_the_epoch_before(switch: Switch) -> None:
    server, client = card(switch, "server"), card(switch, "client")
    with server, client:
        switch.install(Hold(0.5))
        client.send(frame(switch, "client", "server", b"held"))  # held in the switch
        time.sleep(0.1)
        switch.install(None)
        client.send(frame(switch, "client", "server", b"waiting"))  # waits in the server's end
        assert receive(server) == [frame(switch, "client", "server", b"waiting")]
        client.send(frame(switch, "client", "server", b"unread"))
        time.sleep(0.1)  # delivered into the server's card, which nobody reads
        epoch = switch.epoch
        switch.quiesce()
        client.send(frame(switch, "client", "server", b"while quiet"))
        time.sleep(0.1)
        switch.resume()
        assert switch.epoch == epoch + 1
        assert switch.counters() == {}
        assert nothing(server, 0.8)  # neither the held, the unread nor the quiet frame
        client.send(frame(switch, "client", "server", b"new"))
        assert receive(server) == [frame(switch, "client", "server", b"new")]


def test_a_network_fault_filter_runs_in_the_switch(switch: Switch) -> None:
    server, client = card(switch, "server"), card(switch, "client")
    with server, client:
        fault = NetworkFault(NetworkKind.LOSS, probability=1.0, link=("client", "server"))
        now = time.monotonic()
        switch.install(NetworkFilter(fault, random.Random(1), start=now, end=now + 0.5))
        client.send(frame(switch, "client", "server"))
        assert nothing(server, 0.2)
        time.sleep(0.4)
        client.send(frame(switch, "client", "server"))
        assert receive(server)
        counted = switch.counters()[("client", "server")]
        assert (counted.seen, counted.delivered) == (2, 1)


def test_a_frame_for_a_full_card_is_counted_lost(switch: Switch) -> None:
    server, client = card(switch, "server"), card(switch, "client")
    with server, client:
        client.setblocking(True)  # the sender waits for the switch; the server reads nothing
        big = frame(switch, "client", "server", b"\0" * 60000)
        for _ in range(400):  # far more than the server's socket holds unread
            client.send(big)
            time.sleep(0.0005)
        deadline = time.monotonic() + WAIT_S
        while switch.counters()[("client", "server")].seen < 400:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        counted = switch.counters()[("client", "server")]
        assert counted.overflow > 0 and counted.overflow + counted.delivered == 400


def test_closing_twice_is_safe() -> None:
    switch = Switch(("a", "b"))
    switch.start()
    switch.close()
    switch.close()
    assert not switch.alive
