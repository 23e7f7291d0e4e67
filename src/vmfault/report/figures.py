"""Static figures of one campaign, or of two side by side, for papers (PNG, SVG or PDF).

`write_figures(reports, stem, fmt)` writes `<stem>-outcomes.<fmt>` always, then
`<stem>-progress`, `-heatmap`, `-latency`, `-causes`, `-activation`, `-instructions` and
`-storms` when the campaigns have that data, and returns the paths written. Figures use the
report's colours and numbers (`vmfault.report.data`); SVG and PDF files carry no timestamp,
so the same databases give the same files. Needs matplotlib (imported on first use).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vmfault.classify import LATENCY_LABELS, Activation
from vmfault.errors import UsageError
from vmfault.report.data import (
    COUNTED_OUTCOMES,
    PROGRESS_LABELS,
    Breakdown,
    CampaignReport,
    Distribution,
)
from vmfault.report.svg import ACTIVATION_COLORS, CAMPAIGN_COLORS, EMPTY_CELL, OUTCOME_COLORS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["FIGURE_FORMATS", "write_figures"]

FIGURE_FORMATS = ("png", "svg", "pdf")
PNG_DPI = 200
"""Resolution of PNG figures, in dots per inch."""
_WIDTH_IN = 7.0
"""Figure width in inches: a two-column paper's full text width."""
_METADATA: dict[str, dict[str, Any]] = {
    "svg": {"Date": None},
    "pdf": {"CreationDate": None, "ModDate": None},
    "png": {},
}
_NS_NAMES = ("500 ns", "1 µs", "2 µs", "3 µs", "10 µs", "100 µs", "1 ms", "10 ms", "100 ms",
             "1 s", "> 1 s")  # fmt: skip
_HEAT_COLORS = ("#afd8a6", "#fde09e", "#fc8d59", "#d7301f", "#7f0000")


def write_figures(reports: Sequence[CampaignReport], stem: Path, fmt: str) -> list[Path]:
    """Write the figures of one or two campaigns as `<stem>-<name>.<fmt>`; the paths written.

    UsageError if `fmt` is not png, svg or pdf, or if matplotlib is missing; ValueError
    unless there are one or two reports.
    """
    if fmt not in FIGURE_FORMATS:
        raise UsageError(
            f"unknown figure format {fmt!r}", hint=f"use one of {', '.join(FIGURE_FORMATS)}"
        )
    if len(reports) not in (1, 2):
        raise ValueError(f"figures show one or two campaigns, not {len(reports)}")
    try:
        import matplotlib as mpl  # noqa: PLC0415
    except ImportError:
        raise UsageError(
            "static figures need matplotlib", hint="pip install 'matplotlib>=3.8'"
        ) from None
    makers: list[tuple[str, Callable[[Sequence[CampaignReport]], Figure | None]]] = [
        ("outcomes", _outcomes),
        ("progress", _progress),
        ("heatmap", _heatmap),
        ("latency", _latency),
        ("causes", _causes),
        ("activation", _activation),
        ("instructions", _instructions),
        ("storms", _storms),
    ]
    written = []
    with mpl.rc_context(
        {
            "font.size": 8.5,
            "axes.titlesize": 9.5,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "svg.hashsalt": "vmfault",
            "pdf.fonttype": 42,
        }
    ):
        for name, make in makers:
            figure = make(reports)
            if figure is None:
                continue
            path = stem.with_name(f"{stem.name}-{name}.{fmt}")
            figure.savefig(
                path, format=fmt, dpi=PNG_DPI, metadata=_METADATA[fmt], bbox_inches="tight"
            )
            written.append(path)
    return written


def _figure(height_in: float, columns: int = 1, rows: int = 1) -> tuple[Figure, list[Axes]]:
    from matplotlib.figure import Figure  # noqa: PLC0415

    figure = Figure(figsize=(_WIDTH_IN, height_in), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    return figure, [ax for row in axes for ax in row]


def _names(reports: Sequence[CampaignReport]) -> list[str]:
    names = [r.name for r in reports]
    if len(names) == 2 and names[0] == names[1]:
        return [f"A: {names[0]}", f"B: {names[1]}"]
    return names


def _percent_axis(ax: Axes) -> None:
    ax.set_ylim(0, 1)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])
    ax.grid(axis="y", color="#e7e9ee", linewidth=0.6)
    ax.set_axisbelow(True)


