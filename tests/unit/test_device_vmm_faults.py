"""Pure logic of device and VMM faults, without a VM: virtio descriptor layout and request
chains, device registers, the QEMU mappings a VMM fault may choose (never guest RAM),
thread registers, the target grammar, campaign files that name a device the machine lacks,
ptrace permission, and VMM reactions grouped by message."""

from __future__ import annotations

import random
import struct
from pathlib import Path

import pytest

from vmfault.errors import UsageError
from vmfault.experiment.records import DeviceInjection, VmmInjection, injection_from_fields
from vmfault.faults import FaultSpec
from vmfault.faults.device import (
    DESCRIPTOR_BYTES,
    VRING_DESC_F_INDIRECT,
    VRING_DESC_F_NEXT,
    VRING_DESC_F_WRITE,
    Descriptor,
    DeviceRegion,
    choose_register,
    pending_heads,
    queue_device,
    request_chain,
    request_fields,
)
from vmfault.faults.model import TargetKind
from vmfault.faults.vmm import (
    choose_mapping,
    parse_maps,
    parse_smaps_rss,
    present_pages,
    vmm_mappings,
)
from vmfault.machine.host import USER_REGS, ptrace_problem
from vmfault.machine.memmap import parse_io_mtree
from vmfault.report.reactions import group_reactions, reaction_message

# --------------------------------------------------------------------------- virtio


def _desc(addr: int, length: int, flags: int, following: int) -> bytes:
    return struct.pack("<QIHH", addr, length, flags, following)


class _Memory:
    """Guest-physical memory made of a few placed byte strings."""

    def __init__(self) -> None:
        self.places: dict[int, bytes] = {}

    def put(self, address: int, data: bytes) -> None:
        self.places[address] = data

    def read(self, address: int, size: int) -> bytes:
        for start, data in self.places.items():
            if start <= address and address + size <= start + len(data):
                return data[address - start : address - start + size]
        raise AssertionError(f"read outside placed memory at {address:#x}")


def test_a_descriptor_is_addr_len_flags_next_little_endian() -> None:
    raw = _desc(0x1122334455667788, 0x10, VRING_DESC_F_NEXT, 7)
    found = Descriptor.parse(0x5000, raw)
    assert (found.addr, found.length, found.flags, found.next) == (0x1122334455667788, 16, 1, 7)
    assert len(raw) == DESCRIPTOR_BYTES


def test_pending_heads_are_the_avail_entries_the_device_has_not_taken() -> None:
    ring = struct.pack("<8H", 10, 11, 12, 13, 14, 15, 16, 17)
    assert pending_heads(ring, last_avail=2, avail_idx=5, num=8) == [12, 13, 14]
    assert pending_heads(ring, last_avail=5, avail_idx=5, num=8) == []
    # The counters are free-running u16: they wrap, and the ring index wraps modulo num.
    assert pending_heads(ring, last_avail=0xFFFF, avail_idx=1, num=8) == [17, 10]


def test_a_kicked_queue_is_told_by_the_name_its_driver_gives_it() -> None:
    assert queue_device("req.0") == "virtio-blk"
    assert [queue_device(n) for n in ("input.0", "output.0", "control")] == ["virtio-net"] * 3
    assert queue_device("balloon") is None


def test_a_chain_follows_next_and_gives_each_descriptor_field_then_the_blk_header() -> None:
    table, header = 0x10000, 0x20000
    memory = _Memory()
    memory.put(
        table,
        _desc(header, 16, VRING_DESC_F_NEXT, 2)
        + _desc(0, 0, 0, 0)
        + _desc(0x30000, 4096, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 3)
        + _desc(0x40000, 1, VRING_DESC_F_WRITE, 0),
    )
    chain = request_chain(memory.read, table, 4, 0)
    assert [d.address for d in chain] == [table, table + 32, table + 48]
    fields = request_fields("virtio-blk", chain)
    descriptors = [f for f in fields if f.part == "descriptor"]
    assert len(descriptors) == 12
    assert [(f.name, f.address - table, f.width) for f in descriptors[:4]] == [
        ("addr", 0, 64), ("len", 8, 32), ("flags", 12, 16), ("next", 14, 16),
    ]  # fmt: skip
    headers = [(f.name, f.address, f.width) for f in fields if f.part == "header"]
    assert headers == [("type", header, 32), ("ioprio", header + 4, 32), ("sector", header + 8, 64)]


