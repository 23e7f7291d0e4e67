"""Campaign files: what a campaign injects, into which workload, how many times.

A campaign file is TOML with a `[campaign]` table, a `[guest]` table and one or more
`[[faults]]` tables; each fault family is a stratum of the campaign:

    [campaign]
    name = "checksum-registers"
    seed = 1
    experiments = 500        # or: margin = 0.03 (and confidence = 0.95), sized per stratum
    workers = 2

    [guest]
    workload = "checksum"    # a built-in name, or a .c file or static binary beside this file
    deterministic = false
    # cflags = "-O0"         # a .c workload only: gcc flags after vmfault's own
    # arch = "aarch64"       # the guest architecture (default x86_64); names the registers

    [[faults]]
    target = "register:gpr"
    bits = 1                 # an int: that many random bits; a string: the bits grammar
    trigger = "time"

Guest disks are `[[guest.disks]]` tables (name, and size or image), faulted by families
with `target = "disk:KIND"`.

Several machines in one experiment are `[[machine]]` tables instead of `[guest]`:

    [campaign]
    judge = "client"         # whose outcome is the experiment's (default: the worst)
    budget = "20s"           # a guest duration, or a number of golden runs

    [[machine]]
    name = "server"
    workload = "netecho"
    args = ["--serve"]
    daemon = true            # runs until the others are done, then is stopped

    [[machine]]
    name = "client"
    script = [               # a shell on its console, driven by these steps
      { send = "until wget -q -O - http://server/; do sleep 0.2; done\n" },
      { expect = "hello", timeout = "10s" },
    ]

Two or more machines are joined by a network (`[campaign] network = false` leaves them
apart); a `[guest]` table beside `[[machine]]` tables only gives their defaults
(`deterministic`, `accel`, `crash_patterns`).

An isolation campaign has an `[isolation]` table beside two or more `[[machine]]` tables:
faults go into the other machines, and the `control` machine must keep to its golden run
(any difference is an isolation violation, a vmm-error) at the same speed (its runtimes
under faults against `baseline`, a share of fault-free experiments interleaved at random,
equivalent within `margin`):

    [isolation]
    control = "control"      # a [[machine]] name
    margin = 0.05            # runtime equivalence margin, as a ratio
    baseline = 0.25          # share of experiments run with no fault

Where the experiments run is `executor` in `[campaign]` (`local`, `dask` with a `[dask]`
table's `scheduler`, or `slurm` with a `[slurm]` table: queue, account, walltime, cores,
memory, jobs, job_extra_directives; see `vmfault.campaign.cluster`).

`load_campaign` reports every mistake as one `UsageError` line naming the file, the key
(`faults[0].bits`), what is wrong, the value found and what is allowed.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

import annotated_types
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails, PydanticCustomError

from vmfault.arch import DEFAULT_ARCH, DISKS, MACHINES, Arch
from vmfault.errors import UsageError
from vmfault.experiment.records import BASELINE_STRATUM, DEFAULT_MACHINE
from vmfault.faults.model import (
    BitModel,
    Context,
    FaultSpec,
    OptionError,
    Target,
    Trigger,
    TriggerKind,
)
from vmfault.faults.schedule import RateUnit, Schedule
from vmfault.faults.units import Budget, parse_duration_s
from vmfault.guest.workloads import (
    SourceKind,
    UserWorkload,
    builtin_workload_names,
    cflags_not_compiled,
    disk_required,
    parse_cflags,
    validate_workload_name,
)
from vmfault.machine.config import Accel
from vmfault.machine.dialogue import Expect, Send, Sleep, Step
from vmfault.machine.disks import (
    DISK_NAME,
    GuestDisk,
    fresh_disk,
    image_disk,
    parse_size,
)

__all__ = [
    "CampaignSection",
    "CampaignSpec",
    "DaskSection",
    "DiskEntry",
    "ExecutorName",
    "FaultFamily",
    "GuestSection",
    "IsolationSection",
    "MachineSection",
    "ScriptStep",
    "SlurmSection",
    "campaign_json_schema",
    "load_campaign",
]

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True)
_GUEST_ARCH: contextvars.ContextVar[Arch] = contextvars.ContextVar(
    "guest_arch", default=DEFAULT_ARCH
)
"""The guest architecture the fault families of the campaign being validated name."""
_LOADER_FIELDS = frozenset({"source", "file_sha256"})
_SCHEMA_HINT = "run `vmfault campaign schema` to see every key and its type"
_ERROR_KIND = "vmfault"
_BASE_DIR = "base_dir"
_SHOWN_VALUE_MAX_CHARS = 60
_INSTRUCTION = "instruction"
_STORM = "storm"
_STRATUM_KEYS = frozenset({"name", "experiments"})
_SECTOR = 512
_UNKNOWN_SIZE = 1 << 62
"""The size of a disk image not looked at (a stored spec): no sector lies outside it."""
"""The keys of a `[[faults]]` table about the stratum; the others are fault options."""


def _error(message: str, *, hint: str = "", at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    """A validation error carrying a vmfault message, its hint and a key path below the model."""
    return PydanticCustomError(
        _ERROR_KIND, "{message}", {"message": message, "hint": hint, "at": at}
    )


def _from_usage(error: UsageError, *, at: tuple[str | int, ...] = ()) -> PydanticCustomError:
    return _error(error.message, hint=error.hint, at=at)


def _positive_duration(value: str | None, what: str, hint: str) -> str | None:
    """`value` unchanged if it is None or a duration longer than 0; else a validation error."""
    if value is not None:
        try:
            if parse_duration_s(value) <= 0:
                raise UsageError(f"{what} must be longer than 0", hint=hint)
        except UsageError as error:
            raise _from_usage(error) from None
    return value


def _base_dir(info: ValidationInfo) -> Path | None:
    """The campaign file's directory, when the loader validates a file (paths are then checked)."""
    context = info.context
    if isinstance(context, dict):
        base = context.get(_BASE_DIR)
        if isinstance(base, Path):
            return base
    return None


def _resolve(base: Path | None, text: str) -> Path:
    path = Path(text).expanduser()
    if base is None or path.is_absolute():
        return path
    return base / path


class ExecutorName(StrEnum):
    """Where a campaign's experiments run."""

    LOCAL = "local"
    """Worker processes on this machine (the default)."""
    DASK = "dask"
    """The workers of an existing Dask cluster (`[dask] scheduler` or `--scheduler`)."""
    SLURM = "slurm"
    """Dask workers in SLURM jobs, submitted by the campaign (`[slurm]`)."""


