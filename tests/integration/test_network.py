"""Networks of machines on real guests: a server (netecho and httpd, a daemon), a TCP and a UDP
netecho client and a machine whose console script fetches a page, on vmfault's switch.

One testbed serves every test (each machine boots once); its budget is 20 s of guest time.
"""

from __future__ import annotations

import fcntl
import random
import struct
import termios
import time
from collections.abc import Iterator, Sequence

import pytest

from vmfault.arch import Arch
from vmfault.classify import Outcome
from vmfault.experiment.crew import Crew, free_run
from vmfault.experiment.pipeline import Experimenter
from vmfault.experiment.records import ExperimentRecord, NetworkInjection, RegisterInjection
from vmfault.experiment.testbed import MachineSpec, Testbed
from vmfault.faults import Budget, FaultSpec
from vmfault.faults.network import FilterDelivery
from vmfault.guest.image import GuestImage
from vmfault.machine.dialogue import Expect, Send, Sleep

pytestmark = pytest.mark.vm

SERVE = (
    "mkdir -p /www && echo hello from server > /www/index.html && httpd -p 80 -h /www "
    "&& exec netecho --serve"
)
MACHINES = [
    MachineSpec("server", ("/bin/sh", "-c", SERVE), daemon=True),
    MachineSpec("tcp", ("netecho", "--connect", "server", "--count", "30", "--timeout-ms", "4000")),
    MachineSpec(
        "udp", ("netecho", "--connect", "server", "--count", "30", "--udp", "--timeout-ms", "1000")
    ),
    MachineSpec.scripted(
        "box",
        [
            # The machines start together: wait until the server's httpd listens.
            Send("until wget -q -O - http://server/index.html; do sleep 0.2; done\n"),
            Expect(("hello from server",), 8.0),
            Sleep(0.1),
            Send("echo fetched-$((6 * 7))\n"),
            Expect(("fetched-42", "fetched-4[0-9]"), 5.0),
        ],
    ),
]


@pytest.fixture(scope="module")
def net(image: GuestImage) -> Iterator[Experimenter]:
    """The four machines on one network, judged by the worst outcome."""
    testbed = Testbed(image, MACHINES, network=True)
    with Experimenter(testbed, budget_factor=Budget.parse("20s")) as experimenter:
        yield experimenter


def runs(record: ExperimentRecord) -> dict[str, Outcome]:
    return {run.machine: run.outcome for run in record.machines}


def test_golden_runs_and_control_runs(net: Experimenter) -> None:
    goldens = net.testbed.goldens
    assert goldens["tcp"].output.startswith("netecho: 30 messages of 256 bytes echoed over tcp")
    assert goldens["udp"].output.startswith("netecho: 30 messages of 256 bytes echoed over udp")
    assert goldens["box"].exit_status == 0  # the script passed: its shell exited 0
    assert goldens["server"].exit_code is None and goldens["server"].signal is None  # stopped
    box = net.testbed.machine("box").vm.console.transcript()
    assert "hello from server" in box and "fetched-42" in box
    for index in range(2):
        record = net.run(FaultSpec.from_options(target="none"), seed=3, index=index)
        assert set(runs(record).values()) == {Outcome.BENIGN}, record.to_json()["machines"]
        assert record.traffic is not None and record.traffic.frames > 100
        server = next(run for run in record.machines if run.machine == "server")
        assert server.reason == "the daemon ran until the machines it serves were done"


def test_loss_leaves_tcp_whole_and_udp_short(net: Experimenter) -> None:
    for client, expected in (("tcp", Outcome.BENIGN), ("udp", Outcome.DETECTED)):
        spec = FaultSpec.from_options(
            target="network:loss", probability=0.1, link=f"{client}-server", trigger="time:0s"
        )
        record = net.run(spec, seed=5)
        injection = record.injection
        assert isinstance(injection, NetworkInjection) and injection.injected
        outcome = runs(record)
        assert outcome[client] is expected, record.to_json()["machines"][client]
        assert injection.totals["dropped"] > 0
        assert {(link.source, link.destination) for link in injection.links} <= {
            (client, "server"), ("server", client),
        }  # fmt: skip
        if client == "udp":
            assert "DETECTED" in record.to_json()["machines"]["udp"]["output"]
        others = {name: o for name, o in outcome.items() if name not in (client, "server")}
        assert set(others.values()) == {Outcome.BENIGN}


