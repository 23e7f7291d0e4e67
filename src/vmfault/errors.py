"""The exception tree of vmfault: every error carries fields, not only text.

`VmfaultError` is the root. Errors a user can fix (bad input, missing setup) are
`UsageError`s: the CLI prints them as one line with their hint and exits with status 2.
"""

from __future__ import annotations

__all__ = [
    "GdbError",
    "GdbProtocolError",
    "ImageError",
    "LaunchError",
    "MachineError",
    "MachineTimeoutError",
    "QMPError",
    "RestoreMismatchError",
    "SnapshotError",
    "StateError",
    "UsageError",
    "VmfaultError",
]


class VmfaultError(Exception):
    """Root of every error vmfault raises on purpose.

    `hint` says what to do about it, in one sentence, or is empty.
    """

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        """The message and hint joined into one line, for a terminal."""
        text = " ".join(self.message.split())
        if self.hint:
            text += f" ({' '.join(self.hint.split())})"
        return text


class UsageError(VmfaultError):
    """Bad input or missing setup that the user can fix; the CLI exits with status 2."""


class ImageError(VmfaultError):
    """A guest image could not be built or is not usable."""


class MachineError(VmfaultError):
    """The virtual machine or its QEMU process failed or misbehaved."""


class LaunchError(MachineError):
    """QEMU did not start or did not reach the point it was launched for.

    Carries the command line, the exit code (None if it still ran) and QEMU's own output.
    """

    def __init__(
        self,
        message: str,
        *,
        argv: list[str],
        exit_code: int | None,
        output: str,
        hint: str = "",
    ) -> None:
        super().__init__(message, hint=hint)
        self.argv = argv
        self.exit_code = exit_code
        self.output = output


class StateError(MachineError):
    """A call was made in a state that does not allow it."""

    def __init__(self, message: str, *, state: str, required: str) -> None:
        super().__init__(message)
        self.state = state
        self.required = required


class MachineTimeoutError(MachineError):
    """Something awaited from the machine did not happen within its timeout."""

    def __init__(self, message: str, *, timeout_s: float) -> None:
        super().__init__(message)
        self.timeout_s = timeout_s


class QMPError(MachineError):
    """A QMP command failed; `command` names it."""

    def __init__(self, message: str, *, command: str) -> None:
        super().__init__(message)
        self.command = command


class GdbError(MachineError):
    """The gdbstub refused a request (an `Exx` reply) or answered it unexpectedly."""

    def __init__(self, message: str, *, request: str = "", reply: str = "") -> None:
        super().__init__(message)
        self.request = request
        self.reply = reply


class GdbProtocolError(GdbError):
    """Bytes on the gdbstub socket did not follow the remote serial protocol."""


class SnapshotError(MachineError):
    """A snapshot could not be saved, restored or verified."""


class RestoreMismatchError(SnapshotError):
    """A restored machine's state differs from its snapshot: results after it could not be
    trusted, so a campaign stops instead of going on."""
