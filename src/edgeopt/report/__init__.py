"""The report of an optimize run or of a device choice, rendered from the results only.

report.md and its PNG (markdown.py, png.py), report.html (html.py: one self-contained page with
an interactive chart, charts.py), a search's trials in both (search.py), all from the typed
results (edgeopt.results); nothing here measures or decides. Plotting libraries are imported only
when a picture is drawn.
"""

from __future__ import annotations

import logging
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
    """results.json, the PNG, report.md and report.html into folder. Without plotly (an install
    older than report.html) the rest is written and a warning says how to get the page: the
    measurements of a long run are never lost to a missing chart library."""
    from edgeopt.report.png import render_png

    write_results(results, folder)
    render_png(results, folder / PLOT_FILE)
    if results.search is not None:
        from edgeopt.report.search import SEARCH_PLOT_FILE, render_search_png

        render_search_png(results, folder / SEARCH_PLOT_FILE)
    try:
        from edgeopt.report.html import render_html

        page = render_html(results)
    except ImportError as exc:
        logging.getLogger(__name__).warning(
            "%s not written (%s); install the build extra (pip install -e '.[build]') for it", HTML_FILE, exc)
        page = None
    (folder / REPORT_FILE).write_text(render_markdown(results, html_name=HTML_FILE if page else None))
    if page:
        (folder / HTML_FILE).write_text(page, encoding="utf-8")
