"""F-SEFI configurations (`SEFI_conf.ini`) as vmfault campaign files, for F-SEFI users moving over.

Mapping (the ini names no application or function; they are given separately):

- each `SEFI_support_fault_<op> = yes` becomes one `[[faults]]` family with
  `target = "instruction"` and `op` (`sarl` is `sar`, `idivl` is `idiv`);
- `SEFI_support_range_start`/`_end` become `bit_range`, and
  `SEFI_support_number_of_bits_to_flip` becomes `bits` (capped at the range's size). The
  range is on a 64-bit register; `cmp` results are the flags, so `cmp` keeps its default
  bits (the status flags);
- `SEFI_support_fault_probability` (percent) > 0 selects probability mode
  (`probability` = percent / 100); 0 keeps a fixed number of faults per run;
- `SEFI_support_start_index_<op>` becomes `start_index` + 1 (F-SEFI counts dynamic
  instances from 0, vmfault from 1) and `SEFI_support_max_dic` becomes `max_dic`;
- `SEFI_host_sym_table_directory` is not needed: vmfault reads the ELF's symbol table.
"""

from __future__ import annotations

import configparser
import json
from collections.abc import Sequence
from dataclasses import dataclass

from vmfault.errors import UsageError
from vmfault.faults.instructions import FLAG_BITS

__all__ = ["SefiConfig", "parse_sefi_ini", "sefi_campaign_toml"]

SEFI_OPS: tuple[tuple[str, str], ...] = (
    ("fadd", "fadd"),
    ("fmul", "fmul"),
    ("cmp", "cmp"),
    ("xor", "xor"),
    ("sarl", "sar"),
    ("idivl", "idiv"),
    ("imul", "imul"),
)
"""F-SEFI's op names and vmfault's classes, in F-SEFI's order."""
_GENERAL = "general"
_FLAGS_RESULT_OPS = frozenset({"cmp"})


@dataclass(frozen=True)
class SefiConfig:
    """What an F-SEFI configuration asks for, in vmfault's terms (instances from 1)."""

    ops: tuple[str, ...]
    bit_low: int
    bit_high: int
    bits: int
    probability: float | None
    start_index: dict[str, int]
    max_dic: int


def _yes(value: str, key: str) -> bool:
    text = value.strip().lower()
    if text in ("yes", "true", "1", "on"):
        return True
    if text in ("no", "false", "0", "off"):
        return False
    raise UsageError(f"{key} = {value!r} is not yes or no", hint="write yes or no")


def _number(section: configparser.SectionProxy, key: str, default: str) -> float:
    text = section.get(key, default)
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"{key} = {text!r} is not a number", hint="write a number") from None


