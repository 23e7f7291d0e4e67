"""Outcome classification, the crash pattern table and the latency histogram."""

from __future__ import annotations

import dataclasses
import random
import signal
from pathlib import Path
from typing import Any

import pytest

from vmfault.classify import (
    LATENCY_BUCKETS,
    LATENCY_LABELS,
    Activation,
    Classification,
    CrashPattern,
    CrashScope,
    CrashTable,
    Latency,
    LatencyUnit,
    Observation,
    Outcome,
    activation_of,
    classify,
    latency_bucket,
    latency_histogram,
    signal_name,
)
from vmfault.errors import UsageError
from vmfault.experiment.records import GoldenRun
from vmfault.session import WorkloadResult

GOLDEN_OUT = b"checksum: 0x00000000deadbeef\n"


def reference(stdout: bytes, *, exit_code: int | None = 0, signal: str | None = None) -> GoldenRun:
    """A golden run with this output and end."""
    return GoldenRun("guest", ("checksum",), stdout, b"", exit_code, signal, 0.1, 0.1)


GOLDEN = reference(GOLDEN_OUT)

SEGFAULT_LINE = (
    "[   12.345678] checksum[63]: segfault at 0 ip 0000000010001234 sp 00007ffc8a2b3c40 "
    "error 4 in checksum[10000000+90000]"
)
TRAP_UD_LINE = (
    "[   12.345678] traps: checksum[63] trap invalid opcode ip:10001234 sp:7ffc8a2b3c40 "
    "error:0 in checksum[10000000+90000]"
)
TRAP_DE_LINE = (
    "[   12.345678] traps: checksum[63] trap divide error ip:10001234 sp:7ffc8a2b3c40 "
    "error:0 in checksum[10000000+90000]"
)
USER_GP_LINE = (
    "[   12.345678] traps: checksum[63] general protection fault ip:10001234 "
    "sp:7ffc8a2b3c40 error:0 in checksum[10000000+90000]"
)

GP_LINE = (
    "[   14.201937] general protection fault, probably for non-canonical address "
    "0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI"
)
GP_OOPS = f"""\
{GP_LINE}
[   14.202512] CPU: 0 PID: 63 Comm: checksum Not tainted 6.1.0-18-amd64 #1  Debian 6.1.76-1
[   14.202988] RIP: 0010:__list_del_entry_valid+0x25/0xc0
[   14.204803] Kernel panic - not syncing: Fatal exception
[   14.205044] ---[ end Kernel panic - not syncing: Fatal exception ]---
"""
NULL_OOPS = """\
[    9.811200] BUG: kernel NULL pointer dereference, address: 0000000000000008
[    9.811522] #PF: supervisor read access in kernel mode
[    9.811733] #PF: error_code(0x0000) - not-present page
[    9.811941] PGD 0 P4D 0
[    9.812054] Oops: 0000 [#1] PREEMPT SMP NOPTI
[    9.812251] CPU: 0 PID: 63 Comm: checksum Not tainted 6.1.0-18-amd64 #1  Debian 6.1.76-1
[    9.813822] Kernel panic - not syncing: Fatal exception
"""
PAGE_FAULT_OOPS = """\
[    9.811200] BUG: unable to handle page fault for address: ffffc90000a3b000
[    9.811522] #PF: supervisor write access in kernel mode
[    9.811733] #PF: error_code(0x0002) - not-present page
[    9.812054] Oops: 0002 [#1] PREEMPT SMP NOPTI
"""
UD_OOPS = """\
[    7.100000] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
[    7.100100] CPU: 0 PID: 63 Comm: checksum Not tainted 6.1.0-18-amd64 #1  Debian 6.1.76-1
[    7.100400] Kernel panic - not syncing: Fatal exception
"""
BUG_AT_OOPS = """\
[    7.099000] ------------[ cut here ]------------
[    7.099500] kernel BUG at mm/slub.c:379!
[    7.100000] invalid opcode: 0000 [#1] PREEMPT SMP NOPTI
"""
DE_OOPS = "[    7.100000] divide error: 0000 [#1] PREEMPT SMP NOPTI\n"
DF_OOPS = """\
[    7.100000] PANIC: double fault, error_code: 0x0
[    7.100100] double fault: 0000 [#1] PREEMPT SMP NOPTI
[    7.100400] Kernel panic - not syncing: Machine halted.
"""
SS_OOPS = "[    7.100000] stack segment: 0000 [#1] PREEMPT SMP NOPTI\n"
STACK_OVERFLOW = (
    "[    7.100000] BUG: kernel stack guard page was hit at 00000000a2e4b1c3 "
    "(stack is 0000000046e4a3b2..0000000085d77c1d)\n"
    "[    7.100100] stack guard page: 0000 [#1] PREEMPT SMP NOPTI\n"
)
STACK_PROTECTOR = (
    "[    7.100000] Kernel panic - not syncing: stack-protector: Kernel stack is corrupted in: "
    "do_sys_poll+0x4a0/0x4b0\n"
)
NEW_STYLE_GP = (
    "[    7.100000] Oops: general protection fault, probably for non-canonical address "
    "0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI\n"
)
INIT_KILLED = (
    "[    7.100000] Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b\n"
)


