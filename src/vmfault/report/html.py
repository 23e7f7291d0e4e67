"""The campaign report as one self-contained HTML file.

`render_html([report])` gives a campaign's report, `render_html([a, b])` a side-by-side
comparison of two campaigns. The page is HTML5 with inline CSS and inline SVG charts: no
script, no font, image, style sheet or link to fetch, and a Content-Security-Policy that
forbids every request should anything try. Every string from a database (console lines of a
faulty guest included) is escaped. Every chart's numbers are also in a table.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from vmfault._version import __version__
from vmfault.classify import LATENCY_LABELS, Activation, Outcome
from vmfault.report.data import (
    COUNTED_OUTCOMES,
    FAILURE_OUTCOMES,
    PROGRESS_LABELS,
    Breakdown,
    CampaignReport,
    Distribution,
    Example,
    HeatMap,
    LatencyHistogram,
    ProgressHistogram,
    golden_text,
)
from vmfault.report.isolation import RUNTIME_UNITS, runtime_quantiles
from vmfault.report.svg import (
    ACTIVATION_COLORS,
    CAMPAIGN_COLORS,
    EMPTY_CELL,
    OUTCOME_COLORS,
    Bar,
    BarGroup,
    HeatRow,
    Segment,
    StackedRow,
    count_bars,
    esc,
    heat_color,
    heatmap,
    histogram,
    rate_bars,
    stacked_rows,
)
from vmfault.report.testbed import LINK_COUNTS
from vmfault.stats import IntervalMethod, Rate, wilson

__all__ = [
    "COMPARISON_SECTIONS",
    "CONTENT_SECURITY_POLICY",
    "REPORT_CSS",
    "REPORT_SECTIONS",
    "ComparisonSection",
    "Layout",
    "Section",
    "comparison_names",
    "not_injected_table",
    "rate_difference",
    "render_html",
    "report_subtitle",
]

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)
"""Nothing may be fetched; only the page's own inline styles apply."""

_UNIT_NAMES = {
    "instructions": "guest instructions",
    "guest-ns": "guest nanoseconds",
    "wall-ns": "host nanoseconds (wall clock)",
}
_METHOD_NAMES = {
    IntervalMethod.WILSON: "Wilson score",
    IntervalMethod.CLOPPER_PEARSON: "Clopper-Pearson",
}

REPORT_CSS = """
:root { --ink: #1d2433; --muted: #5b6475; --rule: #dde1e8; --soft: #f6f7f9; --accent: #2f4b7c; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; color: var(--ink); background: #fff; font: 15px/1.5 system-ui,
  -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 0 24px 48px; }
header.top { background: var(--accent); color: #fff; padding: 28px 0 22px; margin-bottom: 8px; }
header.top .inner { max-width: 1040px; margin: 0 auto; padding: 0 24px; }
header.top h1 { margin: 0 0 4px; font-size: 28px; font-weight: 650; letter-spacing: -0.01em; }
header.top p { margin: 0; color: #d7deea; font-size: 14px; }
nav.toc { font-size: 13px; padding: 10px 0; border-bottom: 1px solid var(--rule);
  margin-bottom: 8px; }
nav.toc a { color: var(--accent); text-decoration: none; margin-right: 16px; white-space: nowrap; }
h2 { font-size: 20px; margin: 36px 0 6px; padding-bottom: 4px;
  border-bottom: 2px solid var(--ink); }
h3 { font-size: 16px; margin: 22px 0 6px; }
h4 { font-size: 14px; margin: 14px 0 4px; color: var(--muted); }
p.lead { color: var(--muted); margin: 4px 0 12px; max-width: 820px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 10px;
  margin: 18px 0 8px; }
.card { background: var(--soft); border: 1px solid var(--rule); border-radius: 6px;
  padding: 10px 12px; }
.card .k { font-size: 12px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
.card .v { font-size: 24px; font-weight: 650; font-variant-numeric: tabular-nums; }
.card .s { font-size: 12px; color: var(--muted); font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; margin: 8px 0 14px; font-size: 13px;
  font-variant-numeric: tabular-nums; }
caption { text-align: left; font-weight: 600; padding: 4px 0; color: var(--ink); }
th, td { padding: 4px 9px; border-bottom: 1px solid var(--rule); text-align: right;
  vertical-align: top; }
thead th { background: var(--soft); font-weight: 600; }
tbody th { font-weight: 600; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
td.text, th.text { text-align: left; }
td small { color: var(--muted); display: block; white-space: nowrap; font-size: 11.5px; }
tr.differs td { background: #fff6e5; }
div.scroll { overflow-x: auto; max-width: 100%; }
table.wide { width: 100%; table-layout: fixed; }
table.wide th:first-child { width: 170px; }
table.wide td { overflow-wrap: anywhere; }
.pair table { font-size: 12px; }
.pair th, .pair td { padding: 3px 6px; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 18px; margin: 8px 0;
  font-size: 14px; }
dl.facts dt { color: var(--muted); }
dl.facts dd { margin: 0; overflow-wrap: anywhere; }
code, pre { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, "DejaVu Sans Mono",
  monospace; font-size: 12.5px; }
pre { background: #f3f4f6; border: 1px solid var(--rule); border-radius: 4px; padding: 8px 10px;
  white-space: pre-wrap; overflow-wrap: anywhere; margin: 6px 0; }
pre.console { background: #1f2430; color: #e6e6e6; border-color: #1f2430; }
.swatch { display: inline-block; width: 11px; height: 11px; border-radius: 2px;
  vertical-align: -1px; margin-right: 6px; }
.legend { font-size: 13px; margin: 6px 0; }
.legend span.item { margin-right: 16px; white-space: nowrap; }
figure { margin: 10px 0 6px; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 2px; }
svg.chart { max-width: 100%; height: auto; display: block; }
svg.chart text { font-family: inherit; fill: var(--ink); }
svg.chart .tick { font-size: 11px; fill: var(--muted); }
svg.chart .label { font-size: 12px; }
svg.chart .note { font-size: 11px; fill: var(--muted); }
svg.chart .value { font-size: 10.5px; fill: var(--ink); }
svg.chart .inbar { font-size: 11px; fill: #fff; font-weight: 600; }
svg.chart .grid { stroke: #e7e9ee; stroke-width: 1; }
svg.chart .axis { stroke: #9aa1ad; stroke-width: 1; }
svg.chart .whisker { stroke: #1d2433; stroke-width: 1.3; }
details { margin: 6px 0 12px; }
summary { cursor: pointer; color: var(--accent); font-size: 13px; }
.example { border: 1px solid var(--rule); border-left: 4px solid var(--c, #999);
  border-radius: 4px; padding: 8px 12px; margin: 10px 0; }
.example h3 { margin: 0 0 4px; font-size: 15px; }
.example .meta { font-size: 13px; color: var(--muted); }
.pair { display: grid; grid-template-columns: 1fr 1fr; gap: 24px; }
.pair > div { min-width: 0; }
.tag { display: inline-block; font-size: 11px; padding: 0 6px; border-radius: 8px;
  background: var(--soft); border: 1px solid var(--rule); color: var(--muted); }
.muted { color: var(--muted); }
footer { margin-top: 40px; padding-top: 10px; border-top: 1px solid var(--rule); font-size: 12px;
  color: var(--muted); }
@media print { header.top { background: none; color: var(--ink); }
  header.top p { color: var(--muted); } nav.toc { display: none; }
  section { break-inside: avoid-page; } }
"""
"""The report's style sheet (inline in the report; served as a file by `vmfault serve`)."""


