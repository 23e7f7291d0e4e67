"""A campaign worker: one long-lived testbed that runs the experiments it is sent.

Run as `python -m vmfault.campaign.worker` by the local executor, which talks to it over
its stdin and stdout with length-prefixed pickles (both ends are this package; nothing
else ever writes to those pipes). The worker is started tied to its coordinator
(PR_SET_PDEATHSIG), and its QEMU is tied to it, so a `kill -9` of the coordinator
leaves nothing running.

If a machine dies during an experiment, the worker boots a fresh testbed before taking
the next one. QEMU failing by itself (an exit status, a fatal signal such as SIGSEGV or
SIGABRT) makes the experiment `vmm-error`, with QEMU's end and the last lines of its stderr
as evidence; QEMU killed from outside (SIGKILL, SIGTERM, ...: the OOM killer, an operator,
the batch system) is no outcome of the fault: the experiment is answered `lost`, and the
executor runs it again.
"""

from __future__ import annotations

import dataclasses
import pickle
import signal
import struct
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import IO, Any

from vmfault.classify import CrashTable, qemu_evidence, signal_name
from vmfault.errors import RestoreMismatchError, UsageError, VmfaultError
from vmfault.experiment.pipeline import Experimenter, vmm_error_record
from vmfault.experiment.records import ExperimentRecord, GoldenRun
from vmfault.experiment.testbed import MachineSpec, RestoreMethod, StartState, Testbed
from vmfault.faults import FaultSpec
from vmfault.faults.units import DEFAULT_BUDGET_FACTOR, Budget
from vmfault.guest.image import load_image

