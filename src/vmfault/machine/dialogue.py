"""Console scripts: type text, wait for patterns and pause, on a machine's serial console.

A `Dialogue` is FAUmachine's experiment script, run from outside the guest: its steps
(`Send`, `Expect`, `Sleep`) go one after the other as a task on the machine's event loop,
so the script makes progress whenever the machine's I/O is pumped (any wait on the
machine: run control, console or channel waits), whichever thread pumps it. The console
bytes it waits for are the machine's transcript; what it types goes to the console socket.

Input typed on a console arrives in the guest at host times, so at guest times that differ
from run to run (and between deterministic runs too): a script's machine is repeatable only
as far as its script's timing allows. Timeouts and sleeps are host seconds.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from vmfault.errors import VmfaultError
from vmfault.machine.machine import Machine

__all__ = ["TAIL_LINES", "Dialogue", "DialogueState", "Expect", "Send", "Sleep", "Step"]

TAIL_LINES = 6
"""Console lines kept as the evidence of a step that failed."""
_POLL_S = 0.01
"""How often an `Expect` looks at new console output while it waits."""


@dataclass(frozen=True)
class Send:
    """Type `text` on the console (a newline ends a command line)."""

    text: str


@dataclass(frozen=True)
class Expect:
    """Wait until one of `patterns` (Python regular expressions) appears in the console
    output after the last match, at most `timeout_s` seconds."""

    patterns: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True)
class Sleep:
    """Pause `seconds`."""

    seconds: float


Step = Send | Expect | Sleep


class DialogueState(enum.StrEnum):
    """Where a dialogue stands."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Dialogue:
    """A script of console steps for one machine (see the module docstring).

    `start()` begins it from the console output to come (what the console shows later is
    what `Expect` sees); after the last step it types `finish`, if given. `failure`, once
    FAILED, says which step failed and why ("script step 2 timed out"), `tail` holds the
    last TAIL_LINES console lines then.
    """

    def __init__(self, vm: Machine, steps: Sequence[Step], *, finish: str | None = None) -> None:
        self.vm = vm
        self.steps = tuple(steps)
        self.finish = finish
        self.state = DialogueState.IDLE
        self.step = 0
        """The step under way (from 1); 0 before the first."""
        self.failure = ""
        self.tail = ""
        self._task: asyncio.Task[None] | None = None

    @property
    def ended(self) -> bool:
        """Whether the script is over (done or failed)."""
        return self.state in (DialogueState.DONE, DialogueState.FAILED)

    def start(self) -> None:
        """Begin again from the first step (a step under way is abandoned)."""
        self.cancel()
        self.state = DialogueState.RUNNING
        self.step = 0
        self.failure = self.tail = ""
        self._task = self.vm.spawn(self._run(self.vm.console.mark()))

    def cancel(self) -> None:
        """Abandon the script (call while the machine's loop does not run)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self.state is DialogueState.RUNNING:
            self.state = DialogueState.IDLE

    async def _run(self, cursor: int) -> None:
        loop = asyncio.get_running_loop()
        console = self.vm.console
        try:
            for number, step in enumerate(self.steps, 1):
                self.step = number
                if isinstance(step, Send):
                    self.vm.send_console(step.text.encode())
                elif isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                else:
                    deadline = loop.time() + step.timeout_s
                    while (found := console.search(step.patterns, since=cursor)) is None:
                        left = deadline - loop.time()
                        if left <= 0:
                            self._fail(f"script step {number} timed out ({step.timeout_s:g} s)")
                            return
                        await asyncio.sleep(min(_POLL_S, left))
                    cursor = found.end
            if self.finish:
                self.vm.send_console(self.finish.encode())
        except VmfaultError as exc:
            self._fail(f"script step {self.step} failed: {exc.one_line()}")
            return
        self.state = DialogueState.DONE

    def _fail(self, reason: str) -> None:
        lines = [line for line in self.vm.console.transcript().splitlines() if line.strip()]
        self.failure = reason
        self.tail = "\n".join(lines[-TAIL_LINES:])
        self.state = DialogueState.FAILED