@dataclass(frozen=True)
class Layout:
    """Where a section goes: id prefix (unique ids in comparisons: `a-` and `b-` for the
    two sides), chart width (px), and where an experiment's id links to:
    `experiment_href(prefix, id)` (its page on a dashboard), or None (the report's own
    example of it, if it shows one)."""

    prefix: str = ""
    width: float = 960.0
    experiment_href: Callable[[str, int], str] | None = None

    def half(self, prefix: str) -> Layout:
        """The layout of one side of a comparison."""
        return dataclasses.replace(self, prefix=prefix, width=_HALF_WIDTH)


_FULL = Layout()
_HALF_WIDTH = 520.0


@dataclass(frozen=True)
class Section:
    """One section of a campaign's report: its id, its title, and the one function that
    renders it (an HTML fragment, empty when there is nothing to show). The report and
    the dashboard of `vmfault serve` render every section through it."""

    ident: str
    title: str
    render: Callable[[CampaignReport, Layout], str]


@dataclass(frozen=True)
class ComparisonSection:
    """One section of the comparison of two campaigns (`names`: how the page calls them)."""

    ident: str
    title: str
    render: Callable[[CampaignReport, CampaignReport, tuple[str, str], Layout], str]


def rate_difference(a: Rate, b: Rate) -> tuple[float, float, float]:
    """a - b with Newcombe's hybrid score interval (from Wilson intervals at a's confidence):
    (difference, low, high), fractions in [-1, 1]."""
    wa = wilson(a.successes, a.trials, confidence=a.confidence)
    wb = wilson(b.successes, b.trials, confidence=a.confidence)
    pa, pb = wa.rate, wb.rate
    difference = pa - pb
    low = difference - math.sqrt((pa - wa.low) ** 2 + (wb.high - pb) ** 2)
    high = difference + math.sqrt((wa.high - pa) ** 2 + (pb - wb.low) ** 2)
    return difference, max(-1.0, low), min(1.0, high)


