"""The GDB remote serial protocol as pure values and functions: no sockets, no clocks.

Framing (``$payload#cs``, ``+``/``-`` acknowledgements, run-length encoding), binary
escapes, stop replies, target description XML and little-endian register values.
`vmfault.machine.gdbstub` drives these over one socket.
"""

from __future__ import annotations

import binascii
import enum
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from xml.parsers import expat

from vmfault.errors import GdbError, GdbProtocolError

__all__ = [
    "BreakpointKind",
    "Frame",
    "FrameKind",
    "FrameReader",
    "RegisterInfo",
    "StopReason",
    "StopReply",
    "TargetDescription",
    "WatchKind",
    "checksum",
    "decode_le_hex",
    "decode_registers",
    "decode_rle",
    "encode_le_hex",
    "encode_packet",
    "escape_binary",
    "is_error_reply",
    "parse_qxfer_reply",
    "parse_stop_reply",
    "parse_supported",
    "parse_target_xml",
    "strip_xml_comments",
    "unescape_binary",
]

_DOLLAR = 0x24
_HASH = 0x23
_STAR = 0x2A
_BRACE = 0x7D
_PLUS = 0x2B
_MINUS = 0x2D
_ESCAPE_XOR = 0x20

# GDB's own signal numbers that QEMU's system-mode stub reports (gdbstub.c, GDB_SIGNAL_*).
_SIGINT = 2
_SIGQUIT = 3
_SIGTRAP = 5


class WatchKind(enum.Enum):
    """Which accesses a watchpoint stops on."""

    WRITE = "write"
    READ = "read"
    ACCESS = "access"

    @property
    def z_type(self) -> int:
        """The type number of the ``Z``/``z`` packet that sets this watchpoint."""
        return _WATCH_Z_TYPES[self]

    @property
    def stop_key(self) -> str:
        """The key that names this kind in a ``T`` stop reply (``watch``, ``rwatch``, ...)."""
        return _WATCH_STOP_KEYS[self]


_WATCH_Z_TYPES = {WatchKind.WRITE: 2, WatchKind.READ: 3, WatchKind.ACCESS: 4}
_WATCH_STOP_KEYS = {WatchKind.WRITE: "watch", WatchKind.READ: "rwatch", WatchKind.ACCESS: "awatch"}
_WATCH_BY_STOP_KEY = {key: kind for kind, key in _WATCH_STOP_KEYS.items()}


class BreakpointKind(enum.Enum):
    """A software (``Z0``) or hardware (``Z1``) breakpoint."""

    SOFTWARE = "software"
    HARDWARE = "hardware"

    @property
    def z_type(self) -> int:
        """The type number of the ``Z``/``z`` packet that sets this breakpoint."""
        return 0 if self is BreakpointKind.SOFTWARE else 1


_BREAK_BY_STOP_KEY = {"swbreak": BreakpointKind.SOFTWARE, "hwbreak": BreakpointKind.HARDWARE}


class StopReason(enum.Enum):
    """Why the target stopped, as far as the stop reply (and the client) can tell."""

    BREAKPOINT = "breakpoint"
    """A breakpoint fired; `StopReply.breakpoint_kind` says which kind."""
    WATCHPOINT = "watchpoint"
    """A watchpoint fired; `StopReply.watch_address` and `watch_kind` say which."""
    STEP = "step"
    """A single step completed."""
    TRAP = "trap"
    """SIGTRAP without detail: a breakpoint or step the reply alone cannot tell apart."""
    INTERRUPT = "interrupt"
    """SIGINT: the VM was paused (a client interrupt, QMP ``stop``, a new gdb connection)."""
    SHUTDOWN = "shutdown"
    """SIGQUIT: QEMU's report of its shutdown run state (a power-off that pauses the VM)."""
    EXITED = "exited"
    """A ``W`` reply: the target is gone with an exit status."""
    TERMINATED = "terminated"
    """An ``X`` reply: the target is gone, killed by a signal."""
    OTHER = "other"
    """Any other signal, e.g. 143 (GDB_SIGNAL_UNKNOWN), QEMU's report of guest-panicked."""

    @property
    def is_final(self) -> bool:
        """True if the target is gone and no command will work any more."""
        return self in (StopReason.EXITED, StopReason.TERMINATED)


