"""Guest images: a kernel, an initramfs with the agent and workloads, and a manifest.

An image is a directory `<cache root>/images/<hash>`, where the hash covers every input, so an
unchanged build is a cache hit that compiles and downloads nothing. Images are built in a
temporary directory beside their final place and renamed into it, so a reader never sees a
half-built image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from vmfault.arch import DEFAULT_ARCH, DISKS, Arch
from vmfault.errors import ImageError, UsageError
from vmfault.guest.initramfs import guest_entries, write_newc
from vmfault.guest.installer import (
    AARCH64_GUEST_MODULES,
    find_installer_deb,
    prepare_installer_kernel,
)
from vmfault.guest.kernel import (
    DISK_MODULES,
    GUEST_MODULES,
    KernelBuild,
    find_kernel_deb,
    prepare_debian_kernel,
    prepare_user_kernel,
    sha256_file,
    split_modules,
)
from vmfault.guest.protocol import HOOK_EXITED, HOOK_STARTED, encode_argv
from vmfault.guest.runtime import RuntimeFile, runtime_files
from vmfault.guest.workloads import (
    AGENT_CFLAGS,
    GUEST_WORKLOAD_DIR,
    SourceKind,
    UserWorkload,
    Workload,
    WorkloadInput,
    agent_source,
    builtin_workload_names,
    check_cflags,
    check_static_elf,
    compile_c,
    gcc_version,
    plan_workloads,
)

__all__ = [
    "BUSYBOX_PATH",
    "IMAGE_FORMAT",
    "MANIFEST_NAME",
    "GuestImage",
    "ImageInputs",
    "ImageSpec",
    "UserWorkload",
    "Workload",
    "build_image",
    "builtin_workload_names",
    "default_cache_root",
    "encode_argv",
    "gather_inputs",
    "load_image",
]

IMAGE_FORMAT = 1
"""Version of the image layout and builder; bumping it invalidates every cached image."""
MANIFEST_NAME = "image.json"
BUSYBOX_PATH = Path("/bin/busybox")
INITRD_NAME = "initramfs.cpio"
AGENT_NAME = "agent"
WORKLOAD_DIR = "workloads"
KALLSYMS_NAME = "kallsyms"

Log = Callable[[str], None]


@dataclass(frozen=True)
class ImageSpec:
    """What goes into an image beyond the defaults.

    `kernel`: a vmlinux or bzImage to use instead of Debian's (no modules are added then).
    `initrd`: an initrd of the user's; ours is appended to it. `disk`: a disk image path,
    only recorded in the manifest. `arch`: the guest architecture (aarch64: Debian's arm64
    kernel from its netboot installer, everything compiled with the cross compiler).
    """

    user_workloads: tuple[UserWorkload, ...] = ()
    kernel: Path | None = None
    initrd: Path | None = None
    disk: Path | None = None
    arch: Arch = DEFAULT_ARCH


@dataclass(frozen=True)
class GuestImage:
    """A built guest image: paths of its parts and what the agent can run.

    `agent_hooks` maps the agent's hook function names to their virtual addresses.
    """

    root: Path
    image_hash: str
    kernel: Path
    initrd: Path
    kernel_release: str
    agent_binary: Path
    workloads: Mapping[str, Workload] = field(hash=False)
    disk: Path | None
    modules: tuple[str, ...] = ()
    agent_hooks: Mapping[str, int] = field(default_factory=dict, hash=False)
    kernel_sha256: str = ""
    arch: Arch = DEFAULT_ARCH

    @property
    def kallsyms_path(self) -> Path:
        """Where a capture of the guest's /proc/kallsyms for this image is kept."""
        return self.root / KALLSYMS_NAME

    @property
    def symbols_key(self) -> str:
        """Identifies the kernel symbol table: the same for every image with this kernel and
        these modules, so one capture serves them all."""
        text = "\n".join((self.kernel_sha256 or self.image_hash, *self.modules))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def manifest_path(self) -> Path:
        """The image's manifest, `image.json`."""
        return self.root / MANIFEST_NAME

    def workload(self, name: str) -> Workload:
        """The workload called `name`; UsageError listing the known names when there is none."""
        try:
            return self.workloads[name]
        except KeyError:
            raise UsageError(
                f"no workload {name!r} in image {self.image_hash}",
                hint=f"choose one of: {', '.join(sorted(self.workloads))}",
            ) from None