class DaskSection(BaseModel):
    """The `[dask]` table: the Dask cluster a `dask` campaign runs on."""

    model_config = _MODEL_CONFIG

    scheduler: str | None = Field(
        default=None, pattern=r"^(tcp|tls|ucx)://\S+$", description="tcp://HOST:PORT"
    )


class SlurmSection(BaseModel):
    """The `[slurm]` table: the SLURM jobs of a `slurm` campaign (dask-jobqueue's
    SLURMCluster). Each job runs `cores` Dask workers, one testbed each, in `memory` in
    all; the campaign asks for `jobs` jobs."""

    model_config = _MODEL_CONFIG

    cores: StrictInt = Field(ge=1, le=1024, description="workers (testbeds) per job")
    memory: str = Field(pattern=r"^\d+(\.\d+)?\s*[KMGT]i?B?$", description="per job, e.g. 8GB")
    walltime: str = Field(
        pattern=r"^(\d+-)?\d{1,2}(:\d{2}){1,2}$", description="per job, e.g. 02:00:00"
    )
    jobs: StrictInt = Field(ge=1, le=10_000, description="SLURM jobs to run")
    queue: str | None = Field(default=None, min_length=1, description="the partition")
    account: str | None = Field(default=None, min_length=1)
    job_extra_directives: tuple[str, ...] = Field(
        default=(), description='more #SBATCH lines, e.g. ["--qos=long"]'
    )
    interface: str | None = Field(
        default=None, min_length=1, description="network interface of the Dask workers, e.g. ib0"
    )


class CampaignSection(BaseModel):
    """The `[campaign]` table: identity, size and pace of the campaign.

    Exactly one of `experiments` (a total, shared by the fault families that do not set
    their own) and `margin` (each stratum sized for that margin of error at `confidence`)
    is set. `budget` is the hang budget: a number of golden-run durations, or a guest
    duration (`"20s"`; networks need one: TCP recovers a lost segment only after a
    retransmission timeout). `judge` names the `[[machine]]` whose outcome is the
    experiment's (default: the worst across machines); `network` joins the machines by
    vmfault's network (default: when there are two or more). `restore` is how machines go
    back to the snapshot for each experiment: `template` (clones of a RAM template,
    milliseconds; the default) or `loadvm` (QEMU's internal snapshots, the fallback).
    """

    model_config = _MODEL_CONFIG

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    seed: StrictInt = 0
    experiments: Annotated[StrictInt, Field(ge=1)] | None = None
    margin: Annotated[StrictFloat, Field(gt=0, lt=0.5)] | None = None
    confidence: StrictFloat = Field(default=0.95, ge=0.5, le=0.9999)
    workers: StrictInt = Field(default=1, ge=1, le=64)
    stop_early: StrictBool = False
    budget: StrictFloat | str = Field(
        default=2.0, description="golden runs (a number above 1) or a guest duration: 20s"
    )
    judge: str | None = Field(default=None, description="the machine whose outcome counts")
    network: StrictBool | None = Field(
        default=None, description="join the machines by a network (default: 2 or more)"
    )
    restore: Literal["template", "loadvm"] = "template"
    executor: ExecutorName = ExecutorName.LOCAL

    @field_validator("budget", mode="before")
    @classmethod
    def _valid_budget(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, float | str):
            try:
                budget = Budget.parse(value)
            except UsageError as error:
                raise _from_usage(error) from None
            if budget.guest_s is None and not budget.factor > 1:
                raise _error(
                    "out of range",
                    hint='allowed: budget > 1 (golden runs), or a guest duration such as "20s"',
                )
        return value

    @property
    def hang_budget(self) -> Budget:
        """The budget as the engine takes it."""
        return Budget.parse(self.budget)

    @model_validator(mode="after")
    def _one_size(self) -> Self:
        if self.experiments is not None and self.margin is not None:
            raise _error(
                f"give experiments or margin, not both "
                f"(got experiments = {self.experiments}, margin = {self.margin})",
                hint="a fixed count, or a margin of error that sizes each stratum",
            )
        if self.experiments is None and self.margin is None:
            raise _error(
                "missing experiments or margin",
                hint="set experiments = N, or margin = 0.03 (with confidence) to size each stratum",
            )
        if self.stop_early and self.margin is None:
            raise _error(
                "stop_early needs margin",
                hint="set margin = 0.03 (the half-width to stop at) instead of experiments",
                at=("stop_early",),
            )
        return self


class DiskEntry(BaseModel):
    """One `[[guest.disks]]` table: a virtio disk of the guest (vda, vdb, ... in order).

    `size` makes a fresh zeroed disk (`"64M"`); `image` puts the disk over a raw or qcow2
    image (relative to the campaign file), which is never written. The guest's workload
    finds it as /dev/disk/by-id/virtio-NAME.
    """

    model_config = _MODEL_CONFIG

    name: str = Field(pattern=DISK_NAME.pattern, description="the disk's name (its virtio serial)")
    size: str | None = Field(default=None, description="a fresh zeroed disk of this size: 64M")
    image: str | None = Field(default=None, description="a raw or qcow2 image, never written")

    _size_bytes: int | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _size_or_image(self, info: ValidationInfo) -> Self:
        if (self.size is None) == (self.image is None):
            raise _error(
                "give size or image, not both"
                if self.size is not None
                else "missing size (or image)",
                hint='size = "64M" for a fresh disk, or image = "disk.qcow2"',
                at=("image" if self.image is not None else "size",),
            )
        try:
            if self.size is not None:
                self._size_bytes = fresh_disk(self.name, parse_size(self.size)).size_bytes
                return self
            base = _base_dir(info)
            if base is not None and self.image is not None:
                self._size_bytes = image_disk(self.name, _resolve(base, self.image)).size_bytes
        except UsageError as error:
            raise _from_usage(error, at=("size" if self.size is not None else "image",)) from None
        return self

    @property
    def size_bytes(self) -> int | None:
        """The disk's size in bytes (None for an image not looked at: a stored spec)."""
        return self._size_bytes


