"""Exact counts from QEMU's block log: stopped blocks, faults, early ends, rep, other processes."""

from __future__ import annotations

import io

import pytest

from vmfault.faults.instructions import Instruction, decode
from vmfault.machine.pagetable import page_table_key
from vmfault.profile.execlog import TraceEntry, count_executions, parse_exec_log

# 0x1000 mov eax, 1 / 0x1005 add eax, 1 / 0x1008 cmp eax, 10 / 0x100b jne 0x1005 / 0x100d ret
LOOP = bytes.fromhex("b80100000083c00183f80a75f8c3")
# 0x2000 rep movsb / 0x2002 ret
REP = bytes.fromhex("f3a4c3")
ME, OTHER = 0x61AE000, 0x7000000


class Code:
    """Decoded test code; blocks end where a translation block would."""

    def __init__(self) -> None:
        self.at = {i.address: i for i in (*decode(LOOP, 0x1000), *decode(REP, 0x2000))}

    def block_at(self, pc: int) -> tuple[Instruction, ...]:
        block: list[Instruction] = []
        while pc in self.at:
            block.append(self.at[pc])
            if self.at[pc].flow.ends_block:
                break
            pc = self.at[pc].end
        return tuple(block)


def counts(*entries: TraceEntry) -> dict[int, int]:
    found, _ = count_executions(entries, process=ME, code=Code())
    return dict(found)


def run(pc: int, cr2: int = 0, cr3: int = ME, executed: bool = True) -> TraceEntry:
    return TraceEntry(pc, cr3, cr2, executed)


def test_a_loop_entered_mid_block_counts_every_iteration() -> None:
    entries = [run(0x1000), *[run(0x1005)] * 8, run(0x100D)]
    assert counts(*entries) == {0x1000: 1, 0x1005: 9, 0x1008: 9, 0x100B: 9, 0x100D: 1}


def test_blocks_stopped_before_running_and_other_processes_do_not_count() -> None:
    entries = [
        run(0x1000),
        run(0x1005, executed=False),  # an interrupt was pending: QEMU stopped before it
        run(0x1005, cr3=OTHER),  # another process at the same address
        run(0x1005),
        run(0x100D),
    ]
    assert counts(*entries) == {0x1000: 1, 0x1005: 2, 0x1008: 2, 0x100B: 2, 0x100D: 1}


def test_a_page_fault_inside_a_block_cuts_it_at_the_faulting_instruction() -> None:
    entries = [run(0x1000), run(0x1008, cr2=0xDEAD000), run(0x100D, cr2=0xDEAD000)]
    assert counts(*entries) == {0x1000: 1, 0x1005: 1, 0x1008: 1, 0x100B: 1, 0x100D: 1}


def test_a_page_fault_on_a_block_first_instruction_runs_nothing() -> None:
    entries = [run(0x1000), run(0x1005), run(0x1005, cr2=0xBEEF000), run(0x100D, cr2=0xBEEF000)]
    assert counts(*entries) == {0x1000: 1, 0x1005: 2, 0x1008: 2, 0x100B: 2, 0x100D: 1}


def test_a_block_ended_early_by_the_emulator_is_cut_where_the_next_one_starts() -> None:
    # 0x1008 is no successor of the block's last instruction: the block stopped before it.
    entries = [run(0x1000), run(0x1008), run(0x100D)]
    assert counts(*entries) == {0x1000: 1, 0x1005: 1, 0x1008: 1, 0x100B: 1, 0x100D: 1}


def test_a_rep_instruction_counts_once_however_many_iterations() -> None:
    entries = [run(0x2000), run(0x2000), run(0x2000), run(0x2002), run(0x2000), run(0x2002)]
    assert counts(*entries) == {0x2000: 2, 0x2002: 2}


def record(pc: int, cr3: int, cr2: int = 0, stopped: bool = False) -> bytes:
    text = (
        f"Trace 0: 0x7f00dead0000 [0000000000000000/{pc:016x}/18c0c2b3/ff000200] \n"
        "RAX=0000000000000000 RBX=0000000000000000 RCX=0000000000000000 RDX=0000000000000000\n"
        f"RIP={pc:016x} RFL=00000246 [---Z-P-] CPL=3 II=0 A20=1 SMM=0 HLT=0\n"
        f"CR0=80050033 CR2={cr2:016x} CR3={cr3:016x} CR4=00750ef0\n"
        "EFER=0000000000000d01\n"
    )
    if stopped:
        text += f"Stopped execution of TB chain before 0x7f00dead0000 [{pc:016x}] \n"
    return text.encode()


@pytest.mark.parametrize("read_bytes", [7, 100, 1 << 20])
def test_the_log_parses_across_read_boundaries(read_bytes: int) -> None:
    log = (
        record(0x1000, ME | 0x803)  # with a PCID
        + record(0x1005, ME, stopped=True)
        + record(0x1005, OTHER, cr2=0x42)
    )
    entries = list(parse_exec_log(io.BytesIO(log), read_bytes=read_bytes))
    assert entries == [
        TraceEntry(0x1000, ME, 0, True),
        TraceEntry(0x1005, ME, 0, False),
        TraceEntry(0x1005, OTHER, 0x42, True),
    ]


def test_a_log_without_cpu_state_is_refused() -> None:
    bare = b"Trace 0: 0x7f00 [0000000000000000/0000000000001000/18c0c2b3/ff000200] \n"
    with pytest.raises(ValueError, match="no CR3"):
        list(parse_exec_log(io.BytesIO(bare + record(0x1005, ME))))


def test_a_last_block_cut_off_by_the_end_of_logging_is_left_out() -> None:
    bare = b"Trace 0: 0x7f00 [0000000000000000/0000000030009f45/18c0c2b3/ff000200] \n"
    entries = list(parse_exec_log(io.BytesIO(record(0x1000, ME) + bare)))
    assert entries == [TraceEntry(0x1000, ME, 0, True)]


def test_pcid_bits_do_not_name_an_address_space_but_bit_12_does() -> None:
    assert page_table_key(0x61AF000) == page_table_key(0x61AF801) == page_table_key(0x61AF003)
    assert page_table_key(0x61AE000) != page_table_key(0x61AF000)  # neighbouring roots
