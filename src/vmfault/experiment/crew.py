"""Machines that run on threads of their own while the caller drives another one.

On a testbed of several machines the machines talk to each other (a network, console
scripts): each must keep running, its I/O read and its breakpoints answered, whatever the
others are doing. A `Crew` gives each machine it runs one thread, which alone touches that
machine until the crew is joined (a `Machine` is used by one thread at a time). A single
machine needs no crew.

`stop` asks the crew's work to end normally (daemons are stopped once the machines they
serve are done); `abort` asks it to end at once, its results to be thrown away (an
experiment that starts again from the snapshot, or a fault that could not be placed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

from vmfault.machine import Machine, RunEnd

__all__ = ["LOOK_S", "Crew", "free_run"]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

LOOK_S = 0.05
"""Host seconds a machine of a crew runs between two looks at the crew's events."""
JOIN_TIMEOUT_S = 60.0
"""How long joining waits for a thread that was told to end."""

T = TypeVar("T")


class Crew(Generic[T]):
    """Threads, one per machine, each running a piece of work that returns a `T`."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.abort = threading.Event()
        self._threads: dict[str, threading.Thread] = {}
        self._results: dict[str, T] = {}
        self._errors: list[BaseException] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._threads)

    def run(self, name: str, work: Callable[[], T]) -> None:
        """Start `work` on a thread of its own; its result is `name`'s."""

        def body() -> None:
            try:
                result = work()
            except BaseException as exc:
                with self._lock:
                    self._errors.append(exc)
                self.abort.set()  # the others have nothing more to wait for
                return
            with self._lock:
                self._results[name] = result

        thread = threading.Thread(target=body, name=f"vmfault-{name}", daemon=True)
        self._threads[name] = thread
        thread.start()

    def running(self) -> set[str]:
        """The names whose work has not returned yet."""
        return {name for name, thread in self._threads.items() if thread.is_alive()}

    def join(self) -> Mapping[str, T]:
        """Wait for every thread; their results by name. Raises the first error a piece of
        work raised (after every thread ended)."""
        for name, thread in self._threads.items():
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():
                self._errors.append(RuntimeError(f"the thread of machine {name} did not end"))
        self._threads.clear()
        if self._errors:
            error = self._errors[0]
            self._errors.clear()
            raise error
        results, self._results = self._results, {}
        return results

    def end(self) -> None:
        """Abort and join, dropping results and errors (cleanup on the way out)."""
        self.abort.set()
        try:
            self.join()
        except Exception:
            logger.debug("crew ended with an error", exc_info=True)


def free_run(vm: Machine, until: threading.Event, *, slice_s: float = LOOK_S) -> bool:
    """Let `vm` run (its I/O read, its console scripts going) until `until` is set, then
    leave it halted; False if it stopped on its own first (a breakpoint, QEMU gone)."""
    while not until.is_set():
        if not vm.alive:
            return False
        run = vm.run_for(slice_s)
        if run.end is not RunEnd.TIME:
            return False
    return True