_REASON_BY_SIGNAL = {
    _SIGINT: StopReason.INTERRUPT,
    _SIGQUIT: StopReason.SHUTDOWN,
    _SIGTRAP: StopReason.TRAP,
}


@dataclass(frozen=True, slots=True)
class StopReply:
    """A parsed stop reply (``T``, ``S``, ``W`` or ``X`` packet).

    `signal` is GDB's signal number (0 for ``W``); `exit_status` is set only for ``W``.
    `pc` and `breakpoint_kind` are filled in by the client when it can tell which of its
    breakpoints fired; the stop reply of QEMU 7.2 itself never names them.
    """

    kind: str
    signal: int
    reason: StopReason
    thread: str | None = None
    watch_address: int | None = None
    watch_kind: WatchKind | None = None
    breakpoint_kind: BreakpointKind | None = None
    pc: int | None = None
    exit_status: int | None = None
    fields: tuple[tuple[str, str], ...] = ()
    raw: str = ""


@dataclass(frozen=True, slots=True)
class RegisterInfo:
    """One register of the target description.

    `bitsize` is in bits; `type` is the description's type name (``int64``, ``code_ptr``,
    ``i387_ext``, ``vec128`` ...); `group` is None when the description names none.
    """

    name: str
    regnum: int
    bitsize: int
    type: str
    group: str | None = None
    feature: str | None = None

    @property
    def size(self) -> int:
        """The register's size in bytes (as sent in ``p``/``g`` replies)."""
        return (self.bitsize + 7) // 8


@dataclass(frozen=True, slots=True)
class TargetDescription:
    """What a target.xml (with its includes) describes: registers in document order."""

    architecture: str | None
    registers: tuple[RegisterInfo, ...]
    features: tuple[str, ...]


class FrameKind(enum.Enum):
    """What one unit of the byte stream from a stub is."""

    ACK = "+"
    NACK = "-"
    PACKET = "$"
    CORRUPT = "!"
    """A packet whose checksum or framing is wrong: answer it with ``-``."""


@dataclass(frozen=True, slots=True)
class Frame:
    """An acknowledgement, or a packet with its payload (run-length encoding expanded)."""

    kind: FrameKind
    payload: bytes = b""


_ACK_FRAME = Frame(FrameKind.ACK)
_NACK_FRAME = Frame(FrameKind.NACK)


def checksum(data: bytes | bytearray) -> int:
    """The protocol checksum: the sum of the bytes modulo 256."""
    return sum(data) & 0xFF


def encode_packet(payload: bytes) -> bytes:
    """Frame a payload as ``$payload#cs``.

    Raises ValueError if the payload holds ``$``, ``#`` or ``*``, which the stub would take
    for framing or run-length encoding: binary data goes through `escape_binary` first
    (whose ``}`` escapes are the only ``}`` a payload may hold).
    """
    if b"$" in payload or b"#" in payload or b"*" in payload:
        raise ValueError(f"unescaped framing byte in payload {payload[:40]!r}")
    return b"$%s#%02x" % (payload, sum(payload) & 0xFF)


def escape_binary(data: bytes) -> bytes:
    """Escape ``} # $ *`` as ``}`` followed by the byte XOR 0x20, for binary payloads."""
    if not any(b in data for b in (b"}", b"#", b"$", b"*")):
        return data
    # `}` first, so the escapes added afterwards are not escaped again.
    return (
        data.replace(b"}", b"}]")
        .replace(b"#", b"}\x03")
        .replace(b"$", b"}\x04")
        .replace(b"*", b"}\x0a")
    )


def unescape_binary(data: bytes) -> bytes:
    """Undo `escape_binary`. Raises GdbProtocolError on a trailing lone ``}``."""
    index = data.find(b"}")
    if index < 0:
        return data
    out = bytearray()
    start = 0
    while index >= 0:
        if index + 1 >= len(data):
            raise GdbProtocolError("binary data ends with a lone escape byte", reply=_text(data))
        out += data[start:index]
        out.append(data[index + 1] ^ _ESCAPE_XOR)
        start = index + 2
        index = data.find(b"}", start)
    out += data[start:]
    return bytes(out)