def test_an_indirect_chain_is_read_from_its_own_table() -> None:
    table, indirect = 0x10000, 0x50000
    memory = _Memory()
    memory.put(table, _desc(indirect, 2 * DESCRIPTOR_BYTES, VRING_DESC_F_INDIRECT, 0))
    memory.put(
        indirect,
        _desc(0x60000, 12, VRING_DESC_F_NEXT, 1) + _desc(0x61000, 1500, 0, 0),
    )
    chain = request_chain(memory.read, table, 1, 0)
    assert [d.address for d in chain] == [table, indirect, indirect + DESCRIPTOR_BYTES]
    headers = [f for f in request_fields("virtio-net", chain) if f.part == "header"]
    assert headers and headers[0].address == 0x60000 and headers[0].descriptor == 1
    assert {f.name for f in headers} >= {"flags", "gso_type", "hdr_len", "num_buffers"}


def test_a_looping_or_device_written_chain_stops_and_has_no_header() -> None:
    table = 0x10000
    memory = _Memory()
    memory.put(table, _desc(0x70000, 4096, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 0))
    chain = request_chain(memory.read, table, 1, 0)
    assert len(chain) == 1  # next points back at itself
    assert [f for f in request_fields("virtio-net", chain) if f.part == "header"] == []


# --------------------------------------------------------------------------- registers

MTREE = """FlatView #0
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-000000000000001f (prio 0, i/o): io
  00000000000000e9-00000000000000e9 (prio 0, i/o): isa-debugcon
  00000000000003f8-00000000000003ff (prio 0, i/o): serial
  0000000000000505-0000000000000505 (prio 0, i/o): pvpanic

FlatView #1
 AS "memory", root: system
 Root memory region: system
  0000000000000000-0000000007ffffff (prio 0, ram): microvm.ram
"""


def test_the_io_space_is_parsed_apart_from_memory() -> None:
    ports = parse_io_mtree(MTREE)
    assert [(r.start, r.end, r.name) for r in ports] == [
        (0, 0x20, "io"), (0xE9, 0xEA, "isa-debugcon"), (0x3F8, 0x400, "serial"),
        (0x505, 0x506, "pvpanic"),
    ]  # fmt: skip


def test_registers_are_bytes_of_ports_and_words_of_mmio_never_the_debug_console() -> None:
    regions = [DeviceRegion("io", r.start, r.end, r.name) for r in parse_io_mtree(MTREE)]
    regions.append(DeviceRegion("memory", 0xFEB00000, 0xFEB00200, "virtio-mmio"))
    rng = random.Random(1)
    seen = {choose_register(regions, rng).device for _ in range(200)}
    assert seen == {"serial", "pvpanic", "virtio-mmio"}  # not isa-debugcon, not "io"
    serial = choose_register(regions, random.Random(2), device="serial")
    assert serial.space == "io" and serial.size == 1 and 0x3F8 <= serial.address < 0x400
    mmio = choose_register(regions, random.Random(3), device="virtio-mmio")
    assert mmio.size == 4 and mmio.address % 4 == 0 and mmio.offset < 0x200
    with pytest.raises(ValueError, match="no device floppy"):
        choose_register(regions, rng, device="floppy")


def test_the_serial_target_is_the_pl011_on_aarch64_s_virt_machine() -> None:
    regions = [DeviceRegion("memory", 0x9000000, 0x9001000, "pl011"),
               DeviceRegion("memory", 0x9020000, 0x9020018, "fwcfg.data")]  # fmt: skip
    serial = choose_register(regions, random.Random(4), device="serial")
    assert serial.device == "pl011" and serial.size == 4 and 0x9000000 <= serial.address < 0x9001000


