"""The gdb remote-protocol codec, and the client against a scripted stub (no QEMU)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from vmfault.errors import GdbError, GdbProtocolError, MachineTimeoutError, StateError
from vmfault.machine.gdbproto import (
    BreakpointKind,
    FrameKind,
    FrameReader,
    RegisterInfo,
    StopReason,
    WatchKind,
    checksum,
    decode_le_hex,
    decode_registers,
    decode_rle,
    encode_le_hex,
    encode_packet,
    escape_binary,
    is_error_reply,
    parse_qxfer_reply,
    parse_stop_reply,
    parse_supported,
    parse_target_xml,
    strip_xml_comments,
    unescape_binary,
)
from vmfault.machine.gdbstub import GdbStub

# -- framing ---------------------------------------------------------------------------


def test_checksum_and_framing() -> None:
    assert checksum(b"g") == 0x67
    assert encode_packet(b"g") == b"$g#67"
    assert encode_packet(b"") == b"$#00"
    assert encode_packet(b"m7000000,1") == b"$m7000000,1#%02x" % (sum(b"m7000000,1") % 256)


@pytest.mark.parametrize("bad", [b"a$b", b"a#b", b"a*b"])
def test_encode_packet_rejects_unescaped_framing_bytes(bad: bytes) -> None:
    with pytest.raises(ValueError, match="unescaped"):
        encode_packet(bad)


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        (b"}", b"}]"),
        (b"#", b"}\x03"),
        (b"$", b"}\x04"),
        (b"*", b"}\x0a"),
        (b"a}#$*b", b"a}]}\x03}\x04}\x0ab"),
        (b"plain", b"plain"),
    ],
)
def test_binary_escapes(raw: bytes, escaped: bytes) -> None:
    assert escape_binary(raw) == escaped
    assert unescape_binary(escaped) == raw


def test_escape_round_trips_every_byte() -> None:
    data = bytes(range(256)) * 2
    escaped = escape_binary(data)
    assert not any(marker in escaped for marker in (b"#", b"$", b"*"))
    assert unescape_binary(escaped) == data
    encode_packet(escaped)  # frameable as is


def test_unescape_rejects_trailing_escape() -> None:
    with pytest.raises(GdbProtocolError):
        unescape_binary(b"abc}")


@pytest.mark.parametrize(
    ("wire", "decoded"),
    [
        (b"0* ", b"0000"),  # the protocol's own example: ' ' = 32, 3 more
        (b"a*!", b"aaaaa"),
        (b"12*#", b"12" + b"2" * 6),  # '#' would frame-end; shows the count arithmetic only
        (b"x*\x1d", b"x"),  # count 29: zero more
        (b'ab*"cd*#', b"a" + b"b" * 6 + b"c" + b"d" * 7),
        (b"no runs", b"no runs"),
    ],
)
def test_run_length_decoding(wire: bytes, decoded: bytes) -> None:
    assert decode_rle(wire) == decoded


@pytest.mark.parametrize("bad", [b"*!", b"ab*", b"a*\x10"])
def test_run_length_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(GdbProtocolError):
        decode_rle(bad)


def _frames(reader: FrameReader) -> list[tuple[FrameKind, bytes]]:
    out = []
    while (frame := reader.next_frame()) is not None:
        out.append((frame.kind, frame.payload))
    return out


def test_frame_reader_splits_acks_nacks_and_packets() -> None:
    reader = FrameReader()
    reader.feed(b"+" + encode_packet(b"OK") + b"-" + encode_packet(b"T05thread:01;") + b"+")
    assert _frames(reader) == [
        (FrameKind.ACK, b""),
        (FrameKind.PACKET, b"OK"),
        (FrameKind.NACK, b""),
        (FrameKind.PACKET, b"T05thread:01;"),
        (FrameKind.ACK, b""),
    ]
    assert reader.buffered == 0


def test_frame_reader_waits_for_complete_packets() -> None:
    wire = b"+" + encode_packet(b"0011223344")
    reader = FrameReader()
    seen: list[tuple[FrameKind, bytes]] = []
    for byte in wire:
        reader.feed(bytes((byte,)))
        seen += _frames(reader)
    assert seen == [(FrameKind.ACK, b""), (FrameKind.PACKET, b"0011223344")]


def test_frame_reader_flags_bad_checksums() -> None:
    reader = FrameReader()
    reader.feed(b"$OK#00$OK#zz" + encode_packet(b"OK"))
    kinds = [kind for kind, _ in _frames(reader)]
    assert kinds == [FrameKind.CORRUPT, FrameKind.CORRUPT, FrameKind.PACKET]


def test_frame_reader_expands_run_length_after_checking_the_wire_checksum() -> None:
    wire_payload = b"0* 1"
    reader = FrameReader()
    reader.feed(b"$%s#%02x" % (wire_payload, sum(wire_payload) % 256))
    assert _frames(reader) == [(FrameKind.PACKET, b"00001")]


def test_frame_reader_skips_noise() -> None:
    reader = FrameReader()
    reader.feed(b"\x00junk" + encode_packet(b"OK") + b"zz+")
    assert _frames(reader) == [(FrameKind.PACKET, b"OK"), (FrameKind.ACK, b"")]
    assert reader.discarded == 7


def test_error_replies() -> None:
    assert is_error_reply(b"E22")
    assert is_error_reply(b"E0e")
    assert not is_error_reply(b"OK")
    assert not is_error_reply(b"")
    assert not is_error_reply(b"e22")
    assert not is_error_reply(b"E2")


# -- stop replies ----------------------------------------------------------------------


def test_stop_reply_watchpoint() -> None:
    stop = parse_stop_reply(b"T05thread:01;watch:ffffffff82a079c0;")
    assert stop.kind == "T"
    assert stop.signal == 5
    assert stop.thread == "01"
    assert stop.reason is StopReason.WATCHPOINT
    assert stop.watch_kind is WatchKind.WRITE
    assert stop.watch_address == 0xFFFFFFFF82A079C0
    assert stop.raw == "T05thread:01;watch:ffffffff82a079c0;"
    assert ("watch", "ffffffff82a079c0") in stop.fields


@pytest.mark.parametrize(
    ("key", "kind"), [("rwatch", WatchKind.READ), ("awatch", WatchKind.ACCESS)]
)
def test_stop_reply_read_and_access_watchpoints(key: str, kind: WatchKind) -> None:
    stop = parse_stop_reply(f"T05{key}:1000;thread:p1.1;")
    assert stop.reason is StopReason.WATCHPOINT
    assert stop.watch_kind is kind
    assert stop.watch_address == 0x1000
    assert stop.thread == "p1.1"


@pytest.mark.parametrize(
    ("payload", "reason", "signal"),
    [
        ("T05thread:01;", StopReason.TRAP, 5),
        ("T02thread:01;", StopReason.INTERRUPT, 2),
        ("T03thread:01;", StopReason.SHUTDOWN, 3),
        ("T8fthread:01;", StopReason.OTHER, 143),
        ("S05", StopReason.TRAP, 5),
        ("S02", StopReason.INTERRUPT, 2),
        ("X09", StopReason.TERMINATED, 9),
    ],
)
def test_stop_reply_signals(payload: str, reason: StopReason, signal: int) -> None:
    stop = parse_stop_reply(payload)
    assert stop.reason is reason
    assert stop.signal == signal
    assert stop.kind == payload[0]


def test_stop_reply_breakpoint_kinds() -> None:
    sw = parse_stop_reply(b"T05swbreak:;thread:01;")
    hw = parse_stop_reply(b"T05hwbreak:;thread:01;")
    assert (sw.reason, sw.breakpoint_kind) == (StopReason.BREAKPOINT, BreakpointKind.SOFTWARE)
    assert (hw.reason, hw.breakpoint_kind) == (StopReason.BREAKPOINT, BreakpointKind.HARDWARE)


def test_stop_reply_exit() -> None:
    stop = parse_stop_reply(b"W00")
    assert stop.reason is StopReason.EXITED
    assert stop.reason.is_final
    assert stop.exit_status == 0
    with_pid = parse_stop_reply(b"W01;process:2a")
    assert with_pid.exit_status == 1
    assert with_pid.fields == (("process", "2a"),)


def test_stop_reply_keeps_expedited_registers() -> None:
    stop = parse_stop_reply(b"T0510:0010000000000000;thread:01;")
    assert stop.fields == (("10", "0010000000000000"), ("thread", "01"))
    assert stop.reason is StopReason.TRAP


@pytest.mark.parametrize("bad", [b"", b"OK", b"T", b"T0", b"Tzz", b"Wxyz", b"E22", b"\xff"])
def test_stop_reply_rejects_others(bad: bytes) -> None:
    with pytest.raises(GdbProtocolError):
        parse_stop_reply(bad)


# -- qSupported, qXfer -----------------------------------------------------------------


def test_parse_supported() -> None:
    features = parse_supported(
        b"PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess-;odd"
    )
    assert features == {
        "PacketSize": "1000",
        "qXfer:features:read": True,
        "vContSupported": True,
        "multiprocess": False,
        "odd": True,
    }


def test_parse_qxfer_reply() -> None:
    assert parse_qxfer_reply(b"m<abc") == (b"<abc", True)
    assert parse_qxfer_reply(b"l}]end") == (b"}end", False)
    assert parse_qxfer_reply(b"l") == (b"", False)
    with pytest.raises(GdbError):
        parse_qxfer_reply(b"E00")
    with pytest.raises(GdbError, match="not supported"):
        parse_qxfer_reply(b"")


# -- target description ----------------------------------------------------------------

TARGET_XML = (
    '<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd"><target>'
    "<architecture>i386:x86-64</architecture>"
    '<xi:include href="core.xml"/><xi:include href="sse.xml"/></target>'
)

CORE_XML = """<!-- a comment before the declaration -->
<?xml version="1.0"?>
<!-- Copyright notice.
     <reg name="commented_out" bitsize="64"/> -->
