"""The host side of the guest agent's contract: its kernel parameters and frame vocabulary.

The host tells the agent what to do with `vmfault.*` kernel parameters. The agent answers on
the isa-debugcon port 0xe9 with frames, `@KIND LENGTH\\n` followed by LENGTH payload bytes,
whose kinds are the FrameKind values; `vmfault.machine.channel` parses them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from enum import StrEnum

from vmfault.errors import UsageError

__all__ = [
    "AFTER_KEY",
    "ARGV_KEY",
    "CMDLINE_RESERVED_BYTES",
    "COMMAND_LINE_SIZE",
    "DEBUGCON_PORT",
    "HOOK_EXITED",
    "HOOK_STARTED",
    "HOSTS_KEY",
    "IP_KEY",
    "MAX_ARGV_PARAM_BYTES",
    "MAX_CHUNK_BYTES",
    "MODE_KEY",
    "PROTOCOL_VERSION",
    "TTY_KEY",
    "AfterRun",
    "AgentMode",
    "FrameKind",
    "agent_params",
    "decode_argv",
    "encode_argv",
]

PROTOCOL_VERSION = 1
DEBUGCON_PORT = 0xE9
COMMAND_LINE_SIZE = 2048
"""The x86 kernel command line limit in bytes, including the terminating NUL."""
CMDLINE_RESERVED_BYTES = 512
"""Bytes of the command line kept free for everything other than `vmfault.argv`."""
MAX_ARGV_PARAM_BYTES = COMMAND_LINE_SIZE - CMDLINE_RESERVED_BYTES
"""The longest `vmfault.argv=<hex>` parameter accepted, in bytes."""
ARGV_KEY = "vmfault.argv"
MODE_KEY = "vmfault.mode"
AFTER_KEY = "vmfault.after"
TTY_KEY = "vmfault.tty"
"""`1`: the workload's stdin, stdout and stderr are the serial console (no output frames)."""
IP_KEY = "vmfault.ip"
"""The guest's IPv4 address on vmfault's network, `A.B.C.D/PREFIX` (eth0)."""
HOSTS_KEY = "vmfault.hosts"
"""`NAME:A.B.C.D,...` for the guest's /etc/hosts; the first name is the guest's own."""
_FIXED_CMDLINE_BYTES = 192
"""Room kept in CMDLINE_RESERVED_BYTES for the machine's own kernel parameters."""
_HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
HOOK_STARTED = "vmfault_hook_started"
"""Agent function called with the workload PID right after fork (a breakpoint target)."""
HOOK_EXITED = "vmfault_hook_exited"
"""Agent function called with the raw wait status after the workload ends."""
MAX_CHUNK_BYTES = 4096
"""The largest payload of an `out`, `err` or `kallsyms` frame."""


class AgentMode(StrEnum):
    """What the agent does after setup (`vmfault.mode`)."""

    RUN = "run"
    KALLSYMS = "kallsyms"
    SHELL = "shell"


class AfterRun(StrEnum):
    """What the agent does when it is done (`vmfault.after`)."""

    IDLE = "idle"
    POWEROFF = "poweroff"


class FrameKind(StrEnum):
    """The kinds of frame the agent sends."""

    HELLO = "hello"
    LOG = "log"
    DISK = "disk"
    """One virtio disk: `NAME DEVICE SECTORS` (the host's name for it, vda..., its size in
    512-byte sectors), sent at boot."""
    START = "start"
    OUT = "out"
    ERR = "err"
    EXIT = "exit"
    KALLSYMS = "kallsyms"
    IDLE = "idle"


def encode_argv(argv: Sequence[str]) -> str:
    """The `vmfault.argv` value: the UTF-8 argv strings joined by NUL bytes, as lowercase hex.

    Raises UsageError for an empty argv or program name, an argument containing a NUL byte, or
    an argv whose parameter would exceed MAX_ARGV_PARAM_BYTES of the 2048-byte command line.
    """
    if not argv or not argv[0]:
        raise UsageError("the workload command is empty", hint="name a workload to run")
    if any("\0" in arg for arg in argv):
        raise UsageError("a workload argument contains a NUL byte", hint="remove the NUL byte")
    encoded = b"\0".join(arg.encode() for arg in argv).hex()
    length = len(ARGV_KEY) + 1 + len(encoded)
    if length > MAX_ARGV_PARAM_BYTES:
        budget = (MAX_ARGV_PARAM_BYTES - len(ARGV_KEY) - 1) // 2
        raise UsageError(
            f"the workload command line is too long ({length} bytes as a kernel parameter, "
            f"at most {MAX_ARGV_PARAM_BYTES})",
            hint=f"keep the arguments under {budget} bytes in total",
        )
    return encoded


def decode_argv(value: str) -> tuple[str, ...]:
    """The inverse of encode_argv; UsageError when `value` is not such an encoding."""
    try:
        raw = bytes.fromhex(value)
        decoded = tuple(part.decode() for part in raw.split(b"\0"))
    except ValueError as exc:
        raise UsageError(f"malformed {ARGV_KEY} value {value!r}") from exc
    if not raw or not decoded[0]:
        raise UsageError(f"malformed {ARGV_KEY} value {value!r}")
    return decoded


def agent_params(
    *,
    mode: AgentMode = AgentMode.RUN,
    argv: Sequence[str] = (),
    after: AfterRun = AfterRun.IDLE,
    on_console: bool = False,
    address: str | None = None,
    hosts: Sequence[tuple[str, str]] = (),
) -> tuple[str, ...]:
    """The `vmfault.*` kernel parameters for one boot. RUN mode needs a non-empty argv.

    `on_console` runs the workload on the serial console (a shell a host script talks
    to); `address` (`10.0.0.2/24`) puts the guest on vmfault's network and `hosts` (name,
    address) pairs, this machine's first, become its /etc/hosts. UsageError for a host
    name that is no DNS label or an address that is not IPv4, or when these parameters
    outgrow their share of the command line (CMDLINE_RESERVED_BYTES).
    """
    mode = AgentMode(mode)
    params = [f"{MODE_KEY}={mode.value}", f"{AFTER_KEY}={AfterRun(after).value}"]
    if on_console:
        params.append(f"{TTY_KEY}=1")
    if address is not None:
        params.append(f"{IP_KEY}={_interface(address)}")
    if hosts:
        for name, host in hosts:
            if not _HOST_NAME.match(name):
                raise UsageError(
                    f"machine name {name!r} is not a host name",
                    hint="use 1-31 lowercase letters, digits and '-', starting with a letter",
                )
            ipaddress.IPv4Address(host)
        params.append(f"{HOSTS_KEY}=" + ",".join(f"{n}:{a}" for n, a in hosts))
    if sum(len(p) + 1 for p in params) > CMDLINE_RESERVED_BYTES - _FIXED_CMDLINE_BYTES:
        raise UsageError(
            f"too many machines for the kernel command line ({len(hosts)} host entries)",
            hint="use fewer machines or shorter machine names",
        )
    if mode is AgentMode.RUN or argv:
        params.append(f"{ARGV_KEY}={encode_argv(argv)}")
    return tuple(params)


def _interface(address: str) -> str:
    """`A.B.C.D/PREFIX` checked; UsageError otherwise."""
    try:
        interface = ipaddress.IPv4Interface(address)
    except ValueError:
        raise UsageError(f"invalid guest address {address!r}", hint="e.g. 10.0.0.2/24") from None
    return interface.with_prefixlen