# --------------------------------------------------------------------------- VMM memory

MAPS = """\
55d0c0000000-55d0c0400000 r--p 00000000 08:01 1001 /usr/bin/qemu-system-x86_64
55d0c0400000-55d0c0e00000 r-xp 00400000 08:01 1001 /usr/bin/qemu-system-x86_64
55d0c1000000-55d0c1100000 rw-p 01000000 08:01 1001 /usr/bin/qemu-system-x86_64
55d0c1100000-55d0c1200000 rw-p 00000000 00:00 0
55d0c2000000-55d0c3000000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
7f1000000000-7f1008000000 rw-p 00000000 00:2a 77 /run/vmfault/ram/clone.ram
7f2000000000-7f2000100000 ---p 00000000 00:00 0
7f3000000000-7f3000010000 rw-p 00020000 08:01 2002 /usr/lib/x86_64-linux-gnu/libglib-2.0.so.0
7f4000000000-7f4004000000 rw-p 00000000 00:00 0
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7ffd00100000-7ffd00104000 r--p 00000000 00:00 0 [vvar]
"""


def test_heap_is_heap_and_anonymous_writable_never_guest_ram_stack_or_bss() -> None:
    mappings = parse_maps(MAPS)
    guest_ram = 0x7F4000001000  # an anonymous mapping that holds guest RAM (gpa2hva)
    heap = vmm_mappings(mappings, "heap", guest_addresses=[guest_ram],
                        guest_files=["/run/vmfault/ram/clone.ram"])  # fmt: skip
    assert [m.start for m in heap] == [0x55D0C2000000, 0x7F0000000000]


