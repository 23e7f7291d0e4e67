"""Small inline SVG charts for the HTML report: bars with interval whiskers, 100% stacked
bars, a bit-position heat map, histograms and horizontal count bars.

Every function returns one `<svg>` element as text, for inline use in an HTML5 page (no
namespace URL, no external reference, no script). Sizes are in CSS pixels of the chart's
`viewBox`; the page may scale charts down. Every label is escaped with `esc`; every mark
carries a `<title>` (a tooltip in browsers, read by screen readers).
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from vmfault.stats import Rate

__all__ = [
    "ACTIVATION_COLORS",
    "CAMPAIGN_COLORS",
    "EMPTY_CELL",
    "OUTCOME_COLORS",
    "Bar",
    "BarGroup",
    "HeatRow",
    "Segment",
    "StackedRow",
    "count_bars",
    "esc",
    "heat_color",
    "heatmap",
    "histogram",
    "rate_bars",
    "stacked_rows",
]

OUTCOME_COLORS: dict[str, str] = {
    "benign": "#8cc084",
    "sdc": "#d1495b",
    "detected": "#3f7cac",
    "crash": "#f0a202",
    "hang": "#7b5ea7",
    "vmm-error": "#8d8d8d",
    "not-injected": "#d0d0d0",
    "infra-failure": "#ececec",
}
"""One colour per outcome class, the same in every chart."""
ACTIVATION_COLORS: dict[str, str] = {
    "not-activated": "#b9cde0",
    "masked": "#8cc084",
    "manifested": "#d1495b",
    "unknown": "#e4e4e4",
}
CAMPAIGN_COLORS: tuple[str, str] = ("#2f4b7c", "#e8743b")
"""Campaign A and campaign B in comparisons."""
EMPTY_CELL = "#f4f4f4"
"""Heat-map cells without experiments."""

_HEAT_STOPS: tuple[tuple[float, tuple[int, int, int]], ...] = (
    (0.0, (0xAF, 0xD8, 0xA6)),
    (0.25, (0xFD, 0xE0, 0x9E)),
    (0.5, (0xFC, 0x8D, 0x59)),
    (0.75, (0xD7, 0x30, 0x1F)),
    (1.0, (0x7F, 0x00, 0x00)),
)
_CONTROL_PICTURES = {i: 0x2400 + i for i in range(0x20) if chr(i) not in "\n\t"} | {0x7F: 0x2421}


def esc(text: object) -> str:
    """`text` safe in HTML text and attribute values: markup escaped, control characters
    shown as control pictures, and no `://` left that could read as a URL."""
    shown = str(text).translate(_CONTROL_PICTURES)
    return html.escape(shown, quote=True).replace("://", "&#58;//")


def _num(value: float) -> str:
    """A coordinate: at most two decimals, no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _pct(value: float) -> str:
    return f"{value:.0%}" if value in (0.0, 1.0) else f"{value:.1%}"


class _Svg:
    """An SVG document under construction."""

    def __init__(self, width: float, height: float, label: str) -> None:
        self.width = width
        self.height = height
        self.label = label
        self.parts: list[str] = []

    def rect(
        self,
        x: float,
        y: float,
        width: float,
        height: float,
        fill: str,
        *,
        title: str = "",
        cls: str = "",
    ) -> None:
        attrs = (
            f'x="{_num(x)}" y="{_num(y)}" width="{_num(max(width, 0.0))}" '
            f'height="{_num(max(height, 0.0))}" fill="{fill}"'
        )
        if cls:
            attrs += f' class="{cls}"'
        if title:
            self.parts.append(f"<rect {attrs}><title>{esc(title)}</title></rect>")
        else:
            self.parts.append(f"<rect {attrs}/>")

    def line(self, x1: float, y1: float, x2: float, y2: float, cls: str) -> None:
        self.parts.append(
            f'<line x1="{_num(x1)}" y1="{_num(y1)}" x2="{_num(x2)}" y2="{_num(y2)}" class="{cls}"/>'
        )

    def text(
        self,
        x: float,
        y: float,
        text: str,
        *,
        anchor: str = "start",
        cls: str = "",
        rotate: float | None = None,
    ) -> None:
        attrs = f'x="{_num(x)}" y="{_num(y)}" text-anchor="{anchor}"'
        if cls:
            attrs += f' class="{cls}"'
        if rotate is not None:
            attrs += f' transform="rotate({_num(rotate)} {_num(x)} {_num(y)})"'
        self.parts.append(f"<text {attrs}>{esc(text)}</text>")

    def render(self) -> str:
        return (
            f'<svg class="chart" viewBox="0 0 {_num(self.width)} {_num(self.height)}" '
            f'width="{_num(self.width)}" height="{_num(self.height)}" role="img" '
            f'aria-label="{esc(self.label)}">' + "".join(self.parts) + "</svg>"
        )


