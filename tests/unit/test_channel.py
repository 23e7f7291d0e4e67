"""The debugcon frame parser: framing, split delivery, resynchronisation after garbage."""

from __future__ import annotations

from vmfault.machine.channel import Channel, Frame, FrameParser, encode_frame


def test_frames_in_one_chunk() -> None:
    parser = FrameParser()
    data = encode_frame("hello", b"vmfault-agent 1 6.1") + encode_frame("idle", b"")
    frames = parser.feed(data, now_s=1.0)
    assert [(f.kind, f.payload) for f in frames] == [
        ("hello", b"vmfault-agent 1 6.1"),
        ("idle", b""),
    ]
    assert parser.garbage == 0


def test_frames_split_at_every_byte() -> None:
    parser = FrameParser()
    payload = bytes(range(256)) + b"\n@out 3\nxyz"  # binary payload that looks like a header
    data = encode_frame("out", payload) + encode_frame("exit", b"exited 0 5")
    frames: list[Frame] = []
    for byte in data:
        frames += parser.feed(bytes([byte]), now_s=0.0)
    assert [f.kind for f in frames] == ["out", "exit"]
    assert frames[0].payload == payload
    assert frames[1].text == "exited 0 5"


def test_resynchronises_after_garbage() -> None:
    parser = FrameParser()
    data = b"\x00\xff@@junk@x 99999999999\n" + encode_frame("start", b"42")
    frames = parser.feed(data, now_s=0.0)
    assert [(f.kind, f.text) for f in frames] == [("start", "42")]
    assert parser.garbage > 0


def test_oversized_length_is_not_a_frame() -> None:
    parser = FrameParser()
    frames = parser.feed(b"@out 999999999\n" + encode_frame("exit", b"exited 1 0"), now_s=0.0)
    assert [f.kind for f in frames] == ["exit"]


def test_reset_drops_partial_frame() -> None:
    parser = FrameParser()
    assert parser.feed(b"@out 10\nabc", now_s=0.0) == []
    parser.reset()
    assert [f.kind for f in parser.feed(encode_frame("idle", b""), now_s=0.0)] == ["idle"]


def test_channel_wait_uses_pump_and_finds_kind() -> None:
    fed = [encode_frame("start", b"7"), encode_frame("exit", b"exited 0 1")]

    def pump(done: object, timeout_s: float | None) -> bool:
        assert callable(done)
        while fed:
            channel.feed(fed.pop(0))
            if done():
                return True
        return bool(done())

    channel = Channel(pump)
    seen: list[str] = []
    channel.add_listener(lambda frame: seen.append(frame.kind))
    frame = channel.wait("exit", timeout_s=1.0)
    assert frame is not None and frame.text == "exited 0 1"
    assert seen == ["start", "exit"]
    assert channel.wait("hello", timeout_s=0.0) is None
    channel.clear()
    assert channel.frames == []