def finished(
    stdout: bytes = GOLDEN_OUT,
    *,
    exit_code: int | None = 0,
    signal: str | None = None,
    stderr: bytes = b"",
    console: str = "",
    **fields: Any,
) -> Observation:
    """An observation of a workload that finished (golden output unless told otherwise)."""
    base = Observation(
        injected=True,
        finished=True,
        stdout=stdout,
        stderr=stderr,
        exit_code=exit_code,
        signal=signal,
        console=console,
    )
    return dataclasses.replace(base, **fields)


def stuck(console: str = "", **fields: Any) -> Observation:
    """An observation of a workload that never reported its exit."""
    return dataclasses.replace(
        Observation(injected=True, finished=False, console=console), **fields
    )


# ---- enums ------------------------------------------------------------------------------


def test_outcome_values_and_counts() -> None:
    assert [o.value for o in Outcome] == [
        "benign",
        "sdc",
        "detected",
        "crash",
        "hang",
        "vmm-error",
        "not-injected",
        "infra-failure",
    ]
    assert [o for o in Outcome if not o.counts] == [Outcome.NOT_INJECTED, Outcome.INFRA_FAILURE]
    assert [a.value for a in Activation] == ["not-activated", "masked", "manifested", "unknown"]
    assert [s.value for s in CrashScope] == ["user", "kernel", "reaction"]


# ---- rule 1: not injected -----------------------------------------------------------------


def test_not_injected_wins_over_everything() -> None:
    obs = dataclasses.replace(
        stuck(GP_OOPS, guest_panicked=True, vmm_problem="QMP failed", qemu_alive=False),
        injected=False,
    )
    assert classify(GOLDEN, obs).outcome is Outcome.NOT_INJECTED


# ---- rule 2: VMM errors -------------------------------------------------------------------


def test_vmm_problem_is_never_hidden() -> None:
    obs = stuck(GP_OOPS, guest_panicked=True, vmm_problem="query-status failed:\n  broken pipe")
    result = classify(GOLDEN, obs)
    assert result == Classification(Outcome.VMM_ERROR, "query-status failed: broken pipe")


def test_vmm_problem_on_a_benign_run() -> None:
    result = classify(GOLDEN, finished(vmm_problem="control VM result changed"))
    assert result.outcome is Outcome.VMM_ERROR
    assert result.reason == "control VM result changed"


@pytest.mark.parametrize(
    ("exit_code", "reason"),
    [
        (None, "QEMU died without a guest-caused reason"),
        (1, "QEMU exited with status 1 without a guest-caused reason"),
        (-9, "QEMU was killed by SIGKILL without a guest-caused reason"),
    ],
)
def test_qemu_died_without_guest_reason(exit_code: int | None, reason: str) -> None:
    result = classify(GOLDEN, stuck(qemu_alive=False, qemu_exit_code=exit_code))
    assert (result.outcome, result.reason) == (Outcome.VMM_ERROR, reason)


