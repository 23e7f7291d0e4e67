"""KernelProfile arithmetic, its JSON form, and the per-image profile cache."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

import vmfault.profile.kernel as profile_module
from vmfault.errors import UsageError
from vmfault.guest.image import GuestImage
from vmfault.guest.symbols import KernelSymbols
from vmfault.profile.kernel import KernelProfile, load_or_profile_kernel, profile_path

SAMPLES = {"do_idle": 2, "asm_exc_page_fault": 5, "clear_page_erms": 5, "x64_sys_call": 8}


def make_profile(**changes: object) -> KernelProfile:
    fields: dict[str, object] = {
        "samples": SAMPLES,
        "total_samples": 30,
        "user_samples": 10,
        "interval_s": 0.0005,
        "runs": 3,
        "argv": ("checksum", "--rounds", "4"),
        "mean_slice_s": 0.0013,
    }
    fields.update(changes)
    return KernelProfile(**fields)  # type: ignore[arg-type]


def test_counts_top_and_weights() -> None:
    profile = make_profile()
    assert profile.kernel_samples == 20
    assert profile.kernel_share == pytest.approx(20 / 30)
    assert profile.top(3) == [
        ("x64_sys_call", 8),
        ("asm_exc_page_fault", 5),
        ("clear_page_erms", 5),
    ]
    assert profile.top(0) == []
    assert profile.top(99) == profile.top(4)
    weights = profile.weights()
    assert [name for name, _ in weights] == [name for name, _ in profile.top(4)]
    assert weights[0][0] == "x64_sys_call"
    assert weights[0][1] == pytest.approx(0.4)
    assert sum(share for _, share in weights) == pytest.approx(1.0)
    assert [share for _, share in weights] == sorted((s for _, s in weights), reverse=True)
    with pytest.raises(UsageError):
        profile.top(-1)


def test_samples_are_frozen() -> None:
    source = dict(SAMPLES)
    profile = make_profile(samples=source)
    source["do_idle"] = 100
    assert profile.samples["do_idle"] == 2
    with pytest.raises(TypeError):
        profile.samples["do_idle"] = 3  # type: ignore[index]


def test_no_kernel_samples() -> None:
    profile = make_profile(samples={}, total_samples=7, user_samples=7)
    assert profile.weights() == []
    assert profile.top(5) == []
    assert profile.kernel_share == 0.0
    assert make_profile(samples={}, total_samples=0, user_samples=0).kernel_share == 0.0


@pytest.mark.parametrize(
    "changes",
    [
        {"total_samples": 31},
        {"user_samples": -1, "total_samples": 19},
        {"samples": {"do_idle": 0}, "total_samples": 10},
    ],
)
def test_inconsistent_counts_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        make_profile(**changes)


def test_json_round_trip() -> None:
    profile = make_profile()
    data = json.loads(json.dumps(profile.to_json()))
    assert KernelProfile.from_json(data) == profile
    assert data["samples"] == SAMPLES
    assert data["argv"] == ["checksum", "--rounds", "4"]


@pytest.mark.parametrize(
    "damage",
    [
        {"format": 99},
        {"samples": ["do_idle"]},
        {"samples": {"do_idle": "2"}},
        {"total_samples": 30.0},
        {"interval_s": True},
        {"argv": "checksum"},
    ],
)
def test_malformed_json_is_refused(damage: dict[str, object]) -> None:
    data = make_profile().to_json() | damage
    with pytest.raises(UsageError):
        KernelProfile.from_json(data)


@pytest.fixture
def image(tmp_path: Path) -> GuestImage:
    return GuestImage(
        root=tmp_path,
        image_hash="0" * 16,
        kernel=tmp_path / "vmlinux",
        initrd=tmp_path / "initrd",
        kernel_release="6.1.0-test-amd64",
        agent_binary=tmp_path / "agent",
        workloads={},
        disk=None,
    )


def test_cache_profiles_once(image: GuestImage, monkeypatch: pytest.MonkeyPatch) -> None:
    symbols = KernelSymbols.parse("ffffffff81000000 T _stext\n")
    argv = ("checksum", "--rounds", "4")
    calls: list[tuple[str, ...]] = []

    def fake_profile(image: GuestImage, argv: Sequence[str], **options: object) -> KernelProfile:
        calls.append(tuple(argv))
        return make_profile(argv=tuple(argv))

    monkeypatch.setattr(profile_module, "profile_kernel", fake_profile)
    first = load_or_profile_kernel(image, argv, symbols=symbols, min_samples=20)
    path = profile_path(image, argv)
    assert path.parent == image.root / "profiles"
    assert path.is_file()
    assert not list(path.parent.glob(".*partial"))
    second = load_or_profile_kernel(image, argv, symbols=symbols, min_samples=20)
    assert second == first
    assert calls == [argv]

    # too few kernel samples for the request, and fewer runs than allowed: profile again
    load_or_profile_kernel(image, argv, symbols=symbols, min_samples=21, max_runs=4)
    assert len(calls) == 2
    # too few samples, but the cached profile already used every run allowed
    load_or_profile_kernel(image, argv, symbols=symbols, min_samples=21, max_runs=3)
    assert len(calls) == 2
    # another interval, a refresh, or another argv: profile again
    load_or_profile_kernel(image, argv, symbols=symbols, min_samples=20, interval_s=0.001)
    load_or_profile_kernel(image, argv, symbols=symbols, min_samples=20, refresh=True)
    assert len(calls) == 4
    assert profile_path(image, ["checksum"]) != path


def test_damaged_cache_is_replaced(image: GuestImage, monkeypatch: pytest.MonkeyPatch) -> None:
    symbols = KernelSymbols.parse("ffffffff81000000 T _stext\n")
    argv = ("checksum", "--rounds", "4")
    monkeypatch.setattr(
        profile_module, "profile_kernel", lambda image, argv, **options: make_profile()
    )
    path = profile_path(image, argv)
    path.parent.mkdir()
    path.write_text("{not json")
    assert load_or_profile_kernel(image, argv, symbols=symbols, min_samples=20) == make_profile()
    assert KernelProfile.from_json(json.loads(path.read_text())) == make_profile()