def _rate_bars(
    ax: Axes,
    groups: Sequence[tuple[str, Sequence[tuple[str, str, float, float, float]]]],
) -> None:
    """Clustered bars: per group, (series, colour, rate, low, high) with interval whiskers."""
    most = max((len(bars) for _, bars in groups), default=1) or 1
    width = 0.8 / most
    for index, (_, bars) in enumerate(groups):
        start = index - width * (len(bars) - 1) / 2
        for position, (_, color, value, low, high) in enumerate(bars):
            x = start + position * width
            ax.bar(x, value, width * 0.92, color=color)
            ax.errorbar(
                x,
                value,
                yerr=[[value - low], [high - value]],
                fmt="none",
                ecolor="#1d2433",
                elinewidth=0.8,
                capsize=2,
            )
    ax.set_xticks(range(len(groups)), [label for label, _ in groups])
    _percent_axis(ax)


def _distribution_bars(dist: Distribution) -> list[tuple[str, str, float, float, float]]:
    bars = []
    for o in dist.outcomes:
        if o.rate is not None:
            bars.append(
                (o.outcome, OUTCOME_COLORS[o.outcome], o.rate.rate, o.rate.low, o.rate.high)
            )
    return bars


def _outcomes(reports: Sequence[CampaignReport]) -> Figure:
    from matplotlib.patches import Patch  # noqa: PLC0415

    if len(reports) == 1:
        report = reports[0]
        dists = [report.overall, *report.strata] if len(report.strata) > 1 else [report.overall]
        figure, (ax,) = _figure(2.8)
        _rate_bars(
            ax,
            [
                (f"{d.stratum or 'all experiments'}\nn = {d.counted}", _distribution_bars(d))
                for d in dists
            ],
        )
        ax.set_title(f"{report.name}: outcome rates ({_method(report)})", loc="left")
        handles = [Patch(color=OUTCOME_COLORS[o], label=o) for o in COUNTED_OUTCOMES]
        figure.legend(
            handles=handles, loc="outside lower center", ncols=len(handles), frameon=False
        )
        return figure
    names = _names(reports)
    a, b = reports
    common = [s.stratum for s in a.strata if s.stratum in {t.stratum for t in b.strata}]
    pairs: list[tuple[str, Distribution, Distribution]] = [
        ("all experiments", a.overall, b.overall)
    ]
    for stratum in common:
        pairs.append(
            (
                str(stratum),
                next(s for s in a.strata if s.stratum == stratum),
                next(s for s in b.strata if s.stratum == stratum),
            )
        )
    figure, axes = _figure(2.3 * len(pairs), rows=len(pairs))
    for ax, (title, da, db) in zip(axes, pairs, strict=True):
        groups = []
        for outcome in COUNTED_OUTCOMES:
            ra, rb = da.rate(outcome), db.rate(outcome)
            if ra is None or rb is None:
                continue
            groups.append(
                (
                    outcome,
                    [
                        (names[0], CAMPAIGN_COLORS[0], ra.rate, ra.low, ra.high),
                        (names[1], CAMPAIGN_COLORS[1], rb.rate, rb.low, rb.high),
                    ],
                )
            )
        _rate_bars(ax, groups)
        ax.set_title(f"{title} (n = {da.counted} vs {db.counted})", loc="left")
    handles = [Patch(color=c, label=n) for n, c in zip(names, CAMPAIGN_COLORS, strict=True)]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, frameon=False)
    figure.suptitle(f"Outcome rates ({_method(a)})", x=0.01, ha="left")
    return figure


def _method(report: CampaignReport) -> str:
    method = report.summary.method.value.replace("-", " ").title().replace(" ", "-")
    return f"{method} {report.summary.confidence:.0%} intervals"


