"""The `vmfault` command: parses arguments, calls the library, prints. Nothing else."""

from __future__ import annotations

import contextlib
import enum
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from vmfault._version import __version__
from vmfault.arch import DEFAULT_ARCH, DISKS, Arch
from vmfault.campaign.cluster import Cluster, ClusterOptions, cluster_options, connect
from vmfault.campaign.executor import Completed
from vmfault.campaign.planner import plan_campaign
from vmfault.campaign.runner import (
    CampaignInterruptedError,
    CampaignProgress,
    Prepared,
    campaign_image,
    campaign_machines,
    prepare_campaign,
    run_campaign,
)
from vmfault.campaign.sefi import parse_sefi_ini, sefi_campaign_toml
from vmfault.campaign.spec import (
    CampaignSpec,
    ExecutorName,
    campaign_json_schema,
    load_campaign,
)
from vmfault.classify import CrashTable
from vmfault.errors import UsageError, VmfaultError
from vmfault.experiment.pipeline import Experimenter
from vmfault.experiment.records import (
    DEFAULT_MACHINE,
    DiskInjection,
    ExperimentRecord,
    GoldenRun,
    InstructionInjection,
    fsefi_line,
)
from vmfault.experiment.testbed import RestoreMethod, Testbed, golden_run
from vmfault.faults import Budget, Context, FaultSpec, parse_duration_s
from vmfault.guest.binary import WorkloadBinary
from vmfault.guest.image import ImageSpec, UserWorkload, builtin_workload_names
from vmfault.guest.workloads import (
    BUILTIN_WORKLOADS,
    SourceKind,
    cflags_not_compiled,
    disk_required,
    idle_argv,
    parse_cflags,
)
from vmfault.machine import Accel, kvm_blocker, probe_boot
from vmfault.machine.disks import GuestDisk, parse_disk, unique_disks
from vmfault.profile.workload import profile_instructions
from vmfault.report.command import report_command
from vmfault.report.reactions import reactions_table, status_json, store_reactions
from vmfault.report.summary import Summary, store_summary, summary_tables
from vmfault.session import machine_config, prepare_image
from vmfault.stats import IntervalMethod
from vmfault.store import SQLiteStore
from vmfault.store.export import export

__all__ = ["app", "main"]

app = typer.Typer(
    name="vmfault",
    help="Inject hardware faults into QEMU virtual machines and measure what they do.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
image_app = typer.Typer(help="Build and inspect guest images.", no_args_is_help=True)
app.add_typer(image_app, name="image")
campaign_app = typer.Typer(
    help="Campaigns: many experiments from a TOML file.", no_args_is_help=True
)
app.add_typer(campaign_app, name="campaign")

out = Console(soft_wrap=True)
err = Console(stderr=True)


def _progress(message: str) -> None:
    err.print(f"[dim]{message}[/dim]")


def _load_config(path: Path | None) -> tuple[UserWorkload, ...]:
    """User workloads from a TOML file: `[[workload]]` tables with name, path, args, and
    cflags (gcc flags for a .c file: a string or an array of strings)."""
    if path is None:
        return ()
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}", hint="check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: invalid TOML: {exc}", hint="fix the file") from exc
    workloads = []
    for index, entry in enumerate(data.get("workload", [])):
        where = f"{path}: workload[{index}]"
        if not isinstance(entry, dict) or "path" not in entry:
            raise UsageError(f"{where} needs a `path`", hint='e.g. path = "prog.c"')
        file = (path.parent / str(entry["path"])).resolve()
        args = entry.get("args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise UsageError(
                f"{where}: `args` must be a list of strings", hint='args = ["-n", "5"]'
            )
        cflags = parse_cflags(entry.get("cflags", ()), label=f"{where}: cflags")
        workloads.append(
            UserWorkload(
                name=str(entry.get("name", file.stem)), path=file, args=tuple(args), cflags=cflags
            )
        )
    return tuple(workloads)


def _spec(
    config: Path | None,
    kernel: Path | None,
    initrd: Path | None,
    disk: Path | None,
    extra: tuple[UserWorkload, ...] = (),
    arch: Arch = DEFAULT_ARCH,
) -> ImageSpec:
    return ImageSpec(
        user_workloads=_load_config(config) + extra,
        kernel=kernel,
        initrd=initrd,
        disk=disk,
        arch=arch,
    )


ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="TOML file with [[workload]] tables (name, path, args, cflags)."),
]
CflagsOpt = Annotated[
    str | None,
    typer.Option(
        "--cflags",
        help='gcc flags for a C workload, after vmfault\'s own, e.g. "-O0 -fno-inline" '
        "(split like a shell would; no shell runs them).",
    ),
]
KernelOpt = Annotated[Path | None, typer.Option(help="Your own kernel (vmlinux or bzImage).")]
InitrdOpt = Annotated[Path | None, typer.Option(help="Your own initrd; vmfault's is appended.")]
DiskOpt = Annotated[Path | None, typer.Option(help="A raw disk image attached as virtio-blk.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
ArchOpt = Annotated[
    Arch, typer.Option(help="Guest architecture: x86_64 (-M microvm) or aarch64 (-M virt).")
]
RestoreOpt = Annotated[
    RestoreMethod,
    typer.Option(
        help="How the machine goes back to its snapshot: template (a RAM template's clone, "
        "milliseconds) or loadvm (QEMU's internal snapshots)."
    ),
]
GuestDisksOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--disk",
        help="A virtio disk: NAME:SIZE (fresh, zeroed: data:64M) or NAME:PATH (a raw or qcow2 "
        "image, never written); repeat for more (vda, vdb, ...).",
    ),
]


def _guest_disks(texts: list[str] | None, arch: Arch) -> tuple[GuestDisk, ...]:
    """The disks of --disk options (one-line errors for bad names, sizes and images, and
    for disks on a guest of `arch` that has none)."""
    disks = unique_disks([parse_disk(text) for text in texts or ()])
    if disks:
        arch.require(DISKS)
    return disks


BudgetOpt = Annotated[
    str | None,
    typer.Option(help="Hang budget: golden runs (default 2) or a guest duration such as 20s."),
]


