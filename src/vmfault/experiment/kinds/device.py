"""Device faults (`device:NAME`): corrupt what the guest asks of its virtual devices, and
see what QEMU does with it.

- `device:virtio-blk`, `device:virtio-net`: the guest runs to one of its kicks of a virtio
  device (a breakpoint on the kernel's `virtqueue_kick_prepare`; the device told by the name its
  driver gives the kicked queue): a kick drawn uniformly among those of the golden run, or,
  with a trigger given, the first one after it. One field of the newest request the guest
  published in that queue flips in guest memory: a descriptor's addr, len, flags or next
  (the chain, indirect tables included) or the request header (`vmfault.faults.device`).
  QEMU reads it when the kick reaches it; QEMU's own thread, which runs beside the vCPU's,
  may have taken the request before the kick, and such a fault is recorded `taken` and not
  activated. Where the rings lie and how far the device has taken requests is QEMU's own
  view (`x-query-virtio-queue-status`).
- `device:serial`, `device:pvpanic`, `device:mmio`: a stray write to a register of that
  device (`mmio`: any device of QEMU's memory tree, in either address space, but the debug
  console that carries vmfault's results): the register's value with bits flipped, at the
  trigger. Memory-mapped registers are written through the gdbstub's physical accesses,
  ports with the monitor's `o` (`vmfault.machine.devices`).

QEMU dying, the lines it logs from the injection on, or a virtio device it marks broken
make the experiment `vmm-error` with QEMU's words as evidence (`react`); the guest's
outcome is kept in the injection.
"""

from __future__ import annotations

import dataclasses
import time

from vmfault.classify import Classification
from vmfault.errors import MachineError, UsageError, VmfaultError
from vmfault.experiment.kinds.base import FaultKind, Injected
from vmfault.experiment.kinds.reaction import QemuLog, react
from vmfault.experiment.records import DeviceInjection, TriggerPoint
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine
from vmfault.experiment.triggers import reach_trigger, trigger_text
from vmfault.faults.device import (
    VIRTIO_DEVICE_IDS,
    DeviceRegion,
    Field,
    Register,
    choose_register,
    pending_heads,
    queue_device,
    region_names,
    request_chain,
    request_fields,
)
from vmfault.faults.model import FaultSpec, TriggerKind
from vmfault.faults.select import choose_bits
from vmfault.files import cache_path, cached_json
from vmfault.machine import Machine, Run, RunEnd
from vmfault.machine.devices import (
    VirtioDevice,
    VirtqueueStatus,
    address_spaces,
    read_port,
    virtio_broken,
    virtio_devices,
    virtqueue,
    virtqueue_count,
    write_port,
)

__all__ = ["DeviceKind"]

NOTIFY_FUNCTION = "virtqueue_kick_prepare"
"""Where the guest kicks a virtqueue: the drivers call it after every batch of requests they
publish, and notify the device only if it asked to be (virtio's event index); a breakpoint
on `virtqueue_notify` alone misses every batch QEMU's thread takes without a notification.
It is in virtio_ring, the first virtio module loaded, so its address is that of the
kernel's symbols in every machine; its first argument (rdi, x0) is the `struct virtqueue`."""
MAX_KICKS_COUNTED = 2000
"""Kicks with a request pending counted at most (in a golden run, or to the trigger)."""
KICK_DRAWS = 4
"""Kicks drawn for one experiment before it gives up (a run with fewer requests than the
golden run draws again among the requests it made)."""
MAX_PASSING_STOPS = 100
"""Stops on the way to a kick (not the workload's exit) a run goes on from."""
COUNT_RUNS = 3
"""Runs from the snapshot a count of kicks may take before it finds none at all."""
COUNT_TIMEOUT_GOLDENS = 100.0
"""How many golden runs (host time) the count of a golden run's kicks may take (each
stop at a breakpoint costs a few milliseconds of host time the guest does not run)."""
COUNT_TIMEOUT_MIN_S = 30.0
"""Host seconds a count of kicks, or a run to the next kick, may take at least."""
FTRACE_NOP = bytes.fromhex("0f1f440000")
"""The five-byte nop every traced function of this kernel starts with (its fentry call)."""
PROBE_FUNCTIONS = ("virtqueue_kick_prepare", "virtqueue_notify", "vring_interrupt")
"""Functions of virtio_ring that start with FTRACE_NOP: where they are tells where the
module is."""
MODULE_SHIFT_MAX = 8 << 20
"""How far (bytes, either way) virtio_ring is looked for from where the kernel's symbols put
it: a module's place varies from boot to boot (the kernel frees each module's init
memory asynchronously, so the next module may or may not reuse it)."""
VIRTIO_MMIO_DEVICE_ID = 0x008
"""The DeviceID register of a virtio-mmio transport (0: no device behind it)."""
_HINTS = {
    "virtio-blk": "give the machine a disk (--disk NAME:SIZE, or [[guest.disks]] in a campaign)",
    "virtio-net": "give two or more [[machine]] tables: their network cards are virtio-net",
}


