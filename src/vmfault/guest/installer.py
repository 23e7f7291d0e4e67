"""The aarch64 guest kernel: Debian's arm64 kernel from its netboot installer package.

`debian-installer-12-netboot-arm64` is an architecture-independent package (apt fetches it
on any host without a foreign architecture) that holds Debian's arm64 kernel `Image` and
the installer's `initrd.gz`: a cpio of the installer's userland with the kernel's modules
for network installs. QEMU's `-M virt` boots the `Image` directly; the modules the guest
needs (virtio-mmio, network, console) and a busybox (dynamically linked, with its loader
and C library) are taken from the initrd. The installer ships no pvpanic module: panics
reach the host through the PSCI reset path (see `vmfault.machine.config`).
"""

from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from vmfault.errors import ImageError
from vmfault.guest.initramfs import CpioEntry, EntryKind, read_newc
from vmfault.guest.kernel import (
    KernelBuild,
    Log,
    _cached_debs,
    _download_deb,
    _dpkg_extract,
    _load_prepared,
    _publish,
    kernel_release_of,
    module_closure,
    read_module,
    sha256_file,
)

__all__ = [
    "AARCH64_GUEST_MODULES",
    "IMAGE_NAME",
    "find_installer_deb",
    "installer_package",
    "prepare_installer_kernel",
]

AARCH64_GUEST_MODULES: tuple[str, ...] = ("virtio_mmio", "virtio_net", "virtio_console")
"""Modules an aarch64 guest loads (virtio and virtio_ring are built in; the installer
has no pvpanic and no virtio_blk)."""
IMAGE_NAME = "Image"
_INSTALLER_PATTERN = re.compile(r"^debian-installer-(\d+-netboot-arm64_[^_]+)_all\.deb$")
_IMAGES = "usr/lib/debian-installer/images"
_USERLAND = ("bin/busybox",)
"""Programs of the installer's initrd an aarch64 image carries (the shell mode's busybox)."""
_INSTALLER_FORMAT = 1
_HINT = "run `make setup` (or `apt-get update`) so apt can fetch {package}"


def installer_package(release: str | None = None) -> str:
    """The netboot installer package of this host's Debian release (12 if unknown)."""
    if release is None:
        release = "12"
        try:
            text = Path("/etc/os-release").read_text()
        except OSError:
            text = ""
        found = re.search(r'^VERSION_ID="?(\d+)', text, re.MULTILINE)
        if found is not None:
            release = found.group(1)
    return f"debian-installer-{release}-netboot-arm64"


def find_installer_deb(
    download_dir: Path, *, refresh: bool = False, log: Log | None = None
) -> Path:
    """The installer .deb to use: the newest in `download_dir` (or apt's archive cache)
    unless `refresh`, else downloaded with `apt-get download` (128 MB, once).

    Raises ImageError when apt cannot fetch it and none is cached.
    """
    say = log or (lambda _msg: None)
    directories = [download_dir, Path("/var/cache/apt/archives")]
    cached = _cached_debs(directories, pattern=_INSTALLER_PATTERN)
    if cached and not refresh:
        return cached[-1]
    package = installer_package()
    try:
        return _download_deb(package, download_dir, say, pattern=_INSTALLER_PATTERN)
    except ImageError as exc:
        if cached:
            say(f"{exc.message}; using cached {cached[-1].name}")
            return cached[-1]
        raise ImageError(
            exc.message,
            hint=_HINT.format(package=package) + f", or put its .deb into {download_dir}",
        ) from exc


def _installer_files(tree: Path) -> tuple[Path, Path]:
    """The text installer's kernel Image and initrd.gz in an unpacked package."""
    found = sorted((tree / _IMAGES).glob("*/arm64/text/debian-installer/arm64/linux"))
    if not found:
        raise ImageError("the installer package holds no arm64 kernel (text/.../arm64/linux)")
    initrd = found[-1].with_name("initrd.gz")
    if not initrd.is_file():
        raise ImageError(f"the installer package holds no {initrd.name} beside its kernel")
    return found[-1], initrd


def _check_image(image: bytes) -> None:
    # The arm64 boot protocol's header: "ARM\x64" at offset 56.
    if len(image) < 64 or image[56:60] != b"ARM\x64":
        raise ImageError("the installer's kernel is not an arm64 Image (no ARM\\x64 magic)")


def _resolve(entries: dict[str, CpioEntry], path: str) -> CpioEntry | None:
    """The regular file at `path` in the initrd, following symbolic links."""
    for _ in range(8):
        entry = entries.get(path)
        if entry is None or entry.kind is EntryKind.FILE:
            return entry
        if entry.kind is not EntryKind.SYMLINK:
            return None
        target = entry.data.decode()
        parent = PurePosixPath(path).parent
        path = str(PurePosixPath(target) if target.startswith("/") else parent / target)
        path = str(PurePosixPath(*(p for p in PurePosixPath(path).parts if p != "/")))
    return None