@image_app.command("build")
def image_build(
    config: ConfigOpt = None,
    kernel: KernelOpt = None,
    initrd: InitrdOpt = None,
    disk: DiskOpt = None,
    arch: ArchOpt = DEFAULT_ARCH,
    as_json: JsonOpt = False,
) -> None:
    """Build the guest image (kernel, initramfs, agent, workloads) and capture kernel symbols.

    Cached by a hash of every input: a second build with the same inputs does nothing.
    """
    image = prepare_image(_spec(config, kernel, initrd, disk, arch=arch), log=_progress)
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "image_hash": image.image_hash,
                    "root": str(image.root),
                    "kernel_release": image.kernel_release,
                    "arch": image.arch.value,
                    "workloads": sorted(image.workloads),
                }
            )
        )
        return
    out.print(f"image {image.image_hash} ({image.kernel_release}) at {image.root}")
    out.print("workloads: " + ", ".join(sorted(image.workloads)))


def _user_workload(
    workload: str, cflags: str | None = None
) -> tuple[str, tuple[UserWorkload, ...]]:
    """A path names a user workload (C file or static binary); anything else a built-in
    (or a --config workload). `cflags`, the --cflags text, go to a C file only."""
    flags = () if cflags is None else parse_cflags(cflags, label="--cflags")
    if "/" not in workload and not workload.endswith(".c"):
        if flags and workload in builtin_workload_names():
            raise cflags_not_compiled(workload, SourceKind.BUILTIN)
        if flags:
            raise UsageError(
                f"--cflags apply to a C file given as the workload, not to {workload!r}",
                hint="for a --config workload set cflags in its [[workload]] table",
            )
        return workload, ()
    path = Path(workload).resolve()
    if not path.is_file():
        raise UsageError(
            f"workload file {workload} does not exist",
            hint="give a C file, a static binary or a built-in name",
        )
    return path.stem, (UserWorkload(name=path.stem, path=path, cflags=flags),)


def _golden_table(runs: list[GoldenRun]) -> Table:
    table = Table(title="golden runs")
    for column in ("workload", "exit", "guest s", "host s", "instructions", "boot s", "output"):
        table.add_column(column, overflow="fold")
    for run in runs:
        table.add_row(
            " ".join(run.argv),
            str(run.exit_status) + (f" ({run.signal})" if run.signal else ""),
            f"{run.guest_s:.3f}",
            f"{run.host_s:.3f}",
            "-" if run.instructions is None else f"{run.instructions:,}",
            "-" if run.boot_s is None else f"{run.boot_s:.2f}",
            run.output.strip(),
        )
    return table


@app.command(context_settings={"ignore_unknown_options": True})
def run(
    workload: Annotated[
        str, typer.Argument(help="A built-in workload, a C file or a static binary.")
    ],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments for the workload.")] = None,
    deterministic: Annotated[
        bool,
        typer.Option(
            help="icount mode: repeatable to the instruction, reports guest instructions."
        ),
    ] = False,
    accel: Annotated[
        Accel, typer.Option(help="tcg, kvm, or auto (KVM only if a probe boots).")
    ] = Accel.TCG,
    timeout: Annotated[float, typer.Option(help="Seconds the workload may run.")] = 300.0,
    disk: GuestDisksOpt = None,
    cflags: CflagsOpt = None,
    config: ConfigOpt = None,
    arch: ArchOpt = DEFAULT_ARCH,
    as_json: JsonOpt = False,
) -> None:
    """Golden run: boot the guest, run WORKLOAD fault-free, print its output and exit status.

    vmfault's own options may stand anywhere; other options go to the workload. After `--`
    everything goes to the workload.
    """
    name, extra = _user_workload(workload, cflags)
    spec = _spec(config, None, None, None, extra, arch)
    _require_known(name, spec)
    disks = _guest_disks(disk, arch)
    disk_required(name, len(disks))
    image = prepare_image(spec, log=_progress)
    argv = [name, *(args or [])]
    if len(argv) == 1:
        argv += list(image.workload(name).default_args)
    result = golden_run(
        image, argv, deterministic=deterministic, accel=accel, timeout_s=timeout, disks=disks
    )
    if as_json:
        out.print_json(json.dumps(result.to_json()))
    else:
        sys.stdout.write(result.output)
        sys.stdout.flush()
        if result.stderr:
            sys.stderr.write(result.stderr.decode("utf-8", errors="replace"))
        _progress(
            f"exit status {result.exit_status}"
            + (f" ({result.signal})" if result.signal else "")
            + f", {result.guest_s:.3f} s guest time"
            + ("" if result.instructions is None else f", {result.instructions:,} instructions")
            + f", {result.accel}"
            + "".join(f", disk {n} is /dev/{d}" for n, d in result.disks.items())
        )
    if result.exit_status != 0:
        raise typer.Exit(1)


