"""Kernel handling without a VM: modinfo, module order, bzImage payloads, PVH notes, .deb choice."""

from __future__ import annotations

import lzma
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from vmfault.errors import ImageError
from vmfault.guest import kernel
from vmfault.guest.kernel import (
    XEN_ELFNOTE_PHYS32_ENTRY,
    KernelModule,
    check_pvh,
    elf_notes,
    extract_vmlinux,
    find_kernel_deb,
    kernel_release_of,
    module_closure,
    order_modules,
    parse_modinfo,
    prepare_user_kernel,
    read_module,
)

needs_gcc = pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")


def _note(name: bytes, n_type: int, desc: bytes) -> bytes:
    name_z = name + b"\0"
    return (
        struct.pack("<III", len(name_z), len(desc), n_type)
        + name_z
        + b"\0" * (-len(name_z) % 4)
        + desc
        + b"\0" * (-len(desc) % 4)
    )


def make_elf(notes: bytes, tail: bytes = b"") -> bytes:
    """A minimal 64-bit ELF with one PT_NOTE segment holding `notes`, then `tail`."""
    ehdr_size, phdr_size = 64, 56
    note_offset = ehdr_size + phdr_size
    ehdr = (
        b"\x7fELF\x02\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, ehdr_size, 0, 0, 64, 56, 1, 64, 0, 0)
    )
    phdr = struct.pack("<IIQQQQQQ", 4, 4, note_offset, 0, 0, len(notes), len(notes), 4)
    return ehdr + phdr + notes + tail


PVH_ELF = make_elf(
    _note(b"Xen", 6, b"linux\0") + _note(b"Xen", XEN_ELFNOTE_PHYS32_ENTRY, b"\x50\x08\x00\x01"),
    b"Linux version 6.1.0-99-test (someone@example) #1 SMP",
)