__all__ = [
    "Answer",
    "Goldens",
    "LostError",
    "WorkerSetup",
    "job_timeout_s",
    "main",
    "make_start_state",
    "read_message",
    "same_goldens",
    "serve",
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


OUTSIDE_SIGNALS = frozenset({
    signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT,
})  # fmt: skip
"""Signals that end QEMU from outside (the OOM killer, an operator, the batch system),
never QEMU failing by itself; QEMU killed by one of them lost its experiment."""
QEMU_OUTPUT_MAX_CHARS = 4000
"""How much of the end of QEMU's own output a VMM error's evidence is taken from."""
JOB_TIMEOUT_MIN_S = 60.0
"""The shortest deadline of one experiment, host seconds."""


class LostError(VmfaultError):
    """The experiment was lost to the infrastructure, not to its fault (its QEMU killed
    from outside, its deadline passed, a fresh testbed would not boot): run it again."""


def same_goldens(first: Goldens, other: Goldens) -> bool:
    """Whether two workers' golden runs agree machine by machine (output and exit status)."""
    if first.keys() != other.keys():
        return False
    return all(
        (first[name].stdout, first[name].exit_status) == (other[name].stdout,
                                                          other[name].exit_status)
        for name in first
    )  # fmt: skip


def job_timeout_s(goldens: Iterable[Goldens], budget: Budget | float) -> float:
    """The deadline of one experiment: 20 hang budgets (golden runs: of the longest golden
    or restored run of any machine of any worker; or guest seconds), at least
    JOB_TIMEOUT_MIN_S (host seconds)."""
    if not isinstance(budget, Budget):
        budget = Budget(factor=budget)
    if budget.guest_s is not None:
        return max(JOB_TIMEOUT_MIN_S, 20 * budget.guest_s)
    longest = max(
        max((golden.host_s, *golden.restored_s)) for runs in goldens for golden in runs.values()
    )
    return max(JOB_TIMEOUT_MIN_S, 20 * budget.factor * longest)


class _Worker:
    """One long-lived testbed and the experiments run on it: the one place where a testbed
    is built, an experiment run, and a machine's failure turned into a record (`vmm-error`,
    QEMU failing under the fault) or into a LostError (the infrastructure's doing).

    Run by the worker processes of the local executor and of the Dask worker plugin alike.
    """

    def __init__(self, setup: WorkerSetup) -> None:
        self.setup = setup
        self.image = load_image(setup.image_root)
        table = None
        if setup.crash_patterns is not None:
            table = CrashTable.default().extended(CrashTable.load(setup.crash_patterns))
        self.table = table
        self.experimenter: Experimenter | None = None

    def boot(self) -> Goldens:
        """A fresh testbed: booted, snapshotted, golden runs taken; its golden runs."""
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
        """Experiment `index` of `spec` under `seed` on this worker's testbed (booted again
        first if a machine died). QEMU failing under the experiment makes a `vmm-error`
        record; LostError if the infrastructure lost it; UsageError for a fault the
        testbed cannot take."""
        if self.experimenter is None or not self.experimenter.testbed.alive:
            try:
                self.boot()
            except UsageError:
                raise
            except VmfaultError as exc:
                self.close()
                raise LostError(f"a fresh testbed did not boot: {exc.one_line()}") from exc
        assert self.experimenter is not None
        failure = ""
        try:
            record = self.experimenter.run(spec, seed=seed, index=index)
        except (UsageError, RestoreMismatchError):
            raise
        except VmfaultError as exc:  # the machine failed under us: replace it
            failure = exc.one_line()
        lost, evidence = self._machines_end()
        if lost or failure:
            self.close()
        if lost:
            raise LostError(lost)
        if failure:
            reason = f"the VMM failed during the experiment: {failure}"
            machine = spec.machine or self.setup.judge or self.setup.machines[0].name
            return vmm_error_record(spec, seed=seed, index=index, reason=reason,
                                    machine=machine, evidence=evidence)  # fmt: skip
        return record

    def _machines_end(self) -> tuple[str, str]:
        """(why the experiment was lost, or ""; QEMU's evidence of a machine that died, or
        ""). A QEMU that died is reaped here, its exit status kept."""
        if self.experimenter is None:
            return "", ""
        for machine in self.experimenter.testbed:
            vm = machine.vm
            if vm.alive or vm.pid is None:
                continue
            output = vm.qemu_output or _tail(vm.qemu_log)
            vm.close()  # QEMU is dead: this reaps it and keeps its exit status
            code = vm.exit_code
            if code is not None and code < 0 and -code in OUTSIDE_SIGNALS:
                return (
                    f"the QEMU of machine {machine.name} was killed by {signal_name(-code)} "
                    "from outside (the OOM killer, an operator or the batch system)",
                    "",
                )
            return "", qemu_evidence(code, output)
        return "", ""

    def close(self) -> None:
        """Destroy the testbed (every QEMU reaped); safe to call more than once."""
        if self.experimenter is not None:
            self.experimenter.close()
            self.experimenter = None


def _tail(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - QEMU_OUTPUT_MAX_CHARS))
            return stream.read().decode(errors="replace")
    except OSError:
        return ""


Answer = tuple[Any, ...]
"""A worker's answer for one experiment: `("done", id, record, started, finished)` (Unix
seconds), `("lost", id, reason)`, `("usage-error", id, message)` or `("fatal", id,
message)` (a restore that did not put the machine back: the campaign must stop)."""


def serve(worker: _Worker, experiment_id: int, spec: FaultSpec, seed: int, index: int) -> Answer:
    """Run one experiment on `worker` and answer for it (never raises for the machine)."""
    started = time.time()
    try:
        record = worker.run(spec, seed, index)
    except UsageError as exc:
        return ("usage-error", experiment_id, exc.one_line())
    except LostError as exc:
        return ("lost", experiment_id, exc.one_line())
    except RestoreMismatchError as exc:
        return ("fatal", experiment_id, exc.one_line())
    return ("done", experiment_id, record, started, time.time())


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
            answer = serve(worker, experiment_id, spec, seed, index)
            write_message(sink, answer)
            if answer[0] in ("usage-error", "fatal"):
                return
    except KeyboardInterrupt:
        return
    finally:
        worker.close()


if __name__ == "__main__":
    main()
