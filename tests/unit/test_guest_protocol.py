"""The agent's kernel parameters: argv encoding, its limits, and the parameter set."""

from __future__ import annotations

import pytest

from vmfault.errors import UsageError
from vmfault.guest.protocol import (
    MAX_ARGV_PARAM_BYTES,
    AfterRun,
    AgentMode,
    agent_params,
    decode_argv,
    encode_argv,
)


def test_argv_is_lowercase_hex_of_nul_joined_utf8() -> None:
    assert encode_argv(["checksum"]) == b"checksum".hex()
    assert encode_argv(["checksum", "--self-check"]) == b"checksum\0--self-check".hex()
    assert encode_argv(["a", ""]) == "6100"
    encoded = encode_argv(["\u00e9", "Z"])
    assert encoded == "c3a9005a"
    assert encoded == encoded.lower()


@pytest.mark.parametrize(
    "argv",
    [("x",), ("matmul", "--size", "64"), ("a", "", "b"), ("/bin/busybox", "sh", "-c", "echo ü")],
)
def test_decode_inverts_encode(argv: tuple[str, ...]) -> None:
    assert decode_argv(encode_argv(argv)) == argv


def test_empty_argv_and_nul_bytes_are_usage_errors() -> None:
    with pytest.raises(UsageError):
        encode_argv([])
    with pytest.raises(UsageError):
        encode_argv([""])
    with pytest.raises(UsageError, match="NUL"):
        encode_argv(["a", "b\0c"])


def test_length_limit_against_the_kernel_command_line() -> None:
    key_bytes = len("vmfault.argv=")
    longest = (MAX_ARGV_PARAM_BYTES - key_bytes) // 2
    assert len(encode_argv(["x" * longest])) == 2 * longest
    with pytest.raises(UsageError) as caught:
        encode_argv(["x" * (longest + 1)])
    assert str(longest) in caught.value.hint
    assert MAX_ARGV_PARAM_BYTES < 2048


@pytest.mark.parametrize("value", ["", "zz", "616", "0061"])
def test_malformed_values_do_not_decode(value: str) -> None:
    with pytest.raises(UsageError):
        decode_argv(value)


def test_agent_params() -> None:
    assert agent_params(argv=["foo"]) == (
        "vmfault.mode=run",
        "vmfault.after=idle",
        "vmfault.argv=666f6f",
    )
    assert agent_params(mode=AgentMode.KALLSYMS, after=AfterRun.POWEROFF) == (
        "vmfault.mode=kallsyms",
        "vmfault.after=poweroff",
    )
    with pytest.raises(UsageError):
        agent_params(mode=AgentMode.RUN)