class GuestSection(BaseModel):
    """The `[guest]` table: the workload and how the machine runs it.

    `workload` is a built-in name or a path (a `.c` file or a static binary) relative to the
    campaign file; the file's stem names the workload and must not be a built-in name.
    Instead of a workload, `idle = "2s"` runs the idle system for that long (only the kernel
    and its idle tasks; failures are panics, oopses and hangs).
    `crash_patterns` is a TOML crash-pattern table, relative to the campaign file.
    `cflags` are gcc flags for a `.c` workload, after vmfault's own (so an `-O` level of
    theirs replaces the default `-O2`): one string split as a shell would (`shlex.split`,
    no shell runs it) or an array of strings; kept split, so the stored spec shows them.
    """

    model_config = _MODEL_CONFIG

    workload: str | None = None
    idle: str | None = Field(
        default=None, description="no workload: the idle system for this long, e.g. 2s"
    )
    args: tuple[str, ...] = ()
    cflags: Annotated[
        tuple[str, ...],
        WithJsonSchema(
            {
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                "description": 'gcc flags for a .c workload, e.g. "-O0 -fno-inline"',
            }
        ),
    ] = ()
    deterministic: StrictBool = False
    accel: Accel = Accel.TCG
    crash_patterns: str | None = None
    arch: Arch = Field(
        default=DEFAULT_ARCH,
        description="the guest architecture: x86_64 (-M microvm) or aarch64 (-M virt)",
    )
    disks: tuple[DiskEntry, ...] = ()

    @property
    def builtin(self) -> bool:
        """Whether the workload is a built-in one (the idle system counts as one)."""
        return self.workload is None or self.workload in builtin_workload_names()

    @property
    def idle_s(self) -> float | None:
        """Seconds of the idle system, or None with a workload."""
        return None if self.idle is None else parse_duration_s(self.idle)

    @field_validator("idle")
    @classmethod
    def _valid_idle(cls, value: str | None) -> str | None:
        return _positive_duration(value, "the idle time", 'e.g. "2s"')

    @property
    def runs_something(self) -> bool:
        """Whether the table gives a workload or the idle system (else it only gives the
        `[[machine]]` tables' defaults)."""
        return self.workload is not None or self.idle is not None

    @model_validator(mode="after")
    def _workload_or_idle(self) -> Self:
        if self.workload is not None and self.idle is not None:
            raise _error(
                "give workload or idle, not both",
                hint='workload = "checksum" (a built-in name or a file), or idle = "2s"',
                at=("idle",),
            )
        if self.idle is not None and self.args:
            raise _error("args do not apply to the idle system", hint="remove args", at=("args",))
        if self.cflags and self.idle is not None:
            raise _error("cflags do not apply to the idle system", hint="remove cflags",
                         at=("cflags",))  # fmt: skip
        if self.cflags and self.workload is not None and Path(self.workload).suffix != ".c":
            kind = SourceKind.BUILTIN if self.builtin else SourceKind.BINARY
            raise _from_usage(cflags_not_compiled(self.workload, kind), at=("cflags",))
        if self.workload is not None:
            try:
                disk_required(self.workload, len(self.disks))
            except UsageError as error:
                raise _from_usage(error, at=("disks",)) from None
        seen: dict[str, int] = {}
        for index, disk in enumerate(self.disks):
            if disk.name in seen:
                raise _error(
                    f"two disks are named {disk.name!r} (also disks[{seen[disk.name]}])",
                    hint="give each disk its own name",
                    at=("disks", index, "name"),
                )
            seen[disk.name] = index
        return self

    @field_validator("cflags", mode="before")
    @classmethod
    def _split_cflags(cls, value: Any) -> tuple[str, ...]:
        try:
            return parse_cflags(value)
        except UsageError as error:
            raise _from_usage(error) from None

    @field_validator("workload")
    @classmethod
    def _known_workload(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        builtins = builtin_workload_names()
        if value in builtins:
            return value
        base = _base_dir(info)
        if not value or (base is not None and not _resolve(base, value).is_file()):
            raise _error(
                f"missing workload: no built-in workload or file {value!r}",
                hint=f"use a built-in workload ({', '.join(builtins)}) or a .c file or static "
                "binary, relative to the campaign file",
            )
        name = Path(value).stem
        if name in builtins:
            raise _error(
                f"workload file {value!r} has the name of the built-in workload {name!r}",
                hint="rename the file, or use the built-in workload",
            )
        try:
            validate_workload_name(name)
        except UsageError as error:
            raise _from_usage(error) from None
        return value

    @field_validator("crash_patterns")
    @classmethod
    def _patterns_exist(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = _base_dir(info)
        if value is not None and base is not None and not _resolve(base, value).is_file():
            raise _error(
                f"missing crash pattern file {value!r}",
                hint="give a TOML crash-pattern table, relative to the campaign file",
            )
        return value


class ScriptStep(BaseModel):
    """One step of a `[[machine]]` script: exactly one of `send` (text typed on the
    console), `expect` (a regular expression, or a list of alternatives, with `timeout`)
    and `sleep` (a duration)."""

    model_config = _MODEL_CONFIG

    send: str | None = None
    expect: str | tuple[str, ...] | None = None
    timeout: str | None = Field(default=None, description="for expect: 10s")
    sleep: str | None = None

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        given = [k for k in ("send", "expect", "sleep") if getattr(self, k) is not None]
        if len(given) != 1:
            raise _error(
                "a script step is exactly one of send, expect and sleep"
                + (f" (got {', '.join(given)})" if given else ""),
                hint='e.g. { send = "ls\\n" }, { expect = "bin", timeout = "5s" }, '
                '{ sleep = "1s" }',
            )
        if self.expect is not None:
            if self.timeout is None:
                raise _error(
                    "an expect step needs a timeout",
                    hint='e.g. { expect = "hello", timeout = "10s" }',
                    at=("timeout",),
                )
            patterns = (self.expect,) if isinstance(self.expect, str) else self.expect
            if not patterns:
                raise _error("an expect step needs a pattern", at=("expect",))
            for pattern in patterns:
                try:
                    compiled = re.compile(pattern)
                except re.error as exc:
                    raise _error(
                        f"invalid regular expression {pattern!r}: {exc}", at=("expect",)
                    ) from None
                if compiled.search("") is not None:
                    raise _error(
                        f"the pattern {pattern!r} matches the empty string, so at once",
                        at=("expect",),
                    )
            try:
                _positive_duration(self.timeout, "a timeout", 'e.g. timeout = "10s"')
            except PydanticCustomError as error:
                raise _error(str(error), at=("timeout",)) from None
        elif self.timeout is not None:
            raise _error("timeout applies only to expect steps", at=("timeout",))
        if self.sleep is not None:
            try:
                parse_duration_s(self.sleep)
            except UsageError as error:
                raise _from_usage(error, at=("sleep",)) from None
        return self

    def step(self) -> Step:
        """The step as the machine layer plays it."""
        if self.send is not None:
            return Send(self.send)
        if self.sleep is not None:
            return Sleep(parse_duration_s(self.sleep))
        assert self.expect is not None and self.timeout is not None
        patterns = (self.expect,) if isinstance(self.expect, str) else self.expect
        return Expect(tuple(patterns), parse_duration_s(self.timeout))


_JOBS = ("workload", "idle", "script", "command")
"""What a `[[machine]]` runs: exactly one of these."""


class MachineSection(GuestSection):
    """One `[[machine]]` table: a named machine of the experiment's testbed.

    As `[guest]`, plus `name` (a host name: the other machines reach it by it), `daemon`
    (it serves the others: runs until they are done, then is stopped), `script` (a shell
    on its console, driven by these steps, instead of a workload) and `command` (a command
    line of the guest's own userland, busybox and the built-in workloads, instead of a
    workload: `["/bin/sh", "-c", "httpd -p 80 -h /www && exec netecho --serve"]`).
    `deterministic` and `accel` default to `[guest]`'s. `crash_patterns` belongs in
    `[guest]`.
    """

    name: str = Field(pattern=r"^[a-z][a-z0-9-]{0,30}$", description="host name of the machine")
    daemon: StrictBool = False
    script: tuple[ScriptStep, ...] | None = None
    command: tuple[str, ...] | None = Field(
        default=None, description='a guest command line instead of a workload: ["/bin/sh", ...]'
    )
    deterministic: StrictBool | None = None  # type: ignore[assignment]
    accel: Accel | None = None  # type: ignore[assignment]

    @model_validator(mode="after")
    def _one_job(self) -> Self:
        jobs = [k for k in _JOBS if getattr(self, k) is not None]
        if len(jobs) != 1:
            raise _error(
                "give one of workload, idle, script and command"
                + (f" (got {', '.join(jobs)})" if jobs else ""),
                hint='workload = "netecho", idle = "2s", script = [{ send = "..." }, ...], or '
                'command = ["/bin/sh", "-c", "..."]',
                at=(jobs[1] if len(jobs) > 1 else "workload",),
            )
        if self.command is not None and (
            not self.command or not self.command[0].startswith("/") or self.args
        ):  # fmt: skip
            raise _error(
                "a command is a guest program's absolute path and its arguments, in one array",
                hint='e.g. command = ["/bin/sh", "-c", "httpd -p 80 && exec netecho --serve"]',
                at=("command",),
            )
        if self.script is not None and self.daemon:
            raise _error(
                "a script ends its machine's workload, a daemon never ends",
                hint="remove daemon, or give the machine a workload",
                at=("daemon",),
            )
        if self.script is not None and self.args:
            raise _error("args do not apply to a script", hint="remove args", at=("args",))
        if self.crash_patterns is not None:
            raise _error(
                "crash_patterns apply to every machine",
                hint="give crash_patterns in [guest]",
                at=("crash_patterns",),
            )
        if "arch" in self.model_fields_set:
            raise _error(
                "arch applies to every machine",
                hint="give arch in [guest]",
                at=("arch",),
            )
        return self

    def script_steps(self) -> tuple[Step, ...] | None:
        """The script as the machine layer plays it (None: a workload)."""
        return None if self.script is None else tuple(step.step() for step in self.script)

    @property
    def workload_name(self) -> str:
        """The workload's name in the guest (`idle`, `script` or `command` when there is
        none)."""
        if self.script is not None:
            return "script"
        if self.command is not None:
            return "command"
        if self.workload is None:
            return "idle"
        return self.workload if self.builtin else Path(self.workload).stem


class FaultFamily(BaseModel):
    """One `[[faults]]` table: a fault family, which is one stratum of the campaign.

    `target`, `bits` and `trigger` use the spellings of `vmfault.faults.model`; `bits` as an
    int means that many random bits. `name` defaults to the target (`register:gpr`);
    `experiments` overrides the campaign's count for this stratum.

    `target = "instruction"` corrupts instruction results (F-SEFI's `batch_run`): `op` (the
    class), `function` (default: the whole executable), then `instance` (a fixed dynamic
    instance) or `faults_per_run` instances drawn between `start_index` and `max_dic`, or
    each instance with `probability`; `bits` is the number of bits (or the bits grammar)
    and `bit_range` where they lie (`"52-62"`; default: the result's exponent, operand or
    flags).

    A memory family with `flips` and `interval` (or `rate`, `rate_unit` and `compression`)
    is a storm: each experiment makes `flips` single-bit flips on that schedule in guest
    time (default name `storm:REGION`). `period` (`"1s"`) ends each experiment that much
    guest time after its (last) flip, so the outcome is a failure rate per flip over a fixed
    period; a workload still running then counts as benign.

    `target = "none"` is a control family (default name `none`): it injects nothing and
    takes no other fault option, so its runs must come out benign; the share that does not
    is the campaign's false-positive rate.

    `machine` names the `[[machine]]` a fault goes to (default: the judged machine).
    `target = "network:KIND"` acts on frames between machines (`vmfault.faults.network`):
    on a `link` (`"client-server"`) or a `machine`'s card, in a `direction`, from its
    `trigger` for its `period`, with the kind's options (`probability`, `burst`, `bits`,
    `where`, `delay`, `jitter`, `bandwidth`, `groups`).
    """

    model_config = _MODEL_CONFIG

    name: str = Field(default="", min_length=1, description="stratum name; default: the target")
    target: str
    bits: int | str | None = None
    trigger: str | None = None
    context: Context = Context.ANY
    experiments: Annotated[StrictInt, Field(ge=1)] | None = None
    op: str | None = Field(default=None, description="instruction class (target instruction)")
    function: str | None = Field(default=None, description="function (target instruction)")
    instance: Annotated[StrictInt, Field(ge=1)] | None = None
    start_index: Annotated[StrictInt, Field(ge=1)] | None = None
    max_dic: Annotated[StrictInt, Field(ge=1)] | None = None
    faults_per_run: Annotated[StrictInt, Field(ge=1)] | None = None
    bit_range: str | None = Field(default=None, pattern=r"^\s*\d+\s*-\s*\d+\s*$")
    probability: Annotated[float, Field(ge=0, le=1)] | None = None
    flips: Annotated[StrictInt, Field(ge=1)] | None = Field(
        default=None, description="storm: flips per experiment"
    )
    interval: str | None = Field(
        default=None, description="storm: gaps in guest time, 10ms | 5ms..50ms | poisson:RATE"
    )
    rate: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="storm: physical upset rate in rate_unit (instead of interval)"
    )
    rate_unit: RateUnit | None = Field(default=None, description="storm: unit of rate")
    compression: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="storm: real-world seconds per guest second"
    )
    period: str | None = Field(
        default=None,
        description="guest time run after the (last) flip, then judged: 1s; network faults: "
        "how long the fault acts",
    )
    machine: str | None = Field(default=None, description="the [[machine]] the fault goes to")
    link: str | None = Field(default=None, description="network: the link, client-server")
    direction: str | None = Field(default=None, description="network: both, in or out")
    burst: Annotated[float, Field(ge=1)] | None = Field(
        default=None, description="network:loss: mean frames lost in a row (Gilbert-Elliott)"
    )
    where: str | None = Field(default=None, description="network:corrupt: any, headers or payload")
    delay: str | None = Field(
        default=None, description="disk:latency, network:delay and reorder: 50ms"
    )
    jitter: str | None = Field(
        default=None, description="disk:latency, network:delay: +- uniform, 10ms"
    )
    bandwidth: str | None = Field(default=None, description="network:rate: 1mbit")
    groups: tuple[tuple[str, ...], ...] | None = Field(
        default=None, description='network:partition: [["client"], ["server"]]'
    )
    disk: str | None = Field(
        default=None, description="disk faults: the disk's name (default: the only disk)"
    )
    sectors: str | int | None = Field(
        default=None, description="disk faults: touched (default), any, N or A-B (512-byte sectors)"
    )
    errno: str | None = Field(
        default=None, description="disk faults that fail requests: EIO (default), ENOSPC, ..."
    )
    once: StrictBool | None = Field(
        default=None, description="disk faults: only the first matching request"
    )

    _spec: FaultSpec | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _default_name(cls, data: Any) -> Any:
        if (
            isinstance(data, dict)
            and data.get("name") is None
            and isinstance(data.get("target"), str)
        ):
            name = data["target"]
            if name.strip() == _INSTRUCTION and isinstance(data.get("op"), str):
                name = f"{_INSTRUCTION}:{data['op']}"
                if isinstance(data.get("function"), str):
                    name += f"@{data['function']}"
            with contextlib.suppress(UsageError):
                name = Target.parse(name, arch=_GUEST_ARCH.get()).spelling
                if data.get("interval") is not None or data.get("rate") is not None:
                    name = f"{_STORM}:{Target.parse(name, arch=_GUEST_ARCH.get()).name}"
            return {**data, "name": name}
        return data

    @field_validator("interval")
    @classmethod
    def _valid_interval(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                Schedule.parse(value)
            except UsageError as error:
                raise _from_usage(error) from None
        return value

    @field_validator("period")
    @classmethod
    def _valid_period(cls, value: str | None) -> str | None:
        return _positive_duration(value, "a period", "e.g. period = 1s")

    @field_validator("target")
    @classmethod
    def _valid_target(cls, value: str) -> str:
        if value.strip() == _INSTRUCTION:
            return _INSTRUCTION
        try:
            Target.parse(value, arch=_GUEST_ARCH.get())
        except UsageError as error:
            raise _from_usage(error) from None
        return value

    @field_validator("bits", mode="before")
    @classmethod
    def _valid_bits(cls, value: Any) -> Any:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | str)):
            raise _error(
                "expected an integer or a string",
                hint='an integer is that many random bits; a string is the bits grammar ("59", '
                '"52-62", "k2,0-31", "burst:4")',
            )
        try:
            BitModel.parse(value)
        except UsageError as error:
            raise _from_usage(error) from None
        return value

    @field_validator("trigger")
    @classmethod
    def _valid_trigger(cls, value: str | None) -> str | None:
        try:
            Trigger.parse(value)
        except UsageError as error:
            raise _from_usage(error) from None
        return value

    @model_validator(mode="after")
    def _build_spec(self) -> Self:
        options = {
            key: getattr(self, key) for key in type(self).model_fields if key not in _STRATUM_KEYS
        }
        try:
            self._spec = FaultSpec.from_options(**options, arch=_GUEST_ARCH.get())
        except OptionError as error:
            raise _from_usage(error, at=(error.key,)) from None
        return self

    def fault_spec(self) -> FaultSpec:
        """The family as a `FaultSpec` (built once, at validation)."""
        if self._spec is None:
            raise AssertionError("a validated FaultFamily always has its FaultSpec")
        return self._spec