def _heatmap(reports: Sequence[CampaignReport]) -> Figure | None:
    import numpy as np  # noqa: PLC0415
    from matplotlib.colors import LinearSegmentedColormap  # noqa: PLC0415

    shown = [(r, r.heatmap) for r in reports if r.heatmap is not None]
    if not shown:
        return None
    heights = [len(heat.rows) for _, heat in shown]
    figure, axes = _figure(max(1.6, 0.16 * max(heights) + 1.1) * len(shown), rows=len(shown))
    colormap = LinearSegmentedColormap.from_list("failure", list(_HEAT_COLORS)).with_extremes(
        bad=EMPTY_CELL
    )
    image = None
    names = dict(zip((id(r) for r in reports), _names(reports), strict=True))
    for ax, (report, heat) in zip(axes, shown, strict=True):
        grid = []
        for row_cells, width in zip(heat.cells, heat.widths, strict=True):
            values = []
            for bit in reversed(range(heat.bits)):
                cell = row_cells[bit]
                values.append(cell.failure.rate if bit < width and cell.total else math.nan)
            grid.append(values)
        image = ax.pcolormesh(
            np.ma.masked_invalid(np.array(grid, dtype=float)),
            cmap=colormap,
            vmin=0.0,
            vmax=1.0,
            edgecolors="white",
            linewidth=0.4,
        )
        ax.invert_yaxis()
        step = 8 if heat.bits <= 64 else 16
        ticks = [b for b in range(heat.bits - 1, -1, -1) if b % step == 0 or b == heat.bits - 1]
        ax.set_xticks([heat.bits - 0.5 - b for b in ticks], [str(b) for b in ticks])
        ax.set_yticks([i + 0.5 for i in range(len(heat.rows))], list(heat.rows))
        ax.set_xlabel("bit position")
        ax.set_title(f"{names[id(report)]}: failure share per location and bit", loc="left")
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.tick_params(length=0)
    if image is not None:
        bar = figure.colorbar(image, ax=axes, shrink=0.8, pad=0.01)
        bar.set_label("failures (sdc, detected, crash, hang)")
        bar.set_ticks([0, 0.25, 0.5, 0.75, 1.0], labels=["0%", "25%", "50%", "75%", "100%"])
    return figure