def test_data_is_the_binary_and_libraries_writable_pages_and_the_bss_after_them() -> None:
    data = vmm_mappings(parse_maps(MAPS), "data", guest_files=["/run/vmfault/ram/clone.ram"])
    assert [m.label for m in data] == [
        "qemu-system-x86_64", "anon@0x55d0c1100000", "libglib-2.0.so.0",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown VMM region"):
        vmm_mappings(parse_maps(MAPS), "stack")


def test_a_mapping_is_drawn_by_its_resident_bytes_and_a_page_among_present_ones() -> None:
    smaps = "55d0c2000000-55d0c3000000 rw-p 00000000 00:00 0 [heap]\nRss:  8 kB\n"
    smaps += "7f0000000000-7f0008000000 rw-p 00000000 00:00 0\nRss:  0 kB\n"
    rss = parse_smaps_rss(smaps)
    assert rss == {0x55D0C2000000: 8192, 0x7F0000000000: 0}
    heap = [
        m.__class__(**{**m.__dict__, "rss_bytes": rss.get(m.start, 0)})
        for m in vmm_mappings(parse_maps(MAPS), "heap")
    ]
    rng = random.Random(0)
    assert {choose_mapping(heap, rng).path for _ in range(50)} == {"[heap]"}
    entries = [0, 1 << 63, 0, 1 << 62]  # present, swapped
    pagemap = b"".join(e.to_bytes(8, "little") for e in entries)
    assert present_pages(pagemap, 0x1000) == [0x2000, 0x4000]


def test_thread_registers_follow_user_regs_struct() -> None:
    assert len(USER_REGS) == 27
    assert USER_REGS.index("rip") == 16 and USER_REGS.index("rsp") == 19


def test_ptrace_permission_follows_yama(tmp_path: Path) -> None:
    scope = tmp_path / "ptrace_scope"
    assert ptrace_problem(tmp_path / "absent") == ""
    scope.write_text("1\n")
    assert ptrace_problem(scope, euid=1000) == ""  # a parent may trace its child
    scope.write_text("2\n")
    assert ptrace_problem(scope, euid=0) == ""
    assert "root" in ptrace_problem(scope, euid=1000)
    scope.write_text("3\n")
    assert "disabled" in ptrace_problem(scope, euid=0)


# --------------------------------------------------------------------------- spec and records


def test_device_and_vmm_targets_parse_and_refuse_unknown_names_and_contexts() -> None:
    spec = FaultSpec.from_options(target="device:virtio-blk", bits=2)
    assert spec.target.kind is TargetKind.DEVICE and spec.bits.count == 2
    assert FaultSpec.from_options(target="vmm:registers").target.kind is TargetKind.VMM
    with pytest.raises(UsageError, match="unknown device target 'floppy'"):
        FaultSpec.from_options(target="device:floppy")
    with pytest.raises(UsageError, match="unknown vmm target 'heep'") as refused:
        FaultSpec.from_options(target="vmm:heep")
    assert "did you mean vmm:heap?" in refused.value.hint
    with pytest.raises(UsageError, match="does not wait for a CPU context"):
        FaultSpec.from_options(target="vmm:heap", context="user")


def test_device_and_vmm_injections_rebuild_from_their_fields() -> None:
    device = DeviceInjection(target="device:virtio-blk", location="virtio-blk queue 0",
                             address=0x1000, width=16, device="virtio-blk", part="descriptor",
                             field="next", queue=0, descriptor=1, reaction="QEMU: Desc next is 9",
                             guest_outcome="hang", injected=True)  # fmt: skip
    vmm = VmmInjection(target="vmm:registers", location="CPU 0/TCG:rsp", width=64,
                       thread="CPU 0/TCG", tid=42, thread_register="rsp", region="registers",
                       host_address=None, injected=True)  # fmt: skip
    for injection in (device, vmm):
        assert injection_from_fields(injection.kind, injection.fields()) == injection
    assert VmmInjection(target="vmm:heap", host_address=0x7F00).to_json()["host_address"] == (
        "0x7f00"
    )


def test_a_campaign_refuses_a_virtio_device_the_machine_does_not_have(tmp_path: Path) -> None:
    from vmfault.campaign.spec import load_campaign

    def campaign(target: str, extra: str = "") -> Path:
        path = tmp_path / "c.toml"
        path.write_text(
            f'[campaign]\nname = "c"\nexperiments = 2\n[guest]\nworkload = "checksum"\n'
            f'{extra}[[faults]]\ntarget = "{target}"\n'
        )
        return path

    with pytest.raises(UsageError, match="device:virtio-blk needs a machine with a disk"):
        load_campaign(campaign("device:virtio-blk"))
    with pytest.raises(UsageError, match="device:virtio-net needs machines with network cards"):
        load_campaign(campaign("device:virtio-net"))
    disk = '[[guest.disks]]\nname = "data"\nsize = "8M"\n'
    assert load_campaign(campaign("device:virtio-blk", disk)).faults[0].target == (
        "device:virtio-blk"
    )


# --------------------------------------------------------------------------- reactions


def test_reactions_group_by_message_whatever_their_numbers() -> None:
    assert reaction_message("QEMU: qemu-system-x86_64: Desc next is 9") == "QEMU: Desc next is N"
    rows = [
        {"experiment_id": 3, "stratum": "virtio-blk", "outcome": "vmm-error",
         "evidence": "QEMU: qemu-system-x86_64: Desc next is 9", "cause": "qemu-error"},
        {"experiment_id": 5, "stratum": "virtio-blk", "outcome": "vmm-error",
         "evidence": "QEMU: qemu-system-x86_64: Desc next is 16385", "cause": "qemu-error"},
        {"experiment_id": 7, "stratum": "heap", "outcome": "vmm-error",
         "evidence": "QEMU: killed by SIGSEGV; no stderr", "cause": "SIGSEGV"},
        {"experiment_id": 8, "stratum": "heap", "outcome": "benign", "evidence": ""},
    ]  # fmt: skip
    groups = group_reactions(rows)
    assert [(g.message, g.count, g.example_id) for g in groups] == [
        ("QEMU: Desc next is N", 2, 3),
        ("QEMU: killed by SIGSEGV; no stderr", 1, 7),
    ]
    assert groups[0].to_json()["causes"] == {"qemu-error": 2}
    assert groups[1].strata == {"heap": 1}