def test_a_partition_of_one_second_is_recorded_with_its_drops(net: Experimenter) -> None:
    spec = FaultSpec.from_options(
        target="network:partition", groups=[["tcp"], ["server", "udp", "box"]],
        trigger="time:0s", period="1s",
    )  # fmt: skip
    record = net.run(spec, seed=7)
    injection = record.injection
    assert isinstance(injection, NetworkInjection) and injection.period_s == 1.0
    assert injection.totals["dropped"] > 0
    tcp = next(run for run in record.machines if run.machine == "tcp")
    # The client times out (detected) or completes once the partition heals (benign, late).
    assert tcp.outcome in (Outcome.BENIGN, Outcome.DETECTED), tcp
    if tcp.outcome is Outcome.DETECTED:
        assert "timeout" in tcp.output
    assert runs(record)["udp"] is Outcome.BENIGN


def test_a_script_step_that_times_out(net: Experimenter) -> None:
    spec = FaultSpec.from_options(
        target="network:partition", groups=[["box"], ["server", "tcp", "udp"]], trigger="time:0s"
    )
    record = net.run(spec, seed=9)
    box = next(run for run in record.machines if run.machine == "box")
    assert box.outcome is Outcome.HANG
    assert box.reason == "script step 2 timed out (8 s)"
    assert "wget" in box.evidence  # the console's last lines


def test_a_register_flip_in_the_server(net: Experimenter) -> None:
    spec = FaultSpec.from_options(
        target="register:rip", bits="40", trigger="time:0.05s", context="kernel", machine="server"
    )
    record = net.run(spec, seed=11)
    injection = record.injection
    assert isinstance(injection, RegisterInjection) and injection.injected
    assert injection.machine == "server" and record.to_json()["fault"]["machine"] == "server"
    outcome = runs(record)
    assert outcome["server"] is Outcome.CRASH
    # The clients saw their server go: they say so (netecho exits non-zero) or give up.
    tcp = next(run for run in record.machines if run.machine == "tcp")
    assert tcp.outcome in (Outcome.DETECTED, Outcome.HANG), tcp
    assert outcome["box"] is Outcome.HANG
    assert record.outcome is Outcome.CRASH and record.judged == "server"


