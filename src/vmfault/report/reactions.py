"""VMM reactions grouped by their message: what QEMU said or did in the experiments that
came out `vmm-error` (a fatal signal, an abort with its message, an error it logged, a
device it marked broken), the same message counted once however its numbers differ.

A message is the evidence with the program's name and every number taken out
(`qemu-system-x86_64: Desc next is 9` and `... is 16385` are one message, `Desc next is
N`); each group keeps its count, the strata it came from and its first experiment, whose
evidence is shown as the example.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from rich.markup import escape
from rich.table import Table

from vmfault.report.summary import CountSource, store_summary
from vmfault.stats import IntervalMethod
from vmfault.store.base import ExperimentFilter, ExperimentPage

__all__ = [
    "PageSource",
    "ReactionGroup",
    "StatusSource",
    "group_reactions",
    "reaction_message",
    "reactions_table",
    "status_json",
    "store_reactions",
]

VMM_ERROR = "vmm-error"
_PROGRAM = re.compile(r"\bqemu-system-[\w-]+: ")
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b")
_NUMBER = re.compile(r"\b\d+\b")
_SPACES = re.compile(r"\s+")


def reaction_message(evidence: str) -> str:
    """The message of a VMM reaction: its evidence without QEMU's program name, with
    hexadecimal numbers as `0xN` and decimal ones as `N` (a signal name stays)."""
    text = _PROGRAM.sub("", evidence)
    text = _HEX.sub("0xN", text)
    text = _NUMBER.sub("N", text)
    return _SPACES.sub(" ", text).strip() or "(QEMU said nothing)"


@dataclass
class ReactionGroup:
    """The experiments whose VMM reaction has one message."""

    message: str
    count: int = 0
    strata: dict[str, int] = field(default_factory=dict)
    causes: dict[str, int] = field(default_factory=dict)
    example_id: int | None = None
    example: str = ""
    """The first experiment's evidence, verbatim."""

    def to_json(self) -> dict[str, Any]:
        """`campaign status --json`'s `vmm_reactions` entry."""
        return {
            "message": self.message,
            "count": self.count,
            "strata": dict(sorted(self.strata.items())),
            "causes": dict(sorted(self.causes.items())),
            "example_id": self.example_id,
            "example": self.example,
        }


def group_reactions(rows: Iterable[Mapping[str, object]]) -> list[ReactionGroup]:
    """The `vmm-error` experiments of analysis `rows` (`outcome`, `evidence`, `reason`,
    `cause`, `stratum`, `experiment_id`) grouped by message, the largest group first (then
    by message)."""
    groups: dict[str, ReactionGroup] = {}
    for row in rows:
        if row.get("outcome") != VMM_ERROR:
            continue
        evidence = str(row.get("evidence") or row.get("reason") or "")
        message = reaction_message(evidence)
        group = groups.setdefault(message, ReactionGroup(message))
        group.count += 1
        stratum = str(row.get("stratum") or "")
        group.strata[stratum] = group.strata.get(stratum, 0) + 1
        cause = row.get("cause")
        if cause:
            group.causes[str(cause)] = group.causes.get(str(cause), 0) + 1
        experiment = row.get("experiment_id")
        if group.example_id is None and isinstance(experiment, int):
            group.example_id, group.example = experiment, evidence
    return sorted(groups.values(), key=lambda g: (-g.count, g.message))


class PageSource(Protocol):
    """A store that pages through its experiments by filter (`SQLiteStore`)."""

    def experiment_page(
        self,
        found: ExperimentFilter = ...,
        *,
        offset: int = 0,
        limit: int = 50,
        newest_first: bool = False,
    ) -> ExperimentPage:
        """One page of the analysis rows matching `found`."""
        ...  # fmt: skip


def store_reactions(store: PageSource, *, page_rows: int = 500) -> list[ReactionGroup]:
    """The VMM reactions of a store's `vmm-error` experiments, grouped by message."""
    found = ExperimentFilter(outcome=VMM_ERROR)
    rows: list[Mapping[str, object]] = []
    while True:
        page = store.experiment_page(found, offset=len(rows), limit=page_rows)
        rows += page.rows
        if not page.rows or len(rows) >= page.total:
            return group_reactions(rows)


class StatusSource(PageSource, CountSource, Protocol):
    """A store `campaign status` reads: counts, and pages of experiments."""


def status_json(
    store: StatusSource, *, confidence: float, method: IntervalMethod
) -> dict[str, Any]:
    """`vmfault campaign status --json` (and the dashboard's `/api/status`): the summary's
    JSON (`Summary.to_json`) with `vmm_reactions`, the VMM reactions grouped by message."""
    data = store_summary(store, confidence=confidence, method=method).to_json()
    data["vmm_reactions"] = [group.to_json() for group in store_reactions(store)]
    return data


def reactions_table(groups: Iterable[ReactionGroup]) -> Table | None:
    """The terminal table of `campaign status` (None without a VMM reaction)."""
    groups = list(groups)
    if not groups:
        return None
    table = Table(title="VMM reactions (vmm-error), grouped by message")
    table.add_column("n", justify="right")
    table.add_column("message")
    table.add_column("causes")
    table.add_column("strata")
    table.add_column("first", justify="right")
    for group in groups:
        table.add_row(
            str(group.count),
            escape(group.message),
            escape(", ".join(f"{k} {v}" for k, v in sorted(group.causes.items()))),
            escape(", ".join(f"{k} {v}" for k, v in sorted(group.strata.items()))),
            "" if group.example_id is None else str(group.example_id),
        )
    return table