def _latency(reports: Sequence[CampaignReport]) -> Figure | None:
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    units = sorted({h.unit for r in reports for h in r.latency})
    if not units:
        return None
    names = _names(reports)
    figure, axes = _figure(2.2 * len(units), rows=len(units))
    width = 0.8 / len(reports)
    for ax, unit in zip(axes, units, strict=True):
        for index, report in enumerate(reports):
            hist = next((h for h in report.latency if h.unit == unit), None)
            counts = [0 if hist is None else hist.buckets.get(b, 0) for b in LATENCY_LABELS]
            xs = [i - 0.4 + width * (index + 0.5) for i in range(len(LATENCY_LABELS))]
            color = OUTCOME_COLORS["crash"] if len(reports) == 1 else CAMPAIGN_COLORS[index]
            ax.bar(xs, counts, width * 0.92, color=color, label=names[index])
        names_ns = _NS_NAMES if unit.endswith("-ns") else ("",) * len(LATENCY_LABELS)
        ax.set_xticks(
            range(len(LATENCY_LABELS)),
            [f"{b}\n{n}".strip() for b, n in zip(LATENCY_LABELS, names_ns, strict=True)],
        )
        ax.set_ylabel("crashes")
        ax.set_title(f"Crash latency ({_unit(unit)})", loc="left")
        ax.grid(axis="y", color="#e7e9ee", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(reports) == 2:
            ax.legend(frameon=False)
    return figure


def _progress(reports: Sequence[CampaignReport]) -> Figure | None:
    """Per stratum, faults per tenth of the golden execution (campaigns side by side)."""
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    strata = sorted({h.stratum for r in reports for h in r.progress})
    if not strata:
        return None
    names = _names(reports)
    figure, axes = _figure(1.9 * len(strata), rows=len(strata))
    width = 0.8 / len(reports)
    for ax, stratum in zip(axes, strata, strict=True):
        for index, report in enumerate(reports):
            hist = next((h for h in report.progress if h.stratum == stratum), None)
            counts = [0] * len(PROGRESS_LABELS) if hist is None else list(hist.counts)
            xs = [i - 0.4 + width * (index + 0.5) for i in range(len(PROGRESS_LABELS))]
            ax.bar(xs, counts, width * 0.92, color=CAMPAIGN_COLORS[index], label=names[index])
        ax.set_xticks(range(len(PROGRESS_LABELS)), list(PROGRESS_LABELS))
        ax.set_ylabel("faults")
        ax.set_title(f"{stratum}: where faults landed (share of the golden run)", loc="left")
        ax.grid(axis="y", color="#e7e9ee", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        if len(reports) == 2:
            ax.legend(frameon=False)
    return figure


def _unit(unit: str) -> str:
    return {
        "instructions": "guest instructions",
        "guest-ns": "guest ns",
        "wall-ns": "host wall-clock ns",
    }.get(unit, unit)


def _causes(reports: Sequence[CampaignReport]) -> Figure | None:
    from matplotlib.ticker import MaxNLocator  # noqa: PLC0415

    totals: dict[str, int] = {}
    for report in reports:
        for cause in report.crash_causes:
            totals[cause.cause] = totals.get(cause.cause, 0) + cause.count
    if not totals:
        return None
    causes = sorted(totals, key=lambda c: (-totals[c], c))
    names = _names(reports)
    figure, (ax,) = _figure(0.9 + 0.28 * len(causes) * len(reports))
    height = 0.8 / len(reports)
    for index, report in enumerate(reports):
        counts = {c.cause: c.count for c in report.crash_causes}
        ys = [i - 0.4 + height * (index + 0.5) for i in range(len(causes))]
        color = OUTCOME_COLORS["crash"] if len(reports) == 1 else CAMPAIGN_COLORS[index]
        values = [counts.get(c, 0) for c in causes]
        bars = ax.barh(ys, values, height * 0.92, color=color, label=names[index])
        ax.bar_label(bars, padding=2, fontsize=7.5)
    ax.set_yticks(range(len(causes)), causes)
    ax.invert_yaxis()
    ax.set_xlabel("crashes")
    ax.set_title("Crashes per cause", loc="left")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(reports) == 2:
        figure.legend(
            *ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, frameon=False
        )
    return figure


def _stacked(
    ax: Axes, labels: Sequence[str], segments: Sequence[tuple[str, str, Sequence[int]]]
) -> None:
    """Horizontal 100% stacked bars: per segment (name, colour, count per label)."""
    totals = [sum(values[i] for _, _, values in segments) for i in range(len(labels))]
    left = [0.0] * len(labels)
    for name, color, values in segments:
        shares = [v / t if t else 0.0 for v, t in zip(values, totals, strict=True)]
        ax.barh(range(len(labels)), shares, 0.7, left=left, color=color, label=name)
        left = [a + b for a, b in zip(left, shares, strict=True)]
    ax.set_yticks(
        range(len(labels)), [f"{lab} (n = {t})" for lab, t in zip(labels, totals, strict=True)]
    )
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0%", "25%", "50%", "75%", "100%"])


def _activation(reports: Sequence[CampaignReport]) -> Figure | None:
    names = _names(reports)
    rows = [
        (f"{names[i]}: {row.stratum}" if len(reports) == 2 else row.stratum, row)
        for i, report in enumerate(reports)
        for row in report.activation
        if row.recorded
    ]
    if not rows:
        return None
    values = [a.value for a in Activation]
    figure, (ax,) = _figure(0.9 + 0.3 * len(rows))
    _stacked(
        ax,
        [label for label, _ in rows],
        [(v, ACTIVATION_COLORS[v], [row.counts.get(v, 0) for _, row in rows]) for v in values],
    )
    ax.set_title("Activation of injected faults", loc="left")
    figure.legend(
        *ax.get_legend_handles_labels(),
        loc="outside lower center",
        ncols=len(values),
        frameon=False,
    )
    return figure


def _breakdown_figure(
    reports: Sequence[CampaignReport],
    pick: Callable[[CampaignReport], Sequence[tuple[str, Sequence[Breakdown]]]],
) -> Figure | None:
    names = _names(reports)
    panels = [
        (f"{names[i]}: {title}" if len(reports) == 2 else title, rows)
        for i, report in enumerate(reports)
        for title, rows in pick(report)
        if rows
    ]
    if not panels:
        return None
    heights = [0.7 + 0.26 * len(rows) for _, rows in panels]
    figure, axes = _figure(sum(heights) + 0.4, rows=len(panels))
    for ax, (title, rows) in zip(axes, panels, strict=True):
        _stacked(
            ax,
            [row.key for row in rows],
            [(o, OUTCOME_COLORS[o], [row.counts[o] for row in rows]) for o in COUNTED_OUTCOMES],
        )
        ax.set_title(title, loc="left")
    figure.legend(
        *axes[-1].get_legend_handles_labels(),
        loc="outside lower center",
        ncols=len(COUNTED_OUTCOMES),
        frameon=False,
    )
    return figure


def _instructions(reports: Sequence[CampaignReport]) -> Figure | None:
    return _breakdown_figure(
        reports,
        lambda r: (
            []
            if r.instructions is None
            else [
                ("Outcomes per operation type", r.instructions.by_op),
                ("Outcomes per dynamic index", r.instructions.by_dynamic_index),
            ]
        ),
    )


def _storms(reports: Sequence[CampaignReport]) -> Figure | None:
    return _breakdown_figure(
        reports,
        lambda r: (
            []
            if r.storms is None
            else [
                ("Outcomes per number of flips", r.storms.by_flips),
                ("Outcomes per storm duration (guest s)", r.storms.by_time),
            ]
        ),
    )