<!DOCTYPE feature SYSTEM "gdb-target.dtd">
<feature name="org.gnu.gdb.i386.core">
  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/>
  </flags>
  <reg name="rax" bitsize="64" type="int64"/>
  <reg name="rbx" bitsize="64" type="int64"/>
  <reg name="rip" bitsize="64" type="code_ptr"/>
  <reg name="eflags" bitsize="32" type="i386_eflags"/>
  <reg name="st0" bitsize="80" type="i387_ext" regnum="8"/>
  <reg name="fctrl" bitsize="32" type="int" group="float"/>
</feature>
"""

SSE_XML = """<?xml version="1.0"?>
<feature name="org.gnu.gdb.i386.sse">
  <vector id="v4f" type="ieee_single" count="4"/>
  <reg name="xmm0" bitsize="128" type="vec128"/>
  <reg name="mxcsr" bitsize="32" type="i386_mxcsr" group="vector"/>
</feature>
"""


def _fetcher(documents: dict[str, str]) -> Callable[[str], str]:
    def fetch(annex: str) -> str:
        return documents[annex]

    return fetch


def test_target_xml_follows_includes_and_numbers_registers() -> None:
    docs = {"target.xml": TARGET_XML, "core.xml": CORE_XML, "sse.xml": SSE_XML}
    description = parse_target_xml(_fetcher(docs))
    assert description.architecture == "i386:x86-64"
    assert description.features == ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse")
    regs = {reg.name: reg for reg in description.registers}
    assert list(regs) == ["rax", "rbx", "rip", "eflags", "st0", "fctrl", "xmm0", "mxcsr"]
    assert [regs[n].regnum for n in regs] == [0, 1, 2, 3, 8, 9, 10, 11]
    assert regs["rip"] == RegisterInfo(
        "rip", 2, 64, "code_ptr", None, feature="org.gnu.gdb.i386.core"
    )
    assert regs["st0"].size == 10
    assert regs["xmm0"].bitsize == 128
    assert regs["fctrl"].group == "float"
    assert regs["mxcsr"].feature == "org.gnu.gdb.i386.sse"
    assert "commented_out" not in regs


def test_strip_xml_comments() -> None:
    assert strip_xml_comments("<!-- a -->\n<?xml?><x/><!--\nb\n-->") == "<?xml?><x/>"


def test_target_xml_include_cycle_is_an_error() -> None:
    docs = {"target.xml": '<target><xi:include href="target.xml"/></target>'}
    with pytest.raises(GdbProtocolError, match="deeper"):
        parse_target_xml(_fetcher(docs))


@pytest.mark.parametrize(
    "body",
    [
        '<feature><reg name="a"/></feature>',
        '<feature><reg bitsize="8"/></feature>',
        '<feature><reg name="a" bitsize="x"/></feature>',
        "<feature><reg",
    ],
)
def test_target_xml_malformed(body: str) -> None:
    with pytest.raises(GdbProtocolError):
        parse_target_xml(_fetcher({"target.xml": body}))


# -- register values -------------------------------------------------------------------


def test_little_endian_register_values() -> None:
    assert decode_le_hex(b"eb92a581ffffffff") == 0xFFFFFFFF81A592EB
    assert decode_le_hex("0100") == 1
    assert encode_le_hex(0xFFFFFFFF81A592EB, 64) == b"eb92a581ffffffff"
    assert encode_le_hex(0x286, 32) == b"86020000"
    xmm = 0x00112233445566778899AABBCCDDEEFF
    assert encode_le_hex(xmm, 128) == b"ffeeddccbbaa99887766554433221100"
    assert decode_le_hex(encode_le_hex(xmm, 128)) == xmm
    st0 = 0x3FFF_8000000000000000  # 1.0 as an x87 80-bit extended value
    assert encode_le_hex(st0, 80) == b"0000000000000080ff3f"
    assert decode_le_hex(b"0000000000000080ff3f") == st0


@pytest.mark.parametrize(("value", "bits"), [(-1, 64), (1 << 64, 64), (1 << 80, 80)])
def test_encode_le_hex_rejects_values_that_do_not_fit(value: int, bits: int) -> None:
    with pytest.raises(ValueError, match="fit"):
        encode_le_hex(value, bits)


def test_decode_le_hex_rejects_unavailable() -> None:
    with pytest.raises(ValueError):
        decode_le_hex(b"xxxxxxxx")


LAYOUT = (
    RegisterInfo("rax", 0, 64, "int64"),
    RegisterInfo("eflags", 1, 32, "int"),
    RegisterInfo("st0", 2, 80, "i387_ext"),
    RegisterInfo("xmm0", 3, 128, "vec128"),
)


def test_decode_registers() -> None:
    blob = (
        encode_le_hex(0x1122, 64)
        + encode_le_hex(0x246, 32)
        + encode_le_hex(0x3FFF_8000000000000000, 80)
        + encode_le_hex(1 << 127, 128)
    )
    assert decode_registers(blob, LAYOUT) == {
        "rax": 0x1122,
        "eflags": 0x246,
        "st0": 0x3FFF_8000000000000000,
        "xmm0": 1 << 127,
    }
    assert decode_registers(blob[:24], LAYOUT) == {"rax": 0x1122, "eflags": 0x246}


def test_decode_registers_skips_unavailable() -> None:
    blob = b"x" * 16 + encode_le_hex(0x246, 32)
    assert decode_registers(blob, LAYOUT) == {"eflags": 0x246}


# -- the client against a scripted stub ------------------------------------------------

FAKE_CORE = """<?xml version="1.0"?>
<feature name="org.gnu.gdb.i386.core">
  <reg name="rax" bitsize="64" type="int64"/>
  <reg name="rip" bitsize="64" type="code_ptr"/>
  <reg name="eflags" bitsize="32" type="int"/>
  <reg name="st0" bitsize="80" type="i387_ext"/>
  <reg name="xmm0" bitsize="128" type="vec128"/>