def render_html(reports: Sequence[CampaignReport], *, generated_at: str = "") -> str:
    """One self-contained HTML page: the report of one campaign, or the comparison of two.

    `generated_at` (free text, e.g. an ISO time) is shown in the footer if given.
    ValueError unless there are one or two reports.
    """
    if len(reports) == 1:
        title = f"{reports[0].name}: fault-injection campaign report"
        body = _single(reports[0])
    elif len(reports) == 2:
        title = f"{reports[0].name} vs {reports[1].name}: campaign comparison"
        body = _comparison(reports[0], reports[1])
    else:
        raise ValueError(f"a report shows one or two campaigns, not {len(reports)}")
    footer = (
        f"<footer>Made by vmfault {esc(__version__)}"
        + (f" on {esc(generated_at)}" if generated_at else "")
        + " from "
        + ", ".join(f"<code>{esc(r.db)}</code>" for r in reports)
        + ". Self-contained: no scripts and nothing fetched from anywhere.</footer>"
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f'<meta name="generator" content="vmfault {esc(__version__)}">\n'
        f"<title>{esc(title)}</title>\n<style>{REPORT_CSS}</style>\n</head>\n<body>\n"
        f"{body}\n<main>{footer}</main>\n</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------- helpers


def _pct(value: float) -> str:
    return f"{value:.0%}" if value in (0.0, 1.0) else f"{value:.1%}"


def _interval(r: Rate) -> str:
    return f"[{_pct(r.low)}, {_pct(r.high)}]"


def _compact(r: Rate) -> str:
    """Rate and interval in little space: `46.7% (25-70)` (an en dash), interval in whole %."""
    return f"{_pct(r.rate)} ({r.low * 100:.0f}\u2013{r.high * 100:.0f})"


def _signed_pct(value: float) -> str:
    return f"{value * 100:+.1f} pp"


def _swatch(color: str) -> str:
    return f'<span class="swatch" style="background:{color}"></span>'


def _legend(items: Sequence[tuple[str, str]], title: str = "") -> str:
    return (
        '<div class="legend">'
        + (f'<span class="item muted">{esc(title)}</span>' if title else "")
        + "".join(f'<span class="item">{_swatch(c)}{esc(n)}</span>' for n, c in items)
        + "</div>"
    )


def _figure(svg: str, caption: str, legend: str = "") -> str:
    return f"<figure>{legend}{svg}<figcaption>{caption}</figcaption></figure>"


def _method(report: CampaignReport) -> str:
    summary = report.summary
    name = _METHOD_NAMES.get(summary.method, summary.method.value)
    return f"{name} intervals at {summary.confidence:.0%} confidence"


def _outcome_legend(outcomes: Sequence[str] = COUNTED_OUTCOMES) -> str:
    return _legend([(name, OUTCOME_COLORS[name]) for name in outcomes])


def _segments(counts: Breakdown) -> tuple[Segment, ...]:
    return tuple(
        Segment(name, OUTCOME_COLORS[name], counts.counts[name]) for name in COUNTED_OUTCOMES
    )


def _table(
    caption: str,
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    table_id: str = "",
    row_attrs: Sequence[str] = (),
    text_columns: int = 1,
    table_class: str = "",
) -> str:
    """A table of already-escaped cells; the first `text_columns` columns are left-aligned."""
    ident = f' id="{table_id}"' if table_id else ""
    kind = f' class="{table_class}"' if table_class else ""
    out = [f'<div class="scroll"><table{ident}{kind}><caption>{caption}</caption><thead><tr>']
    for index, name in enumerate(head):
        cls = ' class="text"' if index < text_columns else ""
        out.append(f'<th scope="col"{cls}>{name}</th>')
    out.append("</tr></thead><tbody>")
    for index, row in enumerate(rows):
        attrs = row_attrs[index] if index < len(row_attrs) else ""
        out.append(f"<tr{attrs}>")
        for position, cell in enumerate(row):
            cls = ' class="text"' if position < text_columns else ""
            tag = "th" if position == 0 else "td"
            scope = ' scope="row"' if position == 0 else ""
            out.append(f"<{tag}{scope}{cls}>{cell}</{tag}>")
        out.append("</tr>")
    out.append("</tbody></table></div>")
    return "".join(out)


def _breakdown_table(caption: str, key_name: str, rows: Sequence[Breakdown]) -> str:
    head = [key_name, "n", *COUNTED_OUTCOMES, "failure rate", "interval"]
    body = [
        [
            esc(row.key),
            str(row.total),
            *(str(row.counts[name]) for name in COUNTED_OUTCOMES),
            _pct(row.failure.rate) if row.total else "-",
            _interval(row.failure) if row.total else "-",
        ]
        for row in rows
    ]
    return _table(caption, head, body)


def _breakdown_chart(rows: Sequence[Breakdown], label: str, width: float) -> str:
    return stacked_rows(
        [
            StackedRow(
                row.key,
                f"n = {row.total} · failures {_pct(row.failure.rate)}" if row.total else "n = 0",
                _segments(row),
            )
            for row in rows
        ],
        label=label,
        width=width,
        note_w=min(190.0, width * 0.3),
    )


# ---------------------------------------------------------------------------- single report


def _header(title: str, subtitle: str) -> str:
    return (
        f'<header class="top"><div class="inner"><h1>{esc(title)}</h1>'
        f"<p>{esc(subtitle)}</p></div></header>"
    )


def _page(header: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The header, a table of contents, then each non-empty (id, title, body) section; the
    `summary` section comes untitled and out of the contents."""
    shown = [(ident, title, body) for ident, title, body in sections if body]
    links = "".join(
        f'<a href="#{ident}">{esc(title)}</a>' for ident, title, _ in shown if ident != "summary"
    )
    body = "".join(
        f'<section id="{ident}">'
        + ("" if ident == "summary" else f"<h2>{esc(title)}</h2>")
        + f"{content}</section>"
        for ident, title, content in shown
    )
    return f'{header}<main><nav class="toc">{links}</nav>{body}</main>'


def _single(report: CampaignReport) -> str:
    sections = [(s.ident, s.title, s.render(report, _FULL)) for s in REPORT_SECTIONS]
    return _page(_header(report.name, report_subtitle(report)), sections)


def report_subtitle(report: CampaignReport) -> str:
    """The line under a campaign report's title (plain text)."""
    info = report.provenance
    return (
        f"Fault-injection campaign report · {info.workload} · seed {info.seed} · "
        f"{report.summary.done} of {report.summary.total} experiments · {_method(report)}"
    )


def _false_positive_card(report: CampaignReport) -> tuple[str, str, str] | None:
    """The false-positive card (key, value, detail), or None without a control family."""
    found = report.false_positive
    if found is None:
        return None
    value = _pct(found.rate.rate) if found.runs else "-"
    return (
        "false-positive rate",
        value,
        f"{_interval(found.rate)} · {found.failures} of {found.runs} control runs not benign",
    )


def _false_positive_lead(report: CampaignReport) -> str:
    found = report.false_positive
    if found is None:
        return ""
    return (
        f'<p class="lead" id="false-positive">Control runs (target <code>none</code>, strata '
        f"{esc(', '.join(found.strata))}) inject nothing and must come out benign: "
        f"{found.failures} of {found.runs} did not, a false-positive rate of "
        f"{_pct(found.rate.rate)} {_interval(found.rate)} ({_method(report)}). Every outcome "
        "but benign counts against a control run, vmm-error included.</p>"
    )


def _summary_cards(report: CampaignReport, layout: Layout = _FULL) -> str:
    overall = report.overall
    not_injected = overall.count("not-injected")
    lost = overall.count(Outcome.INFRA_FAILURE.value)
    control = _false_positive_card(report)
    cards = [] if control is None else [control]
    cards += [
        (
            "experiments",
            f"{report.summary.done}",
            f"of {report.summary.total} planned · {not_injected} not injected"
            + (f" · {lost} lost to the infrastructure" if lost else ""),
        ),
        (
            "failure rate",
            _pct(overall.failure.rate),
            f"{_interval(overall.failure)} · {overall.failure.successes} of {overall.counted}",
        ),
    ]
    for name in FAILURE_OUTCOMES:
        r = overall.rate(name)
        if r is not None:
            cards.append((name, _pct(r.rate), f"{_interval(r)} · {r.successes}"))
    body = "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{esc(v)}</div>'
        f'<div class="s">{esc(s)}</div></div>'
        for k, v, s in cards
    )
    return (
        f'<div class="cards">{body}</div>{_false_positive_lead(report)}<p class="lead">Rates are '
        f"over the {overall.counted} experiments whose fault was placed (not-injected ones are "
        f"listed, never counted), with {_method(report)}. A failure is an sdc, detected, crash "
        "or hang outcome.</p>" + _infra_lead(lost)
    )


def _infra_lead(lost: int) -> str:
    """A note on experiments given up as lost to the infrastructure, if there are any."""
    if not lost:
        return ""
    return (
        f'<p class="lead" id="infra-failures">{lost} experiment(s) were lost to the '
        "infrastructure on every attempt (their worker or QEMU killed from outside, a lost "
        "node): infra-failure is no outcome of a fault and is never counted; "
        "<code>vmfault campaign resume</code> runs them again.</p>"
    )


def _provenance_facts(report: CampaignReport) -> list[tuple[str, str]]:
    info = report.provenance
    golden = report.golden
    argv = golden.argv if golden is not None else (info.workload, *info.args)
    facts = [
        ("campaign", info.campaign),
        ("seed", str(info.seed)),
        ("experiments", f"{report.summary.done} of {info.total_planned} planned"),
        ("created", info.created_at),
        ("campaign file", info.campaign_file or "(not recorded)"),
        ("campaign file SHA-256", info.campaign_file_sha256),
        ("vmfault", info.tool_version),
        ("QEMU", info.qemu_version),
        ("guest image", info.image_hash),
        ("guest kernel", info.kernel_release),
        ("workload", " ".join(argv)),
        (
            "execution",
            f"{'deterministic (icount)' if info.deterministic else 'free-running'}, "
            f"accelerator {info.accel or '?'}"
            + (f", hang budget {info.budget:g} golden runs" if info.budget is not None else ""),
        ),
        ("host", f"{info.host}, Python {info.python}"),
        ("database", f"{report.db} (schema {info.schema_version})"),
    ]
    facts.extend(info.other)
    return facts


def _provenance(report: CampaignReport, layout: Layout = _FULL) -> str:
    facts = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in _provenance_facts(report))
    done = {d.stratum: d.done for d in report.strata}
    families = _table(
        "Fault families (one stratum each)",
        ["stratum", "target", "bits", "trigger", "context", "done"],
        [
            [
                esc(f.name),
                f"<code>{esc(f.target)}</code>",
                esc(f.bits),
                esc(f.trigger),
                esc(f.context),
                str(done.get(f.name, 0)),
            ]
            for f in report.provenance.families
        ],
        text_columns=5,
    )
    return f'<dl class="facts">{facts}</dl>{families}'


