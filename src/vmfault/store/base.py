"""The results-store interface: what a campaign keeps, and the shape of its analysis rows.

A store holds one campaign: its identity and provenance, the golden run of each workload
command line, and one record per experiment (the experiment, its injections, its outcome).
`ResultStore` is the interface every backend implements; `COLUMNS` is the one flat row per
experiment that `rows()` yields and every export writes, in this order.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from vmfault.errors import VmfaultError
from vmfault.experiment.records import (
    DEFAULT_MACHINE,
    DISK_COLUMNS,
    ExperimentRecord,
    GoldenRun,
    Injection,
)

__all__ = [
    "COLUMNS",
    "COLUMN_NAMES",
    "CampaignInfo",
    "Column",
    "ColumnKind",
    "DuplicateExperiment",
    "ExperimentFilter",
    "ExperimentPage",
    "GoldenMismatchError",
    "ResultStore",
    "RowSource",
    "StoreError",
    "WorkerActivity",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


class StoreError(VmfaultError):
    """The store cannot do what was asked: it is closed, read-only, or the database failed."""


class DuplicateExperiment(StoreError):  # noqa: N818
    """An experiment id was recorded twice; the first record is kept unchanged."""

    def __init__(self, experiment_id: int) -> None:
        super().__init__(
            f"experiment {experiment_id} is already recorded",
            hint="record each experiment id once; `done_ids()` lists the recorded ones",
        )
        self.experiment_id = experiment_id


class GoldenMismatchError(StoreError):
    """A golden run differs from the one already stored for the same command line."""

    def __init__(self, argv: Sequence[str], fields: Sequence[str]) -> None:
        super().__init__(
            f"the golden run of {list(argv)} differs from the stored one in {', '.join(fields)}",
            hint="experiments already stored were classified against the stored golden run; "
            "use the same image and workload, or a new database",
        )
        self.argv = tuple(argv)
        self.fields = tuple(fields)


@dataclass(frozen=True)
class CampaignInfo:
    """The campaign a store holds, and the provenance recorded when it was created."""

    name: str
    seed: int
    spec_json: str
    """The campaign spec as JSON text, exactly as given to `create`."""
    file_sha256: str
    """SHA-256 (hex) of the campaign file."""
    created_at: str
    """UTC, ISO 8601 with offset, e.g. `2024-05-01T12:00:00.000+00:00`."""
    total_planned: int
    provenance: Mapping[str, str]
    """tool_version, qemu_version, image_hash, host, python, ... (read-only mapping)."""
    schema_version: int

    @property
    def spec(self) -> Any:
        """The campaign spec, parsed from `spec_json`."""
        return json.loads(self.spec_json)


ColumnKind = Literal["int", "float", "str", "bool"]


@dataclass(frozen=True)
class Column:
    """One column of the analysis row: its name, its value type, what it holds.

    Every column may be None. Hex columns (`mask`, `address`, `before`, ...) are `str`
    such as `0x1f`: values up to 128 bits wide (xmm registers) fit no integer column.
    """

    name: str
    kind: ColumnKind
    doc: str


COLUMNS: tuple[Column, ...] = (
    Column("experiment_id", "int", "the campaign's id of the experiment"),
    Column("stratum", "str", "the stratum the experiment was drawn for"),
    Column("seed", "int", "the seed the experiment's choices derive from"),
    Column("index", "int", "the experiment's index under its seed"),
    Column(
        "outcome",
        "str",
        "benign, sdc, detected, crash, hang, vmm-error, not-injected, infra-failure",
    ),
    Column("reason", "str", "one line on why the outcome was chosen"),
    Column("cause", "str", "crash cause (a crash pattern's cause, panic, reset, a signal)"),
    Column("evidence", "str", "the console line, event or output line behind the outcome"),
    Column("activation", "str", "not-activated, masked, manifested, unknown"),
    Column("latency_value", "int", "injection to crash or detection, in latency_unit"),
    Column("latency_unit", "str", "instructions, guest-ns or wall-ns"),
    Column("exit_status", "int", "the workload's exit status, if it reported one"),
    Column("signal", "str", "the signal that ended the workload (SIGSEGV), if any"),
    Column("injected", "bool", "the fault was placed and read back as written"),
    Column("injections", "int", "injections in the experiment; the columns below: the first"),
    Column("target", "str", "what was faulted: register, memory, ..."),
    Column("location", "str", "where, as text"),
    Column("register", "str", "the faulted register, if a register"),
    Column("address", "str", "guest-physical address (hex)"),
    Column("virtual", "str", "virtual address (hex)"),
    Column("width", "int", "width of the faulted location in bits"),
    Column("mask", "str", "the flipped bits (hex)"),
    Column("mode", "str", "how the mask was applied"),
    Column("before", "str", "value before the injection (hex)"),
    Column("after", "str", "value written (hex)"),
    Column("readback", "str", "value read back after writing (hex)"),
    Column("injection_reason", "str", "why the fault could not be placed, if it was not"),
    Column("trigger", "str", "the trigger spec"),
    Column("time_s", "float", "host seconds from the workload's start to the injection"),
    Column("instructions", "int", "guest instructions from the workload's start to the injection"),
    Column("rip", "str", "instruction pointer at the injection (hex)"),
    Column("user_mode", "bool", "the guest was in user mode at the injection"),
    Column(
        "progress",
        "float",
        "where the fault landed as a fraction (0..1) of the golden execution",
    ),
    Column("worker", "str", "the worker that ran the experiment"),
    Column("started_at", "float", "Unix time (s) the experiment started"),
    Column("finished_at", "float", "Unix time (s) the experiment finished"),
    Column("duration_s", "float", "finished_at - started_at"),
    Column("phases_json", "str", "host seconds per phase, as a JSON object"),
    Column("output", "str", "the workload's stdout (decoded, invalid bytes replaced)"),
    Column("stderr", "str", "the workload's stderr (decoded, invalid bytes replaced)"),
    Column("flips", "int", "storm experiments: the flips made; None for other experiments"),
    Column(
        "storm_s",
        "float",
        "storm experiments: guest seconds from the workload's start to the last flip",
    ),
    Column(
        "real_world_s",
        "float",
        "storm experiments: the real-world seconds a rate-model storm stands for",
    ),
    Column("machine", "str", "the machine of the testbed the (first) fault went to"),
    Column("judged", "str", "the machine whose outcome is the experiment's"),
    Column("machine_outcomes", "str", "every machine's outcome, as a JSON object"),
    Column("frames", "int", "frames that crossed the network in the experiment (a network)"),
    Column("frames_dropped", "int", "network faults: frames the fault dropped"),
    Column("frames_corrupted", "int", "network faults: frames the fault corrupted"),
    Column("frames_delayed", "int", "network faults: frames the fault held back"),
    Column("frames_duplicated", "int", "network faults: frames the fault delivered twice"),
    Column("frames_reordered", "int", "network faults: frames overtaken by later ones"),
    Column("traffic_json", "str", "frames per link direction (seen, delivered, ...), JSON"),
    Column("disk", "str", "disk faults: the disk's name; None for other experiments"),
    Column(
        "disk_fault",
        "str",
        "disk faults: bad-block, read-error, write-error, flush-error, latency, stall, corrupt",
    ),
    Column("sector_first", "int", "disk faults: the first faulted sector (None: every sector)"),
    Column("sector_last", "int", "disk faults: the last faulted sector (None: every sector)"),
    Column("errno", "str", "disk faults that fail requests: the errno they return"),
    Column(
        "requests_faulted",
        "int",
        "disk faults: requests failed, delayed or held (corrupt: reads of the corrupted bytes)",
    ),
)
"""The analysis row of one experiment, in column order."""

COLUMN_NAMES: tuple[str, ...] = tuple(column.name for column in COLUMNS)
if COLUMN_NAMES[-len(DISK_COLUMNS) :] != DISK_COLUMNS:
    raise AssertionError("the disk columns end the analysis row, in DISK_COLUMNS order")


@dataclass(frozen=True)
class ExperimentFilter:
    """Which experiments to list: each field given must match exactly (None: any).

    `machine` matches an experiment whose judged machine, or a machine one of its
    injections went to, has that name.
    """

    stratum: str | None = None
    outcome: str | None = None
    """An outcome class value (`crash`, `not-injected`, ...)."""
    cause: str | None = None
    machine: str | None = None

    def to_json(self) -> dict[str, str]:
        """The fields given, by name."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ExperimentPage:
    """One page of the experiments a filter matches: analysis rows (`COLUMNS`)."""

    filter: ExperimentFilter
    total: int
    """Experiments the filter matches in all."""
    offset: int
    limit: int
    rows: tuple[dict[str, object], ...]