def decode_rle(data: bytes) -> bytes:
    """Expand run-length encoding: ``X*n`` repeats X a further ``ord(n) - 29`` times.

    Raises GdbProtocolError on a ``*`` with nothing before it or no count after it.
    """
    index = data.find(b"*")
    if index < 0:
        return data
    out = bytearray()
    start = 0
    while index >= 0:
        out += data[start:index]
        if not out or index + 1 >= len(data):
            raise GdbProtocolError("malformed run-length encoding", reply=_text(data))
        repeat = data[index + 1] - 29
        if repeat < 0:
            raise GdbProtocolError("negative run-length count", reply=_text(data))
        out += bytes((out[-1],)) * repeat
        start = index + 2
        index = data.find(b"*", start)
    out += data[start:]
    return bytes(out)


class FrameReader:
    """Splits the byte stream from a stub into frames; feed bytes, then take frames.

    Bytes outside a frame (neither ``+``, ``-`` nor a ``$`` packet) are dropped and counted
    in `discarded`.
    """

    __slots__ = ("_buf", "discarded")

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded = 0

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)

    def clear(self) -> None:
        """Forget everything buffered."""
        self._buf.clear()

    def next_frame(self) -> Frame | None:
        """The next complete frame, or None if more bytes are needed."""
        buf = self._buf
        while buf:
            first = buf[0]
            if first == _DOLLAR:
                end = buf.find(b"#", 1)
                if end < 0 or len(buf) < end + 3:
                    return None
                body = bytes(buf[1:end])
                digits = bytes(buf[end + 1 : end + 3])
                del buf[: end + 3]
                try:
                    expected = int(digits, 16)
                except ValueError:
                    return Frame(FrameKind.CORRUPT, body)
                if sum(body) & 0xFF != expected:
                    return Frame(FrameKind.CORRUPT, body)
                if b"*" in body:
                    try:
                        body = decode_rle(body)
                    except GdbProtocolError:
                        return Frame(FrameKind.CORRUPT, body)
                return Frame(FrameKind.PACKET, body)
            if first == _PLUS:
                del buf[0]
                return _ACK_FRAME
            if first == _MINUS:
                del buf[0]
                return _NACK_FRAME
            # Skip to the next byte that can start a frame.
            skip = len(buf)
            for marker in (b"$", b"+", b"-"):
                found = buf.find(marker)
                if 0 < found < skip:
                    skip = found
            self.discarded += skip
            del buf[:skip]
        return None


def is_error_reply(payload: bytes) -> bool:
    """True for an ``Exx`` error reply (two hex digits)."""
    return (
        len(payload) == 3
        and payload[0] == 0x45
        and all(c in b"0123456789abcdefABCDEF" for c in payload[1:])
    )


def parse_stop_reply(payload: bytes | str) -> StopReply:
    """Parse a ``T``, ``S``, ``W`` or ``X`` stop reply.

    ``T`` replies carry ``key:value;`` pairs: ``thread``, ``watch``/``rwatch``/``awatch``
    (address in hex), ``swbreak``/``hwbreak``; all pairs are kept in `fields`.
    Raises GdbProtocolError for anything else.
    """
    try:
        text = payload if isinstance(payload, str) else payload.decode("ascii")
    except UnicodeDecodeError as exc:
        raise GdbProtocolError("stop reply is not ASCII", reply=repr(payload)) from exc
    if not text:
        raise GdbProtocolError("empty stop reply", reply=text)
    kind = text[0]
    try:
        if kind in "ST":
            signal = int(text[1:3], 16)
            if len(text) < 3:
                raise ValueError(text)
            reason = _REASON_BY_SIGNAL.get(signal, StopReason.OTHER)
            if kind == "S":
                return StopReply(kind=kind, signal=signal, reason=reason, raw=text)
            return _parse_t_fields(text, signal, reason)
        if kind in "WX":
            number_text, _, rest = text[1:].partition(";")
            number = int(number_text, 16)
            fields = tuple(_split_pairs(rest))
            if kind == "W":
                return StopReply(
                    kind=kind,
                    signal=0,
                    reason=StopReason.EXITED,
                    exit_status=number,
                    fields=fields,
                    raw=text,
                )
            return StopReply(
                kind=kind, signal=number, reason=StopReason.TERMINATED, fields=fields, raw=text
            )
    except ValueError as exc:
        raise GdbProtocolError(f"malformed stop reply {text!r}", reply=text) from exc
    raise GdbProtocolError(f"not a stop reply: {text!r}", reply=text)