def _golden(report: CampaignReport, layout: Layout = _FULL) -> str:
    golden = report.golden
    if golden is None:
        return '<p class="muted">No golden run is stored for the campaign\'s command line.</p>'
    status = "none" if golden.exit_status is None else str(golden.exit_status)
    if golden.signal:
        status += f" ({golden.signal})"
    facts = [
        ("command", " ".join(golden.argv)),
        ("exit status", status),
        ("duration", f"{golden.host_s:.3f} s (host)"),
    ]
    if golden.instructions is not None:
        facts.append(("instructions", f"{golden.instructions:,}"))
    facts.append(("recorded", golden.recorded_at or "-"))
    out = '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
    out += "</dl>"
    stdout, stderr = golden_text(golden.stdout), golden_text(golden.stderr)
    out += f"<h4>stdout ({len(golden.stdout)} bytes)</h4><pre>{esc(stdout)}</pre>"
    if golden.stderr:
        out += f"<h4>stderr ({len(golden.stderr)} bytes)</h4><pre>{esc(stderr)}</pre>"
    return out


def _distributions(report: CampaignReport) -> list[Distribution]:
    return [report.overall, *report.strata] if len(report.strata) > 1 else [report.overall]


def _group_label(dist: Distribution) -> str:
    return "all experiments" if dist.stratum is None else dist.stratum


def _outcomes(report: CampaignReport, layout: Layout = _FULL) -> str:
    prefix = layout.prefix
    groups = [
        BarGroup(
            _group_label(dist),
            f"n = {dist.counted}",
            tuple(
                Bar(o.outcome, OUTCOME_COLORS[o.outcome], o.rate)
                for o in dist.outcomes
                if o.rate is not None
            ),
        )
        for dist in _distributions(report)
    ]
    chart = _figure(
        rate_bars(groups, label="Outcome rates per stratum with their intervals"),
        f"Outcome rates overall and per stratum; whiskers: {_method(report)}.",
        _outcome_legend(),
    )
    overall = report.overall
    rows = []
    attrs = []
    for o in overall.outcomes:
        rows.append(
            [
                _swatch(OUTCOME_COLORS[o.outcome]) + esc(o.outcome),
                str(o.count),
                "not counted" if o.rate is None else _pct(o.rate.rate),
                "" if o.rate is None else _interval(o.rate),
            ]
        )
        attrs.append(f' data-outcome="{esc(o.outcome)}" data-count="{o.count}"')
    rows.append(["failures (sdc + detected + crash + hang)", str(overall.failure.successes),
                 _pct(overall.failure.rate), _interval(overall.failure)])  # fmt: skip
    attrs.append("")
    table = _table(
        f"All experiments: {overall.done} done, {overall.counted} counted",
        ["outcome", "count", "rate", "interval"],
        rows,
        table_id=f"{prefix}overall-outcomes",
        row_attrs=attrs,
    )
    strata_rows = []
    strata_attrs = []
    for dist in report.strata:
        cells = [esc(dist.stratum or ""), str(dist.done)]
        for o in dist.outcomes:
            if o.rate is None:
                cells.append(str(o.count))
            else:
                cells.append(f"{o.count}<small>{_compact(o.rate)}</small>")
        cells.append(f"{dist.failure.successes}<small>{_compact(dist.failure)}</small>")
        strata_rows.append(cells)
        strata_attrs.append(f' data-stratum="{esc(dist.stratum or "")}"')
    strata = _table(
        "Per stratum: count, then rate (interval in %, rounded) of each outcome",
        ["stratum", "done", *(o.value for o in Outcome), "failures"],
        strata_rows,
        table_id=f"{prefix}strata-outcomes",
        row_attrs=strata_attrs,
    )
    return chart + table + strata + not_injected_table(report, layout)


def not_injected_table(report: CampaignReport, layout: Layout = _FULL) -> str:
    """Why faults could not be placed: one row per kind of reason (numbers as N)."""
    reasons = report.not_injected
    if not reasons:
        return ""
    strata = sorted({s for r in reasons for s in r.by_stratum})
    rows = [
        [
            esc(r.reason),
            str(r.count),
            *(str(r.by_stratum.get(s, 0)) for s in strata),
            f"{esc(r.example)}<small>experiment "
            f"{_experiment_link(layout, r.first_experiment)}</small>",
        ]
        for r in reasons
    ]
    return _table(
        "Why faults could not be placed (not-injected), by kind of reason: numbers shown as N, "
        "hex values as 0xN",
        ["reason", "experiments", *(esc(s) for s in strata), "first example"],
        rows,
        table_id=f"{layout.prefix}not-injected",
        row_attrs=[f' data-reason="{esc(r.reason)}" data-count="{r.count}"' for r in reasons],
    )


def _progress(report: CampaignReport, layout: Layout = _FULL) -> str:
    """Per stratum, where in the golden execution its faults landed."""
    shown = report.progress
    if not shown:
        return ""
    out = (
        '<p class="lead">Where each fault landed, as a share of the golden execution (time, or '
        "instructions in deterministic mode) from the workload's start; counted experiments "
        "with a recorded position, per stratum.</p>"
    )
    for hist in shown:
        outside = f", {hist.outside} outside 0\u2013100% not shown" if hist.outside else ""
        out += _figure(
            histogram(
                list(zip(PROGRESS_LABELS, hist.counts, strict=True)),
                color=CAMPAIGN_COLORS[0],
                label=f"Where the faults of stratum {hist.stratum} landed",
                width=layout.width,
            ),
            f"Stratum {esc(hist.stratum)}: where its {hist.total} faults landed, per tenth of "
            f"the golden execution{outside}.",
        )
    out += _progress_table(shown, layout.prefix)
    return out


def _progress_table(shown: Sequence[ProgressHistogram], prefix: str) -> str:
    rows = [
        [esc(h.stratum), str(h.total), *(str(n) for n in h.counts), str(h.outside)] for h in shown
    ]
    return _table(
        "Faults per tenth of the golden execution, per stratum",
        ["stratum", "n", *PROGRESS_LABELS, "outside"],
        rows,
        table_id=f"{prefix}progress-counts",
        row_attrs=[f' data-stratum="{esc(h.stratum)}"' for h in shown],
    )


def _is_memory(location: str) -> bool:
    return ":" in location


def _heat_rows(heat: HeatMap) -> list[HeatRow]:
    rows = []
    for index, name in enumerate(heat.rows):
        cells = heat.cells[index]
        values: list[float | None] = []
        tips = []
        for bit, cell in enumerate(cells):
            if cell.total:
                values.append(cell.failure.rate)
                detail = ", ".join(f"{k} {v}" for k, v in cell.counts.items() if v)
                tips.append(
                    f"{name} bit {bit}: {cell.total} experiments, "
                    f"failures {_pct(cell.failure.rate)} ({detail})"
                )
            else:
                values.append(None)
                tips.append(f"{name} bit {bit}: no experiment")
        flips = sum(cell.total for cell in cells)
        separated = index > 0 and _is_memory(name) and not _is_memory(heat.rows[index - 1])
        rows.append(
            HeatRow(
                name,
                heat.widths[index],
                tuple(values),
                tuple(tips),
                f"{flips} flip{'' if flips == 1 else 's'}",
                separated,
            )
        )
    return rows