</feature>
"""
FAKE_TARGET = (
    '<target><architecture>i386:x86-64</architecture><xi:include href="core.xml"/></target>'
)
FAKE_SIZES = {0: 8, 1: 8, 2: 4, 3: 10, 4: 16}


class FakeStub:
    """A QEMU-like stub on the far end of a socketpair, run by a thread.

    It acknowledges packets, answers like QEMU 7.2 does, stops on ``\\x03`` while running,
    and can be told to misbehave (nack, corrupt, stay silent).
    """

    def __init__(self, sock: socket.socket, *, attach_stop: bool = True) -> None:
        self.sock = sock
        self.packets: list[bytes] = []
        self.acks = 0
        self.running = False
        self.regs = dict.fromkeys(FAKE_SIZES, 0)
        self.regs[1] = 0xFFFFFFFF81000000
        self.memory = bytearray(range(256)) * 64
        self.nack_next = 0
        self.corrupt_next = 0
        self.silent = False
        self.packet_size = 0x1000
        self.idle_steps = 0
        """Steps still to answer with nothing run (as QEMU 7.2 sometimes does)."""
        self.lock = threading.Lock()
        if attach_stop:
            self.send_packet(b"T02thread:01;")
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def send_packet(self, payload: bytes) -> None:
        self.sock.sendall(encode_packet(payload))

    def stop(self, payload: bytes = b"T05thread:01;") -> None:
        with self.lock:
            self.running = False
            self.send_packet(payload)

    def _serve(self) -> None:
        reader = FrameReader()
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            if self.running and data[:1] == b"\x03":
                self.stop(b"T02thread:01;")
                data = data[1:]
            reader.feed(data.replace(b"\x03", b""))
            while (frame := reader.next_frame()) is not None:
                if frame.kind is FrameKind.ACK:
                    self.acks += 1
                elif frame.kind is FrameKind.PACKET:
                    try:
                        self._packet(frame.payload)
                    except OSError:
                        return

    def _packet(self, payload: bytes) -> None:
        if self.nack_next:
            self.nack_next -= 1
            self.sock.sendall(b"-")
            return
        self.packets.append(payload)
        self.sock.sendall(b"+")
        if self.silent:
            return
        reply = self.answer(payload)
        if reply is None:
            return
        if self.corrupt_next:
            self.corrupt_next -= 1
            self.sock.sendall(b"$%s#00" % reply)
        self.send_packet(reply)

    def answer(self, payload: bytes) -> bytes | None:
        if payload == b"?":
            return b"T05thread:01;"
        if payload.startswith(b"qSupported"):
            return b"PacketSize=%x;qXfer:features:read+" % self.packet_size
        if payload.startswith(b"qXfer:features:read:"):
            annex, _, span = payload[len(b"qXfer:features:read:") :].partition(b":")
            text = (FAKE_TARGET if annex == b"target.xml" else FAKE_CORE).encode()
            offset_text, _, length_text = span.partition(b",")
            offset, length = int(offset_text, 16), int(length_text, 16)
            part = text[offset : offset + length]
            more = offset + length < len(text)
            return (b"m" if more else b"l") + escape_binary(part)
        if payload == b"g":
            return b"".join(encode_le_hex(self.regs[n], FAKE_SIZES[n] * 8) for n in FAKE_SIZES)
        if payload[:1] == b"p":
            number = int(payload[1:], 16)
            return encode_le_hex(self.regs[number], FAKE_SIZES[number] * 8)
        if payload[:1] == b"P":
            number_text, _, value = payload[1:].partition(b"=")
            number = int(number_text, 16)
            if len(value) != FAKE_SIZES[number] * 2:
                return b"E22"
            self.regs[number] = decode_le_hex(value)
            return b"OK"
        if payload[:1] == b"m":
            address_text, _, length_text = payload[1:].partition(b",")
            address, length = int(address_text, 16), int(length_text, 16)
            if length > self.packet_size // 2 or address + length > len(self.memory):
                return b"E22"
            return self.memory[address : address + length].hex().encode()
        if payload[:1] == b"M":
            head, _, data = payload[1:].partition(b":")
            address = int(head.partition(b",")[0], 16)
            raw = bytes.fromhex(data.decode())
            self.memory[address : address + len(raw)] = raw
            return b"OK"
        if payload.startswith(b"Qqemu."):
            return b"OK"
        if payload == b"qqemu.sstepbits":
            return b"ENABLE=1,NOIRQ=2,NOTIMER=4"
        if payload[:1] in (b"Z", b"z"):
            return b"OK"
        if payload.startswith(b"qRcmd,"):
            self.send_packet(b"O" + b"hello ".hex().encode())
            self.send_packet(b"O" + b"world\n".hex().encode())
            return b"OK"
        if payload == b"c":
            with self.lock:
                self.running = True
            return None
        if payload == b"s":
            if self.idle_steps:
                self.idle_steps -= 1
            else:
                self.regs[1] += 1
            return b"T05thread:01;"
        return b""


def _wait_for(condition: Callable[[], bool], timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.001)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    yield client, server
    client.close()
    server.close()


@pytest.fixture
def stub(pair: tuple[socket.socket, socket.socket]) -> FakeStub:
    return FakeStub(pair[1])


@pytest.fixture
def gdb(pair: tuple[socket.socket, socket.socket], stub: FakeStub) -> GdbStub:
    client = GdbStub(pair[0], reply_timeout_s=0.5)
    client.handshake(timeout_s=2.0)
    return client


def test_handshake_takes_the_attach_stop_and_reads_the_description(
    gdb: GdbStub, stub: FakeStub
) -> None:
    assert gdb.last_stop is not None
    assert gdb.last_stop.reason is StopReason.INTERRUPT
    assert gdb.architecture == "i386:x86-64"
    assert [r.name for r in gdb.registers.values()] == ["rax", "rip", "eflags", "st0", "xmm0"]
    assert not gdb.running
    assert stub.packets[0] == b"?"


def test_handshake_without_attach_stop(pair: tuple[socket.socket, socket.socket]) -> None:
    FakeStub(pair[1], attach_stop=False)
    stop = GdbStub(pair[0]).handshake(timeout_s=2.0)
    assert stop.raw == "T05thread:01;"


def test_handshake_reads_the_description_in_pieces(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    stub = FakeStub(pair[1])
    stub.packet_size = 0x100
    client = GdbStub(pair[0])
    client.handshake(timeout_s=2.0)
    assert len(client.registers) == 5
    assert sum(p.startswith(b"qXfer:features:read:core.xml:") for p in stub.packets) >= 2


def test_handshake_times_out_on_a_jammed_socket(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client = GdbStub(pair[0])
    started = time.monotonic()
    with pytest.raises(MachineTimeoutError) as caught:
        client.handshake(timeout_s=0.2)
    assert caught.value.timeout_s == 0.2
    assert time.monotonic() - started < 1.0


def test_registers_round_trip(gdb: GdbStub, stub: FakeStub) -> None:
    gdb.write_register("rax", 0xDEADBEEF)
    gdb.write_register("xmm0", (1 << 128) - 2)
    gdb.write_register("st0", 0x3FFF_8000000000000000, verify=True)
    assert gdb.read_register("rax") == 0xDEADBEEF
    assert stub.regs[4] == (1 << 128) - 2
    assert gdb.read_registers() == {
        "rax": 0xDEADBEEF,
        "rip": 0xFFFFFFFF81000000,
        "eflags": 0,
        "st0": 0x3FFF_8000000000000000,
        "xmm0": (1 << 128) - 2,
    }
    assert gdb.read_registers(["rip"]) == {"rip": 0xFFFFFFFF81000000}


def test_register_errors(gdb: GdbStub) -> None:
    with pytest.raises(KeyError):
        gdb.read_register("nope")
    with pytest.raises(ValueError, match="fit"):
        gdb.write_register("eflags", 1 << 32)


def test_replies_are_acknowledged(gdb: GdbStub, stub: FakeStub) -> None:
    before = stub.acks
    for _ in range(5):
        gdb.read_register("rax")
    # Each reply's acknowledgement travels with the next packet.
    assert stub.acks - before == 5


def test_nack_makes_the_client_resend(gdb: GdbStub, stub: FakeStub) -> None:
    stub.nack_next = 2
    assert gdb.read_register("rip") == 0xFFFFFFFF81000000
    assert stub.packets[-1] == b"p1"


def test_corrupt_reply_is_nacked_and_resent(gdb: GdbStub, stub: FakeStub) -> None:
    stub.corrupt_next = 1
    assert gdb.read_register("rip") == 0xFFFFFFFF81000000


def test_silent_stub_raises_machine_timeout(gdb: GdbStub, stub: FakeStub) -> None:
    stub.silent = True
    started = time.monotonic()
    with pytest.raises(MachineTimeoutError) as caught:
        gdb.read_register("rax")
    assert caught.value.timeout_s == 0.5
    assert time.monotonic() - started < 2.0


def test_memory_is_chunked(pair: tuple[socket.socket, socket.socket]) -> None:
    stub = FakeStub(pair[1])
    stub.packet_size = 0x100
    client = GdbStub(pair[0])
    client.handshake(timeout_s=2.0)
    data = client.read_memory(0x10, 3000, physical=True)
    assert data == bytes(stub.memory[0x10 : 0x10 + 3000])
    reads = [p for p in stub.packets if p.startswith(b"m")]
    assert len(reads) == -(-3000 // 0x80)
    client.write_memory(0x20, b"\xff" * 500, physical=True)
    assert stub.memory[0x20 : 0x20 + 500] == b"\xff" * 500
    assert sum(p.startswith(b"M") for p in stub.packets) > 1
    # The physical-memory switch is sent once, not per request.
    assert stub.packets.count(b"Qqemu.PhyMemMode:1") == 1
    client.read_memory(0, 1)
    assert stub.packets[-2:] == [b"Qqemu.PhyMemMode:0", b"m0,1"]


def test_memory_error_names_the_chunk(gdb: GdbStub) -> None:
    with pytest.raises(GdbError, match="at 0x10000") as caught:
        gdb.read_memory(0x10000, 16)
    assert caught.value.reply == "E22"


def test_commands_need_the_vm_halted(gdb: GdbStub, stub: FakeStub) -> None:
    gdb.cont()
    assert gdb.running
    _wait_for(lambda: stub.running)
    for call in (
        lambda: gdb.read_register("rax"),
        lambda: gdb.read_memory(0, 1),
        lambda: gdb.set_breakpoint(0x1000),
        gdb.step,
        gdb.cont,
    ):
        with pytest.raises(StateError) as caught:
            call()
        assert caught.value.state == "running"
        assert caught.value.required == "halted"
    assert gdb.wait_stop(timeout_s=0.05) is None
    assert gdb.poll_stop() is None
    stop = gdb.halt(timeout_s=1.0)
    assert stop.reason is StopReason.INTERRUPT
    assert not gdb.running
    assert gdb.halt() is stop  # already halted: no-op


def test_unsolicited_stop_is_returned(gdb: GdbStub, stub: FakeStub) -> None:
    gdb.cont()
    stub.stop(b"T8fthread:01;")
    stop = gdb.wait_stop(timeout_s=1.0)
    assert stop is not None
    assert stop.reason is StopReason.OTHER
    assert stop.signal == 143
    assert gdb.poll_stop() is stop


def test_breakpoint_stop_is_named_by_the_client(gdb: GdbStub, stub: FakeStub) -> None:
    gdb.set_breakpoint(0xFFFFFFFF81000000, hardware=True)
    stub.regs[1] = 0x1000
    gdb.cont()
    stub.regs[1] = 0xFFFFFFFF81000000
    stub.stop()
    stop = gdb.wait_stop(timeout_s=1.0)
    assert stop is not None
    assert stop.reason is StopReason.BREAKPOINT
    assert stop.breakpoint_kind is BreakpointKind.HARDWARE
    assert stop.pc == 0xFFFFFFFF81000000
    # Continuing from the breakpoint steps past it first (and checks the pc moved).
    gdb.cont()
    _wait_for(lambda: stub.packets[-1:] == [b"c"])
    assert stub.packets[-3:] == [b"s", b"p1", b"c"]


def test_continue_steps_again_when_a_step_ran_nothing(gdb: GdbStub, stub: FakeStub) -> None:
    at = 0xFFFFFFFF81000000
    gdb.set_breakpoint(at)
    stub.regs[1] = at
    stub.idle_steps = 2
    gdb.cont()
    _wait_for(lambda: stub.packets[-1:] == [b"c"])
    assert stub.packets.count(b"s") == 3
    assert stub.regs[1] == at + 1


def test_continue_gives_up_stepping_off_an_instruction_that_stays(
    gdb: GdbStub, stub: FakeStub
) -> None:
    at = 0xFFFFFFFF81000000
    gdb.set_breakpoint(at)
    stub.regs[1] = at
    stub.idle_steps = 1000  # an instruction that jumps to itself
    gdb.cont()
    _wait_for(lambda: stub.packets[-1:] == [b"c"])
    assert stub.packets.count(b"s") == 8


def test_watchpoint_stop(gdb: GdbStub, stub: FakeStub) -> None:
    gdb.set_watchpoint(0x2000, 8, kind=WatchKind.ACCESS)
    assert stub.packets[-1] == b"Z4,2000,8"
    gdb.cont()
    stub.stop(b"T05thread:01;awatch:2000;")
    stop = gdb.wait_stop(timeout_s=1.0)
    assert stop is not None
    assert (stop.reason, stop.watch_kind, stop.watch_address) == (
        StopReason.WATCHPOINT,
        WatchKind.ACCESS,
        0x2000,
    )
    gdb.remove_watchpoint(0x2000, 8, kind=WatchKind.ACCESS)
    assert stub.packets[-1] == b"z4,2000,8"


def test_step_sets_the_step_flags_once(gdb: GdbStub, stub: FakeStub) -> None:
    stop = gdb.step(count=3)
    assert stop.reason is StopReason.STEP
    assert stub.regs[1] == 0xFFFFFFFF81000003
    gdb.step()
    assert stub.packets.count(b"Qqemu.sstep=7") == 1


def test_monitor_collects_output(gdb: GdbStub, stub: FakeStub) -> None:
    assert gdb.monitor("info status") == "hello world\n"
    assert stub.packets[-1] == b"qRcmd," + b"info status".hex().encode()


def test_exit_and_closed_connection(gdb: GdbStub, stub: FakeStub) -> None:
    gdb.cont()
    stub.send_packet(b"W00")
    stub.sock.close()
    stop = gdb.wait_stop(timeout_s=1.0)
    assert stop is not None
    assert stop.reason is StopReason.EXITED
    assert not gdb.running
    with pytest.raises(StateError):
        gdb.read_register("rax")
    gdb.close()
    gdb.close()


def test_vm_resumed_behind_the_clients_back(gdb: GdbStub, stub: FakeStub) -> None:
    # The stub pauses the VM on the first byte and drops the packet, as QEMU does.
    original = stub.answer
    dropped: list[bytes] = []

    def answer_once_with_stop(payload: bytes) -> bytes | None:
        if not dropped:
            dropped.append(payload)
            return b"T02thread:01;"
        return original(payload)

    stub.answer = answer_once_with_stop  # type: ignore[method-assign]
    assert gdb.read_register("rip") == 0xFFFFFFFF81000000
    assert gdb.last_stop is not None
    assert gdb.last_stop.reason is StopReason.INTERRUPT