def test_qemu_died_after_finished_workload_without_reason() -> None:
    assert classify(GOLDEN, finished(qemu_alive=False)).outcome is Outcome.VMM_ERROR


@pytest.mark.parametrize(
    ("obs", "cause"),
    [
        (stuck(qemu_alive=False, events=("SHUTDOWN",)), "reset"),
        (stuck(qemu_alive=False, guest_panicked=True), "panic"),
        (stuck(GP_OOPS, qemu_alive=False, events=("SHUTDOWN",)), "general-protection"),
    ],
)
def test_qemu_exit_caused_by_the_guest_is_a_crash(obs: Observation, cause: str) -> None:
    result = classify(GOLDEN, obs)
    assert (result.outcome, result.cause) == (Outcome.CRASH, cause)


def test_guest_poweroff_after_finishing_is_not_a_vmm_error() -> None:
    obs = finished(qemu_alive=False, qemu_exit_code=0, events=("SHUTDOWN",))
    assert classify(GOLDEN, obs).outcome is Outcome.BENIGN


# ---- rule 3: kernel crashes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("console", "cause", "evidence_start"),
    [
        (GP_OOPS, "general-protection", "[   14.201937] general protection fault, probably"),
        (NULL_OOPS, "null-dereference", "[    9.811200] BUG: kernel NULL pointer dereference"),
        (PAGE_FAULT_OOPS, "page-fault", "[    9.811200] BUG: unable to handle page fault"),
        (UD_OOPS, "invalid-opcode", "[    7.100000] invalid opcode: 0000 [#1]"),
        (BUG_AT_OOPS, "bug", "[    7.099500] kernel BUG at mm/slub.c:379!"),
        (DE_OOPS, "divide-error", "[    7.100000] divide error: 0000"),
        (DF_OOPS, "double-fault", "[    7.100000] PANIC: double fault"),
        (SS_OOPS, "stack-segment", "[    7.100000] stack segment: 0000"),
        (STACK_OVERFLOW, "stack-overflow", "[    7.100000] BUG: kernel stack guard page"),
        (STACK_PROTECTOR, "stack-protector", "[    7.100000] Kernel panic - not syncing: stack"),
        (NEW_STYLE_GP, "general-protection", "[    7.100000] Oops: general protection fault"),
        (INIT_KILLED, "init-killed", "[    7.100000] Kernel panic - not syncing: Attempted"),
        ("[    7.1] Kernel panic - not syncing: VFS: Unable to mount root\n", "panic", "[    7.1]"),
        ("[    7.1] Oops: 0010 [#1] PREEMPT SMP NOPTI\n", "oops", "[    7.1] Oops: 0010"),
    ],
)
def test_kernel_crash_cause(console: str, cause: str, evidence_start: str) -> None:
    result = classify(GOLDEN, stuck(console, timed_out=True))
    assert (result.outcome, result.cause) == (Outcome.CRASH, cause)
    assert result.evidence.startswith(evidence_start)
    assert "\n" not in result.evidence and "\r" not in result.evidence


def test_kernel_crash_reason_says_panic_or_oops() -> None:
    assert classify(GOLDEN, stuck(GP_OOPS)).reason == "kernel panic: general protection fault"
    assert classify(GOLDEN, stuck(PAGE_FAULT_OOPS)).reason == "kernel oops: page fault"
    panicked = classify(GOLDEN, stuck(PAGE_FAULT_OOPS, events=("STOP", "GUEST_PANICKED")))
    assert panicked.reason == "kernel panic: page fault"


def test_earlier_generic_line_wins_over_later_specific_one() -> None:
    console = "[ 1.0] Oops: 0000 [#1] SMP\n[ 2.0] general protection fault: 0000 [#2] SMP\n"
    assert classify(GOLDEN, stuck(console)).cause == "oops"