def _locations(report: CampaignReport, layout: Layout = _FULL) -> str:
    heat = report.heatmap
    if heat is None and not report.registers:
        return ""
    out = (
        '<p class="lead">Which locations and bit positions matter. A fault flipping several bits '
        "counts at each of them"
        + (f" ({heat.multi_bit} experiments did)" if heat is not None and heat.multi_bit else "")
        + ". Not-injected experiments are left out.</p>"
    )
    if report.registers:
        out += "<h3>Outcomes per register</h3>"
        out += _figure(
            _breakdown_chart(report.registers, "Outcome shares per register", layout.width),
            "Share of each outcome per faulted register; n: counted experiments.",
            _outcome_legend(),
        )
    if heat is not None:
        columns = [_segments(b) for b in report.bit_positions]
        scale = [(f"{v:.0%}", heat_color(v)) for v in (0.0, 0.25, 0.5, 0.75, 1.0)]
        legend = _legend([*scale, ("no experiment", EMPTY_CELL)], "failure share:")
        out += "<h3>Failures per location and bit position</h3>"
        out += _figure(
            heatmap(
                _heat_rows(heat),
                columns,
                bits=heat.bits,
                label="Heat map of the failure share per location and bit position",
                width=layout.width,
            ),
            "Top: failure share (sdc, detected, crash, hang) of each location's experiments at "
            "each bit, most significant bit on the left; memory targets count the bits of the "
            "64-bit word. Bottom: outcomes per bit position over all locations "
            "(colours as above). Hover a cell for its counts.",
            legend,
        )
        out += _outcome_legend()
    details = ""
    if report.registers:
        details += _breakdown_table("Outcomes per register", "register", report.registers)
    if report.bit_positions:
        populated = [b for b in report.bit_positions if b.total]
        details += _breakdown_table(
            "Outcomes per bit position (positions without experiments left out)",
            "bit",
            populated,
        )
    if heat is not None:
        cells = [
            [esc(name), str(bit), str(cell.total),
             *(str(cell.counts[o]) for o in COUNTED_OUTCOMES)]
            for name, row in zip(heat.rows, heat.cells, strict=True)
            for bit, cell in enumerate(row)
            if cell.total
        ]  # fmt: skip
        details += _table(
            "Heat-map cells with experiments",
            ["location", "bit", "n", *COUNTED_OUTCOMES],
            cells,
            text_columns=1,
        )
    if details:
        summary = "<summary>Tables: per register, per bit position, per cell</summary>"
        out += f"<details>{summary}{details}</details>"
    return out


def _experiment_link(layout: Layout, experiment_id: int, anchor: str = "") -> str:
    """An experiment's id, linked to its page (dashboard) or to `anchor` + id (the report's
    example of it), or plain when neither is given."""
    if layout.experiment_href is not None:
        href = layout.experiment_href(layout.prefix, experiment_id)
    elif anchor:
        href = f"{anchor}{experiment_id}"
    else:
        return str(experiment_id)
    return f'<a href="{esc(href)}">{experiment_id}</a>'


def _crashes(report: CampaignReport, layout: Layout = _FULL) -> str:
    prefix = layout.prefix
    causes = report.crash_causes
    if not causes and not report.latency:
        crashes = report.overall.count("crash")
        return f'<p class="muted">{crashes} crashes: no cause or latency to show.</p>'
    out = ""
    if causes:
        total = sum(c.count for c in causes)
        out += f'<h3>Crash causes</h3><p class="lead">{total} crashes by cause.</p>'
        out += _figure(
            count_bars(
                [(c.cause, c.count, f"· {_pct(c.share.rate)} of crashes") for c in causes],
                color=OUTCOME_COLORS["crash"],
                label="Crashes per cause",
                width=layout.width,
                label_w=min(170.0, layout.width * 0.25),
            ),
            "Crashes per cause (a crash pattern's cause, panic, reset or the fatal signal).",
        )
        strata = sorted({s for c in causes for s in c.by_stratum})
        rows = [
            [
                esc(c.cause),
                str(c.count),
                _pct(c.share.rate),
                _interval(c.share),
                *(str(c.by_stratum.get(s, 0)) for s in strata),
                _experiment_link(layout, c.first_experiment, f"#{prefix}example-"),
            ]
            for c in causes
        ]
        out += _table(
            "Crash causes: share of crashes, per stratum, first example",
            ["cause", "crashes", "share", "interval", *(esc(s) for s in strata), "first"],
            rows,
            table_id=f"{prefix}crash-causes",
        )
    if report.latency:
        out += "<h3>Crash latency</h3>"
        out += (
            '<p class="lead">From the injection to the kernel\'s first reaction, in the buckets '
            "of Gigan et al.; each unit in its own histogram"
            + (
                f" ({report.crashes_without_latency} crashes have no latency)"
                if report.crashes_without_latency
                else ""
            )
            + ".</p>"
        )
        for hist in report.latency:
            out += _latency(hist, layout.width)
        out += _latency_table(report.latency)
    return out


def _unit(unit: str) -> str:
    return _UNIT_NAMES.get(unit, unit)


_NS_NAMES = ("500 ns", "1 µs", "2 µs", "3 µs", "10 µs", "100 µs", "1 ms", "10 ms", "100 ms",
             "1 s", "> 1 s")  # fmt: skip


def _latency(hist: LatencyHistogram, width: float) -> str:
    notes = _NS_NAMES if hist.unit.endswith("-ns") else ()
    return _figure(
        histogram(
            [(label.replace("<=", "≤"), hist.buckets.get(label, 0)) for label in LATENCY_LABELS],
            color=OUTCOME_COLORS["crash"],
            label=f"Crash latency histogram in {_unit(hist.unit)}",
            notes=notes,
            width=width,
        ),
        f"Crash latency in {esc(_unit(hist.unit))}: {hist.count} crashes, median "
        f"{hist.median:,.0f}, range {hist.minimum:,} to {hist.maximum:,}.",
    )


def _latency_table(histograms: Sequence[LatencyHistogram]) -> str:
    rows = [
        [esc(_unit(h.unit)), *(str(h.buckets.get(label, 0)) for label in LATENCY_LABELS)]
        for h in histograms
    ]
    return _table(
        "Crashes per latency bucket (upper bounds, inclusive)",
        ["unit", *(esc(label) for label in LATENCY_LABELS)],
        rows,
    )


