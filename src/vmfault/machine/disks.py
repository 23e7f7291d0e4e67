"""Guest disks: what a machine's virtio disks are made of, and how QEMU opens them.

A guest disk is either a fresh zeroed disk of a size or a user's image (raw or qcow2). A
user's image is never written, and the writes of one run never reach the next: a tapped
disk (the default) is served by a `vmfault.machine.nbd.BlockTap` in vmfault's process,
which reads the user's image (a qcow2 image is first converted to a raw file in the run
directory) or zeros, keeps every write itself, and saves and loads its contents with the
machine's snapshots; the device sits on QEMU's NBD client node of the tap,

    virtio-blk (serial NAME)  ->  vmf-dI (nbd)  ->  tap (vmfault)  ->  image | zeros

An untapped disk (`MachineConfig.tap_disks = False`, no faults possible) is a qcow2 overlay
in the run directory whose backing is the user's image (read-only) or a fresh sparse raw
file, so QEMU's internal snapshots cover it,

    virtio-blk (serial NAME)  ->  vmf-dI (qcow2 overlay)  ->  vmf-dI-b (backing, read-only)

Snapshots of a machine with tapped disks are the `snapshot-save` and `snapshot-load` jobs on
the scratch drive alone (HMP `savevm` refuses a writable disk that cannot hold a snapshot),
with each tap saving or loading its contents beside them.
"""

from __future__ import annotations

import enum
import json
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vmfault.errors import MachineError, UsageError

__all__ = [
    "DISK_NAME",
    "MMIO_MACHINES",
    "SECTOR_BYTES",
    "DiskNodes",
    "GuestDisk",
    "ImageFormat",
    "disk_argv",
    "disk_nodes",
    "format_size",
    "fresh_disk",
    "image_disk",
    "parse_disk",
    "parse_size",
    "prepare_disk_files",
    "probe_image",
    "tap_socket",
    "unique_disks",
    "virtio_device",
]

SECTOR_BYTES = 512
"""Bytes per sector, the unit the guest's block layer and disk faults count in."""
DISK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,19}$")
"""A disk's name: it becomes the virtio serial (at most 20 bytes) and a /dev link."""
_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
MIN_DISK_BYTES = 1 << 20
MAX_DISK_BYTES = 1 << 40
_NAME_HINT = "name it with 1-20 letters, digits, '_' or '-', starting with a letter"
_FORMS = "NAME:SIZE (a fresh disk, e.g. data:64M) or NAME:PATH (a raw or qcow2 image)"


class ImageFormat(enum.StrEnum):
    """The image formats a guest disk may come from."""

    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class GuestDisk:
    """One virtio disk of a machine: a fresh zeroed disk (`image` None) or a user's image."""

    name: str
    size_bytes: int
    image: Path | None = None
    """The user's image, opened read-only under the overlay; None: a fresh zeroed disk."""
    image_format: ImageFormat = ImageFormat.RAW

    @property
    def sectors(self) -> int:
        """The disk's size in 512-byte sectors."""
        return self.size_bytes // SECTOR_BYTES

    @property
    def spelling(self) -> str:
        """`NAME:SIZE` or `NAME:PATH`, as the command line takes it."""
        return (
            f"{self.name}:{self.image if self.image is not None else format_size(self.size_bytes)}"
        )


@dataclass(frozen=True)
class DiskNodes:
    """The QEMU names of disk `index`'s parts (see the module docstring)."""

    index: int

    @property
    def top(self) -> str:
        """The node the device sits on: the tap's NBD client, or the qcow2 overlay."""
        return f"vmf-d{self.index}"

    @property
    def overlay_file(self) -> str:
        """An untapped disk's overlay file node."""
        return f"vmf-d{self.index}-f"

    @property
    def backing(self) -> str:
        """An untapped disk's read-only backing node (the user's image or a fresh file)."""
        return f"vmf-d{self.index}-b"

    @property
    def backing_file(self) -> str:
        """The backing's file node."""
        return f"vmf-d{self.index}-bf"

    @property
    def device(self) -> str:
        """The virtio-blk device's id."""
        return f"vmf-d{self.index}-dev"


def disk_nodes(index: int) -> DiskNodes:
    """The node names of disk `index` (0 for the first disk of the machine)."""
    return DiskNodes(index)