def test_guest_panicked_without_console_line() -> None:
    result = classify(GOLDEN, stuck(guest_panicked=True))
    assert result == Classification(Outcome.CRASH, "kernel panic", "panic", "GUEST_PANICKED")
    result = classify(GOLDEN, stuck(events=("GUEST_PANICKED", "STOP")))
    assert (result.cause, result.evidence) == ("panic", "GUEST_PANICKED")


def test_kernel_oops_killing_the_workload_gives_the_kernel_cause() -> None:
    obs = finished(b"", exit_code=None, signal="SIGKILL", console=NULL_OOPS)
    assert classify(GOLDEN, obs).cause == "null-dereference"


def test_kernel_oops_after_an_identical_run_is_a_crash() -> None:
    assert classify(GOLDEN, finished(console=GP_OOPS)).outcome is Outcome.CRASH


def test_kernel_crash_beats_timeout() -> None:
    result = classify(GOLDEN, stuck(UD_OOPS, timed_out=True, budget_s=0.25))
    assert (result.outcome, result.cause) == (Outcome.CRASH, "invalid-opcode")


@pytest.mark.parametrize("event", ["SHUTDOWN", "RESET"])
def test_reset_before_the_workload_finished(event: str) -> None:
    result = classify(GOLDEN, stuck(events=("STOP", event)))
    assert (result.outcome, result.cause, result.evidence) == (Outcome.CRASH, "reset", event)


def test_user_lines_are_not_kernel_crashes() -> None:
    for line in (SEGFAULT_LINE, TRAP_UD_LINE, TRAP_DE_LINE, USER_GP_LINE):
        assert classify(GOLDEN, finished(console=line + "\n")).outcome is Outcome.BENIGN


# ---- rule 4: killed by a signal -----------------------------------------------------------


@pytest.mark.parametrize(
    ("signo", "console", "evidence"),
    [
        (signal.SIGSEGV, f"{SEGFAULT_LINE}\r\n", SEGFAULT_LINE),
        (signal.SIGILL, f"noise\n{TRAP_UD_LINE}\n", TRAP_UD_LINE),
        (signal.SIGFPE, f"{TRAP_DE_LINE}\n", TRAP_DE_LINE),
        (signal.SIGSEGV, f"{USER_GP_LINE}\n", USER_GP_LINE),
        (signal.SIGBUS, "", ""),
        (signal.SIGABRT, "", ""),
        (signal.SIGTRAP, "[ 1.0] traps: checksum[63] trap int3 ip:10001235\n", ""),
    ],
)
def test_killed_by_signal(signo: int, console: str, evidence: str) -> None:
    name = signal.Signals(signo).name
    obs = finished(b"", exit_code=None, signal=name, console=console)
    result = classify(GOLDEN, obs)
    assert (result.outcome, result.cause, result.reason) == (
        Outcome.CRASH,
        name,
        f"killed by {name}",
    )
    if evidence:
        assert result.evidence == evidence
    elif console:
        assert result.evidence == console.strip()
    else:
        assert result.evidence == ""


def test_unknown_signal_number() -> None:
    assert signal_name(77) == "SIG77"
    assert signal_name(11) == "SIGSEGV"
    result = classify(GOLDEN, finished(b"", exit_code=None, signal=signal_name(77)))
    assert result.cause == "SIG77"


def test_signal_of_the_golden_run_is_compared_like_an_exit() -> None:
    aborting = reference(b"x\n", exit_code=None, signal="SIGABRT")
    same = finished(b"x\n", exit_code=None, signal="SIGABRT")
    assert classify(aborting, same).outcome is Outcome.BENIGN
    other = finished(b"x\n", exit_code=None, signal="SIGSEGV")
    assert classify(aborting, other).cause == "SIGSEGV"


# ---- rule 5: hangs ------------------------------------------------------------------------


