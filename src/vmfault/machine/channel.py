"""The low-intrusion guest-to-host channel: framed records over QEMU's isa-debugcon port.

A guest program writes frames to I/O port 0xe9; QEMU forwards every byte to a socket
that vmfault reads, outside the guest. A frame is `@KIND LENGTH\\n` followed by exactly
LENGTH payload bytes. It needs no guest driver and never touches the serial console, so
a result still arrives when a fault garbles the console or the console is flooded.

The parser is pure and resynchronises on the next `@` after bytes that do not form a frame.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

__all__ = ["Channel", "Frame", "FrameParser", "encode_frame"]

_HEADER = re.compile(rb"@([a-z][a-z0-9_-]{0,31}) (\d{1,9})\n")
_MAX_PAYLOAD = 1 << 20


@dataclass(frozen=True)
class Frame:
    """One record from the guest. `host_time_s` is `time.monotonic()` when it was parsed."""

    kind: str
    payload: bytes
    host_time_s: float = field(default=0.0, compare=False)

    @property
    def text(self) -> str:
        """The payload decoded as UTF-8 (undecodable bytes replaced)."""
        return self.payload.decode("utf-8", errors="replace")


def encode_frame(kind: str, payload: bytes) -> bytes:
    """The bytes a guest sends for one frame (used by tests and host-side tools)."""
    return b"@%s %d\n" % (kind.encode(), len(payload)) + payload


class FrameParser:
    """Turns a byte stream into frames; bytes outside any frame are counted as `garbage`."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.garbage = 0

    def feed(self, data: bytes, *, now_s: float | None = None) -> list[Frame]:
        """Add bytes; returns the frames completed by them, in order."""
        self._buf += data
        stamp = time.monotonic() if now_s is None else now_s
        return list(self._drain(stamp))

    def _drain(self, stamp: float) -> Iterator[Frame]:
        buf = self._buf
        while buf:
            at = buf.find(b"@")
            if at < 0:
                self.garbage += len(buf)
                buf.clear()
                return
            if at:
                self.garbage += at
                del buf[:at]
            newline = buf.find(b"\n", 0, 48)
            if newline < 0:
                if len(buf) >= 48:  # no header fits: this `@` is noise
                    self.garbage += 1
                    del buf[:1]
                    continue
                return
            header = _HEADER.fullmatch(bytes(buf[: newline + 1]))
            if header is None or int(header.group(2)) > _MAX_PAYLOAD:
                self.garbage += 1
                del buf[:1]
                continue
            length = int(header.group(2))
            end = newline + 1 + length
            if len(buf) < end:
                return
            payload = bytes(buf[newline + 1 : end])
            del buf[:end]
            yield Frame(header.group(1).decode(), payload, stamp)

    def reset(self) -> None:
        """Forget a partial frame (after a snapshot restore rewinds the guest)."""
        self._buf.clear()


class Channel:
    """Frames received from the guest, with waiting through the machine's I/O pump."""

    def __init__(self, pump: Callable[[Callable[[], bool], float | None], bool]) -> None:
        self._parser = FrameParser()
        self._pump = pump
        self.frames: list[Frame] = []
        self._listeners: list[Callable[[Frame], None]] = []

    def feed(self, data: bytes) -> None:
        """Bytes from the debugcon socket (called by the machine's I/O loop)."""
        for frame in self._parser.feed(data):
            self.frames.append(frame)
            for listener in self._listeners:
                listener(frame)

    @property
    def garbage(self) -> int:
        """Bytes that did not belong to any frame (a sign of a faulty guest writer)."""
        return self._parser.garbage

    def add_listener(self, listener: Callable[[Frame], None]) -> None:
        """Call `listener(frame)` for every frame from now on."""
        self._listeners.append(listener)

    def clear(self) -> None:
        """Drop received frames and any partial one."""
        self.frames.clear()
        self._parser.reset()

    def find(self, kind: str, *, since: int = 0) -> Frame | None:
        """The first frame of `kind` at index >= `since`, without waiting."""
        for frame in self.frames[since:]:
            if frame.kind == kind:
                return frame
        return None

    def wait(
        self, kinds: str | tuple[str, ...], *, timeout_s: float | None, since: int = 0
    ) -> Frame | None:
        """Wait for a frame whose kind is in `kinds`; None on timeout."""
        wanted = (kinds,) if isinstance(kinds, str) else kinds
        found: list[Frame] = []

        def done() -> bool:
            for frame in self.frames[since:]:
                if frame.kind in wanted:
                    found.append(frame)
                    return True
            return False

        self._pump(done, timeout_s)
        return found[0] if found else None
