"""Outcome classification: what one experiment's observation means, compared with the golden run.

`classify(reference, observation)` applies these rules in order; the first that applies wins.

1. **not-injected**: the fault could not be applied (`observation.injected` is false), whatever
   else was seen. Never counted as an outcome.
2. **vmm-error**: the VMM itself misbehaved (`vmm_problem` is set: a QMP command failed,
   isolation broke, ...), or QEMU died without a guest-caused reason (no guest panic, no kernel
   crash line on the console, no guest SHUTDOWN/RESET event); the evidence is QEMU's exit
   status or signal and the last lines of its stderr. A VMM error is never hidden behind a
   guest outcome. (QEMU killed from outside, by the OOM killer or an operator, is no VMM
   error: a campaign runs that experiment again, see `vmfault.campaign.worker`.)
3. **crash, kernel**: the guest panicked (`guest_panicked`, or a GUEST_PANICKED or
   GUEST_CRASHLOADED event), or a kernel-scope crash pattern matches the console. The cause is
   that of the kernel pattern on the earliest console line (`null-dereference`, `page-fault`,
   `general-protection`, `invalid-opcode`, `divide-error`, `double-fault`, `stack-protector`,
   `bug`, ...), else `panic`. Otherwise, a SHUTDOWN or RESET event before the workload
   finished (a triple fault under `-no-reboot`) is a crash with cause `reset`.
4. **crash, user**: the workload was killed by a signal (one the golden run was not killed by);
   the cause is the signal's name (`SIGSEGV`, `SIGILL`, ...), the evidence the first user-scope
   console line (`segfault at ...`, `traps: NAME[PID] trap invalid opcode ...`), if any.
5. **hang**: no completion: the hang budget ran out (`timed_out`), the vCPU stalled idle
   longer than any idle stretch of the golden run (`stalled_s`, declared early), a step of
   the machine's console script timed out (`script_failure`: the text it waited for did
   not come in time; the console's last lines are the evidence), or the
   workload never reported its exit and nothing above explains why. Except that an
   experiment observed for
   a fixed period (`period_s`, the failure-rate mode) whose workload still ran at the end
   of the period is **benign**: nothing failed within the period; and so is a daemon
   stopped while it still ran (`stopped`), once the machines it serves were done.
6. **detected**: the workload finished and reported the error itself: its exit code differs
   from the golden run's (a non-zero exit where the golden run exited 0, typically), or its
   stdout or stderr matches the detect pattern (default `DETECTED`, as in
   `checksum: DETECTED mismatch at index 77`; a pattern that already matches the golden
   stdout is not looked for in stdout).
7. **sdc**: the workload finished with the golden exit code, silently, but its stdout differs
   from the golden run's; the reason names the first differing byte and shows both lines.
8. **benign**: everything else: same exit code, same stdout.

The console (text from the injection on) is evidence: only kernel-scope patterns (rule 3) can
change a classification; user-scope lines only annotate a crash, and a garbled console cannot
change rules 4-8. A run that is not a crash (rules 5-8) whose console shows a kernel reaction
(a reaction-scope pattern: `I/O error, dev vda, sector N`, a file system error or remount)
keeps its outcome and gets the reaction's name as its cause and that line as its evidence.
Every `Classification` carries a one-line `reason` and, where there is one, the `evidence`
behind it verbatim: a console line (cut to at most 400 characters), an event
name, or a line of the workload's output.
"""

from __future__ import annotations

import functools
import math
import re
import signal as signal_module
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Protocol

from vmfault.errors import UsageError

__all__ = [
    "DEFAULT_DETECT_REGEX",
    "EVIDENCE_MAX_CHARS",
    "LATENCY_BUCKETS",
    "LATENCY_LABELS",
    "Activation",
    "Classification",
    "CrashPattern",
    "CrashScope",
    "CrashTable",
    "Latency",
    "LatencyUnit",
    "Observation",
    "Outcome",
    "Reference",
    "activation_of",
    "classify",
    "latency_bucket",
    "latency_histogram",
    "qemu_evidence",
    "signal_name",
]