def _parse_t_fields(text: str, signal: int, reason: StopReason) -> StopReply:
    thread: str | None = None
    watch_address: int | None = None
    watch_kind: WatchKind | None = None
    breakpoint_kind: BreakpointKind | None = None
    fields = tuple(_split_pairs(text[3:]))
    for key, value in fields:
        if key == "thread":
            thread = value
        elif key in _WATCH_BY_STOP_KEY:
            watch_kind = _WATCH_BY_STOP_KEY[key]
            watch_address = int(value, 16)
            reason = StopReason.WATCHPOINT
        elif key in _BREAK_BY_STOP_KEY:
            breakpoint_kind = _BREAK_BY_STOP_KEY[key]
            reason = StopReason.BREAKPOINT
    return StopReply(
        kind="T",
        signal=signal,
        reason=reason,
        thread=thread,
        watch_address=watch_address,
        watch_kind=watch_kind,
        breakpoint_kind=breakpoint_kind,
        fields=fields,
        raw=text,
    )


def _split_pairs(text: str) -> Iterable[tuple[str, str]]:
    for item in text.split(";"):
        if item:
            key, _, value = item.partition(":")
            yield key, value


def parse_supported(payload: bytes) -> dict[str, str | bool]:
    """Parse a ``qSupported`` reply: ``name=value`` to str, ``name+``/``name-`` to bool."""
    features: dict[str, str | bool] = {}
    for item in _text(payload).split(";"):
        if not item:
            continue
        if "=" in item:
            name, _, value = item.partition("=")
            features[name] = value
        elif item[-1] in "+-":
            features[item[:-1]] = item[-1] == "+"
        else:
            features[item] = True
    return features


def parse_qxfer_reply(payload: bytes, *, request: str = "") -> tuple[bytes, bool]:
    """Parse a ``qXfer`` read reply into (data, more): ``m`` means more follows, ``l`` last.

    Raises GdbError on an error or empty (unsupported) reply.
    """
    if not payload:
        raise GdbError("qXfer is not supported by the stub", request=request, reply="")
    lead = payload[:1]
    if lead in (b"m", b"l"):
        return unescape_binary(payload[1:]), lead == b"m"
    raise GdbError(f"qXfer read failed: {_text(payload)!r}", request=request, reply=_text(payload))


_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)


def strip_xml_comments(text: str) -> str:
    """Remove ``<!-- ... -->`` comments (and the whitespace they leave at the start)."""
    return _COMMENT_RE.sub("", text).lstrip()


def parse_target_xml(
    fetch: Callable[[str], str], annex: str = "target.xml", *, max_depth: int = 8
) -> TargetDescription:
    """Parse a target description, following ``xi:include`` through `fetch(annex) -> text`.

    Registers without a ``regnum`` take the previous number plus one, counting from 0 across
    all included documents in document order, as GDB does. Raises GdbProtocolError on
    malformed XML, a missing ``name``/``bitsize``, or includes nested deeper than `max_depth`
    (which also catches include cycles).
    """
    state = _XmlState()
    _parse_xml_document(fetch, annex, state, depth=0, max_depth=max_depth)
    return TargetDescription(
        architecture=state.architecture,
        registers=tuple(state.registers),
        features=tuple(state.features),
    )


class _XmlState:
    __slots__ = ("architecture", "features", "in_architecture", "next_regnum", "registers")

    def __init__(self) -> None:
        self.architecture: str | None = None
        self.in_architecture = False
        self.registers: list[RegisterInfo] = []
        self.features: list[str] = []
        self.next_regnum = 0


