"""What network faults do to frames, frame by frame: seeded, deterministic decisions."""

from __future__ import annotations

import random
import struct
from collections.abc import Sequence

import pytest

from vmfault.faults.network import (
    RATE_QUEUE_FRAMES,
    Direction,
    FilterDelivery,
    NetworkFault,
    NetworkFilter,
    NetworkKind,
    Where,
    header_bytes,
)

A, B, C = "client", "server", "db"


def ethernet(ethertype: int, payload: bytes) -> bytes:
    return b"\x52\x54\x00\x00\x00\x02" + b"\x52\x54\x00\x00\x00\x01" + struct.pack(
        "!H", ethertype
    ) + payload  # fmt: skip


def ipv4(protocol: int, payload: bytes, ihl: int = 5) -> bytes:
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(payload), 1, 0, 64, protocol,
                         0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    return header + b"\0" * (ihl * 4 - 20) + payload


def tcp_frame(data: bytes, doff: int = 5) -> bytes:
    header = struct.pack("!HHIIBBHHH", 1234, 7007, 1, 0, doff << 4, 0x18, 1000, 0, 0)
    return ethernet(0x0800, ipv4(6, header + b"\0" * (doff * 4 - 20) + data))


def udp_frame(data: bytes) -> bytes:
    return ethernet(0x0800, ipv4(17, struct.pack("!HHHH", 1, 2, 8 + len(data), 0) + data))


ARP = ethernet(0x0806, b"\0" * 28)


def run(
    fault: NetworkFault,
    frames: list[tuple[str, str, bytes]],
    *,
    seed: int = 7,
    start: float = 0.0,
    end: float | None = None,
    step: float = 0.001,
) -> tuple[NetworkFilter, list[Sequence[FilterDelivery]]]:
    """Every frame through a fresh filter, one `step` apart; the deliveries of each."""
    fil = NetworkFilter(fault, random.Random(seed), start=start, end=end)
    out = [fil.process(s, d, f, i * step) for i, (s, d, f) in enumerate(frames)]
    return fil, out


def test_header_bytes_cover_ethernet_ip_and_transport() -> None:
    assert header_bytes(tcp_frame(b"hello")) == 14 + 20 + 20
    assert header_bytes(tcp_frame(b"hello", doff=8)) == 14 + 20 + 32
    assert header_bytes(udp_frame(b"hello")) == 14 + 20 + 8
    assert header_bytes(ethernet(0x0800, ipv4(1, b"\0" * 16))) == 14 + 20 + 8
    assert header_bytes(ethernet(0x0800, ipv4(17, b"", ihl=6))) == 14 + 24  # cut short
    assert header_bytes(ARP) == len(ARP)  # not IP: headers throughout
    assert header_bytes(b"\0" * 5) == 5


def test_loss_is_seeded_and_counted() -> None:
    fault = NetworkFault(NetworkKind.LOSS, probability=0.3)
    frames = [(A, B, udp_frame(i.to_bytes(2, "big"))) for i in range(400)]
    fil, out = run(fault, frames)
    _, out_again = run(fault, frames)
    lost = [i for i, deliveries in enumerate(out) if not deliveries]
    assert lost == [i for i, deliveries in enumerate(out_again) if not deliveries]
    _, out_other = run(fault, frames, seed=8)
    assert lost != [i for i, deliveries in enumerate(out_other) if not deliveries]
    (counters,) = fil.counters()
    assert counters.seen == 400 and counters.dropped == len(lost)
    assert 80 < len(lost) < 160  # 30% of 400, this seed
    passed = [frame for (_, _, frame), deliveries in zip(frames, out, strict=True) if deliveries]
    assert [d.frame for deliveries in out for d in deliveries] == passed  # unchanged, in order


def test_loss_zero_and_one() -> None:
    frames = [(A, B, ARP)] * 50
    _, none_lost = run(NetworkFault(NetworkKind.LOSS, probability=0.0), frames)
    _, all_lost = run(NetworkFault(NetworkKind.LOSS, probability=1.0), frames)
    assert all(len(d) == 1 for d in none_lost)
    assert not any(all_lost)


def test_gilbert_elliott_loses_in_bursts() -> None:
    frames = [(A, B, ARP)] * 20000
    _, out = run(NetworkFault(NetworkKind.LOSS, probability=0.1, burst=5.0), frames)
    lost = [not deliveries for deliveries in out]
    bursts, length = [], 0
    for flag in lost:
        if flag:
            length += 1
        elif length:
            bursts.append(length)
            length = 0
    assert 0.07 < sum(lost) / len(lost) < 0.13
    assert 4.0 < sum(bursts) / len(bursts) < 6.0  # mean burst length 5
    random_loss = run(NetworkFault(NetworkKind.LOSS, probability=0.1), frames)[1]
    single = []
    length = 0
    for deliveries in random_loss:
        if not deliveries:
            length += 1
        elif length:
            single.append(length)
            length = 0
    assert sum(single) / len(single) < 1.3  # independent losses come one at a time


@pytest.mark.parametrize("where", list(Where))
def test_corruption_flips_bits_where_asked(where: Where) -> None:
    fault = NetworkFault(NetworkKind.CORRUPT, bits=3, where=where)
    frames = [(A, B, tcp_frame(bytes(range(100)))) for _ in range(30)]
    fil, out = run(fault, frames)
    split = header_bytes(frames[0][2])
    assert len(fil.corruptions) == 30
    for corruption, deliveries, (_, _, frame) in zip(fil.corruptions, out, frames, strict=True):
        (delivery,) = deliveries
        assert len(corruption.flips) == 3
        changed = bytes(a ^ b for a, b in zip(frame, delivery.frame, strict=True))
        for offset, bit in corruption.flips:
            assert changed[offset] >> bit & 1
            if where is Where.HEADERS:
                assert offset < split
            elif where is Where.PAYLOAD:
                assert offset >= split
        assert sum(bin(b).count("1") for b in changed) == 3
    (counters,) = fil.counters()
    assert counters.corrupted == 30
    again, _ = run(fault, frames)
    assert again.corruptions == fil.corruptions