# ---------------------------------------------------------------------------- rate bars


@dataclass(frozen=True)
class Bar:
    """One bar: a rate with its interval, drawn in `color`; `name` is its series."""

    name: str
    color: str
    rate: Rate


@dataclass(frozen=True)
class BarGroup:
    """A cluster of bars under one label (a stratum, an outcome class, ...)."""

    label: str
    note: str
    """A second line under the label, such as `n = 25`."""
    bars: tuple[Bar, ...]


def rate_bars(groups: Sequence[BarGroup], *, label: str, width: float = 960) -> str:
    """Vertical bars of rates (0-100%) with interval whiskers, clustered by group."""
    left, right, top, bottom, plot_h = 46.0, 10.0, 14.0, 50.0, 230.0
    svg = _Svg(width, top + plot_h + bottom, label)
    plot_w = width - left - right
    base = top + plot_h

    def y_of(value: float) -> float:
        return base - value * plot_h

    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = y_of(tick)
        svg.line(left, y, width - right, y, "grid" if tick else "axis")
        svg.text(left - 6, y + 4, f"{tick:.0%}", anchor="end", cls="tick")
    if not groups:
        return svg.render()
    group_w = plot_w / len(groups)
    most = max(len(group.bars) for group in groups) or 1
    bar_w = min(30.0, group_w * 0.8 / most)
    for index, group in enumerate(groups):
        centre = left + group_w * (index + 0.5)
        start = centre - bar_w * len(group.bars) / 2
        for position, bar in enumerate(group.bars):
            x = start + bar_w * position
            r = bar.rate
            tip = (
                f"{group.label}, {bar.name}: {r.successes} of {r.trials} = {_pct(r.rate)}, "
                f"interval [{_pct(r.low)}, {_pct(r.high)}]"
            )
            svg.rect(x + 1, y_of(r.rate), bar_w - 2, r.rate * plot_h, bar.color, title=tip)
            middle = x + bar_w / 2
            cap = max(2.0, bar_w * 0.22)
            if r.trials:
                svg.line(middle, y_of(r.low), middle, y_of(r.high), "whisker")
                svg.line(middle - cap, y_of(r.low), middle + cap, y_of(r.low), "whisker")
                svg.line(middle - cap, y_of(r.high), middle + cap, y_of(r.high), "whisker")
            if bar_w >= 24 and r.trials:
                svg.text(middle, y_of(r.high) - 4, f"{r.rate:.0%}", anchor="middle", cls="value")
        svg.text(centre, base + 18, group.label, anchor="middle", cls="label")
        if group.note:
            svg.text(centre, base + 34, group.note, anchor="middle", cls="note")
    return svg.render()


# ---------------------------------------------------------------------------- stacked rows


@dataclass(frozen=True)
class Segment:
    """A part of a stacked bar: `count` items of `name`, drawn in `color`."""

    name: str
    color: str
    count: int


@dataclass(frozen=True)
class StackedRow:
    """One horizontal bar split into segments, scaled to 100% of its total."""

    label: str
    note: str
    """Text to the right of the bar, such as `n = 12`."""
    segments: tuple[Segment, ...]