def _parse_xml_document(
    fetch: Callable[[str], str], annex: str, state: _XmlState, *, depth: int, max_depth: int
) -> None:
    if depth > max_depth:
        raise GdbProtocolError(f"target description includes nest deeper than {max_depth}")
    text = strip_xml_comments(fetch(annex))
    # Plain expat without namespace processing: QEMU's target.xml uses the `xi:` prefix
    # without declaring it, which a namespace-aware parser rejects as an unbound prefix.
    parser = expat.ParserCreate()
    feature_stack: list[str | None] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        if tag == "reg":
            state.registers.append(_register_from_attrs(attrs, state, feature_stack, annex))
        elif tag == "feature":
            name = attrs.get("name")
            feature_stack.append(name)
            if name is not None:
                state.features.append(name)
        elif tag == "architecture":
            state.in_architecture = True
            state.architecture = ""
        elif tag == "include" or tag.endswith(":include"):
            href = attrs.get("href")
            if not href:
                raise GdbProtocolError(f"xi:include without href in {annex}")
            _parse_xml_document(fetch, href, state, depth=depth + 1, max_depth=max_depth)

    def end(tag: str) -> None:
        if tag == "feature" and feature_stack:
            feature_stack.pop()
        elif tag == "architecture":
            state.in_architecture = False
            if state.architecture is not None:
                state.architecture = state.architecture.strip()

    def chars(data: str) -> None:
        if state.in_architecture and state.architecture is not None:
            state.architecture += data

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        raise GdbProtocolError(f"malformed target description {annex}: {exc}") from exc


def _register_from_attrs(
    attrs: dict[str, str], state: _XmlState, feature_stack: list[str | None], annex: str
) -> RegisterInfo:
    name = attrs.get("name")
    bitsize = attrs.get("bitsize")
    if not name or not bitsize:
        raise GdbProtocolError(f"register without name or bitsize in {annex}: {attrs}")
    try:
        regnum = int(attrs["regnum"]) if "regnum" in attrs else state.next_regnum
        bits = int(bitsize)
    except ValueError as exc:
        raise GdbProtocolError(f"bad register number or size in {annex}: {attrs}") from exc
    state.next_regnum = regnum + 1
    return RegisterInfo(
        name=name,
        regnum=regnum,
        bitsize=bits,
        type=attrs.get("type", "int"),
        group=attrs.get("group"),
        feature=feature_stack[-1] if feature_stack else None,
    )


def decode_le_hex(text: bytes | str) -> int:
    """A target-order (little-endian) hex register value as an unsigned int.

    Raises ValueError on non-hex text, including ``xx`` (value unavailable).
    """
    try:
        return int.from_bytes(binascii.unhexlify(text), "little")
    except binascii.Error as exc:
        raise ValueError(f"not a hex register value: {text!r}") from exc


def encode_le_hex(value: int, bitsize: int) -> bytes:
    """An unsigned int as target-order (little-endian) hex of `bitsize` bits.

    Raises ValueError if the value is negative or does not fit.
    """
    if value < 0 or value >> bitsize:
        raise ValueError(f"value {value:#x} does not fit in {bitsize} bits")
    return binascii.hexlify(value.to_bytes((bitsize + 7) // 8, "little"))


def decode_registers(blob: bytes, layout: Sequence[RegisterInfo]) -> dict[str, int]:
    """Split a ``g`` reply into register values, walking `layout` (sorted by regnum).

    Registers past the end of the blob are left out, and so are registers the stub marks
    unavailable (``xx``). Raises ValueError on other non-hex text.
    """
    if b"x" in blob:
        return _decode_registers_with_gaps(blob, layout)
    try:
        raw = binascii.unhexlify(blob)
    except binascii.Error as exc:
        raise ValueError(f"register block is not hex: {blob[:40]!r}") from exc
    values: dict[str, int] = {}
    offset = 0
    end = len(raw)
    from_bytes = int.from_bytes
    for reg in layout:
        size = (reg.bitsize + 7) >> 3
        if offset + size > end:
            break
        values[reg.name] = from_bytes(raw[offset : offset + size], "little")
        offset += size
    return values


def _decode_registers_with_gaps(blob: bytes, layout: Sequence[RegisterInfo]) -> dict[str, int]:
    values: dict[str, int] = {}
    offset = 0
    end = len(blob)
    for reg in layout:
        width = reg.size * 2
        if offset + width > end:
            break
        chunk = blob[offset : offset + width]
        offset += width
        if b"x" not in chunk:
            values[reg.name] = decode_le_hex(chunk)
    return values


def _text(data: bytes) -> str:
    return data.decode("latin-1")
