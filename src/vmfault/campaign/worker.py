"""A campaign worker: one long-lived testbed that runs the experiments it is sent.

Run as `python -m vmfault.campaign.worker` by the local executor, which talks to it over
its stdin and stdout with length-prefixed pickles (both ends are this package; nothing
else ever writes to those pipes). The worker is started tied to its coordinator
(PR_SET_PDEATHSIG), and its QEMU is tied to it, so a `kill -9` of the coordinator
leaves nothing running.

If a machine dies during an experiment, that experiment is recorded as `vmm-error` and
the worker boots a fresh testbed before taking the next one.
"""

from __future__ import annotations

import dataclasses
import pickle
import struct
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from vmfault.classify import CrashTable
from vmfault.errors import RestoreMismatchError, UsageError, VmfaultError
from vmfault.experiment.pipeline import Experimenter, vmm_error_record
from vmfault.experiment.records import ExperimentRecord, GoldenRun
from vmfault.experiment.testbed import MachineSpec, RestoreMethod, StartState, Testbed
from vmfault.faults import FaultSpec
from vmfault.faults.units import DEFAULT_BUDGET_FACTOR, Budget
from vmfault.guest.image import load_image

__all__ = [
    "Goldens",
    "WorkerSetup",
    "main",
    "make_start_state",
    "read_message",
    "write_message",
]

_LENGTH = struct.Struct("<I")


Goldens = Mapping[str, GoldenRun]
"""A worker's golden runs, by machine name."""


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """Everything a worker needs to build its testbed and experimenter. With `start_state`,
    the testbed's machines are clones of the campaign's templates (no boot)."""

    image_root: Path
    machines: tuple[MachineSpec, ...]
    judge: str | None = None
    budget_factor: float | Budget = DEFAULT_BUDGET_FACTOR
    """The hang budget: golden runs, or a `Budget` (guest seconds)."""
    network: bool = False
    """Whether the machines are joined by vmfault's network."""
    crash_patterns: Path | None = None
    name: str = "worker"
    restore: RestoreMethod = RestoreMethod.TEMPLATE
    start_state: StartState | None = None


def make_start_state(setup: WorkerSetup, directory: Path) -> StartState:
    """Boot the machines of `setup` once, save their RAM templates in `directory` (the
    caller removes it when its workers are done), and time their golden runs on clones:
    what every worker of this host starts from."""
    image = load_image(setup.image_root)
    testbed = Testbed(image, setup.machines, judge=setup.judge, network=setup.network,
                      template_dir=directory)  # fmt: skip
    with testbed:
        return testbed.start_state()


def write_message(stream: IO[bytes], message: Any) -> None:
    """Send one message (a picklable object) and flush."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def read_message(stream: IO[bytes]) -> Any:
    """Receive one message; EOFError at the end of the stream."""
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError
    return pickle.loads(data)  # noqa: S301 (our own worker pipe)


class _Worker:
    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self.image = load_image(setup.image_root)
        table = None
        if setup.crash_patterns is not None:
            table = CrashTable.default().extended(CrashTable.load(setup.crash_patterns))
        self.table = table
        self.experimenter: Experimenter | None = None

    def boot(self) -> Goldens:
        self.close()
        setup = self.setup
        testbed = Testbed(self.image, setup.machines, judge=setup.judge, network=setup.network,
                          restore=setup.restore, start_state=setup.start_state)  # fmt: skip
        experimenter = Experimenter(
            testbed, budget_factor=self.setup.budget_factor, crash_table=self.table
        )
        self.experimenter = experimenter
        return dict(experimenter.start())

    def run(self, spec: FaultSpec, seed: int, index: int) -> ExperimentRecord:
        if self.experimenter is None or not self.experimenter.testbed.alive:
            self.boot()
        assert self.experimenter is not None
        try:
            return self.experimenter.run(spec, seed=seed, index=index)
        except (UsageError, RestoreMismatchError):
            raise
        except VmfaultError as exc:  # the machine failed under us: replace it
            reason = f"the VMM failed during the experiment: {exc.one_line()}"
            self.close()
            machine = spec.machine or self.setup.judge or self.setup.machines[0].name
            return vmm_error_record(spec, seed=seed, index=index, reason=reason, machine=machine)

    def close(self) -> None:
        if self.experimenter is not None:
            self.experimenter.close()
            self.experimenter = None


def main() -> None:
    """Serve experiments until stdin closes."""
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # nothing but messages may reach the pipe
    setup: WorkerSetup = read_message(source)
    worker = _Worker(setup)
    try:
        try:
            golden = worker.boot()
        except VmfaultError as exc:
            write_message(sink, ("failed", exc.one_line()))
            return
        write_message(sink, ("ready", golden))
        while True:
            try:
                message = read_message(source)
            except EOFError:
                return
            _, experiment_id, spec, seed, index = message
            started = time.time()
            try:
                record = worker.run(spec, seed, index)
            except UsageError as exc:
                write_message(sink, ("usage-error", experiment_id, exc.one_line()))
                return
            except RestoreMismatchError as exc:
                write_message(sink, ("fatal", experiment_id, exc.one_line()))
                return
            write_message(sink, ("done", experiment_id, record, started, time.time()))
    except KeyboardInterrupt:
        return
    finally:
        worker.close()


if __name__ == "__main__":
    main()