def test_hang_with_budget() -> None:
    result = classify(GOLDEN, stuck(SEGFAULT_LINE, timed_out=True, budget_s=0.25))
    assert result == Classification(Outcome.HANG, "no completion within the budget of 0.25 s")


def test_hang_without_budget_and_without_report() -> None:
    assert classify(GOLDEN, stuck(timed_out=True)).reason == "no completion within the budget"
    result = classify(GOLDEN, stuck())
    assert result.outcome is Outcome.HANG
    assert "never reported its exit" in result.reason


def test_late_completion_is_a_hang() -> None:
    assert classify(GOLDEN, finished(timed_out=True)).outcome is Outcome.HANG


# ---- rules 6-8: detected, sdc, benign -----------------------------------------------------


def test_self_check_message_with_error_exit() -> None:
    obs = finished(b"", exit_code=3, stderr=b"checksum: DETECTED mismatch at index 77\n")
    result = classify(GOLDEN, obs)
    assert result == Classification(
        Outcome.DETECTED,
        "exit status 3 (the workload reported an error)",
        evidence="checksum: DETECTED mismatch at index 77",
    )


def test_self_check_message_with_golden_exit() -> None:
    obs = finished(stderr=b"checksum: DETECTED mismatch at index 77\n")
    result = classify(GOLDEN, obs)
    assert result.outcome is Outcome.DETECTED
    assert result.reason == "the workload reported an error on stderr (matches 'DETECTED')"
    assert result.evidence == "checksum: DETECTED mismatch at index 77"


def test_custom_detect_regex_on_stdout() -> None:
    obs = finished(b"crc32: self-test failed\ncrc32: 0x1\n")
    result = classify(GOLDEN, obs, detect_regex=r"self-test failed")
    assert (result.outcome, result.evidence) == (Outcome.DETECTED, "crc32: self-test failed")
    assert classify(GOLDEN, obs).outcome is Outcome.SDC


def test_detect_regex_matching_the_golden_stdout_is_ignored_on_stdout() -> None:
    golden = reference(b"errors: 0\nsum: 1\n", exit_code=0, signal=None)
    assert classify(golden, finished(b"errors: 0\nsum: 1\n"), detect_regex="errors").outcome is (
        Outcome.BENIGN
    )
    assert classify(golden, finished(b"errors: 1\nsum: 1\n"), detect_regex="errors").outcome is (
        Outcome.SDC
    )
    on_stderr = finished(b"errors: 0\nsum: 1\n", stderr=b"errors: 1\n")
    assert classify(golden, on_stderr, detect_regex="errors").outcome is Outcome.DETECTED


def test_non_zero_exit_without_message_uses_last_stderr_line() -> None:
    obs = finished(b"", exit_code=1, stderr=b"crc32: self-test failed\n\n")
    result = classify(GOLDEN, obs)
    assert result.outcome is Outcome.DETECTED
    assert result.evidence == "crc32: self-test failed"


def test_exit_differing_from_a_non_zero_golden_exit() -> None:
    golden = reference(b"", exit_code=2, signal=None)
    result = classify(golden, finished(b"", exit_code=0))
    assert result.outcome is Outcome.DETECTED
    assert result.reason == "exit status 0 where the golden run had exit status 2"


def test_invalid_detect_regex() -> None:
    with pytest.raises(UsageError, match="detect pattern"):
        classify(GOLDEN, finished(), detect_regex="(unclosed")


@pytest.mark.parametrize(
    ("stdout", "offset", "shown"),
    [
        (
            b"checksum: 0x00000000deadbeff\n",
            26,
            '"checksum: 0x00000000deadbeff" instead of "checksum: 0x00000000deadbeef"',
        ),
        (b"checksum: 0x0000", 16, '"checksum: 0x0000" instead of "checksum: 0x00000000deadbeef"'),
        (b"", 0, '<end of output> instead of "checksum: 0x00000000deadbeef"'),
        (GOLDEN_OUT + b"extra\n", 29, '"extra" instead of <end of output>'),
        (b"check\x00um: 0x00000000deadbeef\n", 5, '"check\\x00um: 0x00000000deadbeef"'),
    ],
)
def test_sdc_names_the_first_differing_byte(stdout: bytes, offset: int, shown: str) -> None:
    result = classify(GOLDEN, finished(stdout))
    assert result.outcome is Outcome.SDC
    assert result.reason.startswith(f"stdout differs from the golden run at byte {offset}: ")
    assert shown in result.reason
    assert "\n" not in result.reason


