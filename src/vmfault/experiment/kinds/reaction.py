"""What QEMU itself did under a fault aimed at it (device and VMM faults): the lines it
logged from the injection on, a device it marked broken, its death and the signal of it.

Any of them makes the experiment `vmm-error`, with QEMU's words as the evidence; the
guest's own outcome is kept in the injection (`guest_outcome`, `guest_reason`), since a
guest may hang or crash because its device stopped answering.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vmfault.classify import EVIDENCE_MAX_CHARS, Classification, Outcome, signal_name
from vmfault.experiment.kinds.base import Injected
from vmfault.experiment.records import DeviceInjection, VmmInjection
from vmfault.machine import Machine

__all__ = ["QemuLog", "react"]

REACTION_LINES = 3
"""Lines of what QEMU logged kept as the evidence of its reaction."""
LOG_READ_MAX_BYTES = 64 * 1024
"""How much of what QEMU logged in one experiment is read at most."""


class QemuLog:
    """QEMU's own output (stderr) from a mark on."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.mark = 0

    def start(self, vm: Machine) -> None:
        """Mark the end of what QEMU has logged so far."""
        self.path = vm.qemu_log
        try:
            self.mark = 0 if self.path is None else self.path.stat().st_size
        except OSError:
            self.mark = 0

    def lines(self) -> list[str]:
        """The non-empty lines QEMU logged since the mark, whitespace folded."""
        if self.path is None:
            return []
        try:
            with self.path.open("rb") as stream:
                stream.seek(self.mark)
                data = stream.read(LOG_READ_MAX_BYTES)
        except OSError:
            return []
        text = data.decode(errors="replace")
        return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def react(
    injected: Injected,
    verdict: Classification,
    *,
    vm: Machine,
    logged: list[str],
    broken: str = "",
) -> tuple[Classification, Injected]:
    """The verdict and injections once QEMU's reaction is known: QEMU dead (already
    `vmm-error`) gets its signal as the cause; lines QEMU logged or a device it marked
    `broken` (its name) turn any guest outcome into `vmm-error` with them as evidence;
    the first injection keeps the guest's outcome and QEMU's words."""
    first = injected.injections[0]
    if verdict.outcome is Outcome.NOT_INJECTED or not isinstance(
        first, DeviceInjection | VmmInjection
    ):
        return verdict, injected
    guest_outcome: str | None = verdict.outcome.value
    guest_reason = verdict.reason
    words = " | ".join(logged[-REACTION_LINES:])
    if verdict.outcome is Outcome.VMM_ERROR:
        guest_outcome, guest_reason = None, ""  # the guest died with its QEMU
        code = vm.exit_code
        cause = verdict.cause
        if code is not None and code < 0:
            cause = signal_name(-code)
        elif code is not None:
            cause = f"exit-{code}"
        verdict = dataclasses.replace(verdict, cause=cause)
        reaction = verdict.evidence
    elif words or broken:
        parts = [f"QEMU: {words}"] if words else []
        if broken:
            parts.append(f"QEMU marked {broken} broken")
        reaction = "; ".join(parts)[:EVIDENCE_MAX_CHARS]
        first_words = logged[0] if logged else f"{broken} stopped answering"
        verdict = Classification(
            Outcome.VMM_ERROR,
            f"QEMU reacted to the fault: {first_words}"[:EVIDENCE_MAX_CHARS],
            cause="device-broken" if broken else "qemu-error",
            evidence=reaction,
        )
    else:
        reaction = ""
    done = dataclasses.replace(
        first, reaction=reaction, guest_outcome=guest_outcome, guest_reason=guest_reason
    )
    return verdict, dataclasses.replace(injected, injections=(done, *injected.injections[1:]))