class DeviceKind(FaultKind):
    """Faults in a virtual device's requests or registers, judged by what QEMU does."""

    def __init__(self, machine: GuestMachine) -> None:
        self.machine = machine
        self.log = QemuLog()
        self._request: tuple[VirtioDevice, VirtqueueStatus, int, bool] | None = None
        self._device: VirtioDevice | None = None
        self._kicks: dict[str, int] = {}
        """Kicks with a request pending, per virtio device name, in a golden run."""
        self._queues: dict[str, int] = {}
        """Virtqueues per virtio device (by QOM path)."""
        self._point = ""
        self._seen = 0
        self._nth = 0
        self._passed = 0
        self._notify: int | None = None

    @property
    def vm(self) -> Machine:
        """The target's QEMU."""
        return self.machine.vm

    def notify_address(self) -> int:
        """Where NOTIFY_FUNCTION is in this machine's kernel: its symbol's address, moved by
        as much as virtio_ring moved in this boot (found once, by PROBE_FUNCTIONS). A
        virtio_ring built into the kernel image (aarch64's) does not move."""
        if self._notify is None:
            symbols = self.machine.symbols
            notify = symbols.get(NOTIFY_FUNCTION)
            if notify is not None and not notify.module:
                self._notify = notify.address
                return notify.address
            probes = [symbols.address(name) for name in PROBE_FUNCTIONS]
            gdb = self.vm.gdb

            def fits(shift: int) -> bool:
                for address in probes:
                    try:
                        if bytes(gdb.read_memory(address + shift, 5)) != FTRACE_NOP:
                            return False
                    except VmfaultError:
                        return False
                return True

            steps = range(0, MODULE_SHIFT_MAX + 1, 4096)
            shift = next((d for k in steps for d in (k, -k) if fits(d)), None)
            if shift is None:
                raise MachineError(
                    "virtio_ring is not within 8 MiB of where the kernel's symbols put it"
                )
            self._notify = symbols.address(NOTIFY_FUNCTION) + shift
        return self._notify

    def prepare(self, spec: FaultSpec) -> None:
        """UsageError unless the machine has the device the target names."""
        name = spec.target.name
        if name in VIRTIO_DEVICE_IDS:
            if not [d for d in virtio_devices(self.vm) if d.name == name]:
                raise UsageError(
                    f"machine {self.machine.name} has no {name} device for device:{name}",
                    hint=_HINTS[name],
                )
            if _drawn(spec) and name not in self._kicks:
                self._kicks[name] = self._golden_kicks(name)
                if not self._kicks[name]:
                    raise UsageError(
                        f"the workload of machine {self.machine.name} made no request of "
                        f"{name} in its golden run, so device:{name} has nothing to corrupt",
                        hint=f"run a workload that uses its {name} device (diskio for a disk)",
                    )
        elif name != "mmio":
            memory, ports = address_spaces(self.vm)
            if not any(r.name in region_names(name) for r in (*memory, *ports)):
                raise UsageError(f"machine {self.machine.name} has no {name} device")

    def _golden_kicks(self, name: str) -> int:
        """The kicks of a golden run with a `name` request pending: counted once, kept
        beside the image for a machine without a network (whose runs alone decide it)."""

        def count() -> int:
            counts: list[int] = []
            while len(counts) < COUNT_RUNS and not any(counts):
                counts.append(self._count_kicks(name))
            return max(counts)

        machine = self.machine
        if machine.port is not None:
            return count()
        spec = machine.spec
        disks = [[d.name, d.size_bytes, None if d.image is None else str(d.image)]
                 for d in spec.disks]  # fmt: skip
        key = [list(machine.argv), spec.accel.value, machine.deterministic, spec.ram_mib, name,
               disks]  # fmt: skip
        path = cache_path(machine.image.root / "profiles", "kicks", key)
        return cached_json(path, count, decode=int, encode=int, accept=lambda n: n > 0)

    def _count_kicks(self, name: str) -> int:
        """Kicks of a `name` device in a run from the snapshot (the kicks a drawn trigger
        chooses among)."""
        machine = self.machine
        vm = machine.vm
        devices = [d for d in virtio_devices(vm) if d.name == name]
        timeout_s = max(
            COUNT_TIMEOUT_MIN_S, COUNT_TIMEOUT_GOLDENS * machine.require_golden().host_s
        )
        others = machine.from_snapshot()
        address = self.notify_address()  # halted at the snapshot
        count = 0
        self._passed = 0
        vm.gdb.set_breakpoint(address)
        try:
            deadline = time.monotonic() + timeout_s
            while count < MAX_KICKS_COUNTED and time.monotonic() < deadline:
                run = vm.run_to(address, timeout_s=max(0.0, deadline - time.monotonic()))
                if self._passing(run):
                    continue
                if not run.reached:
                    break
                if self._kicked_request(vm, devices, name) is not None:
                    count += 1
        finally:
            if vm.alive:
                vm.gdb.remove_breakpoint(address)
            others.end()
        return count

    def trigger(self, experiment: Experiment) -> str:
        """The fault's trigger. A virtio fault with its trigger left open runs to a kick
        drawn uniformly among those of the golden run at which its device had a request
        pending; with a trigger given, it runs to the trigger and on to the next such kick."""
        self._request = None
        self._device = None
        self._point = ""
        self._passed = 0
        name = experiment.spec.target.name
        if name not in VIRTIO_DEVICE_IDS:
            return reach_trigger(experiment)
        if not _drawn(experiment.spec):
            problem = reach_trigger(experiment)
            return problem or self._run_to_kick(experiment, name, 1)
        rng = experiment.rng("trigger/kick")
        nth = rng.randint(1, max(1, self._kicks.get(name, 1)))
        for _ in range(KICK_DRAWS):
            problem = self._run_to_kick(experiment, name, nth)
            if not problem or self._seen == 0:
                return problem
            experiment.restart()  # this run made fewer requests than the golden one
            nth = rng.randint(1, self._seen)
        return problem

    def _run_to_kick(self, experiment: Experiment, name: str, nth: int) -> str:
        """Run to the `nth` kick from here at which a `name` device has a request pending
        (halted there, the request chosen), or say why not."""
        vm = experiment.vm
        devices = [d for d in virtio_devices(vm) if d.name == name]
        address = self.notify_address()
        self._seen = 0
        kicks = 0
        vm.gdb.set_breakpoint(address)
        try:
            for _ in range(MAX_KICKS_COUNTED):
                # The guest cannot hang before the fault, only be slowed by a loaded host
                # and by the breakpoint's stops: its reach budget, or a half minute.
                timeout_s = max(experiment.reach_timeout_s(), COUNT_TIMEOUT_MIN_S)
                run = vm.run_to(address, timeout_s=timeout_s)
                if run.end is RunEnd.EXITED:
                    raise MachineError(f"QEMU exited (status {vm.exit_code}) before a kick")
                if self._passing(run):
                    continue
                if not run.reached:
                    end = run.end.value + ("" if run.pc is None else f" at {run.pc:#x}")
                    if self._seen:
                        return (
                            f"the guest made {self._seen} requests of {name}, not {nth} "
                            f"(the run ended: {end})"
                        )
                    return (
                        f"the guest made no request of {name} after the trigger ({kicks} kicks "
                        f"of other devices; the run ended: {end})"
                    )
                kicks += 1
                request = self._kicked_request(vm, devices, name)
                if request is not None:
                    self._seen += 1
                    if self._seen >= nth:
                        self._request = request
                        break
            else:
                return f"no kick of {name} in {MAX_KICKS_COUNTED} kicks"
        finally:
            if vm.alive:
                vm.gdb.remove_breakpoint(address)
        self._point = f"kick:{name}#{nth}"
        self._nth = nth
        here = experiment.here
        here.allowance_s = max(here.allowance_s, time.monotonic() - here.started)
        return ""

    def _passing(self, run: Run) -> bool:
        """Whether a run to the kick stopped on the way at a stop that does not end the
        workload (another breakpoint than the exit hook, a stray stop): then it goes on,
        at most MAX_PASSING_STOPS times per experiment."""
        if run.reached or run.end not in (RunEnd.BREAKPOINT, RunEnd.STOPPED):
            return False
        if run.pc == self.machine.hooks.exited or self._passed >= MAX_PASSING_STOPS:
            return False
        self._passed += 1
        return True

    def _kicked_request(
        self, vm: Machine, devices: list[VirtioDevice], name: str
    ) -> tuple[VirtioDevice, VirtqueueStatus, int, bool] | None:
        """At a kick: None unless it is a kick of a `name` device (by the name its driver
        gives the kicked `struct virtqueue`); else the device, the queue, the head of the
        newest request the guest published in it, and whether the device has taken that
        request already (QEMU may take a request before the guest's kick reaches it: its
        thread runs beside the vCPU's)."""
        kicked = _kicked_queue(vm)
        if kicked is None or queue_device(kicked[1]) != name:
            return None
        index = kicked[0]
        found = None
        for device in devices:
            if device.path not in self._queues:
                self._queues[device.path] = virtqueue_count(vm, device)
            if index >= self._queues[device.path]:
                continue
            queue = virtqueue(vm, device, index)
            if queue is None:
                continue
            head = vm.gdb.read_memory(queue.avail, 4 + 2 * queue.num, physical=True)
            avail_idx = int.from_bytes(head[2:4], "little")
            newest = pending_heads(head[4:], (avail_idx - 1) & 0xFFFF, avail_idx, queue.num)
            if not newest:
                continue
            pending = pending_heads(head[4:], queue.last_avail_idx, avail_idx, queue.num)
            found = (device, queue, newest[0], not pending)
            if pending:  # of several such devices, one with the request still to take
                return found
        return found

    def inject(self, experiment: Experiment) -> Injected:
        """Flip the bits of the chosen field or write the chosen register, read it back."""
        if self._request is not None:
            return self._inject_request(experiment)
        return self._inject_register(experiment)

    def _inject_request(self, experiment: Experiment) -> Injected:
        assert self._request is not None
        device, queue, head, taken = self._request
        self._device = device
        gdb = experiment.vm.gdb
        point = experiment.trigger_point(self._point or trigger_text(experiment.plan))
        total = self._kicks.get(device.name)
        if self._point and total and _drawn(experiment.spec):
            # Where the fault landed in the execution: its kick among the golden run's.
            point = dataclasses.replace(point, progress=min(1.0, self._nth / total))

        def read(address: int, size: int) -> bytes:
            return bytes(gdb.read_memory(address, size, physical=True))

        chain = request_chain(read, queue.desc, queue.num, head)
        fields = [f for f in request_fields(device.name, chain) if _fits(experiment.spec, f)]
        if not fields:
            raise MachineError(f"no field of the {device.name} request fits the bits asked")
        field = experiment.rng("field").choice(fields)
        bits = choose_bits(experiment.spec.bits, field.width, experiment.rng("bits"))
        before = int.from_bytes(read(field.address, field.size), "little")
        after = bits.apply(before)
        self.log.start(experiment.vm)
        gdb.write_memory(field.address, after.to_bytes(field.size, "little"), physical=True)
        experiment.mark_injected()
        readback = int.from_bytes(read(field.address, field.size), "little")
        held = readback == after
        where = f"{device.name} queue {queue.queue} request {head} "
        where += f"desc[{field.descriptor}].{field.name}" if field.part == "descriptor" else (
            f"header.{field.name}"
        )  # fmt: skip
        injection = DeviceInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name, location=where,
            address=field.address, width=field.width, mask=bits.mask, mode=bits.mode.value,
            before=before, after=after, readback=readback, injected=held,
            reason="" if held else f"read back {readback:#x}, wrote {after:#x}", trigger=point,
            device=device.name, part=field.part, field=field.name, queue=queue.queue,
            descriptor=field.descriptor, taken=taken,
        )  # fmt: skip
        # A request QEMU had taken before the kick was read already: the fault cannot act.
        return Injected((injection,), activated=False if taken else None)

    def _inject_register(self, experiment: Experiment) -> Injected:
        vm = experiment.vm
        name = experiment.spec.target.name
        point = experiment.trigger_point(trigger_text(experiment.plan))
        register = choose_register(
            self._regions(vm), experiment.rng("register"), device=None if name == "mmio" else name
        )
        bits = choose_bits(experiment.spec.bits, register.size * 8, experiment.rng("bits"))
        before = _read_register(vm, register)
        after = bits.apply(before)
        self.log.start(vm)
        experiment.mark_injected()  # the guest stands halted: the same moment as the write
        try:
            _write_register(vm, register, after)
        except VmfaultError:
            if vm.alive:
                raise
        readback = None
        if vm.alive:
            try:
                readback = _read_register(vm, register)
            except VmfaultError:
                if vm.alive:
                    raise
        injection = DeviceInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            location=register.location, address=register.address, width=register.size * 8,
            mask=bits.mask, mode=bits.mode.value, before=before, after=after,
            readback=readback, injected=True, trigger=point, device=register.device,
            space=register.space, part="register", field=f"{register.offset:#x}",
        )  # fmt: skip
        return Injected((injection,))

    def _regions(self, vm: Machine) -> list[DeviceRegion]:
        """Every device region of both address spaces; virtio-mmio transports only where a
        device sits behind them."""
        memory, ports = address_spaces(vm)
        regions = []
        for region in memory:
            if region.kind != "i/o":
                continue
            if region.name == "virtio-mmio":
                raw = vm.gdb.read_memory(region.start + VIRTIO_MMIO_DEVICE_ID, 4, physical=True)
                if not int.from_bytes(raw, "little"):
                    continue
            regions.append(DeviceRegion("memory", region.start, region.end, region.name))
        regions += [DeviceRegion("io", r.start, r.end, r.name) for r in ports if r.kind == "i/o"]
        return regions

    def react(
        self, experiment: Experiment, injected: Injected, verdict: Classification
    ) -> tuple[Classification, Injected]:
        """QEMU's death, its log lines since the injection, or a device it marked broken
        make the experiment `vmm-error`; the guest's outcome stays in the injection."""
        vm = experiment.vm
        broken = ""
        if self._device is not None and vm.alive:
            try:
                broken = self._device.name if virtio_broken(vm, self._device) else ""
            except VmfaultError:
                broken = ""
        return react(injected, verdict, vm=vm, logged=self.log.lines(), broken=broken)

    def not_injected(self, experiment: Experiment, reason: str) -> DeviceInjection:
        """The device fault that was not made."""
        plan = experiment.plan
        return DeviceInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            mode=plan.bits.mode.value, reason=reason,
            trigger=TriggerPoint(spec=trigger_text(plan)),
        )  # fmt: skip