@app.command(context_settings={"ignore_unknown_options": True})
def inject(
    workload: Annotated[
        str | None,
        typer.Option(
            "--workload", "-w", help="Built-in name, C file or binary (omit with --testbed)."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option(
            help="register:rip, register:gpr, memory:ram, "
            "memory:process, memory:0xADDR, memory:@SYMBOL, "
            "kernel-code:FUNCTION ... (or --op for an instruction result)"
        ),
    ] = None,
    bits: Annotated[
        str | None,
        typer.Option(
            help="59 | 3,7 | 52-62 | k2 | burst:4 | stuck1 | value:0x0 (default: one random bit; "
            "instruction results: one bit of the exponent, operand or flags)"
        ),
    ] = None,
    op: Annotated[
        str | None,
        typer.Option(
            help="Instruction class whose result is corrupted: fadd fmul fsub fdiv cmp xor sar "
            "idiv imul, or fp int-alu load store branch all."
        ),
    ] = None,
    function: Annotated[
        str | None,
        typer.Option(help="With --op: the function (default: the whole executable)."),
    ] = None,
    instance: Annotated[
        str,
        typer.Option(help="With --op: the dynamic instance N (from 1), or random."),
    ] = "random",
    start_index: Annotated[
        int | None,
        typer.Option(help="With --op: first instance a random choice may pick (default 1)."),
    ] = None,
    max_dic: Annotated[
        int | None,
        typer.Option(help="With --op: last instance a random choice may pick (default: all)."),
    ] = None,
    faults_per_run: Annotated[
        int | None, typer.Option(help="With --op: instances corrupted in the run (default 1).")
    ] = None,
    probability: Annotated[
        float | None,
        typer.Option(
            help="With --op: corrupt each instance with this probability instead. Disk "
            "faults: fault each matching request with this probability."
        ),
    ] = None,
    trigger: Annotated[
        str | None,
        typer.Option(help="time | time:20ms | exec:SYMBOL#N | icount:N (default: a random time)"),
    ] = None,
    context: Annotated[
        Context, typer.Option(help="Register faults: user, kernel or any.")
    ] = Context.ANY,
    period: Annotated[
        str | None,
        typer.Option(help="Judge the system this long after the fault, e.g. 1s (guest time)."),
    ] = None,
    sectors: Annotated[
        str | None,
        typer.Option(
            help="Disk faults: touched (a sector the golden run read or wrote, the default), "
            "any, N or A-B (512-byte sectors)."
        ),
    ] = None,
    errno: Annotated[
        str | None,
        typer.Option(help="Disk faults that fail requests: the errno by name (EIO, ENOSPC, ...)."),
    ] = None,
    delay: Annotated[
        str | None,
        typer.Option(
            help="disk:latency: how long each request waits; network:delay and "
            "reorder: how long frames are held (e.g. 50ms)."
        ),
    ] = None,
    jitter: Annotated[
        str | None,
        typer.Option(help="disk:latency and network:delay: +- this much more or less, uniform."),
    ] = None,
    once: Annotated[
        bool, typer.Option("--once", help="Disk faults: fault only the first matching request.")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 1,
    index: Annotated[int, typer.Option(help="Experiment index under the seed.")] = 0,
    workload_args: Annotated[
        list[str] | None, typer.Option("--args", help="Workload argument (repeat for several).")
    ] = None,
    deterministic: Annotated[bool, typer.Option(help="icount mode: repeatable runs.")] = False,
    budget: BudgetOpt = None,
    restore: RestoreOpt = RestoreMethod.TEMPLATE,
    crash_patterns: Annotated[
        Path | None, typer.Option(help="TOML file of extra crash patterns.")
    ] = None,
    disk: GuestDisksOpt = None,
    cflags: CflagsOpt = None,
    config: ConfigOpt = None,
    testbed_file: Annotated[
        Path | None,
        typer.Option(
            "--testbed",
            help="A campaign file whose [[machine]] tables (and judge, network, budget) make "
            "the machines of the experiment, instead of --workload.",
        ),
    ] = None,
    machine: Annotated[
        str | None,
        typer.Option(help="The machine the fault goes to (default: the judged one)."),
    ] = None,
    link: Annotated[
        str | None, typer.Option(help="Network faults: the link, e.g. client-server.")
    ] = None,
    direction: Annotated[
        str | None, typer.Option(help="Network faults: both, in or out (from the first named).")
    ] = None,
    burst: Annotated[
        float | None, typer.Option(help="network:loss: mean frames lost in a row.")
    ] = None,
    where: Annotated[
        str | None, typer.Option(help="network:corrupt: any, headers or payload.")
    ] = None,
    bandwidth: Annotated[str | None, typer.Option(help="network:rate: e.g. 1mbit.")] = None,
    groups: Annotated[
        str | None,
        typer.Option(help="network:partition: groups split by |, names by commas: a|b,c."),
    ] = None,
    arch: ArchOpt = DEFAULT_ARCH,
    as_json: JsonOpt = False,
) -> None:
    """Run one experiment: inject one fault into WORKLOAD and classify what happens.

    With --op, the fault goes into the result of a dynamic instance of an instruction class
    (F-SEFI's fine-grained mode): the instance executes, then bits of its result flip.
    A disk:KIND[@NAME] target faults a disk given with --disk.

    With --testbed, the experiment runs on a campaign file's machines; --machine names the
    one the fault goes to, and network:KIND targets act on the frames between them.
    """
    spec = FaultSpec.from_options(
        target=target, bits=bits, trigger=trigger,
        context=None if context is Context.ANY else context, op=op, function=function,
        instance=_instance(instance), start_index=start_index, max_dic=max_dic,
        faults_per_run=faults_per_run, probability=probability, period=period,
        sectors=sectors, errno=errno, once=once or None,
        machine=machine, link=link, direction=direction, burst=burst, where=where,
        delay=delay, jitter=jitter, bandwidth=bandwidth, groups=_groups(groups),
        spell=_option_name, arch=arch,
    )  # fmt: skip
    hang_budget = None if budget is None else Budget.parse(budget)
    disks = _guest_disks(disk, arch)
    if spec.disk is not None:
        arch.require(DISKS)
        spec.disk.disk_of({d.name: d.sectors for d in disks})
    table = None
    if crash_patterns is not None:
        table = CrashTable.default().extended(CrashTable.load(crash_patterns))
    if testbed_file is not None:
        if workload is not None or workload_args or cflags or deterministic or disks:
            raise UsageError(
                "--testbed gives the machines and their workloads",
                hint="remove --workload, --args, --cflags, --deterministic and --disk",
            )
        record = _inject_on_testbed(testbed_file, spec, hang_budget, table, seed=seed, index=index)
        _print_record(record, spec, as_json=as_json)
        return
    if workload is None:
        raise UsageError("no workload given", hint="add --workload NAME, or --testbed FILE")
    if spec.machine not in (None, DEFAULT_MACHINE):
        raise UsageError(
            f"no machine {spec.machine!r}: --workload makes one machine, {DEFAULT_MACHINE}",
            hint="give --testbed FILE for a testbed of several machines",
        )
    if spec.network is not None:
        raise UsageError(
            f"{spec.target.spelling} needs machines joined by a network",
            hint="give --testbed FILE with two or more [[machine]] tables",
        )
    name, extra = _user_workload(workload, cflags)
    disk_required(name, len(disks))
    image_spec = _spec(config, None, None, None, extra, arch)
    _require_known(name, image_spec)
    if spec.instruction is not None:
        _check_function(extra, spec.instruction.function)
    image = prepare_image(image_spec, log=_progress)
    argv = [name, *(workload_args or image.workload(name).default_args)]
    if spec.instruction is not None:  # a bad function fails before any boot
        WorkloadBinary(image.workload(name).host_binary).code_range(spec.instruction.function)
    with Experimenter.single(
        image,
        argv,
        deterministic=deterministic,
        budget_factor=hang_budget or Budget(),
        crash_table=table,
        disks=disks,
        restore=restore,
    ) as experimenter:
        record = experimenter.run(spec, seed=seed, index=index)
    _print_record(record, spec, as_json=as_json)


def _print_record(record: ExperimentRecord, spec: FaultSpec, *, as_json: bool) -> None:
    """`vmfault inject`'s output: the record as JSON, or its outcome and fault in lines."""
    if as_json:
        out.print_json(json.dumps(record.to_json()))
        return
    if spec.instruction is not None:
        _print_instruction_record(record)
        return
    if isinstance(record.injection, DiskInjection):
        _print_disk_record(record, record.injection)
        return
    fault = record.to_json()["fault"]
    out.print(f"[bold]{record.outcome.value}[/bold]: {record.reason}", highlight=False)
    if spec.network is not None:
        period = "" if spec.network.duration_s is None else f" for {spec.network.duration_s:g} s"
        line = (
            f"fault: {fault['target']} on {fault['location']} from "
            f"{record.injection.trigger.spec} on {fault['machine']}{period}"
        )
    else:
        line = (
            f"fault: {fault['target']} at {fault['location']} bits {fault['bits']} "
            f"{fault['before']} -> {fault['after']} ({record.injection.trigger.describe()})"
        )
    out.print(line, highlight=False, markup=False)
    if record.latency is not None:
        out.print(f"latency: {record.latency.value:,} {record.latency.unit.value}")
    if record.evidence:
        out.print(f"evidence: {record.evidence}", highlight=False, markup=False)
    if len(record.machines) > 1:
        for run in record.machines:
            out.print(
                f"{run.machine}: {run.outcome.value}: {run.reason}", highlight=False, markup=False
            )
    network = record.to_json().get("network")
    if network is not None:
        counts = ", ".join(f"{network[k]} {k}" for k in _NETWORK_COUNTS if network.get(k))
        out.print(f"frames: {counts or 'none'}", highlight=False, markup=False)


_NETWORK_COUNTS = ("seen", "dropped", "corrupted", "delayed", "duplicated", "reordered")


def _groups(text: str | None) -> list[list[str]] | None:
    """`a|b,c` as the groups [["a"], ["b", "c"]] of a partition."""
    if text is None:
        return None
    return [
        [name.strip() for name in group.split(",") if name.strip()] for group in text.split("|")
    ]


def _budget(text: str | None) -> Budget:
    """The hang budget a --budget gives (default: 2 golden runs)."""
    return Budget() if text is None else Budget.parse(text)


def _inject_on_testbed(
    path: Path,
    spec: FaultSpec,
    budget: Budget | None,
    table: CrashTable | None,
    *,
    seed: int,
    index: int,
) -> ExperimentRecord:
    """One experiment on the machines of the campaign file at `path`."""
    campaign = load_campaign(path)
    names = campaign.machine_names
    if spec.machine is not None and spec.machine not in names:
        raise UsageError(
            f"no machine {spec.machine!r} in {path}", hint="machines: " + ", ".join(names)
        )
    if spec.network is not None:
        if not campaign.networked:
            raise UsageError(
                f"{spec.target.spelling} needs machines joined by a network",
                hint=f"give {path} two or more [[machine]] tables",
            )
        spec.network.check(list(campaign.machine_names))
    if table is None and campaign.crash_patterns_path() is not None:
        patterns = campaign.crash_patterns_path()
        assert patterns is not None
        table = CrashTable.default().extended(CrashTable.load(patterns))
    image = campaign_image(campaign, log=_progress)
    testbed = Testbed(
        image, campaign_machines(campaign, image), judge=campaign.campaign.judge,
        network=campaign.networked,
    )  # fmt: skip
    chosen = campaign.campaign.hang_budget if budget is None else budget
    with Experimenter(testbed, budget_factor=chosen, crash_table=table) as experimenter:
        return experimenter.run(spec, seed=seed, index=index)


def _print_disk_record(record: ExperimentRecord, injection: DiskInjection) -> None:
    out.print(f"[bold]{record.outcome.value}[/bold]: {record.reason}", highlight=False)
    out.print(
        f"fault: {injection.target} on {injection.location} ({injection.trigger.spec}), "
        f"{record.activation.value}: {injection.requests_faulted} of "
        f"{injection.requests_seen} matching requests faulted",
        highlight=False,
        markup=False,
    )
    if injection.fault == "corrupt" and injection.before is not None:
        out.print(
            f"stored word at byte {injection.offset}: {injection.before:#018x} -> "
            f"{injection.after or 0:#018x}, read back {injection.readback or 0:#018x}",
            highlight=False,
        )
    for request in injection.requests[:10]:
        what = request.errno or (
            "" if request.delay_s is None else f"{request.delay_s * 1e3:.1f} ms"
        )
        out.print(
            f"  #{request.number} {request.op} sector {request.sector} (+{request.sectors}) "
            f"{request.action} {what}",
            highlight=False,
            markup=False,
        )
    if record.evidence:
        out.print(f"evidence: {record.evidence}", highlight=False, markup=False)


def _check_function(user: tuple[UserWorkload, ...], function: str | None) -> None:
    """A user's binary is checked for `function` before any image is built."""
    if user and user[0].path.suffix != ".c":
        WorkloadBinary(user[0].path).code_range(function)


def _option_name(key: str) -> str:
    """A fault option's command-line spelling (`--rate-unit`)."""
    return "--" + key.replace("_", "-")


def _instance(text: str) -> int | None:
    if text.strip().lower() == "random":
        return None
    try:
        return int(text, 0)
    except ValueError:
        raise UsageError(
            f"invalid instance {text!r}", hint="give a number from 1, or random"
        ) from None


def _print_instruction_record(record: ExperimentRecord) -> None:
    out.print(f"[bold]{record.outcome.value}[/bold]: {record.reason}", highlight=False)
    for injection in record.injections:
        if isinstance(injection, InstructionInjection) and injection.instance is not None:
            out.print(fsefi_line(injection), highlight=False, markup=False)
    if record.output:
        sys.stdout.write(record.output)
        sys.stdout.flush()
    if record.latency is not None:
        out.print(f"latency: {record.latency.value:,} {record.latency.unit.value}")
    if record.evidence:
        out.print(f"evidence: {record.evidence}", highlight=False, markup=False)


@app.command(context_settings={"ignore_unknown_options": True})
def profile(
    workload: Annotated[
        str, typer.Option("--workload", "-w", help="Built-in name, C file or binary.")
    ],
    function: Annotated[
        str | None, typer.Option(help="The function (default: the whole executable).")
    ] = None,
    workload_args: Annotated[
        list[str] | None, typer.Option("--args", help="Workload argument (repeat for several).")
    ] = None,
    deterministic: Annotated[bool, typer.Option(help="icount mode: repeatable runs.")] = False,
    cflags: CflagsOpt = None,
    config: ConfigOpt = None,
    arch: ArchOpt = DEFAULT_ARCH,
    as_json: JsonOpt = False,
) -> None:
    """Count each instruction class executed inside FUNCTION by the workload process
    (F-SEFI's profile): per class and per static instruction, from one golden run."""
    name, extra = _user_workload(workload, cflags)
    image_spec = _spec(config, None, None, None, extra, arch)
    _require_known(name, image_spec)
    _check_function(extra, function)
    image = prepare_image(image_spec, log=_progress)
    WorkloadBinary(image.workload(name).host_binary).code_range(function)
    argv = [name, *(workload_args or image.workload(name).default_args)]
    result = profile_instructions(
        image, argv, function=function, deterministic=deterministic, log=_progress
    )
    result.require_executed(image.workload(name).source_kind)  # never an all-zero table
    if as_json:
        out.print_json(json.dumps(result.to_json()))
        return
    out.print(result.fsefi_line, highlight=False, markup=False)
    classes = Table(title=f"{function or name}: dynamic instructions by class")
    classes.add_column("class")
    classes.add_column("count", justify="right")
    for label, count in result.classes.items():
        classes.add_row(label, f"{count:,}")
    out.print(classes)
    listing = Table(title="per static instruction")
    for column in ("address", "count", "disassembly", "classes"):
        listing.add_column(column, justify="right" if column == "count" else "left")
    for insn in result.instructions:
        where = insn.function if function is None else None
        listing.add_row(
            f"{insn.address:#x}" + (f" <{where}>" if where else ""),
            f"{insn.count:,}",
            insn.text,
            " ".join(c for c in insn.classes if c != "all"),
        )
    out.print(listing)


class RateUnitOpt(enum.StrEnum):
    """Units of --rate."""

    FIT_PER_MBIT = "fit-per-mbit"
    PER_GIB_MONTH = "per-gib-month"


@app.command(context_settings={"ignore_unknown_options": True})
def storm(
    workload: Annotated[
        str | None,
        typer.Option(
            "--workload", "-w", help="Built-in name, C file or binary (omit with --idle)."
        ),
    ] = None,
    flips: Annotated[int, typer.Option(min=1, help="Number of flips.")] = 10,
    interval: Annotated[
        str | None, typer.Option(help="10ms | 5ms..50ms | poisson:RATE (flips per guest second)")
    ] = None,
    region: Annotated[
        str, typer.Option(help="ram | kernel-text | kernel-data | process | 0xSTART-0xEND[,...]")
    ] = "ram",
    rate: Annotated[
        float | None, typer.Option(help="Physical upset rate (instead of --interval).")
    ] = None,
    rate_unit: Annotated[
        RateUnitOpt, typer.Option(help="Unit of --rate.")
    ] = RateUnitOpt.FIT_PER_MBIT,
    compression: Annotated[float, typer.Option(help="Real-world seconds per guest second.")] = 1e9,
    idle: Annotated[
        str | None, typer.Option(help="No workload: the idle system for this long, e.g. 2s.")
    ] = None,
    period: Annotated[
        str | None,
        typer.Option(help="Judge the system this long after the last flip (guest time)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of every random choice.")] = 1,
    workload_args: Annotated[
        list[str] | None, typer.Option("--args", help="Workload argument (repeat for several).")
    ] = None,
    deterministic: Annotated[bool, typer.Option(help="icount mode: exact guest time.")] = False,
    budget: BudgetOpt = None,
    restore: RestoreOpt = RestoreMethod.TEMPLATE,
    disk: GuestDisksOpt = None,
    cflags: CflagsOpt = None,
    config: ConfigOpt = None,
    arch: ArchOpt = DEFAULT_ARCH,
    as_json: JsonOpt = False,
) -> None:
    """A storm of memory bit flips on a schedule in guest time, then the outcome."""
    spec = FaultSpec.from_options(
        target=f"memory:{region}", flips=flips, interval=interval, rate=rate,
        rate_unit=None if rate is None else rate_unit.value,
        compression=None if rate is None else compression, period=period,
        spell=lambda key: "--region" if key == "target" else _option_name(key), arch=arch,
    )  # fmt: skip
    disks = _guest_disks(disk, arch)
    if idle is not None:
        if parse_cflags(cflags or "", label="--cflags"):
            raise UsageError("--cflags do not apply to the idle system", hint="remove --cflags")
        image = prepare_image(_spec(config, None, None, None, arch=arch), log=_progress)
        argv = list(idle_argv(parse_duration_s(idle)))
    else:
        if workload is None:
            raise UsageError("no workload given", hint="add --workload NAME, or --idle 2s")
        name, extra = _user_workload(workload, cflags)
        image_spec = _spec(config, None, None, None, extra, arch)
        _require_known(name, image_spec)
        disk_required(name, len(disks))
        image = prepare_image(image_spec, log=_progress)
        argv = [name, *(workload_args or image.workload(name).default_args)]
    with Experimenter.single(
        image,
        argv,
        deterministic=deterministic,
        budget_factor=_budget(budget),
        disks=disks,
        restore=restore,
    ) as experimenter:
        record = experimenter.run(spec, seed=seed)
    if as_json:
        out.print_json(json.dumps(record.storm_json()))
        return
    data = record.storm_json()
    for flip in data["flips"]:
        where = "-" if flip["address"] is None else flip["address"]
        out.print(
            f"{flip['time_s'] * 1e3:9.3f} ms  {where:>12}  bit {flip['bit']}  "
            f"{flip['before']} -> {flip['after']}",
            highlight=False,
        )
    out.print(f"[bold]{record.outcome.value}[/bold]: {record.reason}", highlight=False)
    storm = record.storm
    if storm is not None:
        out.print(
            f"timing: max error {storm.max_error_s * 1e3:.3f} ms per gap ({storm.guest_time})"
            + (
                ""
                if storm.real_world_s is None
                else f", stands for {storm.real_world_s:,.0f} s of real-world time"
            )
        )


def _require_known(name: str, spec: ImageSpec) -> None:
    known = {*builtin_workload_names(), *(w.name for w in spec.user_workloads)}
    if name not in known:  # before any build: bad input fails at once
        raise UsageError(
            f"no workload named {name!r}",
            hint=f"choose one of {', '.join(sorted(known))}, or give a C file or static binary",
        )


@app.command()
def workloads(
    deterministic: Annotated[bool, typer.Option(help="Use icount mode.")] = False,
    arch: ArchOpt = DEFAULT_ARCH,
) -> None:
    """Golden-run every built-in workload and print a table."""
    image = prepare_image(ImageSpec(arch=arch), log=_progress)
    runs = []
    for name in builtin_workload_names():
        argv = [name, *image.workload(name).default_args]
        disks = [parse_disk("data:64M")] if BUILTIN_WORKLOADS[name].needs_disk else []
        _progress(f"golden run: {' '.join(argv)}" + (" (on a 64M disk)" if disks else ""))
        runs.append(golden_run(image, argv, deterministic=deterministic, disks=disks))
    out.print(_golden_table(runs))


# ---------------------------------------------------------------------------- campaigns


class ExportKind(enum.StrEnum):
    """Export file formats."""

    CSV = "csv"
    JSONL = "jsonl"
    PARQUET = "parquet"


MethodOpt = Annotated[IntervalMethod, typer.Option(help="Interval method for every rate.")]
ConfidenceOpt = Annotated[float, typer.Option(min=0.5, max=0.9999, help="Interval confidence.")]


def _print_status(
    store: SQLiteStore, *, confidence: float, method: IntervalMethod, as_json: bool
) -> None:
    """What `campaign status` prints (and `campaign run` at its end): the summary's tables
    and the VMM reactions grouped by message, or their JSON (`status_json`)."""
    if as_json:
        out.print_json(json.dumps(status_json(store, confidence=confidence, method=method)))
        return
    _print_summary(store_summary(store, confidence=confidence, method=method), as_json=False)
    table = reactions_table(store_reactions(store))
    if table is not None:
        out.print(table)


def _print_summary(summary: Summary, *, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(summary.to_json()))
        return
    for table in summary_tables(summary):
        out.print(table)


ServeOpt = Annotated[
    bool, typer.Option("--serve", help="Serve a live dashboard on 127.0.0.1 while it runs.")
]
PortOpt = Annotated[
    int | None,
    typer.Option(
        min=0, max=65535, help="Port of the dashboard (default 8765 or the next free one; 0: any)."
    ),
]


def _run(
    prepared: Prepared,
    workers: int | None,
    *,
    as_json: bool,
    confidence: float,
    method: IntervalMethod,
    serve: bool = False,
    port: int | None = None,
    cluster: Cluster | None = None,
) -> None:
    def go() -> None:
        _run_campaign(prepared, workers, as_json=as_json, confidence=confidence, method=method,
                      cluster=cluster)  # fmt: skip

    if not serve:
        go()
        return
    from vmfault.serve import LiveServer  # noqa: PLC0415 (web stack loaded only to serve)

    with LiveServer([prepared.store.path], port=port, confidence=confidence, method=method) as web:
        err.print(f"dashboard (while the campaign runs): {web.url}", highlight=False, markup=False)
        try:
            go()
        finally:
            prepared.store.close()  # the writer is done: the page's last update says so


def _run_campaign(
    prepared: Prepared,
    workers: int | None,
    *,
    as_json: bool,
    confidence: float,
    method: IntervalMethod,
    cluster: Cluster | None = None,
) -> None:
    store = prepared.store
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[outcomes]}"),
    )
    with Progress(*columns, console=err, disable=as_json) as bar:
        task = bar.add_task(
            prepared.spec.campaign.name,
            total=prepared.plan.total,
            completed=len(store.done_ids()),
            rate="",
            outcomes="",
        )

        def on_record(progress: CampaignProgress, _: Completed) -> None:
            counts = " ".join(f"{k}={v}" for k, v in progress.outcomes.items() if v)
            bar.update(
                task, completed=progress.done, rate=f"{progress.rate_per_s:.1f}/s", outcomes=counts
            )

        run_campaign(prepared, workers=workers, on_record=on_record, log=_progress, cluster=cluster)
    _print_status(store, confidence=confidence, method=method, as_json=as_json)