def _activation(report: CampaignReport, layout: Layout = _FULL) -> str:
    recorded = [row for row in report.activation if row.recorded]
    if not recorded:
        return ""
    values = [a.value for a in Activation]
    out = (
        '<p class="lead">Whether the flipped bits were used: <em>not-activated</em> (never read '
        "before being overwritten), <em>masked</em> (read, no effect), <em>manifested</em> "
        "(a failure). Injected experiments only.</p>"
    )
    out += _figure(
        stacked_rows(
            [
                StackedRow(
                    row.stratum,
                    f"n = {row.total}",
                    tuple(Segment(v, ACTIVATION_COLORS[v], row.counts.get(v, 0)) for v in values),
                )
                for row in recorded
            ],
            label="Activation per stratum",
            width=layout.width,
            note_w=min(190.0, layout.width * 0.3),
        ),
        "Activation per stratum where a watchpoint recorded it.",
        _legend([(v, ACTIVATION_COLORS[v]) for v in values]),
    )
    out += _table(
        "Activation per stratum",
        ["stratum", "injected", *values],
        [
            [esc(row.stratum), str(row.total), *(str(row.counts.get(v, 0)) for v in values)]
            for row in recorded
        ],
    )
    missing = [row.stratum for row in report.activation if not row.recorded]
    if missing:
        out += f'<p class="muted">Not recorded for: {esc(", ".join(missing))}.</p>'
    return out


def _instructions(report: CampaignReport, layout: Layout = _FULL) -> str:
    data = report.instructions
    if data is None:
        return ""
    out = ""
    if data.by_op:
        out += "<h3>Outcomes per operation type</h3>"
        out += _figure(
            _breakdown_chart(data.by_op, "Outcome shares per operation type", layout.width),
            "Share of each outcome per faulted operation type.",
            _outcome_legend(),
        )
        out += _breakdown_table("Outcomes per operation type", "op", data.by_op)
    if data.by_dynamic_index:
        out += "<h3>Outcomes per dynamic index</h3>"
        out += _figure(
            _breakdown_chart(
                data.by_dynamic_index, "Outcome shares per dynamic index", layout.width
            ),
            "Share of each outcome per dynamic instance (or range of instances) faulted.",
            _outcome_legend(),
        )
        out += _breakdown_table("Outcomes per dynamic index", "instance", data.by_dynamic_index)
    return out


def _storms(report: CampaignReport, layout: Layout = _FULL) -> str:
    data = report.storms
    if data is None:
        return ""
    out = ""
    for rows, what, key in (
        (data.by_flips, "number of flips", "flips"),
        (data.by_time, "storm duration (guest seconds)", "seconds"),
    ):
        if not rows:
            continue
        groups = [
            BarGroup(
                row.key, f"n = {row.total}", (Bar("failures", OUTCOME_COLORS["sdc"], row.failure),)
            )
            for row in rows
        ]
        out += f"<h3>Failures against {esc(what)}</h3>"
        out += _figure(
            rate_bars(groups, label=f"Failure rate against {what}", width=layout.width),
            f"Failure rate per {esc(what)}, with {_method(report)}.",
        )
        out += _breakdown_table(f"Outcomes per {what}", key, rows)
    return out


def _vmm_reactions(report: CampaignReport, layout: Layout = _FULL) -> str:
    groups = report.vmm_reactions
    if not groups:
        return ""
    out = (
        '<p class="lead">What QEMU itself said or did in the experiments that came out '
        "<em>vmm-error</em> (its death and signal, an abort with its message, an error it "
        "logged, a device it marked broken), grouped by message: numbers shown as N.</p>"
    )
    rows = [
        [
            esc(group.message), str(group.count),
            esc(", ".join(f"{k} {v}" for k, v in sorted(group.causes.items()))),
            esc(", ".join(f"{k} {v}" for k, v in sorted(group.strata.items()))),
            "" if group.example_id is None
            else f"{group.example_id} <code>vmfault replay {esc(report.db)} "
            f"{group.example_id}</code>",
        ]
        for group in groups
    ]  # fmt: skip
    return out + _table(
        "VMM reactions, grouped by message", ["message", "n", "causes", "strata", "first"], rows
    )


def _disks(report: CampaignReport, layout: Layout = _FULL) -> str:
    data = report.disks
    if data is None:
        return ""
    out = (
        "<p class=\"lead\">Faults in the guest's disks, made in QEMU's block layer: "
        f"{data.requests_faulted:,} requests failed, delayed or held (or reads of corrupted "
        "bytes) in all. A disk fault no request reached is <em>not-activated</em>.</p>"
    )
    out += "<h3>Outcomes per kind of disk fault</h3>"
    out += _figure(
        _breakdown_chart(data.by_fault, "Outcome shares per kind of disk fault", layout.width),
        "Share of each outcome per kind of disk fault.",
        _outcome_legend(),
    )
    out += _breakdown_table("Outcomes per kind of disk fault", "fault", data.by_fault)
    values = [a.value for a in Activation]
    out += "<h3>Activation per kind of disk fault</h3>"
    out += _table(
        "Activation per kind of disk fault",
        ["fault", "injected", *values],
        [
            [esc(row.stratum), str(row.total), *(str(row.counts.get(v, 0)) for v in values)]
            for row in data.activation
        ],
    )
    if data.by_requests:
        out += "<h3>Outcomes per number of requests faulted</h3>"
        out += _breakdown_table("Outcomes per number of requests faulted", "requests",
                                data.by_requests)  # fmt: skip
    return out


def _testbed(report: CampaignReport, layout: Layout = _FULL) -> str:
    """Each machine's outcomes (a testbed of several machines) and the network's frames."""
    summary = report.summary
    out = ""
    if summary.machines:
        out += _table(
            "Outcomes per machine (each classified against its own golden run); judged: the "
            f"experiments that took its outcome; not benign with {_method(report)}",
            ["machine", "judged", *COUNTED_OUTCOMES, "not benign", "interval"],
            [
                [
                    esc(item.machine), str(item.judged),
                    *(str(item.counts.get(name, 0)) for name in COUNTED_OUTCOMES),
                    _pct(item.failure.rate) if item.total else "-",
                    _interval(item.failure) if item.total else "-",
                ]
                for item in summary.machines
            ],
        )  # fmt: skip
    network = summary.network
    if network is not None:
        out += _table(
            f"Frames per link direction over {network.experiments} experiments "
            f"({network.frames} frames); dropped to reordered: what network faults did; "
            "overflow: lost at a card its guest did not read",
            ["link", *LINK_COUNTS],
            [
                [esc(f"{link.source} \u2192 {link.destination}"),
                 *(str(link.counts[name]) for name in LINK_COUNTS)]
                for link in network.links
            ],
        )  # fmt: skip
        out += _table(
            "Frames per experiment, per stratum, and what network faults did to them",
            ["stratum", "experiments", "mean", "least", "most", *_FAULT_COUNTS],
            [
                [esc(item.stratum), str(item.experiments), f"{item.frames_mean:.0f}",
                 str(item.frames_min), str(item.frames_max),
                 *(str(item.fault[name]) for name in _FAULT_COUNTS)]
                for item in network.strata
            ],
        )  # fmt: skip
    del layout  # tables only: no figure to size
    return out


_FAULT_COUNTS = ("dropped", "corrupted", "delayed", "duplicated", "reordered")


