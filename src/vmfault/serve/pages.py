"""The dashboard's HTML: pages and the live fragments the event stream sends.

Every figure and table of a campaign's report is rendered by the report's own section
functions (`vmfault.report.html.REPORT_SECTIONS`, `COMPARISON_SECTIONS`); this module adds
what only a live page has (progress, speed, expected end, workers) and the browsing pages
(the experiments table, one experiment, why faults could not be placed). Every string from
a database goes through `esc`, so a guest that prints `<script>` shows it as text.
"""

from __future__ import annotations

import hashlib
import json
import math
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from vmfault._version import __version__
from vmfault.classify import Outcome
from vmfault.experiment.records import ExperimentRecord, GoldenRun
from vmfault.report.data import CampaignReport, golden_text, replay_command
from vmfault.report.html import (
    COMPARISON_SECTIONS,
    REPORT_SECTIONS,
    Layout,
    Section,
    comparison_names,
    not_injected_table,
)
from vmfault.report.svg import CAMPAIGN_COLORS, OUTCOME_COLORS, esc
from vmfault.serve.activity import Activity, CampaignState, WorkerState
from vmfault.store import ExperimentFilter, ExperimentPage

__all__ = [
    "CONSOLE_TAIL_LINES",
    "DASHBOARD_ORDER",
    "Links",
    "comparison_fragments",
    "comparison_page",
    "dashboard_fragments",
    "dashboard_page",
    "error_page",
    "experiment_page",
    "experiments_page",
    "fragment_hash",
    "not_injected_page",
]

DASHBOARD_ORDER = (
    "summary",
    "outcomes",
    "progress",
    "locations",
    "crashes",
    "activation",
    "instructions",
    "storms",
    "examples",
    "provenance",
    "golden",
)
"""The report's sections in the order a dashboard shows them: results first."""
CONSOLE_TAIL_LINES = 60
"""Lines of the workload's recorded output an experiment's page shows."""
EXTRA_INJECTIONS_SHOWN = 200
"""Injections after the first (a storm's flips) listed on an experiment's page."""
LIVE = "live"
"""The fragment of a dashboard's live panel (progress, speed, workers)."""


@dataclass(frozen=True)
class Links:
    """The addresses of one campaign's pages (`key`: `a`, or `b` in a comparison)."""

    key: str

    @property
    def base(self) -> str:
        """The campaign's dashboard."""
        return f"/campaigns/{self.key}/"

    def experiments(self, found: ExperimentFilter | None = None, **more: object) -> str:
        """The experiments table with `found`'s filter and `more` query parameters."""
        query = {**(found.to_json() if found else {}), **more}
        shown = {k: str(v) for k, v in query.items() if v not in (None, "")}
        return f"{self.base}experiments" + (f"?{urllib.parse.urlencode(shown)}" if shown else "")

    def experiment(self, experiment_id: int) -> str:
        """One experiment's page."""
        return f"{self.base}experiments/{experiment_id}"

    def not_injected(self) -> str:
        """Why faults could not be placed."""
        return f"{self.base}not-injected"

    def api(self, what: str, **query: object) -> str:
        """An API address of this campaign."""
        shown = {k: str(v) for k, v in query.items() if v not in (None, "")}
        return f"/api/{what}?" + urllib.parse.urlencode({"campaign": self.key, **shown})


def fragment_hash(html: str) -> str:
    """A short digest of a fragment: the page replaces a section only when it changed."""
    return hashlib.blake2s(html.encode("utf-8"), digest_size=8).hexdigest()


# ---------------------------------------------------------------------------- page frame


def _page(title: str, body: str, *, events: str | None = None) -> str:
    """A whole page: the report's style sheet and the dashboard's, its one script file,
    and the event stream to follow (`events`), if any."""
    data = f' data-events="{esc(events)}"' if events else ""
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="referrer" content="no-referrer">\n'
        '<link rel="icon" href="data:,">\n'
        '<link rel="stylesheet" href="/static/report.css">\n'
        '<link rel="stylesheet" href="/static/dashboard.css">\n'
        '<script src="/static/dashboard.js" defer></script>\n'
        f"<title>{esc(title)}</title>\n</head>\n<body{data}>\n{body}\n"
        f'<main><footer><span id="connection" class="connection" hidden></span> vmfault '
        f"{esc(__version__)} · read-only view of the campaign database · nothing here leaves "
        "this machine.</footer></main>\n</body>\n</html>\n"
    )


