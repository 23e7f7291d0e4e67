"""Campaign reports: a self-contained HTML page, a side-by-side comparison, static figures.

`build_report(store)` computes what a report shows (`vmfault.report.data`), `render_html`
turns one or two reports into one HTML file (`vmfault.report.html`, charts from
`vmfault.report.svg`), `write_figures` writes static figures (`vmfault.report.figures`), and
`report_command` is `vmfault report` (`vmfault.report.command`).
"""

from vmfault.report.command import REPORT_FORMATS, report_command
from vmfault.report.data import CampaignReport, build_report
from vmfault.report.figures import write_figures
from vmfault.report.html import render_html

__all__ = [
    "REPORT_FORMATS",
    "CampaignReport",
    "build_report",
    "render_html",
    "report_command",
    "write_figures",
]