def _isolation(report: CampaignReport, layout: Layout = _FULL) -> str:
    """An isolation campaign's verdict: the control's runtimes with and without faults,
    the ratio of their medians with its interval against the margin, the host's load, and
    every violation with its evidence."""
    found = report.summary.isolation
    if found is None:
        return ""
    equivalence = found.equivalence
    unit = RUNTIME_UNITS.get(found.runtime, found.runtime)
    verdict = {
        True: "equivalent: the interval lies within the margin",
        False: "not shown equivalent: the interval reaches outside the margin",
        None: "no verdict yet: too few runs",
    }[equivalence.equivalent]
    load = found.load_range()
    lead = (
        f"<p>Control machine <code>{esc(found.control)}</code>: "
        f"<strong>{len(found.violations)}</strong> isolation violation(s) in {found.runs} "
        f"checked runs ({found.fault_free} in fault-free runs). Runtime ({esc(unit)}) under "
        "faults against the fault-free baseline: "
        f"<strong>{esc(verdict)}</strong> (margin \u00b1{equivalence.margin:.0%}, "
        f"{esc(equivalence.method)}, {equivalence.level:.0%} interval). Host load (1 min) "
        + ("-" if load is None else f"{load[0]:.1f}-{load[2]:.1f}, median {load[1]:.1f}")
        + "; control pinned to host cores "
        + (esc(",".join(map(str, found.host_cpus))) if found.host_cpus else "none")
        + ".</p>"
    )
    rows = []
    for name, values in (("under faults", found.faulted), ("baseline (no fault)", found.baseline)):
        spread = runtime_quantiles(values)
        cells = ("-",) * 3 if spread is None else tuple(f"{v:.4g}" for v in spread)
        rows.append([esc(name), str(len(values)), *cells])
    out = lead + _table(
        f"The control's runtimes, {esc(unit)}",
        ["runs", "count", "least", "median", "most"],
        rows,
    )
    ratio = "-" if equivalence.ratio is None else f"{equivalence.ratio:.4f}"
    interval = (
        "-"
        if equivalence.low is None or equivalence.high is None
        else f"[{equivalence.low:.4f}, {equivalence.high:.4f}]"
    )
    out += _table(
        "Ratio of the medians (under faults / baseline) against the equivalence margin",
        ["ratio", "interval", "allowed", "verdict"],
        [[ratio, interval,
          f"[{1 - equivalence.margin:.2f}, {1 + equivalence.margin:.2f}]", esc(verdict)]],
        text_columns=0,
    )  # fmt: skip
    if found.aimed_strata:
        out += (
            f"<p>Validation: faults aimed at the control ({esc(', '.join(found.aimed_strata))}"
            f", {found.aimed_runs} experiments) were caught as violations {found.caught} "
            "time(s).</p>"
        )
    if found.violations:
        out += _table(
            "Every isolation violation, with its evidence",
            ["experiment", "stratum", "aimed at the control", "what differed", "evidence"],
            [
                [_experiment_link(layout, v.experiment_id), esc(v.stratum),
                 "yes" if v.aimed else "", esc(v.reason), f"<code>{esc(v.evidence)}</code>"]
                for v in found.violations
            ],
            text_columns=5,
        )  # fmt: skip
    return out


def _example(example: Example, layout: Layout) -> str:
    prefix = layout.prefix
    title = example.outcome + (f" · {example.cause}" if example.cause else "")
    bits = ", ".join(str(b) for b in example.bits) or "-"
    meta = f"experiment {example.experiment_id} · stratum {example.stratum} · {example.location}"
    meta += f" · bit{'s' if len(example.bits) != 1 else ''} {bits}"
    if example.latency_value is not None:
        meta += f" · latency {example.latency_value:,} {_unit(example.latency_unit or '')}"
    evidence = example.evidence or "(no evidence line recorded)"
    return (
        f'<div class="example" id="{prefix}example-{example.experiment_id}" '
        f'style="--c:{OUTCOME_COLORS.get(example.outcome, "#999")}">'
        f'<h3>{esc(title)}</h3><div class="meta">{esc(meta)}</div>'
        f"<div>{esc(example.reason)}</div>"
        f'<pre class="console">{esc(evidence)}</pre>'
        f"<div>Replay: <code>{esc(example.replay)}</code>"
        + (
            ""
            if layout.experiment_href is None
            else " · details: experiment " + _experiment_link(layout, example.experiment_id)
        )
        + "</div></div>"
    )


def _examples(report: CampaignReport, layout: Layout = _FULL) -> str:
    if not report.examples:
        return ""
    out = (
        '<p class="lead">The first recorded experiment of each crash cause, then of each other '
        "failure outcome, with the console line (or output line) behind its classification "
        "and the command that runs it again.</p>"
    )
    return out + "".join(_example(example, layout) for example in report.examples)


# ---------------------------------------------------------------------------- comparison


def _comparison(a: CampaignReport, b: CampaignReport) -> str:
    names = comparison_names(a, b)
    header = _header(
        f"{names[0]} vs {names[1]}", f"Comparison of two fault-injection campaigns · {_method(a)}"
    )
    sections = [(s.ident, s.title, s.render(a, b, names, _FULL)) for s in COMPARISON_SECTIONS]
    return _page(header, sections)


def comparison_names(a: CampaignReport, b: CampaignReport) -> tuple[str, str]:
    """How a comparison calls its two campaigns: their names, or `A: name` and `B: name`
    when both have the same one."""
    return (a.name, b.name) if a.name != b.name else (f"A: {a.name}", f"B: {b.name}")


def _compare_summary(
    a: CampaignReport, b: CampaignReport, names: tuple[str, str], layout: Layout = _FULL
) -> str:
    cards = []
    for report, name, color in zip((a, b), names, CAMPAIGN_COLORS, strict=True):
        control = _false_positive_card(report)
        if control is not None:
            key, value, detail = control
            cards.append(
                f'<div class="card" style="border-left:4px solid {color}"><div class="k">'
                f'{esc(name)}: {esc(key)}</div><div class="v">{esc(value)}</div>'
                f'<div class="s">{esc(detail)}</div></div>'
            )
    for report, name, color in zip((a, b), names, CAMPAIGN_COLORS, strict=True):
        failure = report.overall.failure
        cards.append(
            f'<div class="card" style="border-left:4px solid {color}"><div class="k">{esc(name)}'
            f'</div><div class="v">{_pct(failure.rate)}</div><div class="s">failure rate '
            f"{_interval(failure)} · {report.overall.counted} counted of {report.summary.done}"
            "</div></div>"
        )
    difference, low, high = rate_difference(a.overall.failure, b.overall.failure)
    cards.append(
        f'<div class="card"><div class="k">difference A - B</div><div class="v">'
        f'{_signed_pct(difference)}</div><div class="s">[{_signed_pct(low)}, '
        f"{_signed_pct(high)}] (Newcombe)</div></div>"
    )
    return f'<div class="cards">{"".join(cards)}</div>'


