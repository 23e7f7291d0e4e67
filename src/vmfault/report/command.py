"""`vmfault report`: one database gives a campaign's report, two give a comparison; as one
self-contained HTML file, or as static figures (PNG, SVG, PDF) for papers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from vmfault.errors import UsageError
from vmfault.files import write_atomically
from vmfault.report.data import CampaignReport, build_report
from vmfault.report.figures import FIGURE_FORMATS, write_figures
from vmfault.report.html import render_html
from vmfault.stats import IntervalMethod
from vmfault.store import SQLiteStore

__all__ = ["REPORT_FORMATS", "report_command"]

REPORT_FORMATS = ("html", *FIGURE_FORMATS)


def report_command(
    dbs: list[Path],
    output: Path,
    fmt: str,
    *,
    confidence: float = 0.95,
    method: IntervalMethod = IntervalMethod.WILSON,
) -> list[Path]:
    """Write the report of `dbs` (one campaign, or two compared); returns the files written.

    `fmt` html writes `output` itself; png, svg and pdf write `<output without suffix>-
    outcomes.<fmt>` and the other figures beside it. Rates use `summarize` with `confidence`
    and `method`, as `vmfault campaign status` does. UsageError for no database or more than
    two, a missing or foreign database, an unknown format or an unwritable output.
    """
    kind = fmt.strip().lower()
    if kind not in REPORT_FORMATS:
        raise UsageError(
            f"unknown report format {fmt!r}", hint=f"use one of {', '.join(REPORT_FORMATS)}"
        )
    if not dbs:
        raise UsageError("no campaign database given", hint="vmfault report DB [DB2] -o FILE")
    if len(dbs) > 2:
        raise UsageError(
            f"{len(dbs)} databases given; a report shows one campaign or compares two",
            hint="give one database, or two to compare them side by side",
        )
    for db in dbs:
        if not db.is_file():
            raise UsageError(
                f"no campaign database at {db}", hint="give the path `campaign run` used"
            )
    if output.is_dir():
        raise UsageError(f"{output} is a directory", hint="give a file name, e.g. report.html")
    reports: list[CampaignReport] = []
    for db in dbs:
        with SQLiteStore.open_readonly(db) as store:
            reports.append(build_report(store, db=str(db), confidence=confidence, method=method))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        if kind == "html":
            generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
            _write_atomically(output, render_html(reports, generated_at=generated))
            return [output]
        stem = output.with_suffix("") if output.suffix else output
        return write_figures(reports, stem, kind)
    except OSError as exc:
        raise UsageError(
            f"cannot write {output}: {exc.strerror or exc}",
            hint="check that the directory exists and is writable",
        ) from None


def _write_atomically(path: Path, text: str) -> None:
    """Write `text` as UTF-8 to `path` whole or not at all."""
    write_atomically(path, text.encode("utf-8", errors="replace"))
