"""Network speed: frames per second through vmfault's switch and the latency it adds, against
a direct datagram link between two guests (one socket pair, no switch), with 2 and 4
machines; and the memory each machine's QEMU takes (TCG).

First the switch alone (no guests): the round trip of a frame between two ports against a
bare socket pair, and frames per second one way. Then guests: busybox ping between two
(least and mean round trip; the mean carries the host's scheduling noise) and a TCP stream
from one to another (busybox nc; Debian's has no UDP), frames counted by the receiving
guest's card; with 4 machines two streams cross the switch at once. Prints figures and
ratios; asserts nothing. Targets: the switch adds at most 1 ms of round trip and keeps at
least half the direct link's frames per second.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import socket
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

from vmfault.guest.image import GuestImage
from vmfault.guest.protocol import AgentMode
from vmfault.machine import Machine, Nic
from vmfault.network import Port, Switch, mac_text
from vmfault.session import machine_config, prepare_image

PINGS = 40
STREAM_S = 4.0
ROUND_TRIPS = 2000
FLOOD_FRAMES = 20000
PROMPT = re.compile(rb"DONE(\d+)")


@contextmanager
def machines(image: GuestImage, ports: Sequence[Port]) -> Iterator[list[Machine]]:
    """Guests with a shell on their console, each on its port, booted and ready."""
    hosts = [(p.name, p.host) for p in ports]
    with ExitStack() as stack:
        booted = []
        for port in ports:
            own = [h for h in hosts if h[0] == port.name] + [h for h in hosts if h[0] != port.name]
            config = machine_config(
                image, mode=AgentMode.SHELL, nic=Nic(mac_text(port.mac), port.guest_fd),
                address=port.address, hosts=own,
            )  # fmt: skip
            vm = stack.enter_context(Machine(config, name=f"bench-{port.name}"))
            booted.append(vm)
        for vm in booted:
            vm.console.expect("# ", timeout_s=120)
        yield booted


_count = iter(range(1, 1 << 30))


def shell(vm: Machine, command: str, timeout_s: float = 180.0) -> str:
    """Run `command` in the guest's shell; its output."""
    tag = next(_count)
    mark = vm.console.mark()
    vm.send_console(f"{command}; echo DONE$(( {tag} + 0 ))\n".encode())
    vm.console.expect(f"DONE{tag}\r?\n", timeout_s=timeout_s)
    return vm.console.transcript(mark)


def ping_ms(vm: Machine, peer: str) -> tuple[float, float]:
    """Least and mean round trip of PINGS pings from `vm` to `peer`, in milliseconds (the
    least is the path's own cost, the mean adds the host's scheduling noise)."""
    shell(vm, f"ping -c 3 -W 5 {peer} > /dev/null")  # ARP and caches warm
    text = shell(vm, f"ping -c {PINGS} -i 0.05 {peer}", timeout_s=120)
    found = re.search(r"min/avg/max = ([\d.]+)/([\d.]+)/", text)
    if found is None:
        raise RuntimeError(f"no ping summary in {text[-300:]!r}")
    return float(found.group(1)), float(found.group(2))


def switch_alone() -> dict[str, float]:
    """The switch without guests: round trips of one frame between two ports (median, µs)
    against a bare socket pair, and frames per second one way (64 and 1514 bytes)."""
    figures = {}
    with Switch(("a", "b")) as switch:
        a, b = (socket.socket(fileno=os.dup(switch.ports[n].guest_fd)) for n in ("a", "b"))
        frame = switch.ports["b"].mac + switch.ports["a"].mac + b"\x08\x00" + bytes(50)
        back = switch.ports["a"].mac + switch.ports["b"].mac + b"\x08\x00" + bytes(50)
        for sock in (a, b):
            sock.setblocking(True)
        rounds = []
        for _ in range(ROUND_TRIPS):
            begun = time.perf_counter()
            a.send(frame)
            b.recv(65536)
            b.send(back)
            a.recv(65536)
            rounds.append(time.perf_counter() - begun)
        figures["switch alone round trip us"] = statistics.median(rounds) * 1e6
        for size in (64, 1514):
            body = frame[:14] + bytes(size - 14)
            b.setblocking(False)
            begun = time.perf_counter()
            received = 0
            for _ in range(FLOOD_FRAMES):
                a.send(body)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        b.recv(65536)
                        received += 1
            deadline = time.perf_counter() + 2.0
            while received < FLOOD_FRAMES and time.perf_counter() < deadline:
                with contextlib.suppress(BlockingIOError):
                    b.recv(65536)
                    received += 1
            figures[f"switch alone frames/s ({size} B)"] = received / (time.perf_counter() - begun)
        a.close()
        b.close()
    x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    rounds = []
    for _ in range(ROUND_TRIPS):
        begun = time.perf_counter()
        x.send(frame)
        y.recv(65536)
        y.send(back)
        x.recv(65536)
        rounds.append(time.perf_counter() - begun)
    figures["socket pair round trip us"] = statistics.median(rounds) * 1e6
    x.close()
    y.close()
    return figures