VIRTQUEUE_NAME_OFFSET = 24
VIRTQUEUE_INDEX_OFFSET = 40
"""Where `struct virtqueue` (Linux 6.1) holds its name (a pointer, after `list`, 16 bytes,
and `callback`) and its index (after `name` and `vdev`, 8 bytes each)."""


def _kicked_queue(vm: Machine) -> tuple[int, str] | None:
    """The index and name of the queue `virtqueue_kick_prepare(vq)` was called for (halted
    at its entry, `vq` in its first argument's register), or None if they cannot be read."""
    try:
        vq = int(vm.gdb.read_register(vm.platform.first_argument))
        raw = bytes(vm.gdb.read_memory(vq, VIRTQUEUE_INDEX_OFFSET + 4))
        pointer = int.from_bytes(raw[VIRTQUEUE_NAME_OFFSET : VIRTQUEUE_NAME_OFFSET + 8], "little")
        name = bytes(vm.gdb.read_memory(pointer, 16)).split(b"\0", 1)[0]
    except VmfaultError:
        return None
    index = int.from_bytes(raw[VIRTQUEUE_INDEX_OFFSET:], "little")
    return index, name.decode("ascii", errors="replace")


def _drawn(spec: FaultSpec) -> bool:
    """Whether the fault's trigger is left for vmfault to draw (a time trigger without a
    time)."""
    return spec.trigger.kind is TriggerKind.TIME and spec.trigger.time_s is None


def _fits(spec: FaultSpec, field: Field) -> bool:
    """Whether the fault's bits fit in `field` (a bit position or range beyond it does not)."""
    try:
        spec.bits.check_width(field.width, field.name)
    except UsageError:
        return False
    return True


def _read_register(vm: Machine, register: Register) -> int:
    if register.space == "io":
        return read_port(vm, register.address, register.size)
    raw = vm.gdb.read_memory(register.address, register.size, physical=True)
    return int.from_bytes(raw, "little")


def _write_register(vm: Machine, register: Register, value: int) -> None:
    if register.space == "io":
        write_port(vm, register.address, value, register.size)
    else:
        data = value.to_bytes(register.size, "little")
        vm.gdb.write_memory(register.address, data, physical=True)