def stacked_rows(
    rows: Sequence[StackedRow],
    *,
    label: str,
    width: float = 960,
    label_w: float = 130,
    note_w: float = 190,
) -> str:
    """Horizontal 100% stacked bars, one per row, each segment labelled with its count."""
    row_h, gap, top, bottom = 20.0, 6.0, 6.0, 22.0
    height = top + len(rows) * (row_h + gap) + bottom
    svg = _Svg(width, height, label)
    x0 = label_w
    bar_w = width - label_w - note_w
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = x0 + tick * bar_w
        svg.line(x, top, x, height - bottom + 2, "grid")
        svg.text(x, height - 6, f"{tick:.0%}", anchor="middle", cls="tick")
    for index, row in enumerate(rows):
        y = top + index * (row_h + gap)
        svg.text(x0 - 8, y + row_h - 5, row.label, anchor="end", cls="label")
        total = sum(segment.count for segment in row.segments)
        x = x0
        for segment in row.segments:
            if not segment.count:
                continue
            share = segment.count / total
            w = share * bar_w
            tip = f"{row.label}: {segment.name} {segment.count} of {total} ({_pct(share)})"
            svg.rect(x, y, w, row_h, segment.color, title=tip)
            if w >= 8 * len(str(segment.count)) + 6:
                svg.text(x + w / 2, y + row_h - 5, str(segment.count), anchor="middle", cls="inbar")
            x += w
        if not total:
            svg.rect(x0, y, bar_w, row_h, EMPTY_CELL, title=f"{row.label}: none")
        svg.text(x0 + bar_w + 8, y + row_h - 5, row.note, cls="note")
    return svg.render()


# ---------------------------------------------------------------------------- heat map


@dataclass(frozen=True)
class HeatRow:
    """One heat-map row: per bit (index = bit position), the share in [0, 1] or None (no
    data), and a tooltip; `width` bits exist; `separated` draws a rule above the row."""

    label: str
    width: int
    values: tuple[float | None, ...]
    tips: tuple[str, ...]
    note: str
    separated: bool = False


def heat_color(value: float) -> str:
    """The colour of a share in [0, 1]: pale green (0) through orange to dark red (1)."""
    value = min(1.0, max(0.0, value))
    for (low, a), (high, b) in itertools.pairwise(_HEAT_STOPS):
        if value <= high:
            t = (value - low) / (high - low)
            rgb = tuple(round(ca + (cb - ca) * t) for ca, cb in zip(a, b, strict=True))
            return "#{:02x}{:02x}{:02x}".format(*rgb)
    return "#7f0000"


def heatmap(
    rows: Sequence[HeatRow],
    columns: Sequence[Sequence[Segment]],
    *,
    bits: int,
    label: str,
    width: float = 960,
) -> str:
    """Rows x bit positions (most significant bit on the left), coloured by share; under it,
    per bit position, the stacked outcome counts of `columns[bit]` on the same axis."""
    longest = max((len(row.label) for row in rows), default=4)
    left, right, top = max(60.0, 7.0 * longest + 18), 74.0, 18.0
    row_h, column_h = 16.0, 110.0
    cell_w = (width - left - right) / max(bits, 1)
    grid_h = len(rows) * row_h
    column_top = top + grid_h + 34
    height = column_top + column_h + 40
    svg = _Svg(width, height, label)

    def x_of(bit: int) -> float:
        return left + (bits - 1 - bit) * cell_w

    step = 8 if bits <= 64 else 16
    svg.text(left - 8, top - 6, "bit", anchor="end", cls="note")
    for bit in range(0, bits, step):
        for y in (top - 6, column_top + column_h + 16):
            svg.text(x_of(bit) + cell_w / 2, y, str(bit), anchor="middle", cls="tick")
    svg.text(x_of(bits - 1) + cell_w / 2, top - 6, str(bits - 1), anchor="middle", cls="tick")
    for index, row in enumerate(rows):
        y = top + index * row_h
        if row.separated:
            svg.line(8, y, width - right, y, "axis")
        svg.text(left - 8, y + row_h - 4, row.label, anchor="end", cls="label")
        for bit in range(min(row.width, bits)):
            value = row.values[bit] if bit < len(row.values) else None
            fill = EMPTY_CELL if value is None else heat_color(value)
            tip = row.tips[bit] if bit < len(row.tips) else ""
            svg.rect(x_of(bit) + 0.5, y + 0.5, cell_w - 1, row_h - 1, fill, title=tip)
        svg.text(width - right + 8, y + row_h - 4, row.note, cls="note")
    totals = [sum(s.count for s in column) for column in columns]
    highest = max(totals, default=0) or 1
    svg.line(left, column_top + column_h, width - right, column_top + column_h, "axis")
    svg.text(left - 8, column_top + 8, str(highest), anchor="end", cls="tick")
    svg.text(left - 8, column_top + column_h, "0", anchor="end", cls="tick")
    svg.text(left - 8, column_top - 8, "experiments", anchor="end", cls="note")
    for bit, column in enumerate(columns[:bits]):
        y = column_top + column_h
        total = totals[bit]
        for segment in column:
            if not segment.count:
                continue
            h = segment.count / highest * column_h
            y -= h
            tip = f"bit {bit}: {segment.name} {segment.count} of {total}"
            svg.rect(x_of(bit) + 0.5, y, cell_w - 1, h, segment.color, title=tip)
    return svg.render()


