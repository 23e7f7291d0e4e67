"""Instruction-result faults (F-SEFI): corrupt the result of dynamic instances of an
instruction class inside one function of the workload process.

From the restored snapshot the workload runs to its exec (the kernel's `start_thread`),
where its address space and load base are read; breakpoints on the class's static
addresses in the function then count its dynamic instances, hits in the workload process
only. Each chosen instance is single-stepped and the bits of its result flipped (XMM
lane, GPR, x87 ST(i), flags or memory), read back, and the run goes on to the next one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vmfault.experiment.kinds.base import FaultKind, Injected
from vmfault.experiment.kinds.instances import (
    CountEnd,
    ResultLocation,
    count_instances,
    read_result,
    write_result,
)
from vmfault.experiment.kinds.memory import learn_process, physical_reader
from vmfault.experiment.records import InstructionInjection, TriggerPoint
from vmfault.experiment.state import Experiment
from vmfault.experiment.testbed import GuestMachine
from vmfault.faults.instructions import (
    Instruction,
    choose_instances,
    choose_result_bits,
    relocated,
)
from vmfault.faults.model import FaultSpec, InstructionFault
from vmfault.guest.elfsyms import lookup_symbol
from vmfault.machine.pagetable import translate_address
from vmfault.profile.workload import load_or_profile
from vmfault.session.process import WorkloadProcess

__all__ = ["InstructionKind"]


@dataclass
class _Armed:
    """The current experiment once its trigger is reached: the instances to corrupt and
    the workload process (halted at its first instruction)."""

    instances: tuple[int, ...]
    process: WorkloadProcess


class InstructionKind(FaultKind):
    """Faults in instruction results."""

    def __init__(self, machine: GuestMachine) -> None:
        self.machine = machine
        self._sites: dict[tuple[str, str | None], tuple[Instruction, ...]] = {}
        self._executed: dict[tuple[str, str | None], int] = {}
        self._armed: _Armed | None = None

    def _fault(self, spec: FaultSpec) -> InstructionFault:
        fault = spec.instruction
        assert fault is not None, "an instruction spec always carries its instruction fault"
        return fault

    def sites(self, op: str, function: str | None) -> tuple[Instruction, ...]:
        """The static instructions of class `op` in `function` (link time; cached)."""
        key = (op, function)
        if key not in self._sites:
            binary = self.machine.workload_code().binary
            decoded = binary.decode_range(binary.code_range(function))
            self._sites[key] = tuple(insn for insn in decoded if op in insn.classes)
        return self._sites[key]

    def executed_instances(self, op: str, function: str | None) -> int:
        """How many instances of `op` the golden run executes in `function` (None: the
        whole executable), from the workload's instruction profile (taken once, cached)."""
        key = (op, function)
        if key not in self._executed:
            machine = self.machine
            profile = load_or_profile(machine.image, machine.argv, function=function,
                                      deterministic=machine.deterministic)  # fmt: skip
            self._executed[key] = profile.count(op)
        return self._executed[key]

    def prepare(self, spec: FaultSpec) -> None:
        """Checks from the golden run's instruction profile that a named function runs at
        all (UsageError naming it and the likely cause, inlining, otherwise), and learns
        the count of the class a random instance is drawn from. A function without an
        instruction of the class is left to `trigger`, whose reason says so."""
        fault = self._fault(spec)
        if not self.sites(fault.op, fault.function):
            return
        if fault.function is not None:
            # Every instance of an inlined function runs in its caller: no breakpoint here
            # is ever hit, so each experiment would be not-injected. Fail once, up front.
            machine = self.machine
            profile = load_or_profile(machine.image, machine.argv, function=fault.function,
                                      deterministic=machine.deterministic)  # fmt: skip
            profile.require_executed(machine.image.workload(machine.argv[0]).source_kind)
            self._executed[(fault.op, fault.function)] = profile.count(fault.op)
        if fault.instance is None:
            self.executed_instances(fault.op, fault.function)

    def trigger(self, experiment: Experiment) -> str:
        """Draw the instances, then run to the workload's exec and first instruction."""
        self._armed = None
        fault = self._fault(experiment.spec)
        where = fault.function or self.machine.argv[0]
        if not self.sites(fault.op, fault.function):
            return f"{where} has no {fault.op} instruction"
        executed = None
        if fault.instance is None:
            executed = self.executed_instances(fault.op, fault.function)
        try:
            instances = choose_instances(fault, executed=executed, rng=experiment.rng("instances"))
        except ValueError as exc:
            return str(exc)
        if not instances:
            return f"no {fault.op} instance was drawn (probability {fault.probability})"
        process = learn_process(experiment, self.machine)
        if isinstance(process, str):
            return process
        self._armed = _Armed(instances, process)
        return ""

    def inject(self, experiment: Experiment) -> Injected:
        """Count the instances with breakpoints and corrupt each chosen one's result."""
        armed = self._armed
        assert armed is not None, "inject follows a reached trigger"
        fault = self._fault(experiment.spec)
        vm = experiment.vm
        base = armed.process.load_base
        sites = {
            insn.address + base: relocated(insn, base)
            for insn in self.sites(fault.op, fault.function)
        }
        injections: list[InstructionInjection] = []

        def corrupt(insn: Instruction, instance: int, location: ResultLocation) -> None:
            experiment.mark_injected()
            injections.append(self._corrupt(experiment, insn, instance, location, base))

        for address in sites:
            vm.gdb.set_breakpoint(address)
        here = experiment.here
        try:
            counting = count_instances(
                vm, sites=sites, process=armed.process, wanted=armed.instances,
                on_instance=corrupt, deadline=experiment.deadline(),
                exit_hook=self.machine.hooks.exited, sentinels=self.machine.sentinels,
                may_run_on=experiment.may_run_on,
            )  # fmt: skip
        finally:
            if vm.alive:
                vm.halt()
                for address in sites:
                    vm.gdb.remove_breakpoint(address)
        here.allowance_s += counting.allowance_s
        here.symptom = counting.symptom
        here.at_exit = counting.end is CountEnd.EXITED
        here.timed_out = counting.end is CountEnd.TIMED_OUT
        if len(injections) < len(armed.instances):
            why = {
                CountEnd.EXITED: " before the workload ended",
                CountEnd.TIMED_OUT: " before the hang budget ran out",
                CountEnd.GONE: " before QEMU exited",
                CountEnd.STOPPED: " before the guest stopped",
            }.get(counting.end, "")
            problem = (
                f"{fault.function or self.machine.argv[0]} executed {counting.counted} "
                f"{fault.op} instances in the workload process{why}; instance "
                f"{armed.instances[len(injections)]} was not reached"
            )
            if not any(i.injected for i in injections):
                first = injections[0] if injections else self.not_injected(experiment, problem)
                injections[:1] = [dataclasses.replace(first, reason=first.reason or problem)]
        held = next((i for i in injections if i.injected), None)
        if held is not None:  # the record leads with the first fault that held
            injections.remove(held)
            injections.insert(0, held)
        return Injected(tuple(injections))

    def _corrupt(
        self,
        experiment: Experiment,
        insn: Instruction,
        instance: int,
        location: ResultLocation,
        base: int,
    ) -> InstructionInjection:
        """Flip the chosen bits of the result `insn` just produced (vCPU halted after it)."""
        gdb = experiment.vm.gdb
        fault = self._fault(experiment.spec)
        code = self.machine.workload_code()
        destination = location.destination
        link = insn.address - base
        function = fault.function or code.binary.function_at(link)
        symbol = lookup_symbol(code.path, function) if function else None
        offset = "" if symbol is None else f"+{link - symbol.address:#x}"
        elapsed, instructions = experiment.elapsed_s(), experiment.instructions()
        attempt = dataclasses.replace(
            self.not_injected(experiment, ""),
            location=f"{function or '?'}{offset} {insn.text} -> {destination.text}",
            width=destination.width, register=destination.register, virtual=location.virtual,
            trigger=TriggerPoint(
                spec=f"{fault.op}#{instance}", time_s=elapsed, instructions=instructions,
                rip=insn.address, user_mode=True,
                progress=experiment.golden_fraction(elapsed, instructions),
            ),
            function=function, instance=instance, instruction=link, disassembly=insn.text,
            value_format=destination.fmt.value,
        )  # fmt: skip
        rng = experiment.rng(f"bits/{instance}")
        try:
            choice = choose_result_bits(experiment.spec.bits, destination, rng)
        except ValueError as exc:
            return dataclasses.replace(attempt, reason=str(exc))
        before = read_result(gdb, location)
        after = choice.apply(before)
        write_result(gdb, location, after)
        readback = read_result(gdb, location)
        held = readback == after
        address = None
        if location.virtual is not None:
            vm = self.machine.vm
            root = gdb.read_register(vm.platform.page_table_root)
            address = translate_address(
                vm.config.arch, root, location.virtual, physical_reader(gdb)
            )
        return dataclasses.replace(
            attempt, mask=choice.mask, before=before, after=after, readback=readback,
            injected=held, address=address,
            reason="" if held else f"read back {readback:#x}, wrote {after:#x}",
        )  # fmt: skip

    def not_injected(self, experiment: Experiment, reason: str) -> InstructionInjection:
        """The instruction fault that was not made."""
        fault = self._fault(experiment.spec)
        return InstructionInjection(
            target=experiment.spec.target.spelling, machine=self.machine.name,
            mode=experiment.spec.bits.mode.value, reason=reason,
            trigger=TriggerPoint(spec=fault.spelling), op=fault.op, function=fault.function,
            process=self.machine.argv[0], pid=self.machine.require_golden().pid,
        )  # fmt: skip