def _header(title: str, subtitle: str, nav: str) -> str:
    return (
        f'<header class="top"><div class="inner"><h1>{esc(title)}</h1>'
        f'<p>{esc(subtitle)}</p><nav class="pages">{nav}</nav></div></header>'
    )


def _nav(links: Links, current: str, *, compare: bool = False) -> str:
    items = [
        ("dashboard", links.base, "Dashboard"),
        ("experiments", links.experiments(), "Experiments"),
        ("not-injected", links.not_injected(), "Not injected"),
        ("api", links.api("status"), "JSON status"),
    ]
    if compare:
        items.insert(0, ("compare", "/", "Comparison"))
    return "".join(
        f'<a href="{esc(href)}"' + (' aria-current="page"' if name == current else "") + f">"
        f"{esc(text)}</a>"
        for name, href, text in items
    )


def _section(ident: str, title: str, body: str) -> str:
    """A live section: replaced by the event stream when its hash changes; hidden while
    it has nothing to show."""
    hidden = "" if body else " hidden"
    heading = (
        ""
        if ident in ("summary", LIVE) or ident.startswith(f"{LIVE}-")
        else f"<h2>{esc(title)}</h2>"
    )
    return (
        f'<section id="{esc(ident)}" data-section="{esc(ident)}" '
        f'data-hash="{fragment_hash(body)}"{hidden}>{heading}<div data-body>{body}</div></section>'
    )


def _toc(entries: Sequence[tuple[str, str, str]]) -> str:
    links = "".join(
        f'<a href="#{esc(ident)}" data-toc="{esc(ident)}"' + ("" if body else " hidden") + f">"
        f"{esc(title)}</a>"
        for ident, title, body in entries
        if ident != "summary" and not ident.startswith(LIVE)
    )
    return f'<nav class="toc">{links}</nav>'


def _local_time(unix_s: float | None, *, date: bool = False) -> str:
    if unix_s is None or not math.isfinite(unix_s):
        return "-"
    moment = datetime.fromtimestamp(unix_s)
    return moment.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S")


def _time(unix_s: float | None, kind: str, text: str) -> str:
    """A moment the page keeps relative (`since`: "12 s ago"; `until`: "in 3 min")."""
    if unix_s is None or not math.isfinite(unix_s):
        return esc(text)
    return f'<time data-{kind}="{unix_s:.3f}">{esc(text)}</time>'


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds // 60:.0f} min {seconds % 60:.0f} s"
    return f"{seconds // 3600:.0f} h {seconds % 3600 // 60:.0f} min"


# ---------------------------------------------------------------------------- live panel


def _progress_bar(report: CampaignReport, activity: Activity, label: str) -> str:
    """Done experiments, coloured by outcome, against the planned total (inline SVG)."""
    width, height = 960.0, 22.0
    total = max(activity.total, activity.done, 1)
    parts = [
        f'<svg class="chart progress-bar" viewBox="0 0 {width:g} {height:g}" role="img" '
        'preserveAspectRatio="none" '
        f'aria-label="{esc(label)}"><title>{esc(label)}</title>'
        f'<rect x="0" y="0" width="{width:g}" height="{height:g}" fill="#e9ecf1" rx="3"/>'
    ]
    x = 0.0
    for outcome in report.overall.outcomes:
        if not outcome.count:
            continue
        w = width * outcome.count / total
        parts.append(
            f'<rect x="{x:.2f}" y="0" width="{w:.2f}" height="{height:g}" '
            f'fill="{OUTCOME_COLORS.get(outcome.outcome, "#999")}">'
            f"<title>{esc(outcome.outcome)}: {outcome.count}</title></rect>"
        )
        x += w
    parts.append("</svg>")
    return "".join(parts)