def parse_size(text: str) -> int:
    """`64M`, `1G`, `512K`, `65536` (bytes; K, M, G, T are powers of 1024) -> bytes."""
    found = _SIZE.match(text)
    if found is None:
        raise UsageError(
            f"invalid disk size {text!r}", hint="give bytes or a size such as 64M, 512K, 1G"
        )
    return int(found.group(1)) * _UNITS[found.group(2).upper()]


def format_size(size_bytes: int) -> str:
    """The shortest exact spelling of a size: `64M`, `1536K`, `1000`."""
    for unit in ("T", "G", "M", "K"):
        if size_bytes % _UNITS[unit] == 0 and size_bytes >= _UNITS[unit]:
            return f"{size_bytes // _UNITS[unit]}{unit}"
    return str(size_bytes)


def _check_name(name: str, where: str) -> None:
    if not DISK_NAME.match(name):
        raise UsageError(f"invalid disk name {name!r}{where}", hint=_NAME_HINT)


def fresh_disk(name: str, size: str | int) -> GuestDisk:
    """A fresh zeroed disk called `name`, `size` bytes (or a size text such as 64M)."""
    _check_name(name, "")
    size_bytes = size if isinstance(size, int) else parse_size(size)
    if not MIN_DISK_BYTES <= size_bytes <= MAX_DISK_BYTES or size_bytes % SECTOR_BYTES:
        raise UsageError(
            f"disk {name}: size {format_size(size_bytes)} is not a whole number of sectors "
            "between 1M and 1T",
            hint="give a size such as 64M",
        )
    return GuestDisk(name, size_bytes)


def image_disk(name: str, path: Path) -> GuestDisk:
    """A disk called `name` over the user's image at `path` (raw or qcow2, never written)."""
    _check_name(name, "")
    image = path.expanduser().resolve()
    image_format, size_bytes = probe_image(image)
    if size_bytes < SECTOR_BYTES:
        raise UsageError(f"disk image {path} is empty", hint="give an image of at least 512 bytes")
    return GuestDisk(name, size_bytes - size_bytes % SECTOR_BYTES, image, image_format)


def parse_disk(text: str, *, base: Path | None = None) -> GuestDisk:
    """A guest disk from `NAME:SIZE` or `NAME:PATH` (a path relative to `base`, else to
    the working directory). A text that parses as a size is a size; anything else is a path.
    UsageError for a bad name or size, or an image that is missing or not raw or qcow2."""
    name, colon, rest = text.partition(":")
    if not colon or not rest.strip():
        raise UsageError(f"invalid disk {text!r}", hint=f"give {_FORMS}")
    _check_name(name, f" in {text!r}")
    if _SIZE.match(rest):
        return fresh_disk(name, rest)
    path = Path(rest).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    return image_disk(name, path)


def unique_disks(disks: Sequence[GuestDisk]) -> tuple[GuestDisk, ...]:
    """`disks` as a tuple; UsageError if two share a name."""
    seen: set[str] = set()
    for disk in disks:
        if disk.name in seen:
            raise UsageError(
                f"two disks are named {disk.name!r}", hint="give each disk its own name"
            )
        seen.add(disk.name)
    return tuple(disks)


def probe_image(path: Path) -> tuple[ImageFormat, int]:
    """The format and virtual size in bytes of the image at `path` (`qemu-img info`);
    UsageError if it does not exist or is neither raw nor qcow2."""
    if not path.is_file():
        raise UsageError(
            f"disk image {path} does not exist", hint="give the path of a raw or qcow2 image"
        )
    argv = ["qemu-img", "info", "--force-share", "--output=json", str(path)]
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except FileNotFoundError as exc:
        raise MachineError("qemu-img is not installed", hint="run `make setup`") from exc
    if result.returncode != 0:
        message = result.stderr.strip().splitlines()[-1:] or ["qemu-img failed"]
        raise UsageError(
            f"cannot read disk image {path}: {message[0]}", hint="give a raw or qcow2 image"
        )
    info = json.loads(result.stdout)
    found = str(info.get("format", ""))
    try:
        image_format = ImageFormat(found)
    except ValueError:
        raise UsageError(
            f"disk image {path} is {found}, not raw or qcow2",
            hint=f"convert it: qemu-img convert -O qcow2 {path} image.qcow2",
        ) from None
    return image_format, int(info["virtual-size"])


