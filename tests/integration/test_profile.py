"""A sampled kernel profile of a real workload's golden runs."""

from __future__ import annotations

import time

import pytest

from vmfault.guest.image import GuestImage
from vmfault.guest.symbols import KERNEL_MAP_BASE, KernelSymbols
from vmfault.profile.kernel import KernelProfile, profile_kernel

pytestmark = pytest.mark.vm

MIN_SAMPLES = 50


def test_profile_checksum(image: GuestImage, kernel_symbols: KernelSymbols) -> None:
    started = time.monotonic()
    profile = profile_kernel(
        image, ["checksum"], symbols=kernel_symbols, min_samples=MIN_SAMPLES, max_runs=10
    )
    elapsed_s = time.monotonic() - started

    assert profile.kernel_samples >= MIN_SAMPLES
    assert profile.total_samples == profile.user_samples + profile.kernel_samples
    assert profile.user_samples > 0
    assert 1 <= profile.runs <= 10
    assert profile.argv == ("checksum",)
    for name in profile.samples:
        symbol = kernel_symbols.get(name)
        assert symbol is not None, name
        assert symbol.address >= KERNEL_MAP_BASE
    weights = profile.weights()
    assert sum(share for _, share in weights) == pytest.approx(1.0)
    assert KernelProfile.from_json(profile.to_json()) == profile

    print(
        f"\nchecksum: {profile.kernel_samples} kernel + {profile.user_samples} user samples "
        f"({profile.kernel_share:.0%} kernel) in {profile.runs} runs, {elapsed_s:.2f} s, "
        f"{profile.mean_slice_s * 1e3:.2f} ms per slice"
    )
    for name, count in profile.top(10):
        print(f"  {count:4d} {count / profile.kernel_samples:6.1%}  {name}")