def _live_panel(report: CampaignReport, activity: Activity, links: Links) -> str:
    """Where the campaign stands: state, progress by outcome, speed, expected end, workers."""
    done, total = activity.done, activity.total
    share = done / total if total else 0.0
    if activity.state is CampaignState.RUNNING:
        state = f"running · process {activity.writer_pid} · since " + _time(
            activity.run_started_at, "since", _local_time(activity.run_started_at)
        )
    elif activity.state is CampaignState.FINISHED:
        state = "finished: every planned experiment is recorded"
    else:
        state = (
            f"stopped with {activity.remaining} experiments missing · resume with "
            f"<code>vmfault campaign resume {esc(report.db)}</code>"
        )
    not_injected = report.overall.count(Outcome.NOT_INJECTED.value)
    rate = activity.rate_per_s
    cards = [
        (
            "experiments",
            f'<span data-value="done">{done}</span> of <span data-value="total">{total}</span>',
            f"{share:.0%} · {not_injected} not injected",
        ),
        (
            "speed",
            "-" if rate is None else f"{rate:.2f}/s",
            "experiments per second, latest ones of this run"
            if rate is not None
            else "measured while the campaign runs",
        ),
        (
            "expected end",
            _local_time(activity.eta_at) if activity.eta_at is not None else "-",
            _time(activity.eta_at, "until", "")
            if activity.eta_at is not None
            else f"{activity.remaining} to go",
        ),
        (
            "last record",
            _time(activity.last_finished_at, "since", _local_time(activity.last_finished_at)),
            _local_time(activity.last_finished_at, date=True),
        ),
    ]
    body = "".join(
        f'<div class="card"><div class="k">{esc(k)}</div><div class="v">{v}</div>'
        f'<div class="s">{s}</div></div>'
        for k, v, s in cards
    )
    legend = "".join(
        f'<span class="item"><span class="swatch" style="background:'
        f'{OUTCOME_COLORS.get(o.outcome, "#999")}"></span>{esc(o.outcome)} '
        f'<span data-outcome-count="{esc(o.outcome)}">{o.count}</span></span>'
        for o in report.overall.outcomes
    )
    return (
        f'<div class="live-state state-{activity.state.value}" '
        f'data-state="{activity.state.value}">{state}</div>'
        + _progress_bar(report, activity, f"{done} of {total} experiments done, by outcome")
        + f'<div class="legend">{legend}</div><div class="cards">{body}</div>'
        + _workers(activity, links)
    )