def test_sdc_reason_is_brief_for_long_lines() -> None:
    golden = reference(b"a" * 5000 + b"\n", exit_code=0, signal=None)
    result = classify(golden, finished(b"a" * 4000 + b"b" + b"a" * 999 + b"\n"))
    assert result.outcome is Outcome.SDC
    assert "at byte 4000" in result.reason
    assert len(result.reason) < 250
    assert len(result.evidence) <= 400


def test_benign() -> None:
    result = classify(GOLDEN, finished(stderr=b"some warning\n"))
    assert result.outcome is Outcome.BENIGN
    assert result.cause is None


@pytest.mark.parametrize("seed", range(5))
def test_garbled_console_does_not_change_a_finished_run(seed: int) -> None:
    rng = random.Random(seed)
    junk = bytes(rng.randrange(256) for _ in range(4096)).decode("latin-1")
    assert classify(GOLDEN, finished(console=junk)).outcome is Outcome.BENIGN
    sdc = finished(b"checksum: 0x1\n", console=junk)
    assert classify(GOLDEN, sdc).outcome is Outcome.SDC
    detected = finished(b"", exit_code=3, console=junk)
    assert classify(GOLDEN, detected).outcome is Outcome.DETECTED


def test_a_workload_result_classifies_like_its_golden_run() -> None:
    result = WorkloadResult(GOLDEN_OUT, b"", None, "SIGABRT", 6, 0.01, 42)
    killed = reference(GOLDEN_OUT, exit_code=None, signal="SIGABRT")
    same = finished(result.stdout, exit_code=result.exit_code, signal=result.signal)
    assert classify(killed, same).outcome is Outcome.BENIGN
    assert result.exit_status == 128 + 6


# ---- the crash table ----------------------------------------------------------------------


def test_default_table_is_cached_and_sound() -> None:
    table = CrashTable.default()
    assert table is CrashTable.default()
    causes = {(p.scope, p.cause) for p in table.patterns}
    for cause in (
        "null-dereference",
        "page-fault",
        "general-protection",
        "invalid-opcode",
        "divide-error",
        "double-fault",
        "stack-segment",
        "stack-overflow",
        "stack-protector",
        "bug",
        "oops",
        "panic",
    ):
        assert (CrashScope.KERNEL, cause) in causes
    for cause in ("segfault", "invalid-opcode", "divide-error", "general-protection"):
        assert (CrashScope.USER, cause) in causes
    kernel = [p.cause for p in table.patterns if p.scope is CrashScope.KERNEL]
    assert kernel[-2:] == ["oops", "panic"]


@pytest.mark.parametrize(
    ("line", "cause"),
    [
        (SEGFAULT_LINE, "segfault"),
        (TRAP_UD_LINE, "invalid-opcode"),
        (TRAP_DE_LINE, "divide-error"),
        (USER_GP_LINE, "general-protection"),
        ("[ 1.0] traps: checksum[63] trap int3 ip:10001235 sp:7ffc error:0", "breakpoint"),
        ("[ 1.0] traps: checksum[63] trap stack segment ip:10001235 sp:7ffc", "stack-segment"),
        ("Bus error", "bus-error"),
    ],
)
def test_user_patterns(line: str, cause: str) -> None:
    found = CrashTable.default().match(f"boot noise\n{line}\nmore", scope=CrashScope.USER)
    assert found is not None
    assert (found[0].cause, found[0].scope, found[1]) == (cause, CrashScope.USER, line)
    assert CrashTable.default().match(line, scope=CrashScope.KERNEL) is None


