"""VMM faults (`vmm:heap|data|registers`): bit flips in the QEMU process itself, at the
trigger, read back.

- `vmm:heap` and `vmm:data`: a 64-bit word of QEMU's own writable memory, through
  `/proc/PID/mem`: a mapping drawn by its resident bytes, a resident page of it, a word
  (`vmfault.faults.vmm`). Guest RAM and firmware are never chosen: every mapping that holds
  a host address of guest memory (the monitor's `gpa2hva` of each RAM and ROM region) or
  maps the file guest RAM lives in is left out.
- `vmm:registers`: a register of one of QEMU's threads (drawn among them by name), through
  ptrace (`vmfault.machine.host`); the thread is stopped for the flip and goes on.

The guest stands halted at its trigger while the fault is made; QEMU's threads other than
the vCPU's run on. QEMU dying of the fault is `vmm-error` with its signal as the cause and
QEMU's end as evidence; the worker of a campaign then starts a fresh QEMU for the next
experiment. Lines QEMU logs from the injection on are `vmm-error` too; otherwise the guest's
outcome (benign, sdc, crash, hang) is the experiment's.
"""

from __future__ import annotations

import dataclasses

from vmfault.classify import Classification
from vmfault.errors import MachineError, UsageError, VmfaultError
from vmfault.experiment.kinds.base import FaultKind, Injected
from vmfault.experiment.kinds.reaction import QemuLog, react
from vmfault.experiment.records import TriggerPoint, VmmInjection
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine
from vmfault.experiment.triggers import reach_trigger, trigger_text
from vmfault.faults.model import FaultSpec
from vmfault.faults.vmm import (
    PAGE_BYTES,
    THREAD_REGISTERS,
    choose_mapping,
    parse_maps,
    parse_smaps_rss,
    present_pages,
    vmm_mappings,
)
from vmfault.machine import Machine
from vmfault.machine.devices import guest_host_address
from vmfault.machine.host import ProcessMemory, ptrace_problem, thread_names, with_thread_registers

__all__ = ["VmmKind"]

WORD_BYTES = 8


class VmmKind(FaultKind):
    """Faults in the QEMU process of the target machine."""

    def __init__(self, machine: GuestMachine) -> None:
        self.machine = machine
        self.log = QemuLog()

    def prepare(self, spec: FaultSpec) -> None:
        """`vmm:registers` needs ptrace of QEMU: UsageError naming the fix if the host
        forbids it."""
        if spec.target.name == "registers":
            problem = ptrace_problem()
            if problem:
                raise UsageError(f"vmm:registers cannot be injected: {problem}")

    def trigger(self, experiment: Experiment) -> str:
        """A time or exec trigger of the guest, as for any fault."""
        return reach_trigger(experiment)

    def inject(self, experiment: Experiment) -> Injected:
        """Flip the chosen word or register, read it back."""
        if experiment.spec.target.name == "registers":
            return self._inject_register(experiment)
        return self._inject_memory(experiment)

    def _pid(self, vm: Machine) -> int:
        if vm.pid is None or not vm.alive:
            raise MachineError("QEMU is not running")
        return vm.pid

    def _inject_memory(self, experiment: Experiment) -> Injected:
        vm = experiment.vm
        plan = experiment.plan
        region = experiment.spec.target.name
        point = experiment.trigger_point(trigger_text(plan))
        memory = ProcessMemory(self._pid(vm))
        rss = parse_smaps_rss(memory.smaps())
        mappings = [
            dataclasses.replace(m, rss_bytes=rss.get(m.start, 0)) for m in parse_maps(memory.maps())
        ]
        chosen = vmm_mappings(
            mappings, region, guest_addresses=self._guest_addresses(vm),
            guest_files=self._guest_files(vm),
        )  # fmt: skip
        rng = experiment.rng("location")
        mapping = choose_mapping(chosen, rng)
        pages = present_pages(memory.pagemap(mapping.start, mapping.end), mapping.start)
        page = rng.choice(pages) if pages else mapping.start
        words = min(PAGE_BYTES, mapping.end - page) // WORD_BYTES
        address = page + WORD_BYTES * rng.randrange(max(1, words))
        bits = plan.bits
        before = int.from_bytes(memory.read(address, WORD_BYTES), "little")
        after = bits.apply(before)
        self.log.start(vm)
        experiment.mark_injected()  # the guest stands halted: the same moment as the write
        memory.write(address, after.to_bytes(WORD_BYTES, "little"))
        try:
            readback: int | None = int.from_bytes(memory.read(address, WORD_BYTES), "little")
        except VmfaultError:
            readback = None  # QEMU died of it at once
        held = readback == after or (readback is None and not vm.alive)
        injection = VmmInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            location=f"{mapping.label}+{address - mapping.start:#x}", width=8 * WORD_BYTES,
            mask=bits.mask, mode=bits.mode.value, before=before, after=after,
            readback=readback, injected=held,
            reason="" if held else f"read back {readback}, wrote {after:#x}", trigger=point,
            region=region, mapping=mapping.path or mapping.label, host_address=address,
        )  # fmt: skip
        return Injected((injection,))

    def _guest_addresses(self, vm: Machine) -> list[int]:
        """Host addresses inside every block of guest memory (RAM and firmware)."""
        found = []
        for region in vm.memory_map():
            if region.kind not in ("ram", "rom"):
                continue
            for physical in (region.start, region.end - 1):
                host = guest_host_address(vm, physical)
                if host is not None:
                    found.append(host)
        return found

    def _guest_files(self, vm: Machine) -> list[str]:
        ram_file = vm.config.ram_file
        return [] if ram_file is None else [str(ram_file.path)]

    def _inject_register(self, experiment: Experiment) -> Injected:
        vm = experiment.vm
        plan = experiment.plan
        point = experiment.trigger_point(trigger_text(plan))
        threads = thread_names(self._pid(vm))
        rng = experiment.rng("location")
        tid = rng.choice(sorted(threads, key=lambda t: (threads[t], t)))
        register = rng.choice(THREAD_REGISTERS)
        bits = plan.bits
        self.log.start(vm)
        experiment.mark_injected()  # the guest stands halted: the same moment as the flip
        before_all, back_all = with_thread_registers(
            tid, lambda regs: {register: bits.apply(regs[register])}
        )
        before = before_all[register]
        after = bits.apply(before) & (2**64 - 1)
        readback = back_all[register]
        held = readback == after
        injection = VmmInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            location=f"{threads[tid]}:{register}", width=64, mask=bits.mask,
            mode=bits.mode.value, before=before, after=after, readback=readback,
            injected=held, reason="" if held else f"read back {readback:#x}, wrote {after:#x}",
            trigger=point, region="registers", thread=threads[tid], tid=tid,
            thread_register=register,
        )  # fmt: skip
        return Injected((injection,))

    def react(
        self, experiment: Experiment, injected: Injected, verdict: Classification
    ) -> tuple[Classification, Injected]:
        """QEMU's death (its signal the cause) or lines it logged make `vmm-error`."""
        return react(injected, verdict, vm=experiment.vm, logged=self.log.lines())

    def not_injected(self, experiment: Experiment, reason: str) -> VmmInjection:
        """The VMM fault that was not made."""
        plan = experiment.plan
        return VmmInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name, width=64,
            mask=plan.bits.mask, mode=plan.bits.mode.value, reason=reason,
            trigger=TriggerPoint(spec=trigger_text(plan)),
            region=experiment.spec.target.name,
        )  # fmt: skip