ExecutorOpt = Annotated[
    str | None,
    typer.Option(help="local, dask or slurm (default: campaign.executor, else local)."),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(help="The Dask scheduler, tcp://HOST:PORT (implies --executor dask)."),
]


@contextlib.contextmanager
def _cluster(options: ClusterOptions | None, db: Path) -> Iterator[Cluster | None]:
    """The Dask cluster of a campaign, connected (None for local workers), closed after."""
    if options is None:
        yield None
        return
    if options.executor is ExecutorName.SLURM:
        _progress("submitting the SLURM jobs of the campaign's Dask workers")
    cluster = connect(options, log_directory=Path(f"{db}.slurm"))
    try:
        yield cluster
    finally:
        cluster.close()


@campaign_app.command("run")
def campaign_run(
    file: Annotated[Path, typer.Argument(help="The campaign file (TOML).")],
    db: Annotated[Path | None, typer.Option(help="Results database (default: NAME.db).")] = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Override campaign.workers.")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing database.")] = False,
    executor: ExecutorOpt = None,
    scheduler: SchedulerOpt = None,
    confidence: ConfidenceOpt = 0.95,
    method: MethodOpt = IntervalMethod.WILSON,
    as_json: JsonOpt = False,
    serve: ServeOpt = False,
    port: PortOpt = None,
) -> None:
    """Run a campaign; every record is committed as it finishes."""
    spec = load_campaign(file)
    options = cluster_options(spec, executor=executor, scheduler=scheduler)
    path = db or Path(f"{spec.campaign.name}.db")
    if path.exists():
        if not overwrite:
            raise UsageError(
                f"{path} already exists",
                hint=f"continue it with `vmfault campaign resume {path}`, "
                "or pass --overwrite to start again",
            )
        for stale in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            stale.unlink(missing_ok=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _cluster(options, path) as cluster:
        prepared = prepare_campaign(spec, path, resume=False, log=_progress)
        _run(
            prepared, workers, as_json=as_json, confidence=confidence, method=method,
            serve=serve, port=port, cluster=cluster,
        )  # fmt: skip


@campaign_app.command("resume")
def campaign_resume(
    db: Annotated[Path, typer.Argument(help="The campaign's results database.")],
    workers: Annotated[int | None, typer.Option(min=1, help="Override campaign.workers.")] = None,
    executor: ExecutorOpt = None,
    scheduler: SchedulerOpt = None,
    confidence: ConfidenceOpt = 0.95,
    method: MethodOpt = IntervalMethod.WILSON,
    as_json: JsonOpt = False,
    serve: ServeOpt = False,
    port: PortOpt = None,
) -> None:
    """Run exactly the experiments an interrupted campaign is missing (and those lost to
    the infrastructure on every attempt)."""
    _require_db(db)
    with SQLiteStore.open_readonly(db) as reader:
        spec = CampaignSpec.from_json(reader.campaign_info().spec_json)
    options = cluster_options(spec, executor=executor, scheduler=scheduler)
    with _cluster(options, db) as cluster:
        prepared = prepare_campaign(spec, db, resume=True, log=_progress)
        _run(
            prepared, workers, as_json=as_json, confidence=confidence, method=method,
            serve=serve, port=port, cluster=cluster,
        )  # fmt: skip


def _require_db(db: Path) -> None:
    if not db.is_file():
        raise UsageError(f"no campaign database at {db}", hint="give the path `campaign run` used")


@campaign_app.command("status")
def campaign_status(
    db: Annotated[Path, typer.Argument(help="The campaign's results database.")],
    confidence: ConfidenceOpt = 0.95,
    method: MethodOpt = IntervalMethod.WILSON,
    as_json: JsonOpt = False,
) -> None:
    """Counts and rates with intervals, for a running or finished campaign."""
    _require_db(db)
    with SQLiteStore.open_readonly(db) as store:
        _print_status(store, confidence=confidence, method=method, as_json=as_json)


@campaign_app.command("export")
def campaign_export(
    db: Annotated[Path, typer.Argument(help="The campaign's results database.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="File to write.")],
    fmt: Annotated[
        ExportKind, typer.Option("--format", help="csv, jsonl or parquet.")
    ] = ExportKind.CSV,
) -> None:
    """One row per experiment, with an experiment_id column."""
    _require_db(db)
    with SQLiteStore.open_readonly(db) as store:
        rows = export(store, output, format=fmt.value)
    _progress(f"wrote {rows} rows to {output}")


@campaign_app.command("import-sefi")
def campaign_import_sefi(
    ini: Annotated[Path, typer.Argument(help="An F-SEFI configuration (SEFI_conf.ini).")],
    workload: Annotated[
        str, typer.Option("--workload", "-w", help="The application (F-SEFI's -a).")
    ],
    function: Annotated[
        str | None, typer.Option(help="The function (F-SEFI's -f; default: the whole executable).")
    ] = None,
    runs: Annotated[int, typer.Option(min=1, help="Experiments per op (F-SEFI's -r).")] = 100,
    faults_per_run: Annotated[
        int, typer.Option(min=1, help="Faults per run without probability mode (F-SEFI's -n).")
    ] = 1,
    name: Annotated[str | None, typer.Option(help="Campaign name.")] = None,
    seed: Annotated[int, typer.Option(help="Campaign seed.")] = 1,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Campaign file to write (default: print).")
    ] = None,
) -> None:
    """Turn an F-SEFI configuration into a campaign file: one instruction fault family per
    enabled op, with its bit range, bits to flip, probability, start index and max DIC."""
    try:
        text = ini.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read {ini}: {exc.strerror}", hint="check the path") from None
    config = parse_sefi_ini(text, source=ini.name)
    if "/" in workload or workload.endswith(".c"):  # a file: relative to the campaign file
        place = (output or Path("campaign.toml")).resolve().parent
        workload = os.path.relpath(Path(workload).resolve(), place)
    default = f"sefi-{Path(workload).stem}" + (f"-{function}" if function else "")
    campaign_name = name or re.sub(r"[^A-Za-z0-9_.-]", "-", default)
    toml = sefi_campaign_toml(
        config, workload=workload, function=function, runs=runs,
        faults_per_run=faults_per_run, name=campaign_name, seed=seed, source=ini.name,
    )  # fmt: skip
    if output is None:
        CampaignSpec.model_validate(tomllib.loads(toml))
        sys.stdout.write(toml)
        return
    output.write_text(toml)
    load_campaign(output)
    _progress(f"wrote {output}: {len(config.ops)} fault families ({', '.join(config.ops)})")


@campaign_app.command("schema")
def campaign_schema() -> None:
    """Print the JSON Schema of campaign files."""
    out.print_json(json.dumps(campaign_json_schema()))


@app.command()
def replay(
    db: Annotated[Path, typer.Argument(help="The campaign's results database.")],
    experiment_id: Annotated[int, typer.Argument(help="The experiment to run again.")],
    as_json: JsonOpt = False,
) -> None:
    """Run one recorded experiment again and show its console."""
    _require_db(db)
    with SQLiteStore.open_readonly(db) as store:
        spec = CampaignSpec.from_json(store.campaign_info().spec_json)
        recorded = store.record_json(experiment_id)
    if recorded is None:
        raise UsageError(
            f"experiment {experiment_id} is not in {db}",
            hint="see `vmfault campaign export` for the recorded ids",
        )
    plan = plan_campaign(spec)
    planned = plan.experiment(experiment_id)
    image = campaign_image(spec, log=_progress)
    testbed = Testbed(
        image, campaign_machines(spec, image), judge=spec.campaign.judge, network=spec.networked
    )
    with Experimenter(testbed, budget_factor=spec.campaign.hang_budget) as experimenter:
        mark = experimenter.machine.console.mark()
        record = experimenter.run(planned.spec, seed=planned.seed, index=planned.index)
        console = experimenter.machine.console.transcript(mark)
    same = record.outcome.value == recorded.get("outcome")
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "replayed": record.to_json(),
                    "recorded": recorded,
                    "same_outcome": same,
                    "console": console,
                }
            )
        )
        return
    sys.stdout.write(console)
    out.print(f"[bold]{record.outcome.value}[/bold]: {record.reason}", highlight=False)
    out.print(
        f"recorded: {recorded.get('outcome')}: {recorded.get('reason')}",
        highlight=False,
        markup=False,
    )
    out.print(
        "same outcome as recorded"
        if same
        else "outcome differs from the record"
        + ("" if spec.deterministic else " (not a deterministic campaign)")
    )