def _userland(entries: dict[str, CpioEntry]) -> list[tuple[str, bytes]]:
    """The installer's busybox and the loader and libraries it names, as (guest path,
    content); each library goes where the loader looks for it first."""
    files: list[tuple[str, bytes]] = []
    for path in _USERLAND:
        entry = _resolve(entries, path)
        if entry is None:
            raise ImageError(f"the installer's initrd has no {path}")
        files.append((f"/{path}", entry.data))
    for guest_path in ("lib/ld-linux-aarch64.so.1", "lib/aarch64-linux-gnu/libc.so.6"):
        entry = _resolve(entries, guest_path)
        if entry is None:
            raise ImageError(f"the installer's initrd has no {guest_path}")
        files.append((f"/{guest_path}", entry.data))
    return files


def prepare_installer_kernel(
    deb: Path,
    kernels_dir: Path,
    *,
    modules: Sequence[str] = AARCH64_GUEST_MODULES,
    deb_sha256: str | None = None,
    log: Log | None = None,
) -> KernelBuild:
    """Unpacks the installer .deb once into `kernels_dir`: the Image, its release, the
    needed modules (in load order) and the busybox userland. Cached by the .deb's hash and
    the module list; later calls only read the cache. ImageError if a part is missing."""
    say = log or (lambda _msg: None)
    sha = deb_sha256 or sha256_file(deb)
    text = f"{_INSTALLER_FORMAT}\n{sha}\n{','.join(modules)}"
    key = "arm64-" + hashlib.sha256(text.encode()).hexdigest()[:16]
    target = kernels_dir / key
    prepared = _load_userland(target, deb, sha)
    if prepared is not None:
        return prepared

    say(f"unpacking {deb.name}")
    kernels_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=kernels_dir, prefix=f".{key}-"))
    try:
        with tempfile.TemporaryDirectory(dir=kernels_dir, prefix=".unpack-") as unpack:
            tree = Path(unpack)
            _dpkg_extract(deb, tree)
            image_path, initrd_path = _installer_files(tree)
            image = image_path.read_bytes()
            _check_image(image)
            release = kernel_release_of(image)
            entries = {e.path: e for e in read_newc(gzip.decompress(initrd_path.read_bytes()))}
            (staging / IMAGE_NAME).write_bytes(image)
            (staging / "release").write_text(release + "\n")

            prefix = f"lib/modules/{release}/"
            module_tree = tree / "modules"
            for path, entry in entries.items():
                if path.startswith(prefix) and entry.kind is EntryKind.FILE:
                    (module_tree / path).parent.mkdir(parents=True, exist_ok=True)
                    (module_tree / path).write_bytes(entry.data)
            release_dir = module_tree / prefix
            index = {
                read_module(p).name: p for p in sorted(release_dir.rglob("*.ko")) if p.is_file()
            }
            builtin_file = release_dir / "modules.builtin"
            lines = builtin_file.read_text().splitlines() if builtin_file.is_file() else []
            builtin = frozenset(
                Path(line.strip()).name.removesuffix(".ko").replace("-", "_")
                for line in lines
                if line.strip()
            )
            ordered = module_closure(modules, index, builtin=builtin)
            (staging / "modules").mkdir()
            for module in ordered:
                shutil.copyfile(module.path, staging / "modules" / f"{module.name}.ko")
            (staging / "modules.order").write_text(
                "".join(f"{m.name} {','.join(m.depends)}\n" for m in ordered)
            )
            listing = []
            for number, (guest_path, data) in enumerate(_userland(entries)):
                name = f"userland/{number}"
                (staging / name).parent.mkdir(exist_ok=True)
                (staging / name).write_bytes(data)
                listing.append(f"{guest_path} {name}\n")
            (staging / "userland.list").write_text("".join(listing))
        staging.chmod(0o755)
        _publish(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    result = _load_userland(target, deb, sha)
    if result is None:
        raise ImageError(f"kernel cache entry {target} is incomplete", hint=f"delete {target}")
    return result


def _load_userland(directory: Path, source: Path, sha: str) -> KernelBuild | None:
    build = _load_prepared(directory, source, sha, kernel_name=IMAGE_NAME)
    listing = directory / "userland.list"
    if build is None or not listing.is_file():
        return None
    userland = []
    for line in listing.read_text().splitlines():
        guest_path, _, name = line.partition(" ")
        userland.append((guest_path, directory / name))
    return KernelBuild(
        vmlinux=build.vmlinux,
        release=build.release,
        modules=build.modules,
        source=build.source,
        source_sha256=build.source_sha256,
        userland=tuple(userland),
    )