@dataclass(frozen=True)
class WorkerActivity:
    """What one campaign worker has recorded so far (Unix times in seconds)."""

    worker: str
    experiments: int
    first_started_at: float
    last_finished_at: float
    mean_duration_s: float
    """Mean host seconds per experiment."""
    last_experiment: int
    """The id of the experiment it finished last."""
    last_outcome: str

    def to_json(self) -> dict[str, object]:
        """Plain data."""
        return dataclasses.asdict(self)


class RowSource(Protocol):
    """Anything that yields analysis rows (what an export needs)."""

    def rows(self) -> Iterator[dict[str, object]]:
        """One dict per experiment, keys exactly `COLUMN_NAMES` in order, by experiment id."""
        ...


class ResultStore(RowSource, Protocol):
    """One campaign's results. Writes are atomic: a record is stored whole or not at all.

    A store opened read-only raises StoreError from every writing method.
    """

    def campaign_info(self) -> CampaignInfo:
        """The campaign row and its provenance."""
        ...

    def save_golden(self, golden: GoldenRun) -> GoldenRun:
        """Store the golden run of its machine and argv once; returns the stored run (with
        `recorded_at`).

        The first golden run of a machine and argv is kept: saving one with the same stdout,
        stderr, exit status and signal again changes nothing; a different one raises
        GoldenMismatchError.
        """
        ...

    def golden(self, argv: Sequence[str], *, machine: str = DEFAULT_MACHINE) -> GoldenRun | None:
        """The stored golden run of `machine` running `argv`, or None."""
        ...

    def record(
        self,
        experiment_id: int,
        stratum: str,
        record: ExperimentRecord,
        *,
        worker: str,
        started_at: float,
        finished_at: float,
    ) -> None:
        """Store one experiment whole, committed before returning.

        DuplicateExperiment if `experiment_id` is already stored (the stored one is kept).
        """
        ...

    def forget_infra_failures(self) -> list[int]:
        """Delete the experiments given up as lost to the infrastructure (`infra-failure`),
        so that they run again; their ids."""
        ...

    def has(self, experiment_id: int) -> bool:
        """Whether `experiment_id` is recorded."""
        ...

    def done_ids(self) -> set[int]:
        """The recorded experiment ids."""
        ...

    def count(self) -> int:
        """How many experiments are recorded (not-injected ones included)."""
        ...

    def outcome_counts(self, *, stratum: str | None = None) -> dict[str, int]:
        """Experiments per outcome value, every Outcome present (zeros included), in enum order.

        Only those of `stratum` if given.
        """
        ...

    def counts_by_stratum(self) -> dict[str, dict[str, int]]:
        """`outcome_counts` of every recorded stratum, strata sorted by name."""
        ...

    def load(self, experiment_id: int) -> ExperimentRecord | None:
        """The stored record rebuilt (equal to the one recorded), or None if not recorded."""
        ...

    def injections(self, experiment_id: int) -> tuple[Injection, ...]:
        """Every injection of the experiment in order (empty if not recorded)."""
        ...

    def record_json(self, experiment_id: int) -> dict[str, Any] | None:
        """`load(experiment_id).to_json()`, or None."""
        ...

    def close(self) -> None:
        """Release the database; idempotent."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...
