"""The report of an optimize run or of a device choice, rendered from the results only.

report.md and its PNG (markdown.py, png.py), report.html (html.py: one self-contained page with
an interactive chart, charts.py), all from the typed results (edgeopt.results); nothing here
measures or decides. Plotting libraries are imported only when a picture is drawn.
"""

from __future__ import annotations

from pathlib import Path

from edgeopt.report.markdown import PLOT_FILE, markdown_table, render_device_comparison, render_markdown
from edgeopt.report.table import TABLE_HEADER, paired_text, table_rows
from edgeopt.results import Results, write_results

REPORT_FILE = "report.md"
HTML_FILE = "report.html"

__all__ = [
    "HTML_FILE", "PLOT_FILE", "REPORT_FILE", "TABLE_HEADER", "markdown_table", "paired_text", "render_device_comparison",
    "render_markdown", "table_rows", "write_report",
]


def write_report(results: Results, folder: Path) -> None:
    """results.json, the PNG, report.md and report.html into folder."""
    from edgeopt.report.html import render_html
    from edgeopt.report.png import render_png

    write_results(results, folder)
    render_png(results, folder / PLOT_FILE)
    (folder / REPORT_FILE).write_text(render_markdown(results, html_name=HTML_FILE))
    (folder / HTML_FILE).write_text(render_html(results), encoding="utf-8")
