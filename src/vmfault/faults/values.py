"""How the bits of an instruction result read as a value: formats, decoding, log text (pure)."""

from __future__ import annotations

import enum
import math
import struct

__all__ = ["ValueFormat", "decode_value", "format_value", "x87_to_float"]


class ValueFormat(enum.StrEnum):
    """How a result's bits read as a value."""

    INT = "int"
    F64 = "f64"
    F32 = "f32"
    F80 = "f80"
    F64X2 = "f64x2"
    F32X4 = "f32x4"
    FLAGS = "flags"


def x87_to_float(raw: int) -> float:
    """An 80-bit x87 extended-precision value as a Python float (inf when it overflows)."""
    sign = -1.0 if raw >> 79 & 1 else 1.0
    exponent = raw >> 64 & 0x7FFF
    mantissa = raw & ((1 << 64) - 1)
    if exponent == 0x7FFF:
        return sign * (math.inf if mantissa << 1 & ((1 << 64) - 1) == 0 else math.nan)
    try:
        return sign * math.ldexp(mantissa, max(exponent, 1) - 16383 - 63)
    except OverflowError:
        return sign * math.inf


def decode_value(raw: int, fmt: ValueFormat) -> int | float | list[float]:
    """A result's bits as a value: a float, a list of floats (packed), or an integer."""
    if fmt is ValueFormat.F64:
        return float(struct.unpack("<d", (raw & (1 << 64) - 1).to_bytes(8, "little"))[0])
    if fmt is ValueFormat.F32:
        return float(struct.unpack("<f", (raw & (1 << 32) - 1).to_bytes(4, "little"))[0])
    if fmt is ValueFormat.F80:
        return x87_to_float(raw)
    if fmt is ValueFormat.F64X2:
        return [float(v) for v in struct.unpack("<2d", raw.to_bytes(16, "little"))]
    if fmt is ValueFormat.F32X4:
        return [float(v) for v in struct.unpack("<4f", raw.to_bytes(16, "little"))]
    return raw


def format_value(raw: int, fmt: ValueFormat) -> str:
    """A result for a log line: `%.10g`-like floats (repr for exactness), hex otherwise."""
    value = decode_value(raw, fmt)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(repr(v) for v in value) + "]"
    return f"{value:#x}"
