"""Which kernel functions a workload's golden run executes most: a sampled profile.

The guest runs from the workload's start hook to its exit hook in short slices; after each
slice the vCPU is halted and its pc read. A pc in the kernel's code (at or above
0xffffffff80000000 on x86-64, 0xffff800000000000 on aarch64: kernel image and modules) is
a kernel sample, attributed to
the kernel symbol at or below it; anything else is a user sample. Short workloads spend
most of their time in user mode, so the run is repeated from a snapshot of the start hook
until enough kernel samples are collected, each repetition at a different phase, so that
samples do not alias with the kernel's timer tick.

A profile is cached beside the image (`image.root / "profiles"`), keyed by argv, so a
campaign profiles once (`load_or_profile_kernel`).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from vmfault.errors import MachineError, MachineTimeoutError, UsageError
from vmfault.files import cache_path, cached_json
from vmfault.guest.image import GuestImage
from vmfault.guest.symbols import KernelSymbols
from vmfault.machine import Machine, RunEnd
from vmfault.session import GuestSession

__all__ = [
    "PROFILE_FORMAT",
    "KernelProfile",
    "load_or_profile_kernel",
    "profile_kernel",
    "profile_path",
]

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())

PROFILE_FORMAT = 1
"""Version of the JSON form written by `KernelProfile.to_json`."""

_SNAPSHOT_NAME = "vmfault-profile-start"


@dataclass(frozen=True)
class KernelProfile:
    """Kernel samples of a workload's golden run(s), by kernel function.

    `samples` maps a kernel function name to its number of samples (each > 0);
    `total_samples` counts every sample, `user_samples` those taken in user space, so
    ``total_samples == user_samples + kernel_samples``. `interval_s` is the requested
    running time between two samples (host seconds); `runs` is the number of golden runs
    sampled, `argv` the workload's command line.
    """

    samples: Mapping[str, int] = field(hash=False)
    total_samples: int
    user_samples: int
    interval_s: float
    runs: int = 1
    argv: tuple[str, ...] = ()
    mean_slice_s: float = 0.0
    """Measured mean host seconds the guest ran per slice (0.0 if unknown)."""

    def __post_init__(self) -> None:
        if any(count <= 0 for count in self.samples.values()):
            raise UsageError("a kernel profile has a function with no samples")
        kernel = sum(self.samples.values())
        if self.user_samples < 0 or self.total_samples != self.user_samples + kernel:
            raise UsageError(
                f"inconsistent kernel profile: {self.total_samples} samples in all, "
                f"{self.user_samples} user and {kernel} kernel"
            )
        ordered = dict(sorted(self.samples.items(), key=lambda item: (-item[1], item[0])))
        object.__setattr__(self, "samples", MappingProxyType(ordered))
        object.__setattr__(self, "argv", tuple(self.argv))

    @property
    def kernel_samples(self) -> int:
        """Samples taken in the kernel."""
        return self.total_samples - self.user_samples

    @property
    def kernel_share(self) -> float:
        """Fraction (0..1) of all samples taken in the kernel; 0.0 without samples."""
        return self.kernel_samples / self.total_samples if self.total_samples else 0.0

    def weights(self) -> list[tuple[str, float]]:
        """Kernel functions with their share of the kernel samples, highest first (ties by
        name). The shares sum to 1 (empty list without kernel samples)."""
        kernel = self.kernel_samples
        return [(name, count / kernel) for name, count in self.top(len(self.samples))]

    def top(self, n: int) -> list[tuple[str, int]]:
        """The `n` kernel functions with the most samples, highest first (ties by name)."""
        if n < 0:
            raise UsageError(f"cannot list the top {n} functions", hint="give a count >= 0")
        return sorted(self.samples.items(), key=lambda item: (-item[1], item[0]))[:n]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict; `from_json` reads it back."""
        return {
            "format": PROFILE_FORMAT,
            "argv": list(self.argv),
            "interval_s": self.interval_s,
            "runs": self.runs,
            "total_samples": self.total_samples,
            "user_samples": self.user_samples,
            "mean_slice_s": self.mean_slice_s,
            "samples": dict(self.samples),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> KernelProfile:
        """The profile `to_json` produced; UsageError if `data` is not one."""
        if data.get("format") != PROFILE_FORMAT:
            raise UsageError(
                f"not a kernel profile of format {PROFILE_FORMAT} (format {data.get('format')!r})",
                hint="delete it to profile again",
            )
        samples = data.get("samples")
        argv = data.get("argv", [])
        interval_s = data.get("interval_s")
        total = data.get("total_samples")
        user = data.get("user_samples")
        runs = data.get("runs", 1)
        mean_slice_s = data.get("mean_slice_s", 0.0)
        if not (
            isinstance(samples, Mapping)
            and all(isinstance(k, str) and _is_int(v) for k, v in samples.items())
            and isinstance(argv, list)
            and all(isinstance(arg, str) for arg in argv)
            and _is_number(interval_s)
            and _is_number(mean_slice_s)
            and _is_int(total)
            and _is_int(user)
            and _is_int(runs)
        ):
            raise UsageError("malformed kernel profile", hint="delete it to profile again")
        assert isinstance(total, int) and isinstance(user, int) and isinstance(runs, int)
        assert isinstance(interval_s, int | float) and isinstance(mean_slice_s, int | float)
        return cls(
            samples={str(k): int(v) for k, v in samples.items()},
            total_samples=total,
            user_samples=user,
            interval_s=float(interval_s),
            runs=runs,
            argv=tuple(str(arg) for arg in argv),
            mean_slice_s=float(mean_slice_s),
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class _Tally:
    kernel: Counter[str] = field(default_factory=Counter)
    user: int = 0
    running_s: float = 0.0
    slices: int = 0


def profile_kernel(
    image: GuestImage,
    argv: Sequence[str],
    *,
    symbols: KernelSymbols,
    interval_s: float = 0.0005,
    timeout_s: float = 120.0,
    min_samples: int = 200,
    max_runs: int = 20,
    seed: int = 0,
) -> KernelProfile:
    """Sample the kernel functions of `argv`'s golden run (start hook to exit hook).

    Each slice lets the guest run for `interval_s` seconds (uniformly jittered between
    half and 1.5 times that; the first slice of a run waits a random fraction of it, from
    a RNG seeded with `seed`), then halts it and reads rip. Runs repeat from a snapshot of
    the start hook until `min_samples` kernel samples or `max_runs` runs; fewer samples
    are not an error. The host timer's resolution (about 1 ms in practice) bounds how
    short a slice really is.

    `timeout_s` bounds each run in host seconds (sampling included); MachineTimeoutError
    if a run does not reach the exit hook in time, MachineError if the guest stops for
    another reason (a panic) or QEMU exits.
    """
    if not interval_s > 0 or not math.isfinite(interval_s):
        raise UsageError(f"bad sampling interval {interval_s!r}", hint="give seconds > 0")
    if min_samples < 1 or max_runs < 1:
        raise UsageError(
            f"min_samples ({min_samples}) and max_runs ({max_runs}) must be at least 1"
        )
    rng = random.Random(seed)
    tally = _Tally()
    runs = 0
    started = time.monotonic()
    with GuestSession(image, argv) as session:
        session.start()
        vm = session.machine
        snapshot = vm.save_snapshot(_SNAPSHOT_NAME) if max_runs > 1 else None
        vm.gdb.set_breakpoint(session.hooks.exited)
        while runs < max_runs and tally.kernel.total() < min_samples:
            if runs:
                assert snapshot is not None
                vm.restore_snapshot(snapshot)
            _sample_run(
                vm,
                session.hooks.exited,
                tally,
                symbols=symbols,
                interval_s=interval_s,
                timeout_s=timeout_s,
                rng=rng,
            )
            runs += 1
    profile = KernelProfile(
        samples=dict(tally.kernel),
        total_samples=tally.user + tally.kernel.total(),
        user_samples=tally.user,
        interval_s=interval_s,
        runs=runs,
        argv=tuple(argv),
        mean_slice_s=tally.running_s / tally.slices if tally.slices else 0.0,
    )
    logger.info(
        "profiled %s: %d kernel and %d user samples in %d runs, %.1f s, %.2f ms per slice",
        " ".join(argv),
        profile.kernel_samples,
        profile.user_samples,
        runs,
        time.monotonic() - started,
        profile.mean_slice_s * 1e3,
    )
    if profile.kernel_samples < min_samples:
        logger.warning(
            "only %d kernel samples of %s after %d runs (wanted %d)",
            profile.kernel_samples,
            " ".join(argv),
            runs,
            min_samples,
        )
    return profile


def _sample_run(
    vm: Machine,
    exited: int,
    tally: _Tally,
    *,
    symbols: KernelSymbols,
    interval_s: float,
    timeout_s: float,
    rng: random.Random,
) -> None:
    """Sample one run, from the halted start state up to the exit hook, into `tally`."""
    gdb = vm.gdb
    kernel_code = vm.platform.kernel_code
    deadline = time.monotonic() + timeout_s
    slice_s = rng.random() * interval_s
    while True:
        if time.monotonic() > deadline:
            raise MachineTimeoutError(
                f"the workload did not reach its exit hook within {timeout_s:g} s of sampling",
                timeout_s=timeout_s,
            )
        run = vm.run_for(slice_s)
        if run.end is RunEnd.EXITED:
            raise MachineError(f"QEMU exited (status {vm.exit_code}) while profiling")
        tally.running_s += run.ran_s
        tally.slices += 1
        rip = gdb.read_register(gdb.pc_name)
        if rip == exited:
            return
        if run.end is not RunEnd.TIME:
            reason = run.stop.reason.value if run.stop is not None else run.end.value
            raw = run.stop.raw if run.stop is not None else ""
            raise MachineError(
                f"the guest stopped at {rip:#x} ({reason}, {raw}) "
                f"while profiling; console tail: {vm.console.transcript()[-300:]!r}"
            )
        if rip >= kernel_code:
            symbol = symbols.containing(rip)
            tally.kernel[symbol.name if symbol is not None else f"{rip:#x}"] += 1
        else:
            tally.user += 1
        slice_s = interval_s * (0.5 + rng.random())


def profile_path(image: GuestImage, argv: Sequence[str]) -> Path:
    """Where the cached profile of `argv` on `image` lives."""
    return cache_path(image.root / "profiles", "kernel", list(argv))


def load_or_profile_kernel(
    image: GuestImage,
    argv: Sequence[str],
    *,
    symbols: KernelSymbols,
    interval_s: float = 0.0005,
    timeout_s: float = 120.0,
    min_samples: int = 200,
    max_runs: int = 20,
    seed: int = 0,
    refresh: bool = False,
) -> KernelProfile:
    """The cached profile of `argv`, or a new one from `profile_kernel`, stored atomically.

    A cached profile is used if it was taken with the same `interval_s` and has at least
    `min_samples` kernel samples, or took at least `max_runs` runs; `refresh` ignores it.
    An unreadable cache file is replaced.
    """

    def usable(cached: KernelProfile) -> bool:
        return (
            cached.argv == tuple(argv)
            and cached.interval_s == interval_s
            and (cached.kernel_samples >= min_samples or cached.runs >= max_runs)
        )

    def make() -> KernelProfile:
        return profile_kernel(
            image, argv, symbols=symbols, interval_s=interval_s, timeout_s=timeout_s,
            min_samples=min_samples, max_runs=max_runs, seed=seed,
        )  # fmt: skip

    return cached_json(
        profile_path(image, argv), make, decode=KernelProfile.from_json,
        encode=KernelProfile.to_json, accept=usable, refresh=refresh,
    )  # fmt: skip