def default_cache_root() -> Path:
    """`$VMFAULT_CACHE`, else `$XDG_CACHE_HOME/vmfault`, else `~/.cache/vmfault`."""
    explicit = os.environ.get("VMFAULT_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg).expanduser() / "vmfault"
    return Path.home() / ".cache" / "vmfault"


@dataclass(frozen=True)
class ImageInputs:
    """Everything an image is built from; `digest()` names the image directory.

    Files are represented by their sha256 so the digest changes when any content changes.
    """

    kernel_source: Path
    kernel_sha256: str
    kernel_kind: Literal["debian", "user"]
    modules: tuple[str, ...]
    agent_source: bytes
    workloads: tuple[WorkloadInput, ...]
    gcc_version: str
    busybox: Path | None
    """The host's static busybox; None for aarch64, whose busybox comes with the kernel."""
    busybox_sha256: str
    initrd: Path | None
    initrd_sha256: str
    disk: Path | None
    runtime: tuple[tuple[str, str], ...] = ()
    """(guest path, sha256) of each interpreter and library a dynamic workload needs."""
    arch: Arch = DEFAULT_ARCH

    def digest(self) -> str:
        """The image hash: the first 16 hex digits of a sha256 over every input."""
        described = {
            "format": IMAGE_FORMAT,
            "kernel": [self.kernel_kind, self.kernel_sha256],
            "modules": list(self.modules),
            "agent": [hashlib.sha256(self.agent_source).hexdigest(), *AGENT_CFLAGS],
            "workloads": [w.fingerprint() for w in self.workloads],
            "gcc": self.gcc_version,
            "busybox": self.busybox_sha256,
            "initrd": self.initrd_sha256,
            "disk": None if self.disk is None else str(self.disk),
        }
        if self.runtime:
            described["runtime"] = [list(item) for item in self.runtime]
        if self.arch is not DEFAULT_ARCH:  # x86-64 images keep the hashes they had
            described["arch"] = self.arch.value
        text = json.dumps(described, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _existing_file(path: Path, what: str) -> Path:
    resolved = path.expanduser().resolve()
    if not resolved.is_file():
        raise UsageError(
            f"{what} {path} does not exist", hint=f"pass the path of an existing {what}"
        )
    return resolved


def _busybox() -> Path:
    candidates = [BUSYBOX_PATH]
    found = shutil.which("busybox")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.is_file():
            try:
                check_static_elf(candidate)
            except ImageError:
                continue
            return candidate
    raise ImageError(
        "no statically linked busybox found",
        hint="run `make setup` (or `apt-get install busybox-static`)",
    )


def gather_inputs(
    spec: ImageSpec, *, cache_root: Path, refresh_kernel: bool = False, log: Log | None = None
) -> ImageInputs:
    """Validates `spec` and collects every input of its image, hashing files; builds nothing.

    May download the kernel package when none is cached (see `build_image`).
    """
    say = log or (lambda _msg: None)
    arch = spec.arch
    workloads = plan_workloads(spec.user_workloads, arch=arch)
    initrd = None if spec.initrd is None else _existing_file(spec.initrd, "initrd")
    disk = None if spec.disk is None else _existing_file(spec.disk, "disk image")
    if disk is not None:
        arch.require(DISKS)
    modules: tuple[str, ...]
    kernel_kind: Literal["debian", "user"]
    busybox: Path | None = None
    if spec.kernel is not None:
        if arch is not Arch.X86_64:
            raise UsageError(
                f"a kernel of your own works only for x86-64 guests, not {arch.value}",
                hint="leave out the kernel: aarch64 guests boot Debian's arm64 kernel",
            )
        kernel = _existing_file(spec.kernel, "kernel")
        kernel_kind, modules = "user", ()
    elif arch is Arch.AARCH64:
        kernel = find_installer_deb(cache_root / "downloads", refresh=refresh_kernel, log=say)
        kernel_kind, modules = "debian", AARCH64_GUEST_MODULES
    else:
        kernel = find_kernel_deb(cache_root / "downloads", refresh=refresh_kernel, log=say)
        kernel_kind, modules = "debian", GUEST_MODULES
    if arch is Arch.X86_64:
        busybox = _busybox()
    return ImageInputs(
        kernel_source=kernel,
        kernel_sha256=sha256_file(kernel),
        kernel_kind=kernel_kind,
        modules=modules,
        agent_source=agent_source(),
        workloads=workloads,
        gcc_version=gcc_version(arch),
        busybox=busybox,
        busybox_sha256="" if busybox is None else sha256_file(busybox),
        initrd=initrd,
        initrd_sha256="" if initrd is None else sha256_file(initrd),
        disk=disk,
        runtime=tuple(
            (item.guest_path, sha256_file(item.host_path)) for item in _runtime(workloads)
        ),
        arch=arch,
    )


def _runtime(workloads: tuple[WorkloadInput, ...]) -> tuple[RuntimeFile, ...]:
    """The interpreters and libraries the user's dynamically linked binaries need."""
    found: dict[str, RuntimeFile] = {}
    for item in workloads:
        if item.kind is SourceKind.BINARY and item.origin is not None:
            for runtime in runtime_files(item.origin):
                found.setdefault(runtime.guest_path, runtime)
    return tuple(found[path] for path in sorted(found))


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        target.hardlink_to(source)
    except OSError:
        shutil.copyfile(source, target)


def _symbol_addresses(binary: Path, names: tuple[str, ...]) -> dict[str, int]:
    try:
        with binary.open("rb") as stream:
            symtab = ELFFile(stream).get_section_by_name(".symtab")
            if not isinstance(symtab, SymbolTableSection):
                raise ImageError(f"{binary} has no symbol table")
            found = {
                name: int(symbols[0]["st_value"])
                for name in names
                if (symbols := symtab.get_symbol_by_name(name))
            }
    except (ELFError, OSError) as exc:
        raise ImageError(f"cannot read symbols of {binary}: {exc}") from exc
    missing = [name for name in names if name not in found]
    if missing:
        raise ImageError(f"the agent lacks the hook symbols {', '.join(missing)}")
    return found


def _build_workload(item: WorkloadInput, directory: Path, arch: Arch) -> None:
    binary = directory / item.name
    if item.kind is SourceKind.BINARY:
        binary.write_bytes(item.content)
    else:
        source = directory / f"{item.name}.c"
        source.write_bytes(item.content)
        compile_c(source, binary, item.flags, arch=arch)
    binary.chmod(0o755)
    check_static_elf(binary, dynamic=item.kind is SourceKind.BINARY, arch=arch)


def _workload_record(item: WorkloadInput) -> dict[str, Any]:
    has_source = item.kind is not SourceKind.BINARY
    return {
        "name": item.name,
        "guest_path": f"{GUEST_WORKLOAD_DIR}/{item.name}",
        "host_binary": f"{WORKLOAD_DIR}/{item.name}",
        "source": f"{WORKLOAD_DIR}/{item.name}.c" if has_source else None,
        "source_kind": item.kind.value,
        "origin": None if item.origin is None else str(item.origin),
        "default_args": list(item.default_args),
        "description": item.description,
        "flags": list(item.flags),
    }


def _build(inputs: ImageInputs, kernel: KernelBuild, digest: str, staging: Path, log: Log) -> None:
    (staging / "agent.c").write_bytes(inputs.agent_source)
    workload_dir = staging / WORKLOAD_DIR
    workload_dir.mkdir()
    log(f"compiling the agent and {len(inputs.workloads)} workloads")
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        arch = inputs.arch
        jobs = [
            pool.submit(
                compile_c, staging / "agent.c", staging / AGENT_NAME, AGENT_CFLAGS, arch=arch
            ),
            *(pool.submit(_build_workload, item, workload_dir, arch) for item in inputs.workloads),
        ]
        for job in jobs:
            job.result()
    hooks = _symbol_addresses(staging / AGENT_NAME, (HOOK_STARTED, HOOK_EXITED))

    runtime = [(r.guest_path, r.host_path.read_bytes()) for r in _runtime(inputs.workloads)]
    if inputs.busybox is not None:
        busybox = inputs.busybox.read_bytes()
    else:  # the busybox that comes with the kernel, with its loader and libraries
        userland = {guest: path.read_bytes() for guest, path in kernel.userland}
        busybox = userland.pop("/bin/busybox")
        runtime += sorted(userland.items())
    every_machine, with_disks = split_modules(kernel.modules, DISK_MODULES)
    archive = write_newc(
        guest_entries(
            agent=(staging / AGENT_NAME).read_bytes(),
            busybox=busybox,
            workloads=[(w.name, (workload_dir / w.name).read_bytes()) for w in inputs.workloads],
            modules=[(m.path.name, m.path.read_bytes()) for m in every_machine],
            runtime=runtime,
            disk_modules=[(m.path.name, m.path.read_bytes()) for m in with_disks],
        )
    )
    with (staging / INITRD_NAME).open("wb") as stream:
        if inputs.initrd is not None:
            theirs = inputs.initrd.read_bytes()
            stream.write(theirs + b"\0" * (-len(theirs) % 4))
        stream.write(archive)
    kernel_name = kernel.vmlinux.name  # vmlinux (x86-64 PVH ELF) or Image (arm64)
    _link_or_copy(kernel.vmlinux, staging / kernel_name)

    manifest = {
        "format": IMAGE_FORMAT,
        "image_hash": digest,
        "arch": inputs.arch.value,
        "kernel": {
            "path": kernel_name,
            "release": kernel.release,
            "kind": inputs.kernel_kind,
            "source": str(inputs.kernel_source),
            "sha256": inputs.kernel_sha256,
        },
        "initrd": {
            "path": INITRD_NAME,
            "user_initrd": None if inputs.initrd is None else str(inputs.initrd),
        },
        "agent": {
            "path": AGENT_NAME,
            "source": "agent.c",
            "flags": list(AGENT_CFLAGS),
            "hooks": {name: f"{address:#x}" for name, address in sorted(hooks.items())},
        },
        "modules": [m.name for m in kernel.modules],
        "workloads": [_workload_record(w) for w in inputs.workloads],
        "disk": None if inputs.disk is None else str(inputs.disk),
        "builder": {
            "gcc": inputs.gcc_version,
            "busybox": "with the kernel" if inputs.busybox is None else str(inputs.busybox),
            "busybox_sha256": inputs.busybox_sha256,
        },
    }
    (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")


def load_image(root: Path) -> GuestImage:
    """The GuestImage described by `root/image.json`; ImageError if it is missing or invalid."""
    manifest_path = root / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != IMAGE_FORMAT:
            raise ImageError(
                f"image {root} has format {manifest.get('format')}, expected {IMAGE_FORMAT}",
                hint="build the image again",
            )
        workloads = {
            record["name"]: Workload(
                name=record["name"],
                guest_path=record["guest_path"],
                host_binary=root / record["host_binary"],
                default_args=tuple(record["default_args"]),
                description=record["description"],
                source=None if record["source"] is None else root / record["source"],
                source_kind=SourceKind(record["source_kind"]),
            )
            for record in manifest["workloads"]
        }
        disk = manifest["disk"]
        return GuestImage(
            root=root,
            image_hash=manifest["image_hash"],
            kernel=root / manifest["kernel"]["path"],
            initrd=root / manifest["initrd"]["path"],
            kernel_release=manifest["kernel"]["release"],
            agent_binary=root / manifest["agent"]["path"],
            workloads=MappingProxyType(workloads),
            disk=None if disk is None else Path(disk),
            modules=tuple(manifest["modules"]),
            agent_hooks=MappingProxyType(
                {name: int(value, 16) for name, value in manifest["agent"]["hooks"].items()}
            ),
            kernel_sha256=str(manifest["kernel"].get("sha256", "")),
            arch=Arch(manifest.get("arch", DEFAULT_ARCH.value)),
        )
    except FileNotFoundError as exc:
        raise ImageError(f"no image manifest at {manifest_path}", hint="build the image") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise ImageError(
            f"image manifest {manifest_path} is invalid: {exc}",
            hint=f"delete {root} and build again",
        ) from exc


def build_image(
    spec: ImageSpec = ImageSpec(),
    *,
    cache_root: Path | None = None,
    refresh_kernel: bool = False,
    log: Log | None = None,
) -> GuestImage:
    """Builds the image for `spec`, or returns the cached one with the same inputs.

    A cache hit compiles, unpacks and downloads nothing. The kernel .deb is taken from the
    download cache when there is one; `refresh_kernel` asks apt for the current kernel first.
    Raises UsageError for bad user inputs (cflags gcc rejects too, found before any other
    work of a build) and ImageError when a part cannot be built; a failed build leaves no
    image directory behind.
    """
    say = log or (lambda _msg: None)
    root_dir = (cache_root or default_cache_root()).expanduser().resolve()
    inputs = gather_inputs(spec, cache_root=root_dir, refresh_kernel=refresh_kernel, log=say)
    digest = inputs.digest()
    images_dir = root_dir / "images"
    target = images_dir / digest
    if (target / MANIFEST_NAME).is_file():
        return load_image(target)

    for item in inputs.workloads:  # a user's bad flag fails in one line, before any work
        check_cflags(item, arch=inputs.arch)
    say(f"building image {digest}")
    if inputs.kernel_kind == "user":
        kernel = prepare_user_kernel(inputs.kernel_source, root_dir / "kernels", log=say)
    elif inputs.arch is Arch.AARCH64:
        kernel = prepare_installer_kernel(
            inputs.kernel_source,
            root_dir / "kernels",
            modules=inputs.modules,
            deb_sha256=inputs.kernel_sha256,
            log=say,
        )
    else:
        kernel = prepare_debian_kernel(
            inputs.kernel_source,
            root_dir / "kernels",
            modules=inputs.modules,
            deb_sha256=inputs.kernel_sha256,
            log=say,
        )
    images_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=images_dir, prefix=f".{digest}-"))
    try:
        _build(inputs, kernel, digest, staging, say)
        staging.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:
            if not (target / MANIFEST_NAME).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"image {digest} built in {target}")
    return load_image(target)
