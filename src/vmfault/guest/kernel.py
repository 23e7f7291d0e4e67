"""The guest kernel: Debian's kernel package, its PVH-bootable `vmlinux`, and kernel modules.

`-M microvm` boots an uncompressed ELF `vmlinux` through its PVH entry point, which is much
faster than a bzImage. Debian ships only the bzImage, so the ELF is taken out of its xz payload.
Modules the guest needs are read from the package and ordered by their `depends=` strings.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from vmfault.errors import ImageError

__all__ = [
    "DISK_MODULES",
    "GUEST_MODULES",
    "XEN_ELFNOTE_PHYS32_ENTRY",
    "ElfNote",
    "KernelBuild",
    "KernelModule",
    "check_pvh",
    "elf_notes",
    "extract_vmlinux",
    "find_kernel_deb",
    "kernel_release_of",
    "module_closure",
    "order_modules",
    "parse_modinfo",
    "prepare_debian_kernel",
    "prepare_user_kernel",
    "read_module",
    "sha256_file",
    "split_modules",
]

GUEST_MODULES: tuple[str, ...] = (
    "pvpanic",
    "pvpanic_mmio",
    "virtio",
    "virtio_ring",
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "crc32c_generic",
    "ext4",
)
"""Module names the guest loads at boot; their dependencies are added automatically."""
DISK_MODULES: tuple[str, ...] = ("crc32c_generic", "ext4")
"""Those of GUEST_MODULES (with the dependencies only they need) the guest loads only when
it has virtio disks: ext4, which also mounts ext2, for workloads that make a file system,
and the crc32c it asks the crypto API for at every mount (no modprobe in the guest)."""

META_PACKAGE = "linux-image-amd64"
XEN_ELFNOTE_PHYS32_ENTRY = 18
_XZ_MAGIC = b"\xfd7zXZ\x00"
_GZIP_MAGIC = b"\x1f\x8b\x08"
_ELF_MAGIC = b"\x7fELF"
_BZIMAGE_MAGIC = b"HdrS"
_DEB_PATTERN = re.compile(r"^linux-image-(\d+\.\d+\.\d+-\d+)-amd64_([^_]+)_amd64\.deb$")
_APT_HINT = "run `make setup` (or `apt-get update`) so apt can fetch linux-image-amd64"
_SYSTEM_ARCHIVES = Path("/var/cache/apt/archives")
_KERNEL_FORMAT = 1

Log = Callable[[str], None]


@dataclass(frozen=True)
class KernelModule:
    """One loadable kernel module: its name (underscores), file and direct dependencies."""

    name: str
    path: Path
    depends: tuple[str, ...]


@dataclass(frozen=True)
class ElfNote:
    """One ELF note: owner name (without NUL), type and descriptor bytes."""

    name: str
    type: int
    desc: bytes


@dataclass(frozen=True)
class KernelBuild:
    """A prepared guest kernel: a PVH-bootable ELF `vmlinux` and its modules in load order.

    `source_sha256` is the hash of the input it came from (the .deb or the user's file).
    """

    vmlinux: Path
    release: str
    modules: tuple[KernelModule, ...]
    source: Path
    source_sha256: str
    userland: tuple[tuple[str, Path], ...] = ()
    """(guest path, file) of programs that come with the kernel's package: an aarch64
    image's busybox with its loader and libraries, from Debian's installer."""


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's content."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _deb_sort_key(
    path: Path, pattern: re.Pattern[str] = _DEB_PATTERN
) -> tuple[tuple[int, ...], str]:
    match = pattern.match(path.name)
    abi = match.group(1) if match else ""
    return tuple(int(part) for part in re.findall(r"\d+", abi)), path.name


def _cached_debs(
    directories: Iterable[Path], *, pattern: re.Pattern[str] = _DEB_PATTERN
) -> list[Path]:
    found: list[Path] = []
    for directory in directories:
        if directory.is_dir():
            found.extend(p for p in directory.iterdir() if p.is_file() and pattern.match(p.name))
    return sorted(found, key=lambda path: _deb_sort_key(path, pattern))


def _run(argv: Sequence[str], *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), cwd=cwd, capture_output=True, text=True, check=False, timeout=600
        )
    except FileNotFoundError as exc:
        raise ImageError(f"{argv[0]} is not installed", hint=_APT_HINT) from exc
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"{argv[0]} timed out", hint="check the network and retry") from exc


def _resolve_kernel_package() -> str:
    result = _run(["apt-cache", "depends", META_PACKAGE])
    if result.returncode != 0:
        raise ImageError(
            f"apt-cache cannot resolve {META_PACKAGE}: {result.stderr.strip()}", hint=_APT_HINT
        )
    match = re.search(r"Depends:\s*(linux-image-\S+-amd64)\b", result.stdout)
    if match is None:
        raise ImageError(f"{META_PACKAGE} names no kernel package in apt", hint=_APT_HINT)
    return match.group(1)


def _download_deb(
    package: str, download_dir: Path, log: Log, *, pattern: re.Pattern[str] = _DEB_PATTERN
) -> Path:
    download_dir.mkdir(parents=True, exist_ok=True)
    log(f"downloading {package}")
    with tempfile.TemporaryDirectory(dir=download_dir, prefix=".download-") as tmp:
        staging = Path(tmp)
        staging.chmod(0o755)
        result = _run(["apt-get", "download", package], cwd=staging)
        debs = [p for p in staging.iterdir() if pattern.match(p.name)]
        if result.returncode != 0 or not debs:
            raise ImageError(
                f"apt-get download {package} failed: {result.stderr.strip()}", hint=_APT_HINT
            )
        target = download_dir / debs[0].name
        debs[0].replace(target)
        return target


def find_kernel_deb(download_dir: Path, *, refresh: bool = False, log: Log | None = None) -> Path:
    """The kernel .deb to use: a cached one unless `refresh`, else downloaded with apt.

    Without `refresh`, the newest `linux-image-*-amd64_*.deb` already in `download_dir` (or in
    apt's own archive cache) is used with no apt call. Raises ImageError when apt cannot resolve
    or fetch the package and no .deb is cached.
    """
    say = log or (lambda _msg: None)
    cached = _cached_debs([download_dir, _SYSTEM_ARCHIVES])
    if cached and not refresh:
        return cached[-1]
    try:
        package = _resolve_kernel_package()
        matching = [p for p in cached if p.name.startswith(f"{package}_")]
        return matching[-1] if matching else _download_deb(package, download_dir, say)
    except ImageError as exc:
        if cached:
            say(f"{exc.message}; using cached {cached[-1].name}")
            return cached[-1]
        raise ImageError(
            exc.message,
            hint=f"{_APT_HINT}, or put a linux-image-*-amd64 .deb into {download_dir}",
        ) from exc


def _bzimage_payload(image: bytes) -> bytes | None:
    """The compressed payload a bzImage header points at, or None when it has no such header."""
    if len(image) < 0x250 or image[0x202:0x206] != _BZIMAGE_MAGIC:
        return None
    setup_sects = image[0x1F1] or 4
    offset, length = struct.unpack_from("<II", image, 0x248)
    start = (setup_sects + 1) * 512 + offset
    if length == 0 or start + length > len(image):
        return None
    return image[start : start + length]


def _decompress(payload: bytes) -> bytes | None:
    if payload.startswith(_XZ_MAGIC):
        decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
        return decompressor.decompress(payload)
    if payload.startswith(_GZIP_MAGIC):
        return zlib.decompressobj(wbits=31).decompress(payload)
    return None


def extract_vmlinux(image: bytes) -> bytes:
    """The ELF kernel inside a bzImage (its xz or gzip payload), or `image` if already ELF.

    Raises ImageError when the payload cannot be found or is not an ELF file.
    """
    if image.startswith(_ELF_MAGIC):
        return image
    candidates: list[bytes] = []
    payload = _bzimage_payload(image)
    if payload is not None:
        candidates.append(payload)
    position = image.find(_XZ_MAGIC)
    if position >= 0:
        candidates.append(image[position:])
    for candidate in candidates:
        try:
            elf = _decompress(candidate)
        except (lzma.LZMAError, zlib.error):
            continue
        if elf is not None and elf.startswith(_ELF_MAGIC):
            return elf
    raise ImageError(
        "no xz- or gzip-compressed ELF kernel found in the bzImage",
        hint="pass an uncompressed vmlinux built with CONFIG_PVH=y",
    )


def elf_notes(elf: bytes) -> list[ElfNote]:
    """All notes in the PT_NOTE segments of a 64-bit little-endian ELF image."""
    if not elf.startswith(_ELF_MAGIC) or len(elf) < 64 or elf[4] != 2 or elf[5] != 1:
        raise ImageError("not a 64-bit little-endian ELF file", hint="pass an x86-64 vmlinux")
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    notes: list[ElfNote] = []
    for index in range(phnum):
        base = phoff + index * phentsize
        p_type, _flags, p_offset = struct.unpack_from("<IIQ", elf, base)
        (p_filesz,) = struct.unpack_from("<Q", elf, base + 0x20)
        if p_type != 4:
            continue
        pos, end = p_offset, min(p_offset + p_filesz, len(elf))
        while pos + 12 <= end:
            namesz, descsz, n_type = struct.unpack_from("<III", elf, pos)
            name_start = pos + 12
            desc_start = name_start + ((namesz + 3) & ~3)
            name = elf[name_start : name_start + namesz].rstrip(b"\0").decode("latin-1")
            notes.append(ElfNote(name, n_type, elf[desc_start : desc_start + descsz]))
            pos = desc_start + ((descsz + 3) & ~3)
    return notes


def check_pvh(elf: bytes) -> int:
    """The PVH 32-bit entry address of a vmlinux; ImageError when it has no PVH note."""
    for note in elf_notes(elf):
        if note.name == "Xen" and note.type == XEN_ELFNOTE_PHYS32_ENTRY and len(note.desc) >= 4:
            return int(struct.unpack_from("<I", note.desc)[0])
    raise ImageError(
        "the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)",
        hint="use a kernel built with CONFIG_PVH=y; -M microvm boots only PVH ELF kernels",
    )


def kernel_release_of(elf: bytes) -> str:
    """The release string (`uname -r`) from the `Linux version ...` banner in a kernel image."""
    match = re.search(rb"Linux version (\S+) \(", elf)
    if match is None:
        raise ImageError(
            "no `Linux version` banner in the kernel", hint="pass a Linux kernel image"
        )
    return match.group(1).decode("ascii", "replace")


def parse_modinfo(section: bytes) -> dict[str, list[str]]:
    """The key=value strings of a `.modinfo` section; a key may repeat (alias, parm)."""
    info: dict[str, list[str]] = {}
    for raw in section.split(b"\0"):
        text = raw.decode("utf-8", "replace")
        if "=" in text:
            key, value = text.split("=", 1)
            info.setdefault(key, []).append(value)
    return info


def _module_name(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".gz", ".zst"):
        name = name.removesuffix(suffix)
    return name.removesuffix(".ko").replace("-", "_")


def read_module(path: Path) -> KernelModule:
    """A module's name and `depends=` list, read from its `.modinfo` section."""
    try:
        with path.open("rb") as stream:
            section = ELFFile(stream).get_section_by_name(".modinfo")
            data = b"" if section is None else bytes(section.data())
    except (ELFError, OSError) as exc:
        raise ImageError(f"cannot read kernel module {path}: {exc}") from exc
    if not data:
        raise ImageError(f"kernel module {path} has no .modinfo section")
    info = parse_modinfo(data)
    name = info.get("name", [_module_name(path)])[0].replace("-", "_")
    depends = tuple(d.replace("-", "_") for v in info.get("depends", []) for d in v.split(",") if d)
    return KernelModule(name=name, path=path, depends=depends)


def order_modules(modules: Iterable[KernelModule]) -> tuple[KernelModule, ...]:
    """Modules in load order: every module after all of its dependencies.

    Ties keep the order given. Raises ImageError on a dependency cycle or a dependency that is
    not among `modules`.
    """
    by_name = {m.name: m for m in modules}
    ordered: list[KernelModule] = []
    state: dict[str, str] = {}

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            raise ImageError(f"kernel module dependency cycle: {' -> '.join((*chain, name))}")
        module = by_name.get(name)
        if module is None:
            raise ImageError(f"kernel module {chain[-1]} needs {name}, which is not available")
        state[name] = "active"
        for dependency in module.depends:
            visit(dependency, (*chain, name))
        state[name] = "done"
        ordered.append(module)

    for name in by_name:
        visit(name, ())
    return tuple(ordered)


def module_closure(
    wanted: Sequence[str], index: Mapping[str, Path], *, builtin: frozenset[str] = frozenset()
) -> tuple[KernelModule, ...]:
    """The wanted modules and everything they depend on, in load order.

    `index` maps module names (underscores) to .ko files. Modules built into the kernel
    (`builtin`) are skipped. Raises ImageError for a module that is neither.
    """
    found: dict[str, KernelModule] = {}
    pending = list(wanted)
    while pending:
        name = pending.pop(0).replace("-", "_")
        if name in found or name in builtin:
            continue
        path = index.get(name)
        if path is None:
            raise ImageError(
                f"kernel module {name} is not in the kernel package",
                hint="use a kernel that builds it as a module or into the kernel",
            )
        module = read_module(path)
        module = replace(module, depends=tuple(d for d in module.depends if d not in builtin))
        found[name] = module
        pending.extend(module.depends)
    return order_modules(found.values())


def split_modules(
    modules: Sequence[KernelModule], later: Sequence[str]
) -> tuple[tuple[KernelModule, ...], tuple[KernelModule, ...]]:
    """`modules` (in load order) split in two, each in load order: those every machine
    loads, and those loaded later: the `later` ones and the dependencies only they need."""
    by_name = {m.name: m for m in modules}

    def closure(roots: Iterable[str]) -> set[str]:
        found: set[str] = set()
        pending = list(roots)
        while pending:
            name = pending.pop()
            if name not in found and name in by_name:
                found.add(name)
                pending.extend(by_name[name].depends)
        return found

    deferred = closure(name.replace("-", "_") for name in later)
    needed = closure(m.name for m in modules if m.name not in deferred)
    first = tuple(m for m in modules if m.name in needed)
    return first, tuple(m for m in modules if m.name not in needed)


def _module_index(modules_root: Path) -> dict[str, Path]:
    index: dict[str, Path] = {}
    for path in sorted(modules_root.rglob("*.ko*")):
        if path.is_file():
            index.setdefault(_module_name(path), path)
    return index


def _builtin_modules(release_dir: Path) -> frozenset[str]:
    builtin = release_dir / "modules.builtin"
    if not builtin.is_file():
        return frozenset()
    return frozenset(
        _module_name(Path(line.strip())) for line in builtin.read_text().splitlines() if line
    )


def _module_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".gz"):
        return gzip.decompress(data)
    if path.name.endswith(".zst"):
        raise ImageError(
            f"kernel module {path.name} is zstd-compressed",
            hint="use a kernel package with uncompressed or xz modules",
        )
    return data


def _dpkg_extract(deb: Path, target: Path) -> None:
    result = _run(["dpkg-deb", "-x", str(deb), str(target)])
    if result.returncode != 0:
        raise ImageError(
            f"cannot unpack {deb.name}: {result.stderr.strip()}",
            hint=f"delete {deb} and build again to download it afresh",
        )


def _load_prepared(
    directory: Path, source: Path, source_sha256: str, *, kernel_name: str = "vmlinux"
) -> KernelBuild | None:
    order_file = directory / "modules.order"
    release_file = directory / "release"
    vmlinux = directory / kernel_name
    if not (order_file.is_file() and release_file.is_file() and vmlinux.is_file()):
        return None
    modules = []
    for line in order_file.read_text().splitlines():
        name, _, depends = line.partition(" ")
        modules.append(
            KernelModule(
                name=name,
                path=directory / "modules" / f"{name}.ko",
                depends=tuple(d for d in depends.split(",") if d),
            )
        )
    return KernelBuild(
        vmlinux=vmlinux,
        release=release_file.read_text().strip(),
        modules=tuple(modules),
        source=source,
        source_sha256=source_sha256,
    )


def _publish(staging: Path, target: Path) -> None:
    """Renames a finished staging directory into place; a concurrent winner is kept."""
    try:
        staging.rename(target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)


def prepare_debian_kernel(
    deb: Path,
    kernels_dir: Path,
    *,
    modules: Sequence[str] = GUEST_MODULES,
    deb_sha256: str | None = None,
    log: Log | None = None,
) -> KernelBuild:
    """Unpacks a Debian kernel .deb once into `kernels_dir`: vmlinux, release, needed modules.

    The result is cached by the .deb's hash and the module list; later calls only read it.
    Raises ImageError when the package has no bzImage, no PVH entry or lacks a module.
    """
    say = log or (lambda _msg: None)
    sha = deb_sha256 or sha256_file(deb)
    key = hashlib.sha256(f"{_KERNEL_FORMAT}\n{sha}\n{','.join(modules)}".encode()).hexdigest()
    target = kernels_dir / key[:16]
    prepared = _load_prepared(target, deb, sha)
    if prepared is not None:
        return prepared

    say(f"unpacking {deb.name}")
    kernels_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=kernels_dir, prefix=f".{key[:16]}-"))
    try:
        with tempfile.TemporaryDirectory(dir=kernels_dir, prefix=".unpack-") as unpack:
            tree = Path(unpack)
            _dpkg_extract(deb, tree)
            images = sorted((tree / "boot").glob("vmlinuz-*"))
            if not images:
                raise ImageError(f"{deb.name} contains no boot/vmlinuz-*")
            release = images[0].name.removeprefix("vmlinuz-")
            elf = extract_vmlinux(images[0].read_bytes())
            check_pvh(elf)
            (staging / "vmlinux").write_bytes(elf)
            (staging / "release").write_text(release + "\n")

            release_dir = tree / "lib" / "modules" / release
            ordered = module_closure(
                modules, _module_index(release_dir), builtin=_builtin_modules(release_dir)
            )
            (staging / "modules").mkdir()
            for module in ordered:
                data = _module_bytes(module.path)
                (staging / "modules" / f"{module.name}.ko").write_bytes(data)
            (staging / "modules.order").write_text(
                "".join(f"{m.name} {','.join(m.depends)}\n" for m in ordered)
            )
        staging.chmod(0o755)
        _publish(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    result = _load_prepared(target, deb, sha)
    if result is None:
        raise ImageError(f"kernel cache entry {target} is incomplete", hint=f"delete {target}")
    return result


def prepare_user_kernel(path: Path, kernels_dir: Path, *, log: Log | None = None) -> KernelBuild:
    """A user's kernel (ELF vmlinux or bzImage) as a PVH ELF, cached by its hash. No modules.

    Raises ImageError when the file is missing, has no ELF kernel inside or no PVH note.
    """
    say = log or (lambda _msg: None)
    if not path.is_file():
        raise ImageError(f"kernel {path} does not exist", hint="pass a vmlinux or bzImage path")
    sha = sha256_file(path)
    target = kernels_dir / f"user-{sha[:16]}"
    prepared = _load_prepared(target, path, sha)
    if prepared is not None:
        return prepared
    say(f"preparing kernel {path}")
    kernels_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=kernels_dir, prefix=".user-"))
    try:
        elf = extract_vmlinux(path.read_bytes())
        check_pvh(elf)
        (staging / "vmlinux").write_bytes(elf)
        (staging / "release").write_text(kernel_release_of(elf) + "\n")
        (staging / "modules").mkdir()
        (staging / "modules.order").write_text("")
        staging.chmod(0o755)
        _publish(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    result = _load_prepared(target, path, sha)
    if result is None:
        raise ImageError(f"kernel cache entry {target} is incomplete", hint=f"delete {target}")
    return result