def tap_socket(run_dir: Path, index: int) -> Path:
    """Where the tap of disk `index` listens."""
    return run_dir / f"disk{index}.sock"


def _run_qemu_img(argv: list[str], what: str) -> None:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=3600)
    except FileNotFoundError as exc:
        raise MachineError("qemu-img is not installed", hint="run `make setup`") from exc
    if result.returncode != 0:
        raise MachineError(f"qemu-img could not {what}: {result.stderr.strip()}")


def prepare_disk_files(
    run_dir: Path, disks: Sequence[GuestDisk], *, tapped: bool
) -> list[Path | None]:
    """Make the files `disks` need in `run_dir`; for tapped disks, the raw base each tap
    reads (None: zeros). Untapped disks get a qcow2 overlay (and a fresh disk a sparse raw
    backing file); a tapped disk over a qcow2 image gets the image converted to raw."""
    bases: list[Path | None] = []
    for index, disk in enumerate(disks):
        raw = run_dir / f"disk{index}.raw"
        if tapped:
            if disk.image is None or disk.image_format is ImageFormat.RAW:
                bases.append(disk.image)
                continue
            _run_qemu_img(["qemu-img", "convert", "-U", "-f", "qcow2", "-O", "raw",
                           str(disk.image), str(raw)], f"read disk image {disk.image}")  # fmt: skip
            bases.append(raw)
            continue
        backing = disk.image
        if backing is None:
            with raw.open("wb") as stream:
                stream.truncate(disk.size_bytes)
            backing = raw
        options = f"backing_file={_escape(str(backing))},backing_fmt={disk.image_format.value}"
        _run_qemu_img(["qemu-img", "create", "-q", "-f", "qcow2", "-o", options,
                       str(run_dir / f"disk{index}.qcow2"), str(disk.size_bytes)],
                      f"create the overlay of disk {disk.name}")  # fmt: skip
        bases.append(None)
    return bases


def _escape(value: str) -> str:
    """A value for a QEMU option string: commas doubled."""
    return value.replace(",", ",,")


MMIO_MACHINES = ("microvm", "virt")
"""Machine types whose virtio devices go on virtio-mmio transports: their guests load
virtio_mmio (virt's PCIe would need virtio_pci)."""


def virtio_device(machine_type: str, kind: str) -> str:
    """The QEMU device of a virtio `kind` (`blk`, `net`) on `machine_type`:
    `virtio-blk-device` on a virtio-mmio machine, `virtio-blk-pci` on any other."""
    return f"virtio-{kind}-{'device' if machine_type in MMIO_MACHINES else 'pci'}"


def disk_argv(
    disks: Sequence[GuestDisk], run_dir: Path, machine_type: str, *, tapped: bool
) -> list[str]:
    """The QEMU arguments that attach `disks` (their files made by `prepare_disk_files`;
    a tapped disk's tap listening).

    Each device reports every error to the guest (`werror`/`rerror=report`: QEMU would
    otherwise pause the whole machine on ENOSPC). An untapped disk's flushes stop at its
    overlay file: its contents are thrown away with the run directory.
    """
    bus = virtio_device(machine_type, "blk")
    argv: list[str] = []
    for index, disk in enumerate(disks):
        nodes = disk_nodes(index)
        if tapped:
            argv += [
                "-blockdev",
                f"driver=nbd,node-name={nodes.top},server.type=unix,"
                f"server.path={_escape(str(tap_socket(run_dir, index)))},export={nodes.top}",
            ]
        else:
            backing = disk.image or run_dir / f"disk{index}.raw"
            argv += [
                "-blockdev",
                f"driver=file,node-name={nodes.backing_file},filename={_escape(str(backing))},"
                "read-only=on",
                "-blockdev",
                f"driver={disk.image_format.value},node-name={nodes.backing},"
                f"file={nodes.backing_file},read-only=on",
                "-blockdev",
                f"driver=file,node-name={nodes.overlay_file},"
                f"filename={_escape(str(run_dir / f'disk{index}.qcow2'))},cache.no-flush=on",
                "-blockdev",
                f"driver=qcow2,node-name={nodes.top},file={nodes.overlay_file},"
                f"backing={nodes.backing}",
            ]
        argv += [
            "-device",
            f"{bus},id={nodes.device},drive={nodes.top},serial={disk.name},"
            "werror=report,rerror=report",
        ]
    return argv
