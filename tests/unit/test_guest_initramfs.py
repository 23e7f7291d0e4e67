"""The newc cpio writer: exact byte layout, determinism, and what the guest root contains."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vmfault.errors import ImageError
from vmfault.guest.initramfs import (
    MODULE_LIST_PATH,
    CpioEntry,
    EntryKind,
    char_device,
    directory,
    guest_entries,
    regular_file,
    symlink,
    write_newc,
)

HEADER_BYTES = 110


def parse_newc(archive: bytes) -> list[tuple[str, dict[str, int], bytes]]:
    """A strict reader: every member's name, header fields and data; checks all padding."""
    names = [
        "ino",
        "mode",
        "uid",
        "gid",
        "nlink",
        "mtime",
        "filesize",
        "devmajor",
        "devminor",
        "rdevmajor",
        "rdevminor",
        "namesize",
        "check",
    ]
    members = []
    pos = 0
    while True:
        assert archive[pos : pos + 6] == b"070701"
        fields = {
            name: int(archive[pos + 6 + 8 * i : pos + 14 + 8 * i], 16)
            for i, name in enumerate(names)
        }
        name_end = pos + HEADER_BYTES + fields["namesize"]
        name = archive[pos + HEADER_BYTES : name_end - 1].decode()
        assert archive[name_end - 1] == 0
        data_start = name_end + (-name_end % 4)
        assert archive[name_end:data_start] == b"\0" * (data_start - name_end)
        data_end = data_start + fields["filesize"]
        data = archive[data_start:data_end]
        pos = data_end + (-data_end % 4)
        assert archive[data_end:pos] == b"\0" * (pos - data_end)
        members.append((name, fields, data))
        if name == "TRAILER!!!":
            assert pos == len(archive)
            return members


def test_single_file_byte_layout() -> None:
    archive = write_newc([regular_file("a", b"xyz", 0o644)])
    header = (
        b"070701"
        + b"00000001"  # ino
        + b"000081A4"  # mode: S_IFREG | 0644
        + b"00000000" * 2  # uid gid
        + b"00000001"  # nlink
        + b"00000000"  # mtime
        + b"00000003"  # filesize
        + b"00000000" * 4  # dev and rdev
        + b"00000002"  # namesize: "a" and NUL
        + b"00000000"  # check
    )
    first = header + b"a\0" + b"xyz\0"  # 110 + 2 bytes of name is aligned; data pads to 4
    assert archive.startswith(first)
    trailer = archive[len(first) :]
    assert trailer.startswith(b"070701" + b"00000000" + b"00000000")
    assert trailer[HEADER_BYTES : HEADER_BYTES + 11] == b"TRAILER!!!\0"
    assert len(archive) % 4 == 0


def test_name_and_data_padding() -> None:
    archive = write_newc([regular_file("abc", b"12345")])
    name_end = HEADER_BYTES + 4
    assert archive[HEADER_BYTES:name_end] == b"abc\0"
    assert archive[name_end : name_end + 2] == b"\0\0"  # 114 -> 116
    assert archive[name_end + 2 : name_end + 10] == b"12345\0\0\0"  # 5 -> 8


def test_output_is_deterministic_and_sorted_regardless_of_input_order() -> None:
    entries = [
        regular_file("bin/tool", b"\x7fELF", 0o755),
        symlink("bin/sh", "busybox"),
        regular_file("init", b"#!", 0o755),
        char_device("dev/console", 5, 1),
    ]
    one = write_newc(entries)
    two = write_newc(list(reversed(entries)))
    assert one == two
    names = [name for name, _, _ in parse_newc(one)]
    assert names == ["bin", "bin/sh", "bin/tool", "dev", "dev/console", "init", "TRAILER!!!"]


def test_fields_of_each_kind_and_inode_numbering() -> None:
    members = {
        name: (fields, data)
        for name, fields, data in parse_newc(
            write_newc(
                [
                    directory("tmp", 0o1777),
                    symlink("bin/sh", "busybox"),
                    char_device("dev/console", 5, 1),
                    regular_file("init", b"x" * 5, 0o755),
                ]
            )
        )
    }
    assert members["tmp"][0]["mode"] == 0o41777
    assert members["tmp"][0]["nlink"] == 2
    assert members["bin/sh"][0]["mode"] == 0o120777
    assert members["bin/sh"][1] == b"busybox"
    assert members["dev/console"][0]["mode"] == 0o20600
    assert (members["dev/console"][0]["rdevmajor"], members["dev/console"][0]["rdevminor"]) == (
        5,
        1,
    )
    assert members["init"][0]["filesize"] == 5
    inodes = [
        fields["ino"] for name, (fields, _) in sorted(members.items()) if name != "TRAILER!!!"
    ]
    assert inodes == list(range(1, len(inodes) + 1))
    assert all(fields["mtime"] == 0 for fields, _ in members.values())


def test_paths_are_normalised_and_checked() -> None:
    names = [n for n, _, _ in parse_newc(write_newc([regular_file("/etc//x", b"")]))]
    assert names == ["etc", "etc/x", "TRAILER!!!"]
    with pytest.raises(ImageError, match="given twice"):
        write_newc([regular_file("a", b""), regular_file("/a", b"")])
    with pytest.raises(ImageError, match="invalid"):
        write_newc([regular_file("../x", b"")])
    with pytest.raises(ImageError, match="not a directory"):
        write_newc([regular_file("a", b""), regular_file("a/b", b"")])


def test_entry_mode_combines_kind_and_permissions() -> None:
    entry = CpioEntry("x", EntryKind.FILE, 0o100755)
    assert entry.mode == 0o100755


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")
def test_busybox_cpio_extracts_the_archive(tmp_path: Path) -> None:
    archive = write_newc(
        [regular_file("w/prog", b"hello", 0o755), symlink("bin/sh", "busybox"), directory("proc")]
    )
    subprocess.run(
        ["busybox", "cpio", "-i", "-d"],
        input=archive,
        cwd=tmp_path,
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "w" / "prog").read_bytes() == b"hello"
    assert (tmp_path / "w" / "prog").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "bin" / "sh").readlink() == Path("busybox")
    assert (tmp_path / "proc").is_dir()


def test_guest_root_layout_lists_modules_in_the_given_order() -> None:
    members = {
        name: (fields, data)
        for name, fields, data in parse_newc(
            write_newc(
                guest_entries(
                    agent=b"AGENT",
                    busybox=b"BUSYBOX",
                    workloads=[("checksum", b"C")],
                    modules=[("virtio_ring.ko", b"R"), ("virtio.ko", b"V")],
                )
            )
        )
    }
    assert members["init"][1] == b"AGENT"
    assert members["init"][0]["mode"] & 0o111
    assert members["bin/busybox"][1] == b"BUSYBOX"
    assert members["w/checksum"][1] == b"C"
    assert members["lib/modules/virtio.ko"][1] == b"V"
    assert members[MODULE_LIST_PATH][1] == b"/lib/modules/virtio_ring.ko\n/lib/modules/virtio.ko\n"
    for required in ("proc", "sys", "dev", "tmp", "dev/console"):
        assert required in members