DEFAULT_DETECT_REGEX = r"DETECTED"
EVIDENCE_MAX_CHARS = 400
"""Longest evidence line kept; longer lines are cut around the match."""

_PANIC_EVENTS = frozenset({"GUEST_PANICKED", "GUEST_CRASHLOADED"})
_RESET_EVENTS = frozenset({"SHUTDOWN", "RESET"})
_PACKAGED_TABLE = "crash_patterns.toml"
_REACTIONS_TABLE = "kernel_reactions.toml"
_SECTOR = re.compile(r"\bsector (\d+)")
_CAUSE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PATTERN_KEYS = ("cause", "scope", "regex", "description")
_TABLE_HINT = (
    "each [[pattern]] table needs cause, scope ('kernel', 'user' or 'reaction') and regex, "
    "and may have description"
)
_BRIEF_CHARS = 60


class Outcome(StrEnum):
    """What a fault did to the workload, as vmfault reports it."""

    BENIGN = "benign"
    SDC = "sdc"
    DETECTED = "detected"
    CRASH = "crash"
    HANG = "hang"
    VMM_ERROR = "vmm-error"
    NOT_INJECTED = "not-injected"
    INFRA_FAILURE = "infra-failure"
    """Not an outcome of the fault: the experiment was lost to the infrastructure (its
    worker or QEMU killed from outside, a lost node) on every attempt, and given up."""

    @property
    def counts(self) -> bool:
        """Whether the outcome counts in statistics: false for NOT_INJECTED and
        INFRA_FAILURE."""
        return self not in (Outcome.NOT_INJECTED, Outcome.INFRA_FAILURE)

    @property
    def severity(self) -> int:
        """How bad the outcome is, for judging several machines by the worst: benign 0,
        detected, sdc, hang, crash, vmm-error 5 (not-injected -1 and infra-failure -2: no
        outcome)."""
        return _SEVERITY[self]


_SEVERITY = {
    Outcome.INFRA_FAILURE: -2,
    Outcome.NOT_INJECTED: -1,
    Outcome.BENIGN: 0,
    Outcome.DETECTED: 1,
    Outcome.SDC: 2,
    Outcome.HANG: 3,
    Outcome.CRASH: 4,
    Outcome.VMM_ERROR: 5,
}


class Activation(StrEnum):
    """Whether the flipped bit was used before it was overwritten."""

    NOT_ACTIVATED = "not-activated"
    MASKED = "masked"
    MANIFESTED = "manifested"
    UNKNOWN = "unknown"


class CrashScope(StrEnum):
    """Who crashed: the kernel itself, or a user process the kernel reports on; or, for a
    reaction, nobody: the kernel reports an error it handled (a failed disk request)."""

    USER = "user"
    KERNEL = "kernel"
    REACTION = "reaction"


@dataclass(frozen=True)
class CrashPattern:
    """A console line that names a crash cause. `regex` is Python `re` syntax (MULTILINE)."""

    cause: str
    regex: str
    scope: CrashScope
    description: str = ""

    @functools.cached_property
    def compiled(self) -> re.Pattern[str]:
        """The compiled regex, compiled on first use and kept."""
        return re.compile(self.regex, re.MULTILINE)

    @property
    def label(self) -> str:
        """The description, or the cause when there is none."""
        return self.description or self.cause