@app.command()
def report(
    dbs: Annotated[list[Path], typer.Argument(help="A campaign database, or two to compare.")],
    output: Annotated[Path, typer.Option("-o", "--output", help="HTML file, or figures' stem.")],
    fmt: Annotated[str, typer.Option("--format", help="html, png, svg or pdf.")] = "html",
    confidence: ConfidenceOpt = 0.95,
    method: MethodOpt = IntervalMethod.WILSON,
) -> None:
    """A self-contained HTML report of a campaign (two: side by side), or figures for papers."""
    for path in report_command(dbs, output, fmt, confidence=confidence, method=method):
        _progress(f"wrote {path}")


@app.command()
def serve(
    dbs: Annotated[list[Path], typer.Argument(help="A campaign database, or two to compare.")],
    port: PortOpt = None,
    confidence: ConfidenceOpt = 0.95,
    method: MethodOpt = IntervalMethod.WILSON,
) -> None:
    """A live dashboard of a campaign (two: compared) in the browser, on 127.0.0.1 only.

    Reads the database read-only, while the campaign runs or after. Prints the address to
    open (it carries a token); Ctrl-C stops it.
    """
    from vmfault.serve import LiveServer  # noqa: PLC0415 (web stack loaded only to serve)

    with LiveServer(dbs, port=port, confidence=confidence, method=method) as web:
        out.print(web.url, highlight=False, markup=False, soft_wrap=True)
        _progress(f"serving {', '.join(map(str, dbs))} read-only; Ctrl-C stops")
        with contextlib.suppress(KeyboardInterrupt):
            web.wait()
    _progress("stopped")