def test_a_frame_without_payload_is_not_corrupted_in_its_payload() -> None:
    fil, out = run(NetworkFault(NetworkKind.CORRUPT, where=Where.PAYLOAD), [(A, B, ARP)])
    assert out[0][0].frame == ARP and not fil.corruptions
    assert fil.counters()[0].corrupted == 0 and fil.counters()[0].seen == 1


def test_corruption_with_a_probability() -> None:
    fault = NetworkFault(NetworkKind.CORRUPT, probability=0.25)
    fil, _ = run(fault, [(A, B, udp_frame(b"x" * 50))] * 400)
    assert 60 < fil.counters()[0].corrupted < 140


def test_delay_and_jitter_stay_in_bounds() -> None:
    fault = NetworkFault(NetworkKind.DELAY, delay_s=0.05, jitter_s=0.01)
    fil, out = run(fault, [(A, B, ARP)] * 200, step=0.0)
    times = [deliveries[0].at for deliveries in out]
    assert all(0.04 <= t <= 0.06 for t in times)
    assert len(set(times)) > 100  # jittered
    assert fil.counters()[0].delayed == 200


def test_scale_turns_guest_delays_into_host_delays() -> None:
    fault = NetworkFault(NetworkKind.DELAY, delay_s=0.05)
    fil = NetworkFilter(fault, random.Random(1), start=0.0, end=None, scale=2.0)
    (delivery,) = fil.process(A, B, ARP, 1.0)
    assert delivery.at == pytest.approx(1.1)


def test_duplicate_delivers_twice() -> None:
    fil, out = run(NetworkFault(NetworkKind.DUPLICATE), [(A, B, ARP)] * 10)
    assert all(len(deliveries) == 2 for deliveries in out)
    assert fil.counters()[0].duplicated == 10


def test_reorder_holds_frames_back_and_counts_the_overtaken() -> None:
    fault = NetworkFault(NetworkKind.REORDER, probability=0.5, delay_s=0.01)
    frames = [(A, B, udp_frame(bytes([i]))) for i in range(200)]
    fil, out = run(fault, frames, step=0.001)
    held = [i for i, deliveries in enumerate(out) if deliveries[0].at > i * 0.001]
    counters = fil.counters()[0]
    assert counters.delayed == len(held) and 60 < len(held) < 140
    # A frame held 10 ms while frames pass every 1 ms is overtaken, unless every frame
    # behind it within 10 ms was held too.
    assert 0 < counters.reordered <= counters.delayed
    arrival = sorted(range(200), key=lambda i: (out[i][0].at, i))
    assert arrival != sorted(arrival)


def test_rate_spaces_frames_and_drops_past_the_queue() -> None:
    fault = NetworkFault(NetworkKind.RATE, bandwidth_bps=8000.0)  # 1000 bytes per second
    frame = b"\0" * 100  # 0.1 s each
    fil, out = run(fault, [(A, B, frame)] * 5, step=0.0)
    assert [round(d[0].at, 6) for d in out] == [0.1, 0.2, 0.3, 0.4, 0.5]
    fil, out = run(fault, [(A, B, frame)] * (RATE_QUEUE_FRAMES + 10), step=0.0)
    assert sum(1 for d in out if not d) == 10
    assert fil.counters()[0].dropped == 10


def test_partition_cuts_between_groups_only() -> None:
    fault = NetworkFault(NetworkKind.PARTITION, groups=((A,), (B, C)))
    fil, out = run(fault, [(A, B, ARP), (B, A, ARP), (B, C, ARP), (C, A, ARP)])
    assert [bool(d) for d in out] == [False, False, True, False]
    assert sum(c.dropped for c in fil.counters()) == 3


def test_selection_by_link_card_and_direction() -> None:
    link_out = NetworkFault(NetworkKind.LOSS, link=(A, B), direction=Direction.OUT)
    assert link_out.applies(A, B) and not link_out.applies(B, A) and not link_out.applies(A, C)
    link_in = NetworkFault(NetworkKind.LOSS, link=(A, B), direction=Direction.IN)
    assert link_in.applies(B, A) and not link_in.applies(A, B)
    card = NetworkFault(NetworkKind.LOSS, nic=B)
    assert card.applies(A, B) and card.applies(B, C) and not card.applies(A, C)
    card_in = NetworkFault(NetworkKind.LOSS, nic=B, direction=Direction.IN)
    assert card_in.applies(A, B) and not card_in.applies(B, A)
    assert NetworkFault(NetworkKind.LOSS).applies(C, A)


def test_frames_outside_the_window_or_the_selection_pass_uncounted() -> None:
    fault = NetworkFault(NetworkKind.LOSS, probability=1.0, link=(A, B), direction=Direction.OUT)
    fil = NetworkFilter(fault, random.Random(1), start=1.0, end=2.0)
    assert fil.process(A, B, ARP, 0.5)  # before
    assert not fil.process(A, B, ARP, 1.5)  # during
    assert fil.process(B, A, ARP, 1.5)  # the other direction
    assert fil.process(A, B, ARP, 2.0)  # after
    assert [(c.source, c.destination, c.seen, c.dropped) for c in fil.counters()] == [(A, B, 1, 1)]
