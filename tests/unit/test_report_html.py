"""The HTML report, the comparison page, static figures and `report_command`: self-contained,
escaped, the store's numbers in its tables, and one-line errors for bad input."""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.unit.test_report_data import EXPERIMENTS, HOSTILE, make_store
from vmfault.classify import Outcome
from vmfault.errors import UsageError
from vmfault.report import REPORT_FORMATS, build_report, render_html, report_command
from vmfault.report.data import CampaignReport
from vmfault.report.html import CONTENT_SECURITY_POLICY, rate_difference
from vmfault.report.svg import esc, heat_color
from vmfault.stats import wilson


class Page(HTMLParser):
    """Tags, attributes, ids and the rows of every table with an id, from an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.attrs: list[tuple[str, str, str]] = []
        self.ids: list[str] = []
        self.tables: dict[str, list[dict[str, str]]] = {}
        self._table: str | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        values = {name: value or "" for name, value in attrs}
        for name, value in values.items():
            self.attrs.append((tag, name, value))
        if "id" in values:
            self.ids.append(values["id"])
        if tag == "table" and "id" in values:
            self._table = values["id"]
            self.tables[self._table] = []
        if tag == "tr" and self._table is not None:
            self.tables[self._table].append(values)

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Page:
    parser = Page()
    parser.feed(page)
    parser.close()
    return parser


@pytest.fixture
def report(tmp_path: Path) -> CampaignReport:
    with make_store(tmp_path / "c.db", EXPERIMENTS) as store:
        return build_report(store, db="results/c.db")


def assert_self_contained(page: str) -> None:
    parsed = parse(page)
    assert not re.search(r"(?i)\b(?:https?|ftp|wss?)://", page)
    assert not re.search(r"(?i)url\s*\(|@import|@font-face|javascript:", page)
    for tag in ("script", "link", "img", "iframe", "object", "embed", "base", "form", "video"):
        assert parsed.tags[tag] == 0, tag
    for tag, name, value in parsed.attrs:
        assert not name.startswith("on"), (tag, name)
        assert name not in ("src", "srcset", "xlink:href", "action", "poster"), (tag, name)
        if name == "href":
            assert value.startswith("#"), value
    assert len(parsed.ids) == len(set(parsed.ids)), Counter(parsed.ids).most_common(3)


def test_report_is_self_contained_and_forbids_requests(report: CampaignReport) -> None:
    page = render_html([report], generated_at="2024-05-01 12:00 UTC")
    assert page.startswith("<!DOCTYPE html>")
    assert f'content="{CONTENT_SECURITY_POLICY}"' in page
    assert "default-src 'none'" in CONTENT_SECURITY_POLICY
    assert_self_contained(page)
    assert page.count("<svg") >= 5


def test_database_strings_are_escaped(report: CampaignReport) -> None:
    page = render_html([report])
    assert "<script>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "evil.example" in page and "http://evil" not in page
    text = "".join(parse(page).text)
    assert HOSTILE in text


def test_escape_shows_control_characters_and_breaks_urls() -> None:
    assert esc("a\x1b[31mb\x00\tc\nd") == "a\u241b[31mb\u2400\tc\nd"
    assert esc("https://x/\"'<>&") == "https&#58;//x/&quot;&#x27;&lt;&gt;&amp;"


def test_overall_table_holds_every_outcome_with_its_count(report: CampaignReport) -> None:
    rows = parse(render_html([report])).tables["overall-outcomes"]
    found = {row["data-outcome"]: int(row["data-count"]) for row in rows if "data-outcome" in row}
    assert found == {o.outcome: o.count for o in report.overall.outcomes}
    assert list(found) == [o.value for o in Outcome]


def test_strata_table_and_sections(report: CampaignReport) -> None:
    page = render_html([report])
    parsed = parse(page)
    strata = [row["data-stratum"] for row in parsed.tables["strata-outcomes"] if row]
    assert strata == ["mem", "regs"]
    for section in ("provenance", "golden", "outcomes", "locations", "crashes", "activation",
                    "examples", "crash-causes", "example-0", "example-4"):  # fmt: skip
        assert section in parsed.ids, section
    assert "instructions" not in parsed.ids and "storms" not in parsed.ids
    assert "vmfault replay results/c.db 0" in page
    assert "host nanoseconds (wall clock)" in page and "guest instructions" in page


def test_comparison_is_self_contained_with_unique_ids(
    report: CampaignReport, tmp_path: Path
) -> None:
    with make_store(tmp_path / "other.db", EXPERIMENTS[:9]) as store:
        other = build_report(store, db="results/other.db")
    page = render_html([report, other])
    assert_self_contained(page)
    parsed = parse(page)
    assert "compare-all" in parsed.ids and "compare-stratum-regs" in parsed.ids
    assert "a-example-0" in parsed.ids and "b-example-0" in parsed.ids
    assert "A: hand-made" in page and "B: hand-made" in page
    assert "Strata in one campaign only: mem." in page


def test_render_needs_one_or_two_reports(report: CampaignReport) -> None:
    with pytest.raises(ValueError, match="one or two"):
        render_html([])
    with pytest.raises(ValueError, match="one or two"):
        render_html([report, report, report])


def test_rate_difference_is_newcombe() -> None:
    a, b = wilson(30, 100), wilson(10, 100)
    difference, low, high = rate_difference(a, b)
    assert difference == pytest.approx(0.2)
    assert low == pytest.approx(0.2 - ((0.3 - a.low) ** 2 + (b.high - 0.1) ** 2) ** 0.5)
    assert high == pytest.approx(0.2 + ((a.high - 0.3) ** 2 + (0.1 - b.low) ** 2) ** 0.5)
    assert 0 < low < difference < high < 1
    same = rate_difference(a, a)
    assert same[0] == 0 and same[1] < 0 < same[2]


def test_heat_colours_run_from_green_to_dark_red() -> None:
    assert heat_color(0.0) == "#afd8a6"
    assert heat_color(1.0) == "#7f0000"
    assert heat_color(-1) == heat_color(0.0) and heat_color(2) == heat_color(1.0)


# ---------------------------------------------------------------------------- command


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "c.db"
    make_store(path, EXPERIMENTS).close()
    return path


def test_command_writes_one_html_file(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "c.html"
    assert report_command([db], out, "html") == [out]
    page = out.read_text(encoding="utf-8")
    assert_self_contained(page)
    assert str(db) in page
    assert not list(out.parent.glob(".*partial"))


def test_command_compares_two_databases(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp.html"
    assert report_command([db, db], out, "HTML") == [out]
    assert "Comparison of two fault-injection campaigns" in out.read_text(encoding="utf-8")


@pytest.mark.parametrize("fmt", ["png", "svg", "pdf"])
def test_command_writes_figures(db: Path, tmp_path: Path, fmt: str) -> None:
    pytest.importorskip("matplotlib")
    written = report_command([db], tmp_path / "fig.html", fmt)
    names = [p.name for p in written]
    assert names == [f"fig-{n}.{fmt}" for n in
                     ("outcomes", "heatmap", "latency", "causes", "activation")]  # fmt: skip
    magic = {"png": b"\x89PNG", "svg": b"<?xml", "pdf": b"%PDF"}[fmt]
    for path in written:
        assert path.read_bytes().startswith(magic)
    if fmt != "png":
        first = [p.read_bytes() for p in written]
        report_command([db], tmp_path / "fig.html", fmt)
        assert [p.read_bytes() for p in written] == first


def test_command_figures_of_two_campaigns(db: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    written = report_command([db, db], tmp_path / "cmp", "svg")
    assert written[0] == tmp_path / "cmp-outcomes.svg"
    assert len(written) == 5


def test_command_rejects_bad_input(db: Path, tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    with pytest.raises(UsageError, match="one campaign or compares two") as three:
        report_command([db, db, db], out, "html")
    assert three.value.hint
    with pytest.raises(UsageError, match="no campaign database given"):
        report_command([], out, "html")
    with pytest.raises(UsageError, match="no campaign database at"):
        report_command([tmp_path / "missing.db"], out, "html")
    with pytest.raises(UsageError, match="unknown report format 'docx'") as unknown:
        report_command([db], out, "docx")
    assert all(f in unknown.value.hint for f in REPORT_FORMATS)
    not_ours = tmp_path / "notes.db"
    not_ours.write_text("not a database")
    with pytest.raises(UsageError, match="not a vmfault campaign database"):
        report_command([not_ours], out, "html")
    with pytest.raises(UsageError, match="is a directory"):
        report_command([db], tmp_path, "html")
    assert not out.exists()


def test_vmm_reactions_are_grouped_by_message_in_their_section(report: CampaignReport) -> None:
    # EXPERIMENTS has one vmm-error (experiment 7, stratum regs, no evidence: its reason).
    assert [(g.message, g.count, g.example_id) for g in report.vmm_reactions] == [
        ("reason N", 1, 7)
    ]
    page = render_html([report])
    assert "vmm" in parse(page).ids
    assert "VMM reactions, grouped by message" in page
    assert "vmfault replay results/c.db 7" in page