def make_bzimage(payload: bytes, *, setup_sects: int = 2) -> bytes:
    """A bzImage-shaped blob: setup header pointing at `payload` after the setup sectors."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<II", setup, 0x248, 16, len(payload))
    return bytes(setup) + b"\0" * 16 + payload + b"\0" * 7


def test_elf_notes_and_pvh_entry() -> None:
    notes = elf_notes(PVH_ELF)
    assert [(n.name, n.type) for n in notes] == [("Xen", 6), ("Xen", 18)]
    assert check_pvh(PVH_ELF) == 0x01000850


def test_missing_pvh_note_is_an_image_error_with_a_hint() -> None:
    with pytest.raises(ImageError) as caught:
        check_pvh(make_elf(_note(b"Xen", 6, b"linux\0")))
    assert "CONFIG_PVH" in caught.value.hint


def test_non_elf_is_rejected() -> None:
    with pytest.raises(ImageError):
        elf_notes(b"MZ" + b"\0" * 100)


def test_kernel_release_from_banner() -> None:
    assert kernel_release_of(PVH_ELF) == "6.1.0-99-test"
    with pytest.raises(ImageError):
        kernel_release_of(b"no banner here")


def test_extract_vmlinux_from_xz_payload() -> None:
    payload = lzma.compress(PVH_ELF, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32)
    assert extract_vmlinux(make_bzimage(payload)) == PVH_ELF


def test_extract_vmlinux_finds_xz_magic_without_a_usable_header() -> None:
    payload = lzma.compress(PVH_ELF, format=lzma.FORMAT_XZ)
    assert extract_vmlinux(b"\0" * 700 + payload + b"\0\0\0\0") == PVH_ELF


def test_extract_vmlinux_passes_elf_through_and_rejects_other_data() -> None:
    assert extract_vmlinux(PVH_ELF) == PVH_ELF
    with pytest.raises(ImageError) as caught:
        extract_vmlinux(make_bzimage(b"not compressed"))
    assert "vmlinux" in caught.value.hint


def test_parse_modinfo_keeps_repeated_keys() -> None:
    info = parse_modinfo(b"license=GPL\0alias=a\0alias=b\0depends=virtio,virtio_ring\0\0")
    assert info == {"license": ["GPL"], "alias": ["a", "b"], "depends": ["virtio,virtio_ring"]}


def _module(name: str, *depends: str) -> KernelModule:
    return KernelModule(name=name, path=Path(f"{name}.ko"), depends=depends)


def test_order_puts_dependencies_first_and_keeps_given_order_otherwise() -> None:
    modules = [
        _module("virtio_net", "virtio_ring", "virtio", "net_failover"),
        _module("pvpanic"),
        _module("virtio", "virtio_ring"),
        _module("net_failover", "failover"),
        _module("failover"),
        _module("virtio_ring"),
    ]
    names = [m.name for m in order_modules(modules)]
    assert names == ["virtio_ring", "virtio", "failover", "net_failover", "virtio_net", "pvpanic"]
    for index, name in enumerate(names):
        module = next(m for m in modules if m.name == name)
        assert all(names.index(dep) < index for dep in module.depends)


def test_order_reports_cycles_and_missing_dependencies() -> None:
    with pytest.raises(ImageError, match="cycle: a -> b -> a"):
        order_modules([_module("a", "b"), _module("b", "a")])
    with pytest.raises(ImageError, match="a needs ghost"):
        order_modules([_module("a", "ghost")])


def _compile_module(directory: Path, file_name: str, modinfo: list[str]) -> Path:
    strings = "".join(
        f'static const char info{i}[] __attribute__((used, section(".modinfo"))) = "{s}";\n'
        for i, s in enumerate(modinfo)
    )
    source = directory / f"{file_name}.c"
    source.write_text(strings)
    target = directory / f"{file_name}.ko"
    subprocess.run(["gcc", "-c", "-o", str(target), str(source)], check=True)
    return target


@needs_gcc
def test_read_module_uses_modinfo_depends(tmp_path: Path) -> None:
    path = _compile_module(tmp_path, "pvpanic-mmio", ["depends=pvpanic", "name=pvpanic_mmio"])
    assert read_module(path) == KernelModule("pvpanic_mmio", path, ("pvpanic",))
    bare = _compile_module(tmp_path, "virtio_ring", ["depends=", "license=GPL"])
    assert read_module(bare) == KernelModule("virtio_ring", bare, ())


@needs_gcc
def test_module_closure_follows_depends_and_skips_builtins(tmp_path: Path) -> None:
    index = {
        "virtio_blk": _compile_module(
            tmp_path, "virtio_blk", ["depends=virtio,virtio_ring", "name=virtio_blk"]
        ),
        "virtio": _compile_module(tmp_path, "virtio", ["depends=virtio_ring", "name=virtio"]),
        "virtio_ring": _compile_module(tmp_path, "virtio_ring", ["depends=", "name=virtio_ring"]),
        "pvpanic_mmio": _compile_module(
            tmp_path, "pvpanic-mmio", ["depends=pvpanic", "name=pvpanic_mmio"]
        ),
    }
    ordered = module_closure(["pvpanic-mmio", "virtio_blk"], index, builtin=frozenset({"pvpanic"}))
    assert [m.name for m in ordered] == ["pvpanic_mmio", "virtio_ring", "virtio", "virtio_blk"]
    with pytest.raises(ImageError, match="not in the kernel package"):
        module_closure(["virtio_net"], index)


def _deb(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(b"!<arch>\n")
    return path


def _no_subprocess(*args: object, **kwargs: object) -> None:
    raise AssertionError("apt must not run when a kernel .deb is cached")


def test_cached_deb_is_used_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kernel, "_SYSTEM_ARCHIVES", tmp_path / "none")
    monkeypatch.setattr("vmfault.guest.kernel.subprocess.run", _no_subprocess)
    downloads = tmp_path / "downloads"
    _deb(downloads, "linux-image-6.1.0-9-amd64_6.1.27-1_amd64.deb")
    newest = _deb(downloads, "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb")
    _deb(downloads, "linux-image-6.1.0-60-cloud-amd64_6.1.200-1_amd64.deb")
    _deb(downloads, "linux-image-amd64_6.1.192-2_amd64.deb")
    assert find_kernel_deb(downloads) == newest


def test_unusable_apt_without_cached_deb_names_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel, "_SYSTEM_ARCHIVES", tmp_path / "none")

    def failing_run(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 100, "", "E: no lists")

    monkeypatch.setattr("vmfault.guest.kernel.subprocess.run", failing_run)
    with pytest.raises(ImageError) as caught:
        find_kernel_deb(tmp_path / "downloads")
    assert "apt-get update" in caught.value.hint
    assert "make setup" in caught.value.hint


def test_refresh_falls_back_to_cached_deb_when_apt_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kernel, "_SYSTEM_ARCHIVES", tmp_path / "none")
    cached = _deb(tmp_path, "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb")

    def failing_run(*args: object, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.CompletedProcess([], 100, "", "E: no lists")

    monkeypatch.setattr("vmfault.guest.kernel.subprocess.run", failing_run)
    messages: list[str] = []
    assert find_kernel_deb(tmp_path, refresh=True, log=messages.append) == cached
    assert any("using cached" in m for m in messages)


def test_user_kernel_is_prepared_once(tmp_path: Path) -> None:
    source = tmp_path / "bzImage"
    source.write_bytes(make_bzimage(lzma.compress(PVH_ELF, format=lzma.FORMAT_XZ)))
    first = prepare_user_kernel(source, tmp_path / "kernels")
    assert first.vmlinux.read_bytes() == PVH_ELF
    assert first.release == "6.1.0-99-test"
    assert first.modules == ()
    mtime = first.vmlinux.stat().st_mtime_ns
    second = prepare_user_kernel(source, tmp_path / "kernels")
    assert second == first
    assert second.vmlinux.stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "kernels").iterdir() if p.name.startswith(".")]