# ---------------------------------------------------------------------------- counts


def histogram(
    buckets: Sequence[tuple[str, int]],
    *,
    color: str,
    label: str,
    notes: Sequence[str] = (),
    width: float = 960,
) -> str:
    """Vertical bars of counts per bucket, in the given order, with the count on top;
    `notes[i]`, if given, is a second label line under bucket i."""
    left, right, top, plot_h = 46.0, 10.0, 18.0, 170.0
    bottom = 46.0 if notes else 30.0
    svg = _Svg(width, top + plot_h + bottom, label)
    base = top + plot_h
    highest = max((count for _, count in buckets), default=0) or 1
    ticks = _count_ticks(highest)
    scale = ticks[-1]
    for tick in ticks:
        y = base - tick / scale * plot_h
        svg.line(left, y, width - right, y, "grid" if tick else "axis")
        svg.text(left - 6, y + 4, str(tick), anchor="end", cls="tick")
    if not buckets:
        return svg.render()
    slot = (width - left - right) / len(buckets)
    label_cls = "label" if slot >= 60 else "tick"
    for index, (name, count) in enumerate(buckets):
        x = left + slot * index
        h = count / scale * plot_h
        svg.rect(x + slot * 0.12, base - h, slot * 0.76, h, color, title=f"{name}: {count}")
        if count:
            svg.text(x + slot / 2, base - h - 4, str(count), anchor="middle", cls="value")
        svg.text(x + slot / 2, base + 18, name, anchor="middle", cls=label_cls)
        if index < len(notes):
            svg.text(x + slot / 2, base + 34, notes[index], anchor="middle", cls="note")
    return svg.render()


def count_bars(
    items: Sequence[tuple[str, int, str]],
    *,
    color: str,
    label: str,
    width: float = 960,
    label_w: float = 170,
) -> str:
    """Horizontal bars of counts, one per item `(name, count, note)`, longest scale = max."""
    row_h, gap, top, bottom = 20.0, 6.0, 6.0, 8.0
    height = top + len(items) * (row_h + gap) + bottom
    svg = _Svg(width, height, label)
    note_w = 150.0
    bar_w = width - label_w - note_w
    highest = max((count for _, count, _ in items), default=0) or 1
    for index, (name, count, note) in enumerate(items):
        y = top + index * (row_h + gap)
        w = count / highest * bar_w
        svg.text(label_w - 8, y + row_h - 5, name, anchor="end", cls="label")
        svg.rect(label_w, y, w, row_h, color, title=f"{name}: {count} ({note})")
        svg.text(label_w + w + 6, y + row_h - 5, f"{count}  {note}", cls="note")
    return svg.render()


def _count_ticks(highest: int) -> list[int]:
    """0 and 3-5 round steps up to at least `highest`."""
    raw = highest / 4
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(1, int(step))
    top = -(-highest // step) * step
    return list(range(0, top + 1, step))
