"""Guest disks without a VM: disk specs, QEMU arguments, the tap's store and its NBD server
(spoken to by a small NBD client here, as QEMU's would)."""

from __future__ import annotations

import errno
import socket
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmfault.errors import MachineError, UsageError
from vmfault.guest.kernel import KernelModule, split_modules
from vmfault.machine.disks import (
    ImageFormat,
    disk_argv,
    format_size,
    fresh_disk,
    parse_disk,
    parse_size,
    unique_disks,
)
from vmfault.machine.nbd import (
    BLOCK_BYTES,
    IHAVEOPT,
    NBDMAGIC,
    OPT_REPLY_MAGIC,
    REQUEST_MAGIC,
    SIMPLE_REPLY_MAGIC,
    BlockTap,
    DiskStore,
    TapAction,
    TapDecision,
    TapOp,
    TapRequest,
    nbd_error,
)
from vmfault.session.guest import disk_devices


def test_sizes_and_names() -> None:
    assert parse_size("64M") == 64 << 20
    assert parse_size("512k") == 512 << 10
    assert parse_size("1G") == 1 << 30
    assert parse_size("4096") == 4096
    assert format_size(64 << 20) == "64M" and format_size(1536 << 10) == "1536K"
    with pytest.raises(UsageError, match="invalid disk size"):
        parse_size("12Q")
    disk = parse_disk("data:16M")
    assert (disk.name, disk.size_bytes, disk.image, disk.sectors) == ("data", 16 << 20, None, 32768)
    assert disk.spelling == "data:16M"
    for bad, message in [
        ("data", "invalid disk"),
        ("1data:8M", "invalid disk name"),
        ("a" * 21 + ":8M", "invalid disk name"),
        ("data:100K", "between 1M and 1T"),
        ("data:/nonexistent/disk.img", "does not exist"),
    ]:
        with pytest.raises(UsageError, match=message):
            parse_disk(bad)
    with pytest.raises(UsageError, match="two disks are named 'data'"):
        unique_disks([fresh_disk("data", "8M"), fresh_disk("data", "16M")])


def test_images_are_raw_or_qcow2(tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\x01" * 4096 + b"\x02" * 700)  # QEMU rounds up to sectors
    disk = parse_disk("data:disk.raw", base=tmp_path)
    assert (disk.image, disk.image_format, disk.size_bytes) == (raw, ImageFormat.RAW, 5120)
    qcow2 = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "2M"], check=True)
    disk = parse_disk(f"data:{qcow2}")
    assert (disk.image_format, disk.size_bytes) == (ImageFormat.QCOW2, 2 << 20)
    vmdk = tmp_path / "disk.vmdk"
    subprocess.run(["qemu-img", "create", "-q", "-f", "vmdk", str(vmdk), "2M"], check=True)
    with pytest.raises(UsageError, match="is vmdk, not raw or qcow2"):
        parse_disk(f"data:{vmdk}")


def test_qemu_arguments(tmp_path: Path) -> None:
    disks = [fresh_disk("data", "8M"), fresh_disk("log", "1M")]
    tapped = disk_argv(disks, tmp_path, "microvm", tapped=True)
    assert tapped[:2] == [
        "-blockdev",
        f"driver=nbd,node-name=vmf-d0,server.type=unix,server.path={tmp_path / 'disk0.sock'},"
        "export=vmf-d0",
    ]
    devices = [tapped[i + 1] for i, arg in enumerate(tapped) if arg == "-device"]
    assert devices == [
        "virtio-blk-device,id=vmf-d0-dev,drive=vmf-d0,serial=data,werror=report,rerror=report",
        "virtio-blk-device,id=vmf-d1-dev,drive=vmf-d1,serial=log,werror=report,rerror=report",
    ]
    plain = " ".join(disk_argv(disks, tmp_path, "pc", tapped=False))
    assert "driver=qcow2,node-name=vmf-d0,file=vmf-d0-f,backing=vmf-d0-b" in plain
    assert f"filename={tmp_path / 'disk0.raw'},read-only=on" in plain
    assert "virtio-blk-pci" in plain