def test_match_without_scope_and_no_match() -> None:
    table = CrashTable.default()
    found = table.match(f"{SEGFAULT_LINE}\n{GP_OOPS}")
    assert found is not None and found[0].cause == "segfault"
    assert table.match("all quiet\n") is None
    assert table.match("") is None


def test_match_cuts_huge_lines_around_the_match() -> None:
    console = "x" * 100_000 + " general protection fault: 0000 [#1] " + "y" * 100_000
    found = CrashTable.default().match(console)
    assert found is not None
    assert len(found[1]) == 400
    assert "general protection fault: 0000" in found[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "patterns.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_user_table_overrides_a_default_cause(tmp_path: Path) -> None:
    user = CrashTable.load(
        write(
            tmp_path,
            """
            [[pattern]]
            cause = "list-corruption"
            scope = "kernel"
            regex = 'non-canonical address 0xdead0000000001[02]0'
            description = "list poison dereferenced"
            """,
        )
    )
    assert user.patterns == (
        CrashPattern(
            "list-corruption",
            "non-canonical address 0xdead0000000001[02]0",
            CrashScope.KERNEL,
            "list poison dereferenced",
        ),
    )
    table = CrashTable.default().extended(user)
    assert table.patterns[0].cause == "list-corruption"
    result = classify(GOLDEN, stuck(GP_OOPS), table=table)
    assert (result.cause, result.reason) == (
        "list-corruption",
        "kernel panic: list poison dereferenced",
    )
    assert classify(GOLDEN, stuck(NULL_OOPS), table=table).cause == "null-dereference"


def test_user_table_description_is_optional(tmp_path: Path) -> None:
    user = CrashTable.load(
        write(tmp_path, "[[pattern]]\ncause = 'mce'\nscope = 'kernel'\nregex = 'mce: \\['\n")
    )
    assert user.patterns[0].description == ""
    result = classify(GOLDEN, stuck("[ 1.0] mce: [Hardware Error]: CPU 0\n"), table=user)
    assert (result.cause, result.reason) == ("mce", "kernel oops: mce")


def test_empty_user_table(tmp_path: Path) -> None:
    assert CrashTable.load(write(tmp_path, "")).patterns == ()


GOOD = "[[pattern]]\ncause = 'x'\nscope = 'kernel'\nregex = 'boom'\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[pattern]\n", "not valid TOML"),
        ("[[pattern]]\ncause = 'x'\nscope = 'kernel'\nregex = '(boom'\n", "key 'regex': invalid"),
        (GOOD + "severity = 3\n", "pattern 1, key 'severity': unknown key"),
        (
            "[[pattern]]\ncause = 'x'\nscope = 'kernel'\nregex = 5\n",
            "key 'regex': must be a string",
        ),
        ("[[pattern]]\ncause = 'x'\nscope = 'kernel'\n", "key 'regex': missing"),
        ("[[pattern]]\ncause = 'x'\nscope = 'hyper'\nregex = 'b'\n", "key 'scope': must be"),
        ("[[pattern]]\ncause = 'a b'\nscope = 'user'\nregex = 'b'\n", "key 'cause'"),
        ("[[pattern]]\ncause = 'x'\nscope = 'user'\nregex = 'b*'\n", "matches the empty string"),
        (GOOD + "[[pattern]]\ncause = true\n", "pattern 2, key 'cause': must be a string"),
        ("patterns = []\n", "unknown key 'patterns'"),
        ("pattern = 3\n", "key 'pattern': must be an array of tables"),
    ],
)
def test_bad_user_table(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(UsageError, match=message) as caught:
        CrashTable.load(path)
    assert caught.value.message.startswith(f"{path}: ")
    assert "\n" not in caught.value.one_line()


def test_missing_user_table(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        CrashTable.load(tmp_path / "absent.toml")


# ---- latency ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "label"),
    [
        (0, "<=500"),
        (500, "<=500"),
        (501, "<=1K"),
        (500.5, "<=1K"),
        (1_000, "<=1K"),
        (1_001, "<=2K"),
        (2_000, "<=2K"),
        (2_001, "<=3K"),
        (3_000, "<=3K"),
        (3_001, "<=10K"),
        (10_000, "<=10K"),
        (10_001, "<=100K"),
        (100_000, "<=100K"),
        (100_001, "<=1M"),
        (1_000_000, "<=1M"),
        (1_000_001, "<=10M"),
        (10_000_000, "<=10M"),
        (10_000_001, "<=100M"),
        (100_000_000, "<=100M"),
        (100_000_001, "<=1B"),
        (1_000_000_000, "<=1B"),
        (1_000_000_001, ">1B"),
        (float("inf"), ">1B"),
    ],
)
def test_latency_bucket(value: float, label: str) -> None:
    assert latency_bucket(value) == label


@pytest.mark.parametrize("value", [-1, float("nan")])
def test_latency_bucket_rejects_bad_values(value: float) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        latency_bucket(value)


def test_latency_histogram() -> None:
    assert LATENCY_LABELS == (
        "<=500",
        "<=1K",
        "<=2K",
        "<=3K",
        "<=10K",
        "<=100K",
        "<=1M",
        "<=10M",
        "<=100M",
        "<=1B",
        ">1B",
    )
    assert len(LATENCY_BUCKETS) + 1 == len(LATENCY_LABELS)
    histogram = latency_histogram([1, 499, 1500, 2_000_000_000, 1_000_000_000])
    assert list(histogram) == list(LATENCY_LABELS)
    assert histogram == dict.fromkeys(LATENCY_LABELS, 0) | {
        "<=500": 2,
        "<=2K": 1,
        "<=1B": 1,
        ">1B": 1,
    }
    assert latency_histogram([]) == dict.fromkeys(LATENCY_LABELS, 0)


def test_latency_value() -> None:
    latency = Latency(1234, LatencyUnit.INSTRUCTIONS)
    assert latency.bucket == "<=2K"
    assert [u.value for u in LatencyUnit] == ["instructions", "guest-ns", "wall-ns"]


# ---- activation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "read", "activation"),
    [
        (Outcome.BENIGN, True, Activation.MASKED),
        (Outcome.BENIGN, False, Activation.NOT_ACTIVATED),
        (Outcome.BENIGN, None, Activation.UNKNOWN),
        (Outcome.SDC, None, Activation.MANIFESTED),
        (Outcome.CRASH, False, Activation.MANIFESTED),
        (Outcome.HANG, True, Activation.MANIFESTED),
        (Outcome.DETECTED, None, Activation.MANIFESTED),
        (Outcome.VMM_ERROR, None, Activation.MANIFESTED),
        (Outcome.NOT_INJECTED, None, Activation.NOT_ACTIVATED),
    ],
)
def test_activation_of(outcome: Outcome, read: bool | None, activation: Activation) -> None:
    assert activation_of(outcome, read_before_overwrite=read) is activation


# ---- fixed observation periods (failure rate per flip) --------------------------------------


def test_a_period_that_ends_with_the_workload_running_is_benign() -> None:
    verdict = classify(GOLDEN, stuck(period_s=0.5))
    assert verdict.outcome is Outcome.BENIGN
    assert "0.5 s period" in verdict.reason


def test_failures_within_the_period_still_count() -> None:
    assert classify(GOLDEN, stuck(GP_OOPS, period_s=0.5)).outcome is Outcome.CRASH
    assert classify(GOLDEN, stuck(guest_panicked=True, period_s=0.5)).outcome is Outcome.CRASH
    assert classify(GOLDEN, stuck(timed_out=True, period_s=0.5)).outcome is Outcome.HANG
    wrong = dataclasses.replace(finished(b"checksum: 0x1\n"), period_s=0.5)
    assert classify(GOLDEN, wrong).outcome is Outcome.SDC