def _compare_provenance(
    a: CampaignReport, b: CampaignReport, names: tuple[str, str], layout: Layout = _FULL
) -> str:
    left = dict(_provenance_facts(a))
    right = dict(_provenance_facts(b))
    keys = list(left) + [k for k in right if k not in left]
    rows = []
    attrs = []
    for key in keys:
        va, vb = left.get(key, ""), right.get(key, "")
        rows.append([esc(key), esc(va), esc(vb)])
        attrs.append(' class="differs"' if va != vb else "")
    golden = []
    for report in (a, b):
        g = report.golden
        golden.append(
            "-" if g is None else f"{' '.join(g.argv)}: exit {g.exit_status}, {g.host_s:.3f} s"
        )
    rows.append(["golden run", esc(golden[0]), esc(golden[1])])
    attrs.append(' class="differs"' if golden[0] != golden[1] else "")
    return _table(
        "Provenance (rows that differ are highlighted)",
        ["", esc(names[0]), esc(names[1])],
        rows,
        row_attrs=attrs,
        text_columns=3,
        table_class="wide",
    )


def _compare_outcomes(
    a: CampaignReport, b: CampaignReport, names: tuple[str, str], layout: Layout = _FULL
) -> str:
    out = _compare_distribution(a.overall, b.overall, names, "All experiments", "all")
    common = [s.stratum for s in a.strata if s.stratum in {t.stratum for t in b.strata}]
    for stratum in common:
        da = next(s for s in a.strata if s.stratum == stratum)
        db = next(s for s in b.strata if s.stratum == stratum)
        out += _compare_distribution(da, db, names, f"Stratum {stratum}", f"stratum-{stratum}")
    only = sorted({s.stratum or "" for s in (*a.strata, *b.strata)} - set(c or "" for c in common))
    if only:
        out += f'<p class="muted">Strata in one campaign only: {esc(", ".join(only))}.</p>'
    return out


def _compare_distribution(
    a: Distribution, b: Distribution, names: tuple[str, str], title: str, ident: str
) -> str:
    groups = []
    rows = []
    for outcome in COUNTED_OUTCOMES:
        ra, rb = a.rate(outcome), b.rate(outcome)
        if ra is None or rb is None:
            continue
        groups.append(
            BarGroup(
                outcome,
                "",
                (Bar(names[0], CAMPAIGN_COLORS[0], ra), Bar(names[1], CAMPAIGN_COLORS[1], rb)),
            )
        )
        difference, low, high = rate_difference(ra, rb)
        significant = low > 0 or high < 0
        rows.append(
            [
                _swatch(OUTCOME_COLORS[outcome]) + esc(outcome),
                f"{ra.successes}<small>{_pct(ra.rate)} {_interval(ra)}</small>",
                f"{rb.successes}<small>{_pct(rb.rate)} {_interval(rb)}</small>",
                f"{_signed_pct(difference)}<small>[{_signed_pct(low)}, {_signed_pct(high)}]"
                + ("</small>" if not significant else " ≠ 0</small>"),
            ]
        )
    rows.append(
        [
            "counted (done)",
            f"{a.counted} ({a.done})",
            f"{b.counted} ({b.done})",
            "",
        ]
    )
    chart = _figure(
        rate_bars(groups, label=f"{title}: outcome rates of both campaigns"),
        f"{esc(title)}: outcome rates of both campaigns with their intervals.",
        _legend([(names[0], CAMPAIGN_COLORS[0]), (names[1], CAMPAIGN_COLORS[1])]),
    )
    table = _table(
        f"{esc(title)}: counts, rates, and the difference A - B (Newcombe interval; ≠ 0 when "
        "it excludes zero)",
        ["outcome", esc(names[0]), esc(names[1]), "difference"],
        rows,
        table_id=f"compare-{esc(ident)}",
    )
    return f"<h3>{esc(title)}</h3>{chart}{table}"


def _paired(
    section: Callable[[CampaignReport, Layout], str],
) -> Callable[[CampaignReport, CampaignReport, tuple[str, str], Layout], str]:
    """A comparison section showing `section` of each campaign side by side."""

    def render(a: CampaignReport, b: CampaignReport, names: tuple[str, str], layout: Layout) -> str:
        return _pair(a, b, names, section, layout)

    return render


def _pair(
    a: CampaignReport,
    b: CampaignReport,
    names: tuple[str, str],
    section: Callable[[CampaignReport, Layout], str],
    layout: Layout = _FULL,
) -> str:
    left = section(a, layout.half("a-"))
    right = section(b, layout.half("b-"))
    if not left and not right:
        return ""
    cells = []
    for body, name, color in zip((left, right), names, CAMPAIGN_COLORS, strict=True):
        shown = body or '<p class="muted">Nothing recorded.</p>'
        cells.append(f'<div><h3 style="color:{color}">{esc(name)}</h3>{shown}</div>')
    return f'<div class="pair">{"".join(cells)}</div>'


REPORT_SECTIONS: tuple[Section, ...] = (
    Section("summary", "Summary", _summary_cards),
    Section("isolation", "Isolation", _isolation),
    Section("provenance", "Provenance", _provenance),
    Section("golden", "Golden run", _golden),
    Section("outcomes", "Outcomes", _outcomes),
    Section("progress", "Where faults landed", _progress),
    Section("locations", "Registers and bits", _locations),
    Section("crashes", "Crashes", _crashes),
    Section("activation", "Activation", _activation),
    Section("instructions", "Instruction faults", _instructions),
    Section("storms", "Fault storms", _storms),
    Section("disks", "Disk faults", _disks),
    Section("testbed", "Machines and network", _testbed),
    Section("vmm", "VMM reactions", _vmm_reactions),
    Section("examples", "Examples", _examples),
)
"""The sections of a campaign's report, in the report's order."""

COMPARISON_SECTIONS: tuple[ComparisonSection, ...] = (
    ComparisonSection("summary", "Summary", _compare_summary),
    ComparisonSection("isolation", "Isolation", _paired(_isolation)),
    ComparisonSection("provenance", "Provenance", _compare_provenance),
    ComparisonSection("outcomes", "Outcomes", _compare_outcomes),
    ComparisonSection("progress", "Where faults landed", _paired(_progress)),
    ComparisonSection("locations", "Registers and bits", _paired(_locations)),
    ComparisonSection("crashes", "Crashes", _paired(_crashes)),
    ComparisonSection("activation", "Activation", _paired(_activation)),
    ComparisonSection("instructions", "Instruction faults", _paired(_instructions)),
    ComparisonSection("storms", "Fault storms", _paired(_storms)),
    ComparisonSection("disks", "Disk faults", _paired(_disks)),
    ComparisonSection("testbed", "Machines and network", _paired(_testbed)),
    ComparisonSection("vmm", "VMM reactions", _paired(_vmm_reactions)),
    ComparisonSection("examples", "Examples", _paired(_examples)),
)
"""The sections of the comparison of two campaigns, in the page's order."""