@dataclass(frozen=True)
class CrashTable:
    """An ordered table of crash patterns; earlier patterns win ties on the same line."""

    patterns: tuple[CrashPattern, ...]

    @classmethod
    def default(cls) -> CrashTable:
        """The packaged tables, loaded once: `vmfault/data/crash_patterns.toml` and the
        kernel reactions of `vmfault/data/kernel_reactions.toml`."""
        return _default_table()

    @classmethod
    def load(cls, path: Path) -> CrashTable:
        """A user's table in the packaged file's format.

        UsageError (one line: the file, the key, the problem) if the file cannot be read, is not
        TOML, or has an unknown key, a missing or mistyped value, or a bad regex.
        """
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise UsageError(f"{path}: cannot read the crash pattern table: {reason}") from exc
        return _parse_table(text, str(path))

    def extended(self, other: CrashTable) -> CrashTable:
        """This table with `other`'s patterns in front: on the same line, `other` wins."""
        return CrashTable(other.patterns + self.patterns)

    def match(
        self, console: str, *, scope: CrashScope | None = None
    ) -> tuple[CrashPattern, str] | None:
        """The pattern matching on the earliest console line and that line (ties: table order).

        Only patterns of `scope` take part when it is given. The line is returned without its
        line ending, cut to at most EVIDENCE_MAX_CHARS characters around the match.
        """
        best: tuple[int, int, CrashPattern, re.Match[str]] | None = None
        for index, pattern in enumerate(self.patterns):
            if scope is not None and pattern.scope is not scope:
                continue
            found = pattern.compiled.search(console)
            if found is None:
                continue
            line_start = console.rfind("\n", 0, found.start()) + 1
            if best is None or (line_start, index) < best[:2]:
                best = (line_start, index, pattern, found)
        if best is None:
            return None
        return best[2], _line_of(console, best[3])


@functools.cache
def _default_table() -> CrashTable:
    patterns: list[CrashPattern] = []
    for name in (_PACKAGED_TABLE, _REACTIONS_TABLE):
        resource = resources.files("vmfault").joinpath("data", name)
        text = resource.read_text(encoding="utf-8")
        patterns.extend(_parse_table(text, f"vmfault/data/{name}").patterns)
    return CrashTable(tuple(patterns))


