"""Image cache: the hash covers every input, a cached build does no work, writes are atomic.

The builds here use a tiny fake PVH kernel instead of Debian's, so no apt and no VM.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import struct
from pathlib import Path

import pytest

from vmfault.errors import ImageError, UsageError
from vmfault.guest import image as image_module
from vmfault.guest.image import (
    ImageInputs,
    ImageSpec,
    build_image,
    default_cache_root,
    load_image,
)
from vmfault.guest.initramfs import MODULE_LIST_PATH
from vmfault.guest.kernel import XEN_ELFNOTE_PHYS32_ENTRY
from vmfault.guest.protocol import HOOK_EXITED, HOOK_STARTED
from vmfault.guest.workloads import (
    UserWorkload,
    WorkloadInput,
    builtin_workload_names,
    plan_workloads,
)


def _toolchain_missing() -> bool:
    busybox = Path("/bin/busybox")
    return shutil.which("gcc") is None or not busybox.is_file()


needs_toolchain = pytest.mark.skipif(_toolchain_missing(), reason="needs gcc and busybox-static")


def fake_kernel(path: Path) -> Path:
    """A minimal ELF with a PVH note and a Linux banner: enough for the image builder."""
    name = b"Xen\0"
    note = struct.pack("<III", len(name), 4, XEN_ELFNOTE_PHYS32_ENTRY) + name + b"\0\0\x00\x01"
    ehdr = (
        b"\x7fELF\x02\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    )
    phdr = struct.pack("<IIQQQQQQ", 4, 4, 120, 0, 0, len(note), len(note), 4)
    path.write_bytes(ehdr + phdr + note + b"Linux version 6.1.0-0-fake (x@y) #1")
    return path


def _base_inputs(tmp_path: Path) -> ImageInputs:
    return ImageInputs(
        kernel_source=tmp_path / "k.deb",
        kernel_sha256="a" * 64,
        kernel_kind="debian",
        modules=("virtio", "pvpanic"),
        agent_source=b"int main(void) { for (;;); }",
        workloads=plan_workloads(),
        gcc_version="gcc (Debian 12.2.0-14) 12.2.0",
        busybox=Path("/bin/busybox"),
        busybox_sha256="b" * 64,
        initrd=None,
        initrd_sha256="",
        disk=None,
    )


def test_digest_changes_when_any_input_changes(tmp_path: Path) -> None:
    base = _base_inputs(tmp_path)
    source = tmp_path / "user.c"
    source.write_text("int main(void) { return 0; }\n")
    changed_workload = dataclasses.replace(base.workloads[0], default_args=("--rounds", "1"))
    variants = {
        "kernel": dataclasses.replace(base, kernel_sha256="c" * 64),
        "kernel kind": dataclasses.replace(base, kernel_kind="user"),
        "modules": dataclasses.replace(base, modules=("virtio",)),
        "agent": dataclasses.replace(base, agent_source=base.agent_source + b"\n"),
        "workload args": dataclasses.replace(
            base, workloads=(changed_workload, *base.workloads[1:])
        ),
        "workload flags": dataclasses.replace(
            base,
            workloads=(dataclasses.replace(base.workloads[0], flags=("-O3",)), *base.workloads[1:]),
        ),
        "extra workload": dataclasses.replace(
            base, workloads=plan_workloads([UserWorkload("user", source)])
        ),
        "gcc": dataclasses.replace(base, gcc_version="gcc 13"),
        "busybox": dataclasses.replace(base, busybox_sha256="d" * 64),
        "initrd": dataclasses.replace(base, initrd_sha256="e" * 64),
        "disk": dataclasses.replace(base, disk=tmp_path / "disk.img"),
    }
    digests = {name: inputs.digest() for name, inputs in variants.items()}
    assert base.digest() not in digests.values()
    assert len(set(digests.values())) == len(digests)
    assert len(base.digest()) == 16
    assert base.digest() == _base_inputs(tmp_path).digest()


def test_digest_ignores_where_an_input_file_lives(tmp_path: Path) -> None:
    base = _base_inputs(tmp_path)
    moved = dataclasses.replace(base, kernel_source=tmp_path / "elsewhere.deb")
    assert moved.digest() == base.digest()


def test_builder_format_version_is_part_of_the_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _base_inputs(tmp_path).digest()
    monkeypatch.setattr(image_module, "IMAGE_FORMAT", image_module.IMAGE_FORMAT + 1)
    assert _base_inputs(tmp_path).digest() != before


def test_default_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VMFAULT_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_root() == tmp_path / "explicit"
    monkeypatch.delenv("VMFAULT_CACHE")
    assert default_cache_root() == tmp_path / "xdg" / "vmfault"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_root() == tmp_path / "home" / ".cache" / "vmfault"


def test_missing_user_files_are_usage_errors(tmp_path: Path) -> None:
    for spec in (
        ImageSpec(kernel=tmp_path / "nope"),
        ImageSpec(kernel=fake_kernel(tmp_path / "k"), initrd=tmp_path / "nope"),
        ImageSpec(kernel=fake_kernel(tmp_path / "k"), disk=tmp_path / "nope"),
    ):
        with pytest.raises(UsageError, match="does not exist"):
            build_image(spec, cache_root=tmp_path / "cache")


def _no_compile(*args: object, **kwargs: object) -> None:
    raise AssertionError("a cached image must not compile anything")


@needs_toolchain
def test_build_then_cache_hit_without_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 512)
    spec = ImageSpec(kernel=fake_kernel(tmp_path / "vmlinux"), disk=disk)
    cache = tmp_path / "cache"
    built = build_image(spec, cache_root=cache)

    assert built.root == cache / "images" / built.image_hash
    assert built.kernel.read_bytes() == (tmp_path / "vmlinux").read_bytes()
    assert built.kernel_release == "6.1.0-0-fake"
    assert built.disk == disk
    assert built.modules == ()
    assert built.kallsyms_path == built.root / "kallsyms"
    assert sorted(built.workloads) == list(builtin_workload_names())
    assert set(built.agent_hooks) == {HOOK_STARTED, HOOK_EXITED}
    checksum = built.workload("checksum")
    assert checksum.guest_path == "/w/checksum"
    assert checksum.host_binary.read_bytes()[:4] == b"\x7fELF"
    assert checksum.source is not None
    assert checksum.source.is_file()
    archive = built.initrd.read_bytes()
    assert archive.startswith(b"070701")
    assert b"init\0" in archive
    assert MODULE_LIST_PATH.encode() + b"\0" in archive

    manifest = json.loads(built.manifest_path.read_text())
    assert manifest["image_hash"] == built.image_hash
    assert manifest["kernel"]["release"] == "6.1.0-0-fake"
    assert [w["name"] for w in manifest["workloads"]] == list(builtin_workload_names())
    assert load_image(built.root) == built

    monkeypatch.setattr(image_module, "compile_c", _no_compile)
    monkeypatch.setattr(image_module, "prepare_user_kernel", _no_compile)
    again = build_image(spec, cache_root=cache)
    assert again == built
    assert [p.name for p in (cache / "images").iterdir()] == [built.image_hash]


@needs_toolchain
def test_user_initrd_comes_first_padded_to_four_bytes(tmp_path: Path) -> None:
    theirs = tmp_path / "initrd.gz"
    theirs.write_bytes(b"\x1f\x8b\x08abcdefg")
    spec = ImageSpec(kernel=fake_kernel(tmp_path / "vmlinux"), initrd=theirs)
    built = build_image(spec, cache_root=tmp_path / "cache")
    archive = built.initrd.read_bytes()
    assert archive.startswith(theirs.read_bytes() + b"\0")
    assert archive[12:18] == b"070701"


@needs_toolchain
def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    broken = tmp_path / "broken.c"
    broken.write_text("int main(void) { return }\n")
    spec = ImageSpec(
        kernel=fake_kernel(tmp_path / "vmlinux"),
        user_workloads=(UserWorkload("broken", broken),),
    )
    with pytest.raises(ImageError, match=r"gcc failed on broken\.c"):
        build_image(spec, cache_root=tmp_path / "cache")
    assert list((tmp_path / "cache" / "images").iterdir()) == []


def test_unknown_workload_lists_the_known_ones(tmp_path: Path) -> None:
    root = tmp_path / "img"
    root.mkdir()
    manifest = {
        "format": image_module.IMAGE_FORMAT,
        "image_hash": "0123456789abcdef",
        "kernel": {"path": "vmlinux", "release": "6.1"},
        "initrd": {"path": "initramfs.cpio"},
        "agent": {"path": "agent", "hooks": {HOOK_STARTED: "0x30000000"}},
        "modules": [],
        "disk": None,
        "workloads": [
            {
                "name": "foo",
                "guest_path": "/w/foo",
                "host_binary": "workloads/foo",
                "source": None,
                "source_kind": "binary",
                "default_args": [],
                "description": "",
            }
        ],
    }
    (root / "image.json").write_text(json.dumps(manifest))
    loaded = load_image(root)
    assert loaded.agent_hooks[HOOK_STARTED] == 0x30000000
    with pytest.raises(UsageError) as caught:
        loaded.workload("bar")
    assert "foo" in caught.value.hint


def test_invalid_manifest_is_an_image_error(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no image manifest"):
        load_image(tmp_path)
    (tmp_path / "image.json").write_text("{}")
    with pytest.raises(ImageError):
        load_image(tmp_path)


def test_workload_inputs_are_hashable_records() -> None:
    planned = plan_workloads()
    assert all(isinstance(w, WorkloadInput) for w in planned)
    assert len({w.fingerprint() for w in planned}) == len(planned)