class Capture:
    """A link filter that passes every frame and keeps a copy."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, bytes]] = []

    def process(
        self, source: str, destination: str, frame: bytes, now: float
    ) -> Sequence[FilterDelivery]:
        self.frames.append((source, frame))
        return (FilterDelivery(now, frame),)


STRANGER = bytes([10, 0, 0, 250])


def ping_from_stranger(testbed: Testbed, to: str) -> bytes:
    """An ICMP echo request to `to` from an address no machine has: a guest that receives
    it asks the network who has 10.0.0.250."""
    port = testbed.switch.ports[to] if testbed.switch is not None else None
    assert port is not None
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"stale" * 8
    icmp = icmp[:2] + struct.pack("!H", checksum(icmp)) + icmp[4:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, STRANGER,
                     bytes(int(x) for x in port.host.split(".")))  # fmt: skip
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return port.mac + b"\x52\x54\x00\x00\x00\xfa" + b"\x08\x00" + ip + icmp


def checksum(data: bytes) -> int:
    """The Internet checksum of `data` (an even number of bytes)."""
    total = sum(int(word) for word in struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def asked_for_stranger(capture: Capture) -> bool:
    return any(
        frame[12:14] == b"\x08\x06" and frame[38:42] == STRANGER for _, frame in capture.frames
    )


def unread(fd: int) -> int:
    """Bytes waiting to be read on a socket."""
    return int.from_bytes(fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4), "little")


def run_a_while(testbed: Testbed, seconds: float) -> None:
    crew: Crew[bool] = Crew()
    for machine in testbed:
        crew.run(machine.name, lambda vm=machine.vm: free_run(vm, crew.abort))  # type: ignore[misc]
    time.sleep(seconds)
    crew.end()


def test_no_frame_of_one_run_reaches_the_next(net: Experimenter) -> None:
    testbed = net.testbed
    switch = testbed.switch
    assert switch is not None
    capture = Capture()
    # The detector works: the udp client answers a stranger's ping while it runs.
    testbed.restore()
    switch.install(capture)
    switch.deliver("udp", ping_from_stranger(testbed, "udp"))
    run_a_while(testbed, 1.0)
    assert asked_for_stranger(capture)
    # A ping that reaches the halted client's card just before a restore is gone after it.
    testbed.restore()
    switch.deliver("udp", ping_from_stranger(testbed, "udp"))
    taken_by = time.monotonic() + 10.0  # QEMU reads it into its card's queue, guest stopped
    while unread(switch.ports["udp"].guest_fd):
        assert time.monotonic() < taken_by
        time.sleep(0.01)
    testbed.restore()
    capture = Capture()
    switch.install(capture)
    run_a_while(testbed, 1.0)
    assert capture.frames  # the machines talked
    assert not asked_for_stranger(capture)
    record = net.run(FaultSpec.from_options(target="none"), seed=random.randrange(100))
    assert set(runs(record).values()) == {Outcome.BENIGN}


A64_MACHINES = [
    MachineSpec("server", ("netecho", "--serve"), daemon=True),
    MachineSpec("tcp", ("netecho", "--connect", "server", "--count", "10", "--timeout-ms", "4000")),
    MachineSpec.scripted(
        "box",
        [
            Send(
                "netecho --connect server --count 5 --udp --timeout-ms 1000; echo done-$((6*7))\n"
            ),
            Expect(("done-42",), 20.0),
        ],
    ),
]


@pytest.mark.parametrize("arch", [Arch.AARCH64], indirect=True, ids=str)
def test_aarch64_machines_talk_on_the_network_and_take_console_scripts(
    arch_image: GuestImage,
) -> None:
    # The virt machine's virtio-mmio network card on the switch, and a shell on its PL011.
    testbed = Testbed(arch_image, A64_MACHINES, network=True)
    with Experimenter(testbed, budget_factor=Budget.parse("20s")) as experimenter:
        goldens = testbed.goldens
        assert goldens["tcp"].output.startswith("netecho: 10 messages of 256 bytes echoed over tcp")
        assert goldens["box"].exit_status == 0  # the script passed: its shell exited 0
        box = testbed.machine("box").vm.console.transcript()
        assert "netecho: 5 messages of 256 bytes echoed over udp" in box and "done-42" in box
        record = experimenter.run(FaultSpec.from_options(target="none"), seed=3)
        assert set(runs(record).values()) == {Outcome.BENIGN}, record.to_json()["machines"]
        assert record.traffic is not None and record.traffic.frames > 20
        fault = FaultSpec.from_options(
            target="network:loss", probability=0.1, link="tcp-server", trigger="time:0s"
        )
        lossy = experimenter.run(fault, seed=5)
        injection = lossy.injection
        assert isinstance(injection, NetworkInjection) and injection.totals["dropped"] > 0
        assert runs(lossy)["tcp"] is Outcome.BENIGN, lossy.to_json()["machines"]  # TCP resends
        # A request of the client's network card corrupted at a kick: virtio_ring is built
        # into aarch64's kernel, so its functions sit where the symbols say.
        corrupted = experimenter.run(
            FaultSpec.from_options(target="device:virtio-net", machine="tcp"), seed=6
        )
        assert corrupted.injection.injected, corrupted.to_json()["fault"]
