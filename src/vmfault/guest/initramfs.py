"""A deterministic writer for `newc` cpio archives, the format Linux unpacks as an initramfs.

The same entries always give byte-identical output: entries are sorted by path, parent
directories are added, inode numbers are assigned in that order, and every mtime, uid and gid
is 0. The archive is not compressed, which boots faster under TCG.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import PurePosixPath

from vmfault.errors import ImageError

__all__ = [
    "DISK_MODULE_LIST_PATH",
    "MODULE_LIST_PATH",
    "NEWC_MAGIC",
    "TRAILER_NAME",
    "CpioEntry",
    "EntryKind",
    "char_device",
    "directory",
    "guest_entries",
    "regular_file",
    "symlink",
    "write_newc",
]

NEWC_MAGIC = b"070701"
TRAILER_NAME = "TRAILER!!!"
FIRST_INODE = 1


class EntryKind(Enum):
    """What a cpio entry creates; the value is its `S_IFMT` file-type bits."""

    DIRECTORY = stat.S_IFDIR
    FILE = stat.S_IFREG
    SYMLINK = stat.S_IFLNK
    CHAR_DEVICE = stat.S_IFCHR


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. `path` is relative to the root ("init", "bin/busybox").

    `data` is the file content or, for a symlink, its target. `permissions` holds only the
    permission bits (e.g. 0o755); the file type comes from `kind`.
    """

    path: str
    kind: EntryKind
    permissions: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def mode(self) -> int:
        """The full `st_mode`: file type and permission bits."""
        return self.kind.value | (self.permissions & 0o7777)


def directory(path: str, permissions: int = 0o755) -> CpioEntry:
    """A directory entry."""
    return CpioEntry(path, EntryKind.DIRECTORY, permissions)


def regular_file(path: str, data: bytes, permissions: int = 0o644) -> CpioEntry:
    """A regular file with the given content."""
    return CpioEntry(path, EntryKind.FILE, permissions, data)


def symlink(path: str, target: str) -> CpioEntry:
    """A symbolic link to `target`."""
    return CpioEntry(path, EntryKind.SYMLINK, 0o777, target.encode())


def char_device(path: str, major: int, minor: int, permissions: int = 0o600) -> CpioEntry:
    """A character device node."""
    return CpioEntry(path, EntryKind.CHAR_DEVICE, permissions, rdev_major=major, rdev_minor=minor)


def _normalise(path: str) -> str:
    parts = PurePosixPath("/" + path).parts[1:]
    if not parts or any(part in (".", "..") for part in parts):
        raise ImageError(f"invalid initramfs path {path!r}")
    return "/".join(parts)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(
    *, inode: int, mode: int, nlink: int, size: int, rdev: tuple[int, int], namesize: int
) -> bytes:
    fields = (
        inode,
        mode,
        0,  # uid
        0,  # gid
        nlink,
        0,  # mtime
        size,
        0,  # devmajor
        0,  # devminor
        rdev[0],
        rdev[1],
        namesize,
        0,  # check
    )
    return NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)


def _member(name: str, entry: CpioEntry | None, inode: int) -> bytes:
    encoded = name.encode() + b"\0"
    if entry is None:
        header = _header(inode=0, mode=0, nlink=1, size=0, rdev=(0, 0), namesize=len(encoded))
        data = b""
    else:
        data = entry.data
        header = _header(
            inode=inode,
            mode=entry.mode,
            nlink=2 if entry.kind is EntryKind.DIRECTORY else 1,
            size=len(data),
            rdev=(entry.rdev_major, entry.rdev_minor),
            namesize=len(encoded),
        )
    head = header + encoded
    return head + _pad4(len(head)) + data + _pad4(len(data))


def write_newc(entries: Iterable[CpioEntry]) -> bytes:
    """The complete `newc` archive (with trailer) for `entries`, deterministically.

    Missing parent directories are added with mode 0755. Raises ImageError when two entries
    claim the same path, or a path is empty or contains `.`/`..` components.
    """
    by_path: dict[str, CpioEntry] = {}
    for entry in entries:
        path = _normalise(entry.path)
        if path in by_path:
            raise ImageError(f"initramfs path {path!r} given twice")
        by_path[path] = CpioEntry(
            path, entry.kind, entry.permissions, entry.data, entry.rdev_major, entry.rdev_minor
        )
    for path in list(by_path):
        parent = PurePosixPath(path).parent
        while str(parent) != ".":
            existing = by_path.get(str(parent))
            if existing is None:
                by_path[str(parent)] = directory(str(parent))
            elif existing.kind is not EntryKind.DIRECTORY:
                raise ImageError(f"initramfs path {str(parent)!r} is not a directory")
            parent = parent.parent
    chunks = [
        _member(path, by_path[path], inode)
        for inode, path in enumerate(sorted(by_path), start=FIRST_INODE)
    ]
    chunks.append(_member(TRAILER_NAME, None, 0))
    return b"".join(chunks)