def _workers(activity: Activity, links: Links) -> str:
    if not activity.workers:
        return '<p class="muted">No worker has recorded an experiment yet.</p>'
    rows = []
    for view in activity.workers:
        worker = view.activity
        quiet = 5 * max(worker.mean_duration_s, 1.0)
        state = view.state.value
        if view.state is WorkerState.REPLACED:
            state = "replaced (vmm-error)"
        rows.append(
            f'<tr data-worker="{esc(worker.worker)}"><th scope="row" class="text">'
            f"{esc(worker.worker)}</th>"
            f'<td class="text" data-quiet-after="{quiet:.1f}" '
            f'data-last="{worker.last_finished_at:.3f}">{esc(state)}</td>'
            f"<td>{worker.experiments}</td><td>{worker.mean_duration_s:.1f} s</td>"
            f'<td class="text"><a href="{esc(links.experiment(worker.last_experiment))}">'
            f"{worker.last_experiment}</a> {_swatch(worker.last_outcome)}"
            f"{esc(worker.last_outcome)}</td>"
            f"<td>{_time(worker.last_finished_at, 'since', _local_time(worker.last_finished_at))}"
            "</td></tr>"
        )
    return (
        '<div class="scroll"><table id="workers"><caption>'
        + ("Workers of this run" if activity.state is CampaignState.RUNNING else "Workers")
        + "</caption><thead><tr>"
        '<th scope="col" class="text">worker</th><th scope="col" class="text">state</th>'
        '<th scope="col">experiments</th><th scope="col">mean time</th>'
        '<th scope="col" class="text">last experiment</th><th scope="col">last record</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )


def _swatch(outcome: str) -> str:
    return f'<span class="swatch" style="background:{OUTCOME_COLORS.get(outcome, "#999")}"></span>'


# ---------------------------------------------------------------------------- dashboard


def _layout(links_of: Mapping[str, Links]) -> Layout:
    """The report's layout with experiment ids linked to their pages (`links_of`: the
    campaign of each layout prefix: "" alone, "a-" and "b-" in a comparison)."""

    def href(prefix: str, experiment_id: int) -> str:
        return links_of[prefix].experiment(experiment_id)

    return Layout(experiment_href=href)


def _dashboard_sections() -> list[Section]:
    by_id = {s.ident: s for s in REPORT_SECTIONS}
    ordered = [by_id[ident] for ident in DASHBOARD_ORDER if ident in by_id]
    return ordered + [s for s in REPORT_SECTIONS if s.ident not in DASHBOARD_ORDER]


def dashboard_fragments(report: CampaignReport, activity: Activity, links: Links) -> dict[str, str]:
    """Every live part of a campaign's dashboard by section id: the live panel, then each
    report section (an empty string: nothing to show yet)."""
    layout = _layout({"": links})
    found = {LIVE: _live_panel(report, activity, links)}
    for section in _dashboard_sections():
        found[section.ident] = section.render(report, layout)
    return found


def dashboard_page(
    report: CampaignReport, activity: Activity, links: Links, *, events: str, compare: bool
) -> str:
    """A campaign's live dashboard."""
    fragments = dashboard_fragments(report, activity, links)
    titles = {s.ident: s.title for s in REPORT_SECTIONS}
    entries = [(ident, titles.get(ident, "Progress"), body) for ident, body in fragments.items()]
    body = (
        _header(report.name, _subtitle(report), _nav(links, "dashboard", compare=compare))
        + "<main>"
        + _toc(entries)
        + "".join(_section(ident, title, content) for ident, title, content in entries)
        + "</main>"
    )
    return _page(f"{report.name}: campaign dashboard", body, events=events)


def _subtitle(report: CampaignReport) -> str:
    info = report.provenance
    return (
        f"Campaign dashboard · {info.workload} · seed {info.seed} · {report.db} · rates with "
        f"{report.summary.method.value} intervals at {report.summary.confidence:.0%}"
    )


def comparison_fragments(
    a: CampaignReport, b: CampaignReport, activities: tuple[Activity, Activity]
) -> dict[str, str]:
    """Every live part of the comparison page by section id: each campaign's live panel
    (`live-a`, `live-b`), then each comparison section."""
    links = (Links("a"), Links("b"))
    names = comparison_names(a, b)
    layout = _layout({"": links[0], "a-": links[0], "b-": links[1]})
    found: dict[str, str] = {}
    for report, activity, link, name, color in zip(
        (a, b), activities, links, names, CAMPAIGN_COLORS, strict=True
    ):
        found[f"{LIVE}-{link.key}"] = (
            f'<h3 style="color:{color}"><a href="{esc(link.base)}">{esc(name)}</a></h3>'
            + _live_panel(report, activity, link)
        )
    for section in COMPARISON_SECTIONS:
        found[section.ident] = section.render(a, b, names, layout)
    return found


def comparison_page(
    a: CampaignReport, b: CampaignReport, activities: tuple[Activity, Activity], *, events: str
) -> str:
    """Two campaigns side by side, as `vmfault report a.db b.db` compares them, live."""
    fragments = comparison_fragments(a, b, activities)
    titles = {s.ident: s.title for s in COMPARISON_SECTIONS}
    entries = [(ident, titles.get(ident, "Progress"), body) for ident, body in fragments.items()]
    names = comparison_names(a, b)
    nav = "".join(
        f'<a href="{esc(Links(key).base)}">{esc(name)}</a>'
        for key, name in zip("ab", names, strict=True)
    )
    live = [e for e in entries if e[0].startswith(LIVE)]
    rest = [e for e in entries if not e[0].startswith(LIVE)]
    body = (
        _header(f"{names[0]} vs {names[1]}", "Comparison of two campaigns, live", nav)
        + "<main>"
        + _toc(rest)
        + '<div class="pair">'
        + "".join(f"<div>{_section(i, t, c)}</div>" for i, t, c in live)
        + "</div>"
        + "".join(_section(i, t, c) for i, t, c in rest)
        + "</main>"
    )
    return _page(f"{names[0]} vs {names[1]}: campaign comparison", body, events=events)


# ---------------------------------------------------------------------------- browsing


_TABLE_COLUMNS = (
    ("experiment_id", "experiment"),
    ("stratum", "stratum"),
    ("outcome", "outcome"),
    ("cause", "cause"),
    ("location", "location"),
    ("mask", "mask"),
    ("trigger", "trigger"),
    ("progress", "landed at"),
    ("latency", "latency"),
    ("worker", "worker"),
    ("duration_s", "time"),
)


def _cell(name: str, row: Mapping[str, object], links: Links) -> str:
    value = row.get(name)
    if name == "experiment_id" and isinstance(value, int):
        return f'<a href="{esc(links.experiment(value))}">{value}</a>'
    if name == "outcome":
        return _swatch(str(value)) + esc(value)
    if name == "location":
        shown = value or row.get("target") or ""
        return esc(shown)
    if name == "progress":
        return "-" if not isinstance(value, int | float) else f"{value:.0%}"
    if name == "latency":
        latency = row.get("latency_value")
        if latency is None:
            return "-"
        return f"{latency:,} <small>{esc(row.get('latency_unit') or '')}</small>"
    if name == "duration_s":
        return "-" if not isinstance(value, int | float) else f"{value:.1f} s"
    return "-" if value is None or value == "" else esc(value)


def _text_class(column: str) -> str:
    return "" if column == "experiment_id" else ' class="text"'


def _select(name: str, values: Mapping[str, int], chosen: str | None, order: Sequence[str]) -> str:
    known = [v for v in order if v in values] + sorted(v for v in values if v not in order)
    if chosen is not None and chosen not in known:
        known.append(chosen)
    options = [f'<option value=""{"" if chosen else " selected"}>any</option>']
    for value in known:
        selected = " selected" if value == chosen else ""
        options.append(
            f'<option value="{esc(value)}"{selected}>{esc(value)} ({values.get(value, 0)})</option>'
        )
    return f'<label>{esc(name)} <select name="{esc(name)}">{"".join(options)}</select></label>'


def experiments_page(
    name: str,
    links: Links,
    page: ExperimentPage,
    values: Mapping[str, Mapping[str, int]],
    *,
    newest_first: bool,
    done: int,
    events: str,
    compare: bool,
) -> str:
    """The experiments a filter matches, one page of them, with the filter form."""
    found = page.filter
    outcome_order = [o.value for o in Outcome]
    form = (
        f'<form class="filters" method="get" action="{esc(links.experiments())}">'
        + _select("stratum", values.get("stratum", {}), found.stratum, ())
        + _select("outcome", values.get("outcome", {}), found.outcome, outcome_order)
        + _select("cause", values.get("cause", {}), found.cause, ())
        + _select("machine", values.get("machine", {}), found.machine, ())
        + '<label>order <select name="order">'
        + f'<option value="id"{"" if newest_first else " selected"}>by id</option>'
        + f'<option value="newest"{" selected" if newest_first else ""}>newest first</option>'
        + "</select></label>"
        + '<button type="submit">Show</button>'
        + f' <a href="{esc(links.experiments())}">clear</a></form>'
    )
    per_page = max(1, page.limit)
    pages = max(1, math.ceil(page.total / per_page))
    current = page.offset // per_page + 1
    order = "newest" if newest_first else None

    def to(number: int) -> str:
        return links.experiments(found, order=order, page=number if number > 1 else None)

    pager = []
    for label, number in (("&laquo; first", 1), ("&lsaquo; previous", current - 1)):
        pager.append(f'<a href="{esc(to(number))}">{label}</a>' if current > 1 else "")
    pager.append(f"<span>page {current} of {pages}</span>")
    for label, number in (("next &rsaquo;", current + 1), ("last &raquo;", pages)):
        pager.append(f'<a href="{esc(to(number))}">{label}</a>' if current < pages else "")
    head = "".join(
        f'<th scope="col"{_text_class(key)}>{esc(title)}</th>' for key, title in _TABLE_COLUMNS
    )
    rows = "".join(
        f'<tr data-experiment="{row.get("experiment_id")}" '
        f'data-outcome="{esc(row.get("outcome"))}">'
        + "".join(
            f"<td{_text_class(key)}>{_cell(key, row, links)}</td>" for key, _ in _TABLE_COLUMNS
        )
        + "</tr>"
        for row in page.rows
    )
    api = links.api("experiments", **found.to_json(), offset=page.offset, limit=page.limit)
    matched = (
        f'<p class="lead"><span data-value="matched">{page.total}</span> experiments match'
        + (
            f" ({', '.join(f'{k} {v}' for k, v in found.to_json().items())})"
            if found.to_json()
            else ""
        )
        + f' · the same as JSON: <a href="{esc(api)}">{esc(api)}</a></p>'
        f'<p class="notice" id="new-records" data-done="{done}" hidden></p>'
    )
    table = (
        f'<div class="scroll"><table id="experiments" class="browse"><thead><tr>{head}</tr>'
        f"</thead><tbody>{rows}</tbody></table></div>"
        if page.rows
        else '<p class="muted">No experiment matches.</p>'
    )
    body = (
        _header(name, "Experiments", _nav(links, "experiments", compare=compare))
        + f'<main>{form}{matched}<nav class="pager">{"".join(pager)}</nav>{table}'
        f'<nav class="pager">{"".join(pager)}</nav></main>'
    )
    return _page(f"{name}: experiments", body, events=events)


def _facts(items: Sequence[tuple[str, str]]) -> str:
    """A definition list of already-escaped values."""
    return (
        '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"
    )


def _json_value(value: object) -> str:
    if value is None:
        return '<span class="muted">-</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | dict):
        return f"<code>{esc(json.dumps(value))}</code>"
    return esc(value)


def _tail(text: str, lines: int = CONSOLE_TAIL_LINES) -> tuple[str, int]:
    """The last `lines` lines of `text` and how many lines were left out."""
    split = text.splitlines()
    return "\n".join(split[-lines:]), max(0, len(split) - lines)


def experiment_page(
    name: str,
    links: Links,
    row: Mapping[str, object],
    record: ExperimentRecord,
    *,
    db_label: str,
    golden: GoldenRun | None,
    neighbours: tuple[int | None, int | None],
    compare: bool,
) -> str:
    """One experiment: its fault, read-back, trigger, outcome with reason and evidence, the
    tail of the workload's output, and the command that runs it again."""
    experiment_id = int(str(row["experiment_id"]))
    outcome = record.outcome.value
    title = f"Experiment {experiment_id}: {outcome}" + (
        f" · {record.cause}" if record.cause else ""
    )
    first = record.injection
    fault = first.fault_json()
    latency = record.latency
    outcome_facts = [
        ("outcome", _swatch(outcome) + esc(outcome)),
        ("reason", esc(record.reason)),
        ("cause", esc(record.cause or "-")),
        ("latency", "-" if latency is None else f"{latency.value:,} {esc(latency.unit.value)}"),
        ("activation", esc(record.activation.value)),
        ("exit status", esc("-" if record.exit_status is None else record.exit_status)),
        ("signal", esc(record.signal or "-")),
        ("judged machine", esc(record.judged)),
    ]
    stratum = str(row.get("stratum"))
    duration = _float(row.get("duration_s"))
    run_facts = [
        (
            "stratum",
            f'<a href="{esc(links.experiments(ExperimentFilter(stratum=stratum)))}">'
            f"{esc(stratum)}</a>",
        ),
        ("seed, index", f"{record.seed}, {record.index}"),
        ("worker", esc(row.get("worker") or "-")),
        ("started", esc(_local_time(_float(row.get("started_at")), date=True))),
        ("duration", "-" if duration is None else f"{duration:.2f} s"),
        ("phases", esc(", ".join(f"{k} {v:.2f} s" for k, v in record.phases_s.items()) or "-")),
    ]
    fault_facts = [(key, _json_value(value)) for key, value in fault.items()]
    if not first.injected:
        fault_facts.append(("not injected because", esc(first.reason or "no reason recorded")))
    trigger_facts = [(key, _json_value(value)) for key, value in first.trigger.to_json().items()]
    evidence = record.evidence or "(no evidence line recorded)"
    output, cut = _tail(record.output)
    stderr, cut_err = _tail(record.stderr)
    replay = replay_command(db_label, experiment_id)
    parts = [
        '<div class="pair"><div><h2>Outcome</h2>',
        _facts(outcome_facts),
        f'<h3>Evidence</h3><pre class="console" id="evidence">{esc(evidence)}</pre>',
        "</div><div><h2>Run</h2>",
        _facts(run_facts),
        "<h3>Replay</h3>",
        f'<pre id="replay">{esc(replay)}</pre>',
        '<p class="muted">Runs the experiment again from the database (same fault, same '
        "seed) and shows the guest's console.</p></div></div>",
        '<div class="pair"><div><h2>Fault and read-back</h2>',
        _facts(fault_facts),
        "</div><div><h2>Trigger</h2>",
        _facts(trigger_facts),
        "</div></div>",
    ]
    extra = record.extra_injections
    if extra:
        shown = extra[:EXTRA_INJECTIONS_SHOWN]
        keys = ["location", "mask", "before", "after", "readback", "injected", "trigger", "time_s"]
        rows = "".join(
            "<tr>"
            + "".join(f'<td class="text">{_json_value(i.to_json().get(k))}</td>' for k in keys)
            + "</tr>"
            for i in shown
        )
        more = f" (the first {len(shown)} of {len(extra)})" if len(extra) > len(shown) else ""
        parts.append(
            f"<h2>More injections{more}</h2>"
            '<div class="scroll"><table class="browse"><thead><tr>'
            + "".join(f'<th scope="col" class="text">{esc(k)}</th>' for k in keys)
            + f"</tr></thead><tbody>{rows}</tbody></table></div>"
        )
    if record.storm is not None:
        storm = record.storm.to_json()
        parts.append("<h2>Storm</h2>" + _facts([(k, _json_value(v)) for k, v in storm.items()]))
    others = [run for run in record.machines if run.machine != record.judged]
    for run in others:
        parts.append(
            f"<h2>Machine {esc(run.machine)}</h2>"
            + _facts([(k, _json_value(v)) for k, v in run.to_json().items() if k != "output"])
        )
    parts.append(
        "<h2>Console tail</h2>"
        '<p class="muted">The workload\'s output as recorded'
        + (f" (its last {CONSOLE_TAIL_LINES} lines; {cut} before them)" if cut else "")
        + "; the evidence line above is the console line behind the outcome. "
        "The replay command shows the whole console.</p>"
        f'<h3>stdout</h3><pre class="console" id="stdout">{esc(output) or "(empty)"}</pre>'
    )
    if record.stderr:
        parts.append(
            "<h3>stderr"
            + (f" (last {CONSOLE_TAIL_LINES} lines)" if cut_err else "")
            + f'</h3><pre class="console" id="stderr">{esc(stderr)}</pre>'
        )
    if golden is not None:
        parts.append(
            "<details><summary>The golden run's stdout, to compare</summary>"
            f"<pre>{esc(golden_text(golden.stdout))}</pre></details>"
        )
    previous, following = neighbours
    steps = [f'<a href="{esc(links.experiments())}">all experiments</a>']
    if previous is not None:
        steps.insert(
            0, f'<a href="{esc(links.experiment(previous))}">&lsaquo; experiment {previous}</a>'
        )
    if following is not None:
        steps.append(
            f'<a href="{esc(links.experiment(following))}">experiment {following} &rsaquo;</a>'
        )
    steps.append(f'<a href="{esc(links.api(f"experiments/{experiment_id}"))}">JSON</a>')
    pager = f'<nav class="pager">{"".join(steps)}</nav>'
    body = (
        _header(
            title,
            f"{name} · stratum {row.get('stratum')}",
            _nav(links, "experiment", compare=compare),
        )
        + f"<main>{pager}{''.join(parts)}{pager}</main>"
    )
    return _page(f"{name}: experiment {experiment_id}", body)


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def not_injected_page(report: CampaignReport, links: Links, *, events: str, compare: bool) -> str:
    """Why faults could not be placed, grouped by kind of reason (the report's table)."""
    table = not_injected_table(report, _layout({"": links}))
    count = report.overall.count(Outcome.NOT_INJECTED.value)
    listed = links.experiments(ExperimentFilter(outcome=Outcome.NOT_INJECTED.value))
    body = (
        _header(
            report.name,
            "Faults that could not be placed",
            _nav(links, "not-injected", compare=compare),
        )
        + f'<main><p class="lead">{count} experiments could not place their fault; they are '
        f'listed, never counted. <a href="{esc(listed)}">List them</a>.</p>'
        + (table or '<p class="muted">Every fault so far was placed.</p>')
        + "</main>"
    )
    return _page(f"{report.name}: not injected", body, events=events)


def error_page(status: int, message: str) -> str:
    """A page saying what went wrong (404, 400)."""
    body = (
        _header(f"{status}", message, '<a href="/">Dashboard</a>')
        + f'<main><p class="lead">{esc(message)}</p></main>'
    )
    return _page(f"{status}: {message}", body)
