"""A stand-in for `python -m vmfault.campaign.worker`: the same pipe protocol, no QEMU.

Run as `python fake_worker.py PLAN.json`. The plan says what to do per experiment id:
`kill` (a signal name: the process kills itself with it), `lost` (answer lost, as a
worker whose QEMU was killed from outside does), `hang` (never answer); with `once`, each
of these happens on the first attempt only (a marker file in `marks` remembers it).
Every other experiment is answered with a benign record.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import struct
import sys
import time
from pathlib import Path
from typing import IO, Any

from vmfault.classify import Outcome
from vmfault.experiment.records import (
    DEFAULT_MACHINE,
    ExperimentRecord,
    GoldenRun,
    Injection,
    MachineRun,
)

_LENGTH = struct.Struct("<I")
"""The framing of `vmfault.campaign.worker.write_message`, kept here so that this program
loads no more of vmfault than records (it starts fast; the setup is read, not unpickled)."""


def read_frame(stream: IO[bytes]) -> bytes:
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError
    (length,) = _LENGTH.unpack(header)
    data = stream.read(length)
    if len(data) < length:
        raise EOFError
    return data


def write_message(stream: IO[bytes], message: Any) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def main() -> None:
    plan = json.loads(Path(sys.argv[1]).read_text())
    marks = Path(plan["marks"])
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    read_frame(source)  # the WorkerSetup, not needed
    golden = GoldenRun(machine=DEFAULT_MACHINE, argv=("checksum",), stdout=b"ok\n", stderr=b"",
                       exit_code=0, signal=None, guest_s=0.5, host_s=0.01)  # fmt: skip
    write_message(sink, ("ready", {DEFAULT_MACHINE: golden}))
    while True:
        try:
            _, experiment_id, spec, seed, index = pickle.loads(read_frame(source))
        except EOFError:
            return
        key = str(experiment_id)
        mark = marks / f"{experiment_id}-{os.getpid()}"
        first = not any(marks.glob(f"{experiment_id}-*"))
        act = plan["once"] is False or first
        mark.touch()
        if key in plan["kill"] and act:
            os.kill(os.getpid(), signal.Signals[plan["kill"][key]])
        if key in plan["hang"] and act:
            time.sleep(3600)
        if key in plan["lost"] and act:
            write_message(sink, ("lost", experiment_id, "the QEMU of machine guest was killed"))
            continue
        injection = Injection(target=spec.target.spelling, machine=DEFAULT_MACHINE,
                              mode=spec.bits.mode.value, injected=True)  # fmt: skip
        run = MachineRun(
            machine=DEFAULT_MACHINE, outcome=Outcome.BENIGN, reason=f"pid {os.getpid()}"
        )
        spec_json = json.loads(json.dumps(spec.to_json()))
        record = ExperimentRecord(index=index, seed=seed, spec=spec_json,
                                  injections=(injection,), machines=(run,))  # fmt: skip
        now = time.time()
        write_message(sink, ("done", experiment_id, record, now, now))


if __name__ == "__main__":
    main()