def test_agent_disk_frames() -> None:
    class Frame:
        def __init__(self, kind: str, text: str) -> None:
            self.kind, self.text = kind, text

    frames = [Frame("log", "x"), Frame("disk", "data vda 16384"), Frame("disk", "- vdb 2048")]
    assert disk_devices(frames) == {"data": "vda"}  # type: ignore[arg-type]


def test_file_system_modules_load_only_with_disks() -> None:
    def module(name: str, *depends: str) -> KernelModule:
        return KernelModule(name, Path(f"{name}.ko"), depends)

    modules = (
        module("virtio"), module("crc16"), module("mbcache"), module("jbd2"),
        module("virtio_blk", "virtio"), module("crc32c_generic"),
        module("ext4", "mbcache", "jbd2", "crc16"),
    )  # fmt: skip
    first, later = split_modules(modules, ("crc32c_generic", "ext4"))
    assert [m.name for m in first] == ["virtio", "virtio_blk"]
    assert [m.name for m in later] == ["crc16", "mbcache", "jbd2", "crc32c_generic", "ext4"]


def test_store_keeps_writes_over_its_base_and_snapshots_them(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    base.write_bytes(bytes(range(256)) * 40)  # 10240 bytes, shorter than the disk
    store = DiskStore(16384, base)
    assert store.read(0, 16) == bytes(range(16))
    assert store.read(10230, 20) == bytes(range(246, 256)) + bytes(10)
    store.save("golden")
    store.write(4090, b"abcdefghij")  # across two blocks
    assert store.read(4088, 14) == bytes([248, 249]) + b"abcdefghij" + bytes([4, 5])
    assert store.written_bytes == 2 * BLOCK_BYTES
    store.load("golden")
    assert store.read(4088, 14) == bytes([248, 249, 250, 251, 252, 253, 254, 255, 0, 1, 2, 3, 4, 5])
    assert store.written_bytes == 0
    store.write(0, bytes(BLOCK_BYTES))
    store.save("zeroed")
    store.load("golden")
    assert store.read(0, 4) == bytes(range(4))
    store.load("zeroed")
    assert store.read(0, 4) == bytes(4)
    with pytest.raises(MachineError, match="no snapshot"):
        store.load("missing")
    store.close()
    assert base.read_bytes()[:4] == bytes(range(4))  # the base is never written


class Client:
    """An NBD client of the fixed newstyle handshake with simple replies, as QEMU's."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        magic, option, flags = struct.unpack(">QQH", self.recv(18))
        assert (magic, option, flags & 1) == (NBDMAGIC, IHAVEOPT, 1)
        self.sock.sendall(struct.pack(">I", 3))
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, 8, 0))  # structured replies: refused
        assert struct.unpack(">QIII", self.recv(20))[2] == (1 << 31) + 1
        name = b"vmf-d0"
        data = struct.pack(">I", len(name)) + name + struct.pack(">HH", 1, 3)
        self.sock.sendall(struct.pack(">QII", IHAVEOPT, 7, len(data)) + data)
        self.size = self.min_block = 0
        while True:
            magic, _, kind, length = struct.unpack(">QIII", self.recv(20))
            assert magic == OPT_REPLY_MAGIC
            payload = self.recv(length)
            if kind == 1:
                break
            info = struct.unpack(">H", payload[:2])[0]
            if info == 0:
                self.size = struct.unpack(">Q", payload[2:10])[0]
            elif info == 3:
                self.min_block = struct.unpack(">I", payload[2:6])[0]

    def recv(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            assert chunk, "the tap closed the connection"
            data += chunk
        return data

    def send(self, command: int, handle: int, offset: int, length: int, data: bytes = b"") -> None:
        header = struct.pack(">IHHQQI", REQUEST_MAGIC, 0, command, handle, offset, length)
        self.sock.sendall(header + data)

    def reply(self, length: int = 0) -> tuple[int, int, bytes]:
        magic, error, handle = struct.unpack(">IIQ", self.recv(16))
        assert magic == SIMPLE_REPLY_MAGIC
        return handle, error, self.recv(length) if not error else b""


@pytest.fixture
def tap(tmp_path: Path) -> Iterator[BlockTap]:
    base = tmp_path / "base.raw"
    base.write_bytes(b"\x11" * 8192)
    tap = BlockTap(tmp_path / "disk0.sock", DiskStore(1 << 20, base))
    tap.start()
    yield tap
    tap.close()


def test_tap_serves_reads_and_writes(tap: BlockTap) -> None:
    client = Client(tap.path)
    assert (client.size, client.min_block) == (1 << 20, 512)
    client.send(0, 1, 0, 8)
    assert client.reply(8) == (1, 0, b"\x11" * 8)
    client.send(1, 2, 4096, 4, b"abcd")
    assert client.reply() == (2, 0, b"")
    client.send(3, 3, 0, 0)  # flush
    assert client.reply() == (3, 0, b"")
    client.send(6, 4, 0, 4)  # write zeroes
    assert client.reply() == (4, 0, b"")
    client.send(0, 5, 0, 8)
    assert client.reply(8) == (5, 0, bytes(4) + b"\x11" * 4)
    assert tap.read(4096, 6) == b"abcd\x11\x11"
    client.send(0, 6, (1 << 20) - 4, 8)  # beyond the end
    assert client.reply()[1] == nbd_error(errno.EINVAL)
    ops = [(e.request.number, e.request.op) for e in tap.call(lambda: list(tap.events))]
    assert ops == [(1, TapOp.READ), (2, TapOp.WRITE), (3, TapOp.FLUSH), (4, TapOp.WRITE_ZEROES),
                   (5, TapOp.READ), (6, TapOp.READ)]  # fmt: skip


def test_tap_fails_delays_and_holds_as_its_policy_says(tap: BlockTap) -> None:
    seen: list[TapRequest] = []

    def policy(request: TapRequest) -> TapDecision:
        seen.append(request)
        if request.op is TapOp.WRITE:
            return TapDecision(TapAction.FAIL, errno.ENOSPC)
        if request.offset == 512:
            return TapDecision(TapAction.DELAY, delay_s=0.01)
        if request.offset == 1024:
            return TapDecision(TapAction.HOLD)
        return TapDecision()

    client = Client(tap.path)
    tap.set_policy(policy)
    client.send(1, 1, 0, 4, b"xxxx")
    assert client.reply() == (1, nbd_error(errno.ENOSPC), b"")
    assert tap.read(0, 4) == b"\x11" * 4  # a failed write changes nothing
    client.send(0, 2, 1024, 4)  # held
    client.send(0, 3, 512, 4)  # delayed: answered first
    assert client.reply(4) == (3, 0, b"\x11" * 4)
    tap.release()
    assert client.reply(4) == (2, 0, b"\x11" * 4)
    assert [r.number for r in seen] == [1, 2, 3]
    events = tap.call(lambda: list(tap.events))
    actions = {e.request.number: (e.decision.action, e.errno) for e in events}
    assert actions == {1: (TapAction.FAIL, errno.ENOSPC), 2: (TapAction.HOLD, 0),
                       3: (TapAction.DELAY, 0)}  # fmt: skip
    delayed = next(e for e in events if e.request.number == 3)
    assert delayed.done_s - delayed.request.at_s >= 0.01


def test_tap_snapshots_its_contents(tap: BlockTap) -> None:
    tap.save("golden")
    tap.write(100, b"changed")
    assert tap.read(100, 7) == b"changed"
    tap.load("golden")
    assert tap.read(100, 7) == b"\x11" * 7