def rx_frames(vm: Machine) -> int:
    text = shell(vm, "cat /sys/class/net/eth0/statistics/rx_packets")
    return int(re.findall(r"^(\d+)\r?$", text, re.MULTILINE)[-1])


def stream(pairs: Sequence[tuple[Machine, Machine, str]]) -> float:
    """Frames per second the receivers got from TCP streams, all pairs at once (summed)."""
    for _, receiver, _ in pairs:
        receiver.send_console(b"nc -l -p 5000 > /dev/null &\n")
    time.sleep(0.5)
    before = [rx_frames(receiver) for _, receiver, _ in pairs]
    for sender, _, peer in pairs:
        sender.send_console(
            f"timeout {STREAM_S:g} sh -c 'dd if=/dev/zero bs=64k count=100000 "
            f"2>/dev/null | nc {peer} 5000'\n".encode()
        )
    time.sleep(STREAM_S + 1.0)
    after = [rx_frames(receiver) for _, receiver, _ in pairs]
    for _, receiver, _ in pairs:
        shell(receiver, "kill %1 2>/dev/null; true")
    return sum(b - a for a, b in zip(before, after, strict=True)) / STREAM_S


def rss_mib(vm: Machine) -> float:
    status = Path(f"/proc/{vm.pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return 0.0 if found is None else int(found.group(1)) / 1024


def direct_ports() -> tuple[list[Port], list[socket.socket]]:
    """Two ports joined by one socket pair: each guest's frames go straight to the other."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    for sock in (a, b):
        sock.set_inheritable(True)
    switch = Switch(("a", "b"))  # only for its address plan; never started
    plan = [dataclasses.replace(port, guest_fd=sock.fileno())
            for port, sock in zip(switch.ports.values(), (a, b), strict=True)]  # fmt: skip
    switch.close()
    return plan, [a, b]


def main() -> None:
    image = prepare_image()
    figures = switch_alone()

    ports, sockets = direct_ports()
    with machines(image, ports) as (a, b):
        figures["direct ping ms (least)"], figures["direct ping ms (mean)"] = ping_ms(a, "b")
        figures["direct frames/s"] = stream([(a, b, "b")])
        figures["rss MiB"] = statistics.mean(rss_mib(vm) for vm in (a, b))
    for sock in sockets:
        sock.close()

    with Switch(("a", "b")) as switch, machines(image, list(switch.ports.values())) as (a, b):
        figures["switch ping ms (least)"], figures["switch ping ms (mean)"] = ping_ms(a, "b")
        figures["switch frames/s"] = stream([(a, b, "b")])

    names = ("a", "b", "c", "d")
    with Switch(names) as switch, machines(image, list(switch.ports.values())) as (a, b, c, d):
        least, mean = ping_ms(a, "b")
        figures["switch 4 ping ms (least)"], figures["switch 4 ping ms (mean)"] = least, mean
        figures["switch 4 frames/s (2 streams)"] = stream([(a, b, "b"), (c, d, "d")])
        figures["rss 4 MiB"] = statistics.mean(rss_mib(vm) for vm in (a, b, c, d))

    for name, value in figures.items():
        print(f"{name:36s} {value:12.2f}")
    alone = figures["switch alone round trip us"] - figures["socket pair round trip us"]
    added = figures["switch ping ms (least)"] - figures["direct ping ms (least)"]
    kept = figures["switch frames/s"] / max(figures["direct frames/s"], 1e-9)
    print(f"{'switch adds, alone (us of round trip)':36s} {alone:12.1f}   target <= 1000")
    print(f"{'switch adds, guests (ms, least)':36s} {added:12.2f}   target <= 1")
    print(f"{'switch keeps (of direct frames/s)':36s} {kept:12.2f}   target >= 0.5")
    print(f"{'memory per machine (MiB, RSS)':36s} {figures['rss 4 MiB']:12.1f}")


if __name__ == "__main__":
    main()