MODULE_LIST_PATH = "etc/vmfault/modules"
"""Where the guest agent reads the module files to load, one absolute path per line, in order."""
DISK_MODULE_LIST_PATH = "etc/vmfault/modules.disk"
"""The modules the agent loads after those, only when the machine has virtio disks (file
systems for workloads that make one), in the same format."""

WORKLOAD_DIR = "w"
MODULE_DIR = "lib/modules"


def guest_entries(
    *,
    agent: bytes,
    busybox: bytes,
    workloads: Iterable[tuple[str, bytes]],
    modules: Iterable[tuple[str, bytes]],
    runtime: Iterable[tuple[str, bytes]] = (),
    disk_modules: Iterable[tuple[str, bytes]] = (),
) -> list[CpioEntry]:
    """The vmfault guest's root file system: agent as /init, busybox, workloads, modules,
    and the interpreters and libraries of dynamically linked workloads.

    `workloads`, `modules` and `disk_modules` are (file name, content) pairs; modules are
    listed in /etc/vmfault/modules in the order given, which must be their load order, and
    `disk_modules` (loaded after them, only on machines with disks) in
    /etc/vmfault/modules.disk. `runtime` holds (absolute guest path, content) pairs.
    """
    entries = [
        regular_file("init", agent, 0o755),
        regular_file("bin/busybox", busybox, 0o755),
        symlink("bin/sh", "busybox"),
        char_device("dev/console", 5, 1),
        char_device("dev/null", 1, 3, 0o666),
        *(directory(name) for name in ("proc", "sys", "dev", "tmp", "etc/vmfault", "root")),
        directory(WORKLOAD_DIR),
        directory(MODULE_DIR),
    ]
    entries.extend(regular_file(f"{WORKLOAD_DIR}/{n}", data, 0o755) for n, data in workloads)
    for list_path, listed in ((MODULE_LIST_PATH, modules), (DISK_MODULE_LIST_PATH, disk_modules)):
        module_paths: list[str] = []
        for name, data in listed:
            entries.append(regular_file(f"{MODULE_DIR}/{name}", data))
            module_paths.append(f"/{MODULE_DIR}/{name}")
        if module_paths or list_path == MODULE_LIST_PATH:
            text = "".join(p + "\n" for p in module_paths)
            entries.append(regular_file(list_path, text.encode()))
    known = {entry.path for entry in entries}
    for path, data in runtime:
        relative = str(PurePosixPath(path).relative_to("/"))
        parents = PurePosixPath(relative).parents
        for parent in reversed(parents[:-1]):
            if str(parent) not in known:
                entries.append(directory(str(parent)))
                known.add(str(parent))
        entries.append(regular_file(relative, data, 0o755))
    return entries


def read_newc(data: bytes) -> list[CpioEntry]:
    """The entries of a `newc` archive (several concatenated archives too), in order.

    Python has no cpio module and the format is a fixed hex header per member, so it is
    read here. Hard links are not resolved (an entry's data is empty after its first
    link); device nodes and unknown file types are skipped. Raises ImageError for a
    truncated or malformed archive.
    """
    entries: list[CpioEntry] = []
    position = 0
    header_bytes = 110
    while position + header_bytes <= len(data):
        if data[position : position + 6] != NEWC_MAGIC:
            if not data[position:].strip(b"\0"):
                break  # padding after the last archive
            raise ImageError(f"not a newc cpio member at offset {position}")
        try:
            fields = [int(data[at : at + 8], 16) for at in range(position + 6, position + 110, 8)]
        except ValueError as exc:
            raise ImageError(f"malformed cpio header at offset {position}") from exc
        mode, size, namesize = fields[1], fields[6], fields[11]
        name_start = position + header_bytes
        name = data[name_start : name_start + namesize].rstrip(b"\0").decode("utf-8", "replace")
        data_start = name_start + namesize + _pad_length(header_bytes + namesize)
        end = data_start + size
        if end > len(data):
            raise ImageError(f"cpio member {name!r} is truncated")
        position = end + _pad_length(size)
        if name == TRAILER_NAME:
            continue
        try:
            kind = EntryKind(stat.S_IFMT(mode))
        except ValueError:
            continue
        if kind is EntryKind.CHAR_DEVICE or name in (".", ""):
            continue
        path = name.removeprefix("./")
        entries.append(CpioEntry(path, kind, mode & 0o7777, data[data_start:end]))
    if data[position:].strip(b"\0"):
        raise ImageError(f"the cpio archive is truncated at offset {position}")
    return entries


def _pad_length(length: int) -> int:
    return -length % 4