class IsolationSection(BaseModel):
    """The `[isolation]` table: the campaign tests whether faults in some machines reach
    the `control` machine (a `[[machine]]` name).

    Every experiment checks the control against its golden run (output, exit status,
    console): a difference is an isolation violation, recorded as vmm-error with its
    evidence. `baseline` (in [0, 1)) is the share of the campaign's experiments run with no
    fault (stratum `baseline`, target none), interleaved at random (the campaign's seed);
    the control's runtimes under faults are tested against theirs for equivalence within
    `margin` (a ratio in (0, 1)). `runtime` is what a runtime is: `vcpu` (CPU seconds of
    the control's vCPU threads, the default: host noise does not stretch it), `guest`
    (the guest's own clock, which follows host time under TCG), `host` (wall seconds) or
    `instructions` (deterministic mode). `pin` pins each QEMU to a host core of its own
    when the host has enough cores for every machine of every local worker. `check`
    allows faults aimed at the control (`machine = "control"`): a validation campaign, in
    which those faults must show up as violations.
    """

    model_config = _MODEL_CONFIG

    control: str = Field(description="the [[machine]] that must not be affected")
    margin: StrictFloat = Field(default=0.05, gt=0, lt=1, description="as a ratio: 0.05")
    baseline: StrictFloat = Field(
        default=0.25, ge=0, lt=1, description="share of experiments run with no fault"
    )
    runtime: Literal["vcpu", "guest", "host", "instructions"] = "vcpu"
    pin: StrictBool = True
    check: StrictBool = False