def _parse_table(text: str, source: str) -> CrashTable:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{source}: not valid TOML: {exc}", hint=_TABLE_HINT) from exc
    unknown = sorted(set(document) - {"pattern"})
    if unknown:
        raise UsageError(
            f"{source}: unknown key {unknown[0]!r}: only [[pattern]] tables are allowed",
            hint=_TABLE_HINT,
        )
    entries = document.get("pattern", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(
            f"{source}: key 'pattern': must be an array of tables ([[pattern]])",
            hint=_TABLE_HINT,
        )
    return CrashTable(
        tuple(_parse_pattern(e, f"{source}: pattern {i + 1}") for i, e in enumerate(entries))
    )


def _parse_pattern(entry: Mapping[str, object], where: str) -> CrashPattern:
    def problem(key: str, text: str) -> UsageError:
        return UsageError(f"{where}, key {key!r}: {text}", hint=_TABLE_HINT)

    for key in entry:
        if key not in _PATTERN_KEYS:
            raise problem(key, f"unknown key (allowed: {', '.join(_PATTERN_KEYS)})")
    values: dict[str, str] = {}
    for key in _PATTERN_KEYS:
        value = entry.get(key, "" if key == "description" else None)
        if value is None:
            raise problem(key, "missing")
        if not isinstance(value, str):
            raise problem(key, f"must be a string, not {type(value).__name__}")
        values[key] = value
    if not _CAUSE_NAME.match(values["cause"]):
        raise problem("cause", f"{values['cause']!r} is not a name (letters, digits, - _ .)")
    try:
        scope = CrashScope(values["scope"])
    except ValueError:
        raise problem(
            "scope", f"must be 'kernel', 'user' or 'reaction', not {values['scope']!r}"
        ) from None
    try:
        compiled = re.compile(values["regex"], re.MULTILINE)
    except re.error as exc:
        raise problem("regex", f"invalid regular expression: {exc}") from None
    if compiled.search("") is not None:
        raise problem("regex", "matches the empty string, so it would match every console")
    return CrashPattern(values["cause"], values["regex"], scope, values["description"])


def _line_of(console: str, found: re.Match[str]) -> str:
    """The console line `found` starts in, without its ending, cut around the match."""
    start = console.rfind("\n", 0, found.start()) + 1
    end = console.find("\n", found.start())
    if end < 0:
        end = len(console)
    line = console[start:end].rstrip("\r")
    if len(line) <= EVIDENCE_MAX_CHARS:
        return line
    offset = max(0, found.start() - start - EVIDENCE_MAX_CHARS // 4)
    return line[offset : offset + EVIDENCE_MAX_CHARS]


class Reference(Protocol):
    """The golden run, as far as classification needs it (`GoldenRun` is one)."""

    @property
    def stdout(self) -> bytes:
        """The golden run's stdout."""
        ...

    @property
    def exit_code(self) -> int | None:
        """Its exit code, if it exited normally."""
        ...

    @property
    def signal(self) -> str | None:
        """The name of the signal that killed it, if one did."""
        ...


@dataclass(frozen=True)
class Observation:
    """What one experiment saw from the injection on."""

    injected: bool
    """False: the fault could not be applied, so the outcome is NOT_INJECTED whatever else."""
    finished: bool
    """The agent reported the workload's exit."""
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int | None = None
    signal: str | None = None
    """The name of the signal that killed the workload (`SIGSEGV`), if one did."""
    console: str = ""
    """Console text from the injection on; may be garbled (faults corrupt it)."""
    events: tuple[str, ...] = ()
    """QMP event names after the injection, e.g. GUEST_PANICKED, SHUTDOWN, RESET."""
    guest_panicked: bool = False
    qemu_alive: bool = True
    qemu_exit_code: int | None = None
    """QEMU's exit status if it died; negative: killed by that signal (subprocess style)."""
    qemu_output: str = ""
    """The end of QEMU's own stdout and stderr when it died (evidence of a VMM error)."""
    timed_out: bool = False
    """The hang budget ran out before the workload finished."""
    vmm_problem: str = ""
    """Non-empty: the VMM itself misbehaved (a QMP command failed, isolation broke, ...)."""
    budget_s: float | None = None
    """The hang budget in seconds, for the reason of a HANG."""
    period_s: float | None = None
    """Set when a fixed observation period (guest seconds after the fault) ran out while
    the workload still ran: nothing failed within it."""
    stalled_s: float | None = None
    """Set when the run was declared a hang early: the host seconds the vCPU sat idle,
    nothing runnable, with the workload unfinished (the stall rule)."""
    stopped: bool = False
    """A daemon was stopped while its workload still ran, the machines it serves done."""
    script_failure: str = ""
    """Why the machine's console script failed (`script step 2 timed out (10 s)`)."""
    script_tail: str = ""
    """The console's last lines when the script failed."""


@dataclass(frozen=True)
class Classification:
    """An outcome with the one-line reason behind it and, if any, its verbatim evidence."""

    outcome: Outcome
    reason: str
    cause: str | None = None
    """The crash cause: a crash pattern's cause, `panic`, `reset` or a signal name; for
    another outcome, the kernel's reaction (`io-error`, `fs-read-only`, ...), if any."""
    evidence: str = ""


def classify(
    reference: Reference,
    observation: Observation,
    *,
    table: CrashTable | None = None,
    detect_regex: str = DEFAULT_DETECT_REGEX,
) -> Classification:
    """Classify `observation` against `reference` by the rules in the module docstring.

    Deterministic and free of I/O (apart from loading the packaged table once); UsageError if
    `detect_regex` is not a valid regex.
    """
    crashes = table if table is not None else CrashTable.default()
    verdict = _classify(reference, observation, crashes, detect_regex)
    if verdict.outcome in (Outcome.CRASH, Outcome.VMM_ERROR, Outcome.NOT_INJECTED):
        return verdict
    reaction = crashes.match(observation.console, scope=CrashScope.REACTION)
    if reaction is None:
        return verdict
    pattern, line = reaction
    sector = _SECTOR.search(line)
    where = f" at sector {sector.group(1)}" if sector else ""
    return Classification(
        verdict.outcome, f"{verdict.reason}; the kernel reported {pattern.label}{where}",
        cause=pattern.cause, evidence=line,
    )  # fmt: skip


def _classify(
    reference: Reference, observation: Observation, crashes: CrashTable, detect_regex: str
) -> Classification:
    """The rules 1-8, without the kernel's reactions."""
    detect = _compile_detect(detect_regex)
    obs = observation
    if not obs.injected:
        return Classification(Outcome.NOT_INJECTED, "the fault could not be injected")
    kernel = crashes.match(obs.console, scope=CrashScope.KERNEL)
    panic_event = next((e for e in obs.events if e in _PANIC_EVENTS), None)
    reset_event = next((e for e in obs.events if e in _RESET_EVENTS), None)

    if obs.vmm_problem:
        return Classification(Outcome.VMM_ERROR, " ".join(obs.vmm_problem.split()))
    guest_caused = obs.guest_panicked or any(
        found is not None for found in (panic_event, kernel, reset_event)
    )
    if not obs.qemu_alive and not guest_caused:
        return Classification(
            Outcome.VMM_ERROR,
            _qemu_death(obs.qemu_exit_code),
            evidence=qemu_evidence(obs.qemu_exit_code, obs.qemu_output),
        )

    if kernel is not None or obs.guest_panicked or panic_event is not None:
        return _kernel_crash(crashes, obs, kernel, panic_event)
    if reset_event is not None and not obs.finished:
        return Classification(
            Outcome.CRASH,
            f"the guest stopped ({reset_event}) before the workload finished, "
            "as a triple fault does",
            cause="reset",
            evidence=reset_event,
        )

    if obs.finished and obs.signal is not None and obs.signal != reference.signal:
        name = obs.signal
        user = crashes.match(obs.console, scope=CrashScope.USER)
        return Classification(
            Outcome.CRASH, f"killed by {name}", cause=name, evidence=user[1] if user else ""
        )

    if obs.script_failure and not obs.finished:
        tail = " | ".join(line.strip() for line in obs.script_tail.splitlines()[-3:])
        return Classification(Outcome.HANG, obs.script_failure, evidence=tail[-EVIDENCE_MAX_CHARS:])
    if obs.stopped and not obs.finished and not obs.timed_out:
        return Classification(
            Outcome.BENIGN, "the daemon ran until the machines it serves were done"
        )
    if obs.period_s is not None and not obs.finished and not obs.timed_out:
        return Classification(
            Outcome.BENIGN,
            f"no failure within the {obs.period_s:g} s period after the fault "
            "(the workload was still running)",
        )
    if obs.timed_out or not obs.finished:
        return Classification(Outcome.HANG, _hang_reason(obs))

    detected = _detected(reference, obs, detect)
    if detected is not None:
        return detected
    if obs.stdout != reference.stdout:
        return _sdc(reference.stdout, obs.stdout)
    return Classification(Outcome.BENIGN, "exit status and stdout identical to the golden run")


@functools.lru_cache(maxsize=32)
def _compile_detect(regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex, re.MULTILINE)
    except re.error as exc:
        raise UsageError(
            f"detect pattern {regex!r} is not a valid regular expression: {exc}",
            hint="give a Python regex that the workload's self-check message matches",
        ) from None


def _kernel_crash(
    table: CrashTable,
    obs: Observation,
    kernel: tuple[CrashPattern, str] | None,
    panic_event: str | None,
) -> Classification:
    panicked = (
        obs.guest_panicked
        or panic_event is not None
        or any(
            p.cause == "panic" and p.compiled.search(obs.console)
            for p in table.patterns
            if p.scope is CrashScope.KERNEL
        )
    )
    what = "kernel panic" if panicked else "kernel oops"
    if kernel is None:
        return Classification(
            Outcome.CRASH, what, cause="panic", evidence=panic_event or "GUEST_PANICKED"
        )
    pattern, line = kernel
    return Classification(
        Outcome.CRASH, f"{what}: {pattern.label}", cause=pattern.cause, evidence=line
    )


def _qemu_death(exit_code: int | None) -> str:
    if exit_code is None:
        return "QEMU died without a guest-caused reason"
    if exit_code < 0:
        return f"QEMU was killed by {signal_name(-exit_code)} without a guest-caused reason"
    return f"QEMU exited with status {exit_code} without a guest-caused reason"


QEMU_EVIDENCE_LINES = 3
"""Lines of QEMU's own output kept as the evidence of a VMM error."""


def qemu_evidence(exit_code: int | None, output: str) -> str:
    """QEMU's end as evidence: `exit status 1` or `killed by SIGSEGV`, then the last
    QEMU_EVIDENCE_LINES non-empty lines of its stderr, joined by ` | `."""
    if exit_code is None:
        end = "QEMU: no exit status"
    elif exit_code < 0:
        end = f"QEMU: killed by {signal_name(-exit_code)}"
    else:
        end = f"QEMU: exit status {exit_code}"
    lines = [" ".join(line.split()) for line in output.splitlines() if line.strip()]
    tail = lines[-QEMU_EVIDENCE_LINES:]
    text = end + ("; stderr: " + " | ".join(tail) if tail else "; no stderr")
    return text[:EVIDENCE_MAX_CHARS]


def signal_name(number: int) -> str:
    """The name of signal `number` (`SIGSEGV`), or `SIG<number>` for one without a name."""
    try:
        return signal_module.Signals(number).name
    except ValueError:
        return f"SIG{number}"


def _hang_reason(obs: Observation) -> str:
    if obs.stalled_s is not None:
        return (
            f"stalled: the vCPU sat idle for {obs.stalled_s:.3g} s with the workload "
            "unfinished, longer than any idle stretch of the golden run"
        )
    if not obs.timed_out:
        return "the workload never reported its exit and the guest shows no crash"
    if obs.budget_s is None:
        return "no completion within the budget"
    return f"no completion within the budget of {obs.budget_s:g} s"


def _exit_text(exit_code: int | None, signal: str | None) -> str:
    if exit_code is not None:
        return f"exit status {exit_code}"
    if signal is not None:
        return f"killed by {signal}"
    return "no exit status"


def _detected(
    reference: Reference, obs: Observation, detect: re.Pattern[str]
) -> Classification | None:
    message = None
    golden_matches = detect.search(reference.stdout.decode("utf-8", errors="replace")) is not None
    for stream, data in (("stderr", obs.stderr), ("stdout", obs.stdout)):
        if stream == "stdout" and golden_matches:
            continue
        text = data.decode("utf-8", errors="replace")
        found = detect.search(text)
        if found is not None:
            message = (stream, _line_of(text, found))
            break
    same_exit = (obs.exit_code, obs.signal) == (reference.exit_code, reference.signal)
    if same_exit and message is None:
        return None
    if same_exit and message is not None:
        stream, line = message
        return Classification(
            Outcome.DETECTED,
            f"the workload reported an error on {stream} (matches {detect.pattern!r})",
            evidence=line,
        )
    got = _exit_text(obs.exit_code, obs.signal)
    if reference.exit_code == 0 and reference.signal is None:
        reason = f"{got} (the workload reported an error)"
    else:
        golden = _exit_text(reference.exit_code, reference.signal)
        reason = f"{got} where the golden run had {golden}"
    evidence = message[1] if message else _last_line(obs.stderr)
    return Classification(Outcome.DETECTED, reason, evidence=evidence)


def _last_line(data: bytes) -> str:
    lines = [line for line in data.decode("utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1][:EVIDENCE_MAX_CHARS] if lines else ""


def _sdc(expected: bytes, got: bytes) -> Classification:
    offset = next(
        (i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b),
        min(len(expected), len(got)),
    )
    reason = (
        f"stdout differs from the golden run at byte {offset}: "
        f"{_brief(got, offset)} instead of {_brief(expected, offset)}"
    )
    start = got.rfind(b"\n", 0, offset) + 1
    end = got.find(b"\n", offset)
    line = got[start : end if end >= 0 else len(got)]
    evidence = line.decode("utf-8", errors="replace")[:EVIDENCE_MAX_CHARS]
    return Classification(Outcome.SDC, reason, evidence=evidence)


def _brief(data: bytes, offset: int) -> str:
    """The line of `data` holding `offset`, quoted, escaped and cut to about 60 characters."""
    start = data.rfind(b"\n", 0, offset) + 1
    end = data.find(b"\n", offset)
    if end < 0:
        end = len(data)
    if start >= end:
        return "<end of output>" if offset >= len(data) else '""'
    prefix = suffix = ""
    if offset - start > _BRIEF_CHARS // 2:
        start, prefix = offset - _BRIEF_CHARS // 4, "..."
    if end - start > _BRIEF_CHARS:
        end, suffix = start + _BRIEF_CHARS, "..."
    text = data[start:end].decode("utf-8", errors="replace")
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return f'{prefix}"{shown}"{suffix}'


LATENCY_BUCKETS: tuple[int, ...] = (
    500,
    1_000,
    2_000,
    3_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
    1_000_000_000,
)
"""Upper bounds (inclusive) of Gigan's crash-latency histogram; above the last is `>1B`."""


def _short(number: int) -> str:
    for size, suffix in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if number % size == 0:
            return f"{number // size}{suffix}"
    return str(number)


LATENCY_LABELS: tuple[str, ...] = (
    *(f"<={_short(b)}" for b in LATENCY_BUCKETS),
    f">{_short(LATENCY_BUCKETS[-1])}",
)
"""Bucket labels in order: `<=500`, `<=1K`, ..., `<=1B`, `>1B`."""


class LatencyUnit(StrEnum):
    """What a latency counts: guest instructions, guest nanoseconds or host nanoseconds."""

    INSTRUCTIONS = "instructions"
    GUEST_NS = "guest-ns"
    WALL_NS = "wall-ns"


def latency_bucket(value: int | float) -> str:
    """The label of the bucket holding `value`; ValueError for a negative or NaN value."""
    if math.isnan(value) or value < 0:
        raise ValueError(f"a latency must be a non-negative number, not {value!r}")
    for bound, label in zip(LATENCY_BUCKETS, LATENCY_LABELS, strict=False):
        if value <= bound:
            return label
    return LATENCY_LABELS[-1]


def latency_histogram(values: Iterable[int | float]) -> dict[str, int]:
    """Counts per bucket: every label present, in bucket order, zero counts included."""
    histogram = dict.fromkeys(LATENCY_LABELS, 0)
    for value in values:
        histogram[latency_bucket(value)] += 1
    return histogram


@dataclass(frozen=True)
class Latency:
    """Time from the injection to the crash (or detection), in `unit`."""

    value: int
    unit: LatencyUnit

    @property
    def bucket(self) -> str:
        """The histogram bucket label of the value."""
        return latency_bucket(self.value)


def activation_of(outcome: Outcome, *, read_before_overwrite: bool | None) -> Activation:
    """Whether the fault was activated, from the outcome and the watchpoint's verdict.

    Benign: MASKED if the flipped location was read before being overwritten, NOT_ACTIVATED if
    it was never read (or overwritten first), UNKNOWN if no watchpoint watched (None). Every
    other counted outcome is MANIFESTED; NOT_INJECTED is NOT_ACTIVATED (there was no fault).
    """
    if outcome is Outcome.NOT_INJECTED:
        return Activation.NOT_ACTIVATED
    if outcome is not Outcome.BENIGN:
        return Activation.MANIFESTED
    if read_before_overwrite is None:
        return Activation.UNKNOWN
    return Activation.MASKED if read_before_overwrite else Activation.NOT_ACTIVATED
