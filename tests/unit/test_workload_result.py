"""Assembling a workload's result from the agent's frames."""

from __future__ import annotations

from vmfault.machine.channel import Frame
from vmfault.session import WorkloadResult


def _frames(*pairs: tuple[str, bytes]) -> list[Frame]:
    return [Frame(kind, payload) for kind, payload in pairs]


def test_normal_exit() -> None:
    result = WorkloadResult.from_frames(
        _frames(
            ("hello", b"vmfault-agent 1 6.1"),
            ("start", b"42"),
            ("out", b"checksum: "),
            ("out", b"0x1\n"),
            ("err", b"warn\n"),
            ("exit", b"exited 0 51000000"),
        )
    )
    assert result is not None
    assert result.stdout == b"checksum: 0x1\n"
    assert result.stderr == b"warn\n"
    assert (result.exit_code, result.signal, result.exit_status) == (0, None, 0)
    assert result.guest_duration_s == 0.051
    assert result.pid == 42


def test_killed_by_signal() -> None:
    result = WorkloadResult.from_frames(_frames(("start", b"9"), ("exit", b"signaled 11 1000")))
    assert result is not None
    assert result.signal == "SIGSEGV" and result.signal_number == 11
    assert result.exit_status == 139


def test_no_exit_frame_yet() -> None:
    assert WorkloadResult.from_frames(_frames(("start", b"9"), ("out", b"x"))) is None