class CampaignSpec(BaseModel):
    """A whole campaign: its `[campaign]`, `[guest]` (or `[[machine]]`) and `[[faults]]`
    tables.

    `source` (the campaign file, absolute) and `file_sha256` (of its bytes) are set by
    `load_campaign`, never read from TOML. `to_json`/`from_json` rebuild a spec exactly;
    `from_json` does not check that files still exist.
    """

    model_config = _MODEL_CONFIG

    campaign: CampaignSection
    guest: GuestSection = Field(default_factory=GuestSection)
    machine: tuple[MachineSection, ...] = Field(
        default=(), description="the machines of each experiment, instead of [guest]"
    )
    faults: tuple[FaultFamily, ...] = Field(min_length=1)
    dask: DaskSection | None = None
    slurm: SlurmSection | None = None
    isolation: IsolationSection | None = None
    source: Path | None = None
    file_sha256: str = ""

    @model_validator(mode="wrap")
    @classmethod
    def _guest_arch(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # The fault families name registers of the guest's architecture: [guest] arch is
        # read first and holds while they are validated.
        arch = DEFAULT_ARCH
        guest = data.get("guest") if isinstance(data, dict) else None
        if isinstance(guest, dict):
            with contextlib.suppress(ValueError, TypeError):
                arch = Arch(guest.get("arch", DEFAULT_ARCH))
        token = _GUEST_ARCH.set(arch)
        try:
            return handler(data)
        finally:
            _GUEST_ARCH.reset(token)

    @model_validator(mode="after")
    def _machines(self) -> Self:
        guest = self.guest
        wanted: list[tuple[str, tuple[str | int, ...]]] = []
        if self.machine:
            wanted.append((MACHINES, ("machine",)))
        if guest.disks:
            wanted.append((DISKS, ("guest", "disks")))
        wanted += [
            (DISKS, ("faults", index, "target"))
            for index, family in enumerate(self.faults)
            if family.fault_spec().disk is not None
        ]
        for feature, at in wanted:
            try:
                guest.arch.require(feature)
            except UsageError as error:
                raise _from_usage(error, at=at) from None
        if not self.machine:
            if "guest" not in self.model_fields_set:
                raise _error("missing required table [guest]", hint=_SCHEMA_HINT, at=("guest",))
            if not guest.runs_something:
                raise _error(
                    "missing workload (or idle)",
                    hint='workload = "checksum" (a built-in name or a file), or idle = "2s"',
                    at=("guest", "workload"),
                )
        elif guest.runs_something or guest.args or guest.cflags:
            raise _error(
                "[guest] gives no workload beside [[machine]] tables",
                hint="give the workload in each [[machine]] table; [guest] may give "
                "deterministic, accel and crash_patterns",
                at=("guest", "workload" if guest.runs_something else "args"),
            )
        names = self.machine_names
        seen: set[str] = set()
        for index, table in enumerate(self.machine):
            if table.name in seen:
                raise _error(
                    f"duplicate machine name {table.name!r}",
                    hint="give each [[machine]] a name of its own",
                    at=("machine", index, "name"),
                )
            seen.add(table.name)
        if self.machine and all(table.daemon for table in self.machine):
            raise _error(
                "every [[machine]] is a daemon, so no experiment would ever end",
                hint="make at least one machine run a workload that ends, or a script",
                at=("machine", 0, "daemon"),
            )
        judge = self.campaign.judge
        if judge is not None and judge not in names:
            raise _error(
                f"no machine {judge!r} to judge by",
                hint="machines: " + ", ".join(names),
                at=("campaign", "judge"),
            )
        for index, family in enumerate(self.faults):
            spec = family.fault_spec()
            if spec.machine is not None and spec.machine not in names:
                raise _error(
                    f"no machine {spec.machine!r}",
                    hint="machines: " + ", ".join(names),
                    at=("faults", index, "machine"),
                )
            self._check_device(spec, index)
            if spec.network is None:
                continue
            if not self.networked:
                raise _error(
                    f"{spec.target.spelling} needs machines joined by a network",
                    hint="give two or more [[machine]] tables (and not network = false)",
                    at=("faults", index, "target"),
                )
            for name in spec.network.machines():
                if name not in names:
                    key = "groups" if spec.network.groups else "link"
                    raise _error(
                        f"no machine {name!r} for {spec.target.spelling}",
                        hint="machines: " + ", ".join(names),
                        at=("faults", index, key),
                    )
        return self

    @model_validator(mode="after")
    def _isolation(self) -> Self:
        isolation = self.isolation
        if isolation is None:
            return self
        names = self.machine_names
        if len(self.machine) < 2:
            raise _error(
                "an isolation campaign needs two or more [[machine]] tables",
                hint="add a [[machine]] for the control beside the one faults go to",
                at=("isolation",),
            )
        control = isolation.control
        if control not in names:
            raise _error(
                f"no machine {control!r} to be the control",
                hint="machines: " + ", ".join(names),
                at=("isolation", "control"),
            )
        if self.campaign.judge == control:
            raise _error(
                f"the control {control!r} cannot be the judge",
                hint="judge by the machine faults go to, or leave judge out",
                at=("campaign", "judge"),
            )
        if isolation.runtime == "instructions" and not self._machine_deterministic(control):
            raise _error(
                "runtime = instructions needs a deterministic control",
                hint=f"set deterministic = true for {control!r}, or runtime = vcpu",
                at=("isolation", "runtime"),
            )
        if BASELINE_STRATUM in {f.name for f in self.faults} and isolation.baseline > 0:
            raise _error(
                f"a fault family is named {BASELINE_STRATUM!r}, the stratum of the baseline",
                hint="give that [[faults]] table another name",
                at=("isolation", "baseline"),
            )
        for index, family in enumerate(self.faults):
            spec = family.fault_spec()
            if spec.control:
                continue
            if self.fault_machine(spec.machine) == control and not isolation.check:
                raise _error(
                    f"this fault goes to the control {control!r}: faults go to the others",
                    hint=f'set machine = "{self.fault_machine(None, avoid=control)}", or '
                    "[isolation] check = true to validate that a fault in the control is seen",
                    at=("faults", index, "machine"),
                )
        return self

    def _machine_deterministic(self, name: str) -> bool:
        table = next(t for t in self.machine if t.name == name)
        return self.guest.deterministic if table.deterministic is None else table.deterministic

    def fault_machine(self, named: str | None, *, avoid: str | None = None) -> str:
        """The machine a fault naming `named` goes to: that one, else the judge, else the
        first machine (the first one but `avoid`, when asked for another)."""
        if named is not None:
            return named
        if self.campaign.judge is not None and self.campaign.judge != avoid:
            return self.campaign.judge
        return next(name for name in self.machine_names if name != avoid)

    def _check_device(self, spec: FaultSpec, index: int) -> None:
        """A virtio device fault needs that device: a disk for virtio-blk (only `[guest]`
        has disks), a network for virtio-net (its cards are virtio-net)."""
        if spec.target.spelling == "device:virtio-blk" and (self.machine or not self.guest.disks):
            raise _error(
                "device:virtio-blk needs a machine with a disk, and this one has none",
                hint='give [guest] a disk: [[guest.disks]] with name = "data" and size = "8M"',
                at=("faults", index, "target"),
            )
        if spec.target.spelling == "device:virtio-net" and not self.networked:
            raise _error(
                "device:virtio-net needs machines with network cards, and these have none",
                hint="give two or more [[machine]] tables (and not network = false)",
                at=("faults", index, "target"),
            )

    @property
    def machine_names(self) -> tuple[str, ...]:
        """The names of the experiment's machines (`guest` for the one of `[guest]`)."""
        return tuple(t.name for t in self.machine) or (DEFAULT_MACHINE,)

    @property
    def networked(self) -> bool:
        """Whether the machines are joined by vmfault's network."""
        if self.campaign.network is not None:
            return self.campaign.network and len(self.machine) >= 1
        return len(self.machine) >= 2

    @property
    def deterministic(self) -> bool:
        """Whether any machine runs in deterministic mode."""
        default = self.guest.deterministic
        return any(
            default if table.deterministic is None else table.deterministic
            for table in self.machine
        ) or (not self.machine and default)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        seen: dict[str, int] = {}
        for index, family in enumerate(self.faults):
            if family.name in seen:
                raise _error(
                    f"duplicate fault family name {family.name!r} "
                    f"(also faults[{seen[family.name]}])",
                    hint="give each [[faults]] table a distinct name = ...",
                    at=("faults", index, "name"),
                )
            seen[family.name] = index
        sizes = {d.name: (d.size_bytes or _UNKNOWN_SIZE) // _SECTOR for d in self.guest.disks}
        for index, family in enumerate(self.faults):
            fault = family.fault_spec().disk
            if fault is not None:
                try:
                    fault.disk_of(sizes)
                except UsageError as error:
                    key = "sectors"
                    if not sizes:
                        key = "target"
                    elif fault.disk not in sizes and (fault.disk is not None or len(sizes) > 1):
                        key = "disk"
                    raise _from_usage(error, at=("faults", index, key)) from None
        for index, family in enumerate(self.faults):
            kind = family.fault_spec().trigger.kind
            if kind is TriggerKind.INSTRUCTIONS and not self.deterministic:
                raise _error(
                    "an icount trigger needs deterministic = true in [guest]",
                    hint="set deterministic = true, or use a time or exec trigger",
                    at=("faults", index, "trigger"),
                )
        if self.campaign.executor is ExecutorName.SLURM and self.slurm is None:
            raise _error(
                "executor = slurm needs a [slurm] table",
                hint="add [slurm] with cores, memory, walltime and jobs",
                at=("campaign", "executor"),
            )
        shared = sum(1 for family in self.faults if family.experiments is None)
        total = self.campaign.experiments
        if total is not None and total < shared:
            raise _error(
                f"experiments = {total} cannot cover {shared} fault families",
                hint="raise campaign.experiments or set experiments in each [[faults]] table",
                at=("campaign", "experiments"),
            )
        return self

    @property
    def base_dir(self) -> Path | None:
        """The campaign file's directory, against which relative paths resolve."""
        return self.source.parent if self.source is not None else None

    def resolve(self, text: str) -> Path:
        """A path from the campaign file, resolved against the campaign file's directory."""
        return _resolve(self.base_dir, text)

    @property
    def workload_name(self) -> str:
        """The workload's name in the guest: the built-in name, or the file's stem (`idle`
        for the idle system); of the first `[[machine]]` when there are machines."""
        if self.machine:
            return self.machine[0].workload_name
        workload = self.guest.workload
        if workload is None:
            return "idle"
        return workload if self.guest.builtin else Path(workload).stem

    def user_workload(self) -> UserWorkload | None:
        """The user's workload to build into the image, or None for a built-in one (the
        first of `user_workloads`)."""
        found = self.user_workloads()
        return found[0] if found else None

    def user_workloads(self) -> tuple[UserWorkload, ...]:
        """The users' workloads to build into the image (a file run by several machines,
        once)."""
        tables: tuple[GuestSection, ...] = self.machine or (self.guest,)
        found: dict[str, UserWorkload] = {}
        for table in tables:
            if table.builtin or table.workload is None:
                continue
            name = Path(table.workload).stem
            found.setdefault(name, UserWorkload(
                name=name, path=self.resolve(table.workload), args=table.args,
                cflags=table.cflags,
            ))  # fmt: skip
        return tuple(found.values())

    def guest_disks(self) -> tuple[GuestDisk, ...]:
        """The guest's disks, images resolved against the campaign file (and looked at)."""
        return tuple(
            fresh_disk(d.name, d.size) if d.size is not None
            else image_disk(d.name, self.resolve(d.image or ""))
            for d in self.guest.disks
        )  # fmt: skip

    def crash_patterns_path(self) -> Path | None:
        """The extra crash-pattern table, resolved, or None."""
        if self.guest.crash_patterns is None:
            return None
        return self.resolve(self.guest.crash_patterns)

    def to_toml_dict(self) -> dict[str, Any]:
        """The campaign as a campaign file's tables (no loader fields, no unset keys)."""
        tables = self.model_dump(mode="json", exclude=set(_LOADER_FIELDS), exclude_none=True)
        if not self.machine:
            tables.pop("machine", None)
        return tables

    def to_json(self) -> str:
        """The whole spec, loader fields included, as JSON text (see `from_json`)."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> CampaignSpec:
        """Rebuild a spec from `to_json` text; UsageError (one line) if it is not valid."""
        try:
            return cls.model_validate_json(text)
        except ValidationError as error:
            raise _usage_error("stored campaign", error) from None


def load_campaign(path: Path) -> CampaignSpec:
    """Read and validate a campaign file; every problem is one UsageError line.

    Checks that the workload and crash-pattern files exist (relative to the campaign file).
    """
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise UsageError(
            f"{path}: cannot read campaign file: {error.strerror or error}",
            hint="check the path",
        ) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise UsageError(
            f"{path}: invalid TOML: not UTF-8 text (byte {error.start})",
            hint="save the campaign file as UTF-8",
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(_toml_error_line(path, error), hint="see https://toml.io") from None
    tables = {name for name in CampaignSpec.model_fields if name not in _LOADER_FIELDS}
    for key in data:
        if key not in tables:
            raise UsageError(
                f"{path}: {key}: unknown key (allowed: {', '.join(sorted(tables))})",
                hint=_suggest(key, tables),
            )
    source = path.resolve()
    try:
        return CampaignSpec.model_validate(
            {**data, "source": source, "file_sha256": hashlib.sha256(raw).hexdigest()},
            context={_BASE_DIR: source.parent},
        )
    except ValidationError as error:
        raise _usage_error(str(path), error) from None


def campaign_json_schema() -> dict[str, Any]:
    """The JSON schema of a campaign file (loader-set fields left out)."""
    schema = CampaignSpec.model_json_schema()
    properties = schema.get("properties", {})
    for name in _LOADER_FIELDS:
        properties.pop(name, None)
    if "required" in schema:
        schema["required"] = [name for name in schema["required"] if name not in _LOADER_FIELDS]
    return schema


def _toml_error_line(path: Path, error: tomllib.TOMLDecodeError) -> str:
    text = str(error)
    where = re.search(r"\s*\(at (line \d+, column \d+|end of document)\)\s*$", text)
    if where is None:
        return f"{path}: invalid TOML: {text}"
    what = text[: where.start()]
    return f"{path}: {where.group(1)}: invalid TOML: {what[:1].lower()}{what[1:]}"


def _suggest(key: str, allowed: set[str] | list[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f"did you mean {close[0]!r}?" if close else _SCHEMA_HINT


_TYPE_WORDS = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "bool_type": "expected true or false",
    "bool_parsing": "expected true or false",
    "string_type": "expected a string",
    "tuple_type": "expected an array",
    "list_type": "expected an array",
    "model_type": "expected a table",
    "model_attributes_type": "expected a table",
    "dict_type": "expected a table",
    "path_type": "expected a path",
}
_RANGE_ERRORS = frozenset({"greater_than", "greater_than_equal", "less_than", "less_than_equal"})


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, UnionType, tuple, list, Annotated):
        for argument in get_args(annotation):
            found = _nested_model(argument)
            if found is not None:
                return found
    return None


def _key_path(loc: tuple[str | int, ...]) -> tuple[str, type[BaseModel], str | None, int]:
    """The dotted key path named by `loc`, the model and field at its end, and items used."""
    model: type[BaseModel] | None = CampaignSpec
    owner: type[BaseModel] = CampaignSpec
    field: str | None = None
    text = ""
    used = 0
    for item in loc:
        if isinstance(item, int):
            if not text:
                break
            text += f"[{item}]"
        elif model is not None and item in model.model_fields:
            text = f"{text}.{item}" if text else item
            owner, field = model, item
            model = _nested_model(model.model_fields[item].annotation)
        else:
            break
        used += 1
    return text, owner, field, used


def _constraints(items: Iterable[Any]) -> Iterator[annotated_types.BaseMetadata]:
    for item in items:
        if isinstance(item, annotated_types.BaseMetadata):
            yield item
        elif isinstance(item, FieldInfo):
            yield from _constraints(item.metadata)


def _bounds(model: type[BaseModel], field: str) -> str:
    """The range a numeric field allows, as `1 <= workers <= 64` or `budget > 1`."""
    info = model.model_fields[field]
    items: list[Any] = list(info.metadata)
    for argument in get_args(info.annotation):
        items.extend(getattr(argument, "__metadata__", ()))
    low: tuple[str, object] | None = None
    high: tuple[str, object] | None = None
    for constraint in _constraints(items):
        if isinstance(constraint, annotated_types.Ge):
            low = ("<=", constraint.ge)
        elif isinstance(constraint, annotated_types.Gt):
            low = ("<", constraint.gt)
        elif isinstance(constraint, annotated_types.Le):
            high = ("<=", constraint.le)
        elif isinstance(constraint, annotated_types.Lt):
            high = ("<", constraint.lt)
    if low is not None and high is not None:
        return f"{low[1]} {low[0]} {field} {high[0]} {high[1]}"
    if low is not None:
        return f"{field} {low[0].replace('<', '>')} {low[1]}"
    if high is not None:
        return f"{field} {high[0]} {high[1]}"
    return ""


def _show(value: Any) -> str:
    shown = json.dumps(value, default=str)
    if len(shown) > _SHOWN_VALUE_MAX_CHARS:
        shown = shown[: _SHOWN_VALUE_MAX_CHARS - 3] + "..."
    return shown


def _describe(error: ErrorDetails) -> tuple[str, str, str, str]:
    """(key path, what is wrong, what is allowed, hint) for one pydantic error."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    loc = tuple(error["loc"])
    if kind == _ERROR_KIND:
        loc = loc + tuple(ctx.get("at", ()))
    path, owner, field, used = _key_path(loc)
    if kind == _ERROR_KIND:
        message, hint = str(ctx["message"]), str(ctx.get("hint", ""))
        allowed = ""
        if hint.startswith("allowed: "):
            allowed, hint = hint.removeprefix("allowed: "), _SCHEMA_HINT
        return path, message, allowed, hint
    if kind == "extra_forbidden":
        key = str(loc[used]) if used < len(loc) else "?"
        nested = _nested_model(owner.model_fields[field].annotation) if field else owner
        fields = [name for name in (nested or owner).model_fields if name not in _LOADER_FIELDS]
        full = f"{path}.{key}" if path else key
        return full, "unknown key", ", ".join(fields), _suggest(key, fields)
    if kind == "missing":
        table = field is not None and _nested_model(owner.model_fields[field].annotation)
        if table and path == "faults":
            return (
                path,
                "missing required table [[faults]]",
                "",
                "add at least one [[faults]] table",
            )
        if table:
            return path, f"missing required table [{path}]", "", _SCHEMA_HINT
        return path, "missing required key", "", _SCHEMA_HINT
    if kind in _RANGE_ERRORS and field is not None:
        return path, "out of range", _bounds(owner, field), _SCHEMA_HINT
    if kind in ("enum", "literal_error"):
        expected = str(ctx.get("expected", "")).replace("'", "")
        return path, "not an allowed value", expected.replace(" or ", ", "), _SCHEMA_HINT
    if kind == "string_pattern_mismatch":
        return path, "invalid name", "letters, digits, '_', '.' and '-'", _SCHEMA_HINT
    if kind == "string_too_short":
        return path, "must not be empty", "", _SCHEMA_HINT
    if kind == "too_short" and path == "faults":
        return path, "needs at least one [[faults]] table", "", "add a [[faults]] table"
    if kind in ("tuple_type", "list_type") and path == "faults":
        return path, "expected an array of tables", "", "write each fault family as [[faults]]"
    what = _TYPE_WORDS.get(kind) or error["msg"][:1].lower() + error["msg"][1:]
    return path, what, "", _SCHEMA_HINT


def _offending_value(error: ErrorDetails) -> Any:
    """The value an error is about, or None when it is about a whole table or a missing key."""
    if error["type"] in ("missing", "extra_forbidden"):
        return None
    value: Any = error["input"]
    if error["type"] == _ERROR_KIND:
        for part in (error.get("ctx") or {}).get("at", ()):
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                return None
    return None if isinstance(value, dict) else value


def _usage_error(label: str, error: ValidationError) -> UsageError:
    """One UsageError line for a ValidationError: its first problem, and how many more."""
    every = error.errors()
    # A table left empty by its own bad items also reports being too short: say it once.
    details = [
        detail
        for detail in every
        if not (
            detail["type"] == "too_short"
            and any(
                len(other["loc"]) > len(detail["loc"])
                and other["loc"][: len(detail["loc"])] == detail["loc"]
                for other in every
            )
        )
    ]
    path, what, allowed, hint = _describe(details[0])
    paths = {_describe(detail)[0] for detail in details[1:]} - {path}
    extras: list[str] = []
    got = _offending_value(details[0])
    if got is not None and _show(got) not in what and repr(got) not in what:
        extras.append(f"got {_show(got)}")
    if allowed:
        extras.append(f"allowed: {allowed}")
    line = f"{label}: {path}: {what}" if path else f"{label}: {what}"
    if extras:
        line += f" ({'; '.join(extras)})"
    if paths:
        line += f" (and {len(paths)} more)"
    return UsageError(line, hint=hint)