def parse_sefi_ini(text: str, *, source: str = "SEFI_conf.ini") -> SefiConfig:
    """The configuration in `text`; UsageError (one line, naming the key) if it is invalid."""
    parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text, source=source)
    except configparser.Error as exc:
        raise UsageError(
            f"{source}: not an F-SEFI configuration: {' '.join(str(exc).split())}",
            hint="give SEFI_conf.ini",
        ) from None
    if not parser.has_section(_GENERAL):
        raise UsageError(f"{source}: no [general] section", hint="give SEFI_conf.ini")
    general = parser[_GENERAL]
    ops = tuple(
        ours
        for theirs, ours in SEFI_OPS
        if _yes(general.get(f"SEFI_support_fault_{theirs}", "no"), f"SEFI_support_fault_{theirs}")
    )
    if not ops:
        raise UsageError(
            f"{source}: no op is enabled",
            hint="set SEFI_support_fault_fadd = yes (or another op)",
        )
    low = int(_number(general, "SEFI_support_range_start", "52"))
    high = int(_number(general, "SEFI_support_range_end", "62"))
    if not 0 <= low <= high <= 127:
        raise UsageError(
            f"{source}: bit range {low}-{high} is not a range of register bits",
            hint="set SEFI_support_range_start <= SEFI_support_range_end, e.g. 52 and 62",
        )
    bits = int(_number(general, "SEFI_support_number_of_bits_to_flip", "1"))
    if bits < 1:
        raise UsageError(
            f"{source}: SEFI_support_number_of_bits_to_flip = {bits} flips nothing",
            hint="flip at least 1 bit",
        )
    percent = _number(general, "SEFI_support_fault_probability", "0")
    dynamic = _yes(
        general.get("SEFI_support_dynamic_probability", "no"), "SEFI_support_dynamic_probability"
    )
    if not 0 <= percent <= 100:
        raise UsageError(
            f"{source}: SEFI_support_fault_probability = {percent:g} is not a percentage",
            hint="give 0 to 100",
        )
    if dynamic and percent == 0:
        raise UsageError(
            f"{source}: SEFI_support_dynamic_probability = yes with a probability of 0",
            hint="set SEFI_support_fault_probability to a percentage above 0",
        )
    starts = {
        ours: int(_number(general, f"SEFI_support_start_index_{theirs}", "0")) + 1
        for theirs, ours in SEFI_OPS
    }
    max_dic = int(_number(general, "SEFI_support_max_dic", "100"))
    if max_dic < 1:
        raise UsageError(
            f"{source}: SEFI_support_max_dic = {max_dic} allows no instance", hint="give 1 or more"
        )
    for op in ops:
        if starts[op] < 1 or starts[op] > max_dic:
            raise UsageError(
                f"{source}: the start index of {op} lies outside 0..SEFI_support_max_dic",
                hint="lower the start index or raise SEFI_support_max_dic",
            )
    return SefiConfig(
        ops=ops,
        bit_low=low,
        bit_high=high,
        bits=min(bits, high - low + 1),
        probability=percent / 100 if percent > 0 else None,
        start_index=starts,
        max_dic=max_dic,
    )


def _string(text: str) -> str:
    return json.dumps(text)


def sefi_campaign_toml(
    config: SefiConfig,
    *,
    workload: str,
    function: str | None,
    runs: int,
    faults_per_run: int = 1,
    name: str,
    seed: int = 1,
    args: Sequence[str] = (),
    source: str = "SEFI_conf.ini",
) -> str:
    """A campaign file with one family per enabled op, `runs` experiments each (F-SEFI's
    `batch_run -a WORKLOAD -f FUNCTION -r RUNS -n FAULTS_PER_RUN -m MAX_DIC`)."""
    lines = [
        f"# Imported from {source} by `vmfault campaign import-sefi`.",
        "# F-SEFI counts dynamic instances from 0 and vmfault from 1: start_index is F-SEFI's + 1.",
        "# SEFI_host_sym_table_directory is not needed: vmfault reads the ELF symbol table.",
        "",
        "[campaign]",
        f"name = {_string(name)}",
        f"seed = {seed}",
        f"experiments = {runs * len(config.ops)}",
        "",
        "[guest]",
        f"workload = {_string(workload)}",
    ]
    if args:
        lines.append("args = [" + ", ".join(_string(a) for a in args) + "]")
    for op in config.ops:
        family = f"{op}@{function}" if function else op
        lines += ["", "[[faults]]", f"name = {_string(family)}", 'target = "instruction"']
        lines.append(f"op = {_string(op)}")
        if function:
            lines.append(f"function = {_string(function)}")
        if op in _FLAGS_RESULT_OPS:
            lines.append(f"bits = {min(config.bits, len(FLAG_BITS))}")
            lines.append(
                f"# the result of {op} is the flags register: its status flags, not "
                f"bits {config.bit_low}-{config.bit_high}"
            )
        else:
            lines.append(f"bits = {config.bits}")
            lines.append(f'bit_range = "{config.bit_low}-{config.bit_high}"')
        lines.append(f"start_index = {config.start_index[op]}")
        lines.append(f"max_dic = {config.max_dic}")
        if config.probability is not None:
            lines.append(f"probability = {config.probability:g}")
        else:
            lines.append(f"faults_per_run = {faults_per_run}")
    return "\n".join(lines) + "\n"