def _check(table: Table, what: str, ok: bool, detail: str, fix: str = "") -> bool:
    table.add_row(
        what, "[green]ok[/green]" if ok else "[red]missing[/red]", detail, "" if ok else fix
    )
    return ok


@app.command()
def doctor(
    probe: Annotated[bool, typer.Option(help="Boot the guest to test each accelerator.")] = True,
) -> None:
    """Check QEMU, accelerators and the guest image; say what is missing and how to fix it."""
    table = Table(title=f"vmfault {__version__}")
    for column in ("check", "state", "detail", "fix"):
        table.add_column(column, overflow="fold")
    healthy = True
    qemu = shutil.which("qemu-system-x86_64")
    version = ""
    if qemu:
        version = subprocess.run(
            [qemu, "--version"], capture_output=True, text=True, check=False
        ).stdout.splitlines()[0]
    healthy &= _check(
        table,
        "QEMU",
        bool(qemu),
        version or "qemu-system-x86_64 not found",
        "make setup (apt-get install qemu-system-x86)",
    )
    for tool, package in (
        ("qemu-img", "qemu-utils"),
        ("gcc", "gcc"),
        ("busybox", "busybox-static"),
    ):
        found = shutil.which(tool)
        healthy &= _check(
            table,
            tool,
            bool(found),
            found or "not found",
            f"make setup (apt-get install {package})",
        )
    for label, tool, package in (
        ("QEMU aarch64", "qemu-system-aarch64", "qemu-system-arm"),
        ("gcc aarch64", "aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu libc6-dev-arm64-cross"),
    ):
        found = shutil.which(tool)  # needed for --arch aarch64 only
        _check(
            table,
            label,
            bool(found),
            found or "not found",
            f"make setup (apt-get install {package})",
        )
    image = None
    try:
        image = prepare_image(log=_progress)
        _check(table, "guest image", True, f"{image.image_hash} {image.kernel_release}")
    except VmfaultError as exc:
        healthy = _check(table, "guest image", False, exc.one_line(), "make setup")
    for accel in (Accel.TCG, Accel.KVM):
        reason = kvm_blocker() if accel is Accel.KVM else None
        if reason is None and image is not None and probe:
            reason = probe_boot(machine_config(image, ["/bin/busybox", "true"]), accel)
        elif reason is None:
            reason = "not probed"
        ok = reason is None
        if accel is Accel.TCG:
            healthy &= ok
        _check(
            table,
            f"accelerator {accel.value}",
            ok,
            reason or "boots the guest",
            "make setup" if accel is Accel.TCG else "KVM stays off; TCG is used",
        )
    out.print(table)
    if not healthy:
        raise typer.Exit(1)


def _terminate(signum: int, frame: FrameType | None) -> NoReturn:
    # SIGTERM unwinds like Ctrl-C so that every machine's context manager cleans up.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one-line errors, exit status 2 for bad input, clean exit on signals."""
    signal.signal(signal.SIGTERM, _terminate)
    try:
        status = app(args=argv, standalone_mode=False)
    except UsageError as exc:
        _fail(f"error: {exc.one_line()}", 2)
    except CampaignInterruptedError as exc:
        _fail(exc.one_line(), 130)
    except typer.TyperException as exc:  # argument parsing errors
        _fail(f"error: {' '.join(_usage_message(exc).split())}", 2)
    except VmfaultError as exc:
        _fail(exc.one_line(), 1)
    except (KeyboardInterrupt, typer.Abort):
        _fail("interrupted", 130)
    if isinstance(status, int) and status:
        sys.exit(status)


def _usage_message(exc: typer.TyperException) -> str:
    format_message = getattr(exc, "format_message", None)
    return str(format_message()) if callable(format_message) else str(exc)


def _fail(message: str, status: int) -> NoReturn:
    err.print(f"vmfault: {message}", highlight=False, markup=False, soft_wrap=True)
    sys.exit(status)
