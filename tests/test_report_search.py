"""A search's part of the report (edgeopt.report.search), from results built in code: the trials
table with each candidate's best variant and verdict, why the chosen one was chosen and the others
not, the chart in report.html and the PNG beside report.md. Under the default (bounded) guard a
fast candidate that changes many answers is set aside; the report says so."""

from __future__ import annotations

import json
import re

import pytest

from edgeopt.choose import decide
from edgeopt.objective import Objective
from edgeopt.report import REPORT_FILE, write_report
from edgeopt.report.html import render_html
from edgeopt.report.markdown import render_markdown
from edgeopt.report.points import chart_points
from edgeopt.report.search import SEARCH_PLOT_FILE, search_figure, trial_rows
from tests.report_helpers import search_results


@pytest.fixture
def search_run(tmp_path):
    return search_results(tmp_path / "photos")


def test_the_bounded_guard_sets_a_fast_candidate_aside_and_the_report_says_why(search_run):
    assert search_run.choice.selected == "f3_int8_uint8io"  # the teacher's own int8, not the 3x faster candidate
    candidate = search_run.variant("r32_a0.35.f3_int8_uint8io").score
    assert candidate.guard == "not shown within" and candidate.L < search_run.selected.score.L
    rows = {row[0]: row for row in trial_rows(search_run)}
    assert rows["r32_a0.35"][-3:] == ("f3_int8_uint8io", f"{candidate.L:.2f} [{candidate.L_low:.2f}, {candidate.L_high:.2f}]",
                                      "not shown within")
    assert rows["r24_a0.35_k0.5"][4] == "stopped (stopped after 1 of 3 epochs)" and rows["r24_a0.35_k0.5"][-1] == "not built"
    text = render_markdown(search_run)
    section = text[text.index("## Search: the candidates trained"):]
    assert "Chosen: **f3_int8_uint8io** (the teacher itself)." in section
    assert re.search(r"r32_a0\.35: its best variant r32_a0\.35\.f3_int8_uint8io was excluded: it loses 0\.00 \[[-.0-9]+, "
                     r"[.0-9]+\] pp of test_accuracy: it could lose up to [.0-9]+ pp, more than twice the allowed 1 pp\.", section)
    assert f"![every variant's accuracy against its latency]({SEARCH_PLOT_FILE})" in section


def test_under_benefit_of_doubt_the_same_measurements_choose_the_candidate(search_run):
    again = decide(search_run.model_copy(update={"choice": None}), Objective(guard="benefit-of-doubt"))
    assert again.choice.selected == "r32_a0.35.f3_int8_uint8io"
    assert "Chosen: **r32_a0.35.f3_int8_uint8io** (candidate r32_a0.35)." in render_markdown(again)


def test_report_html_has_the_search_chart_with_every_variant_and_the_trials(search_run, tmp_path):
    page = render_html(search_run)
    section = page[page.index('<section id="search">'):]
    section = section[:section.index("</section>")]
    assert 'id="chart-search"' in section and 'id="trials-table"' in section
    assert page.count("window.PlotlyConfig") == 1  # plotly.js inlined once, by the page's first chart
    assert "<td>r32_a0.35</td>" in section and "not built" in section
    figure = search_figure(search_run)
    markers = [t for t in figure.data if t.mode == "markers" and t.name in ("teacher", "r32_a0.35")]
    drawn = sorted(x for t in markers for x in t.x)
    assert drawn == sorted(p.latency_ms for p in chart_points(search_run))  # every measured variant, once
    sizes = {name: size for t in markers for name, size in zip(t.hovertemplate, t.marker.size, strict=True)}
    assert max(sizes, key=lambda h: sizes[h]).startswith("<b>f0_float32</b>")  # marker size by bytes: the largest file
    assert any(t.name == "chosen: f3_int8_uint8io" for t in figure.data)
    curves = [t for t in figure.data if t.mode == "lines+markers"]
    assert [list(t.x) for t in curves] == [[1, 2, 3], [1]]  # each trial's validation accuracy per epoch


def test_write_report_adds_the_search_png_and_a_run_without_search_has_no_section(search_run, tmp_path):
    write_report(search_run, tmp_path)
    assert (tmp_path / SEARCH_PLOT_FILE).stat().st_size > 10_000
    assert "## Search: the candidates trained" in (tmp_path / REPORT_FILE).read_text()
    assert json.loads((tmp_path / "results.json").read_text())["search"]["trials"][0]["name"] == "r32_a0.35"
    plain = search_run.model_copy(update={"search": None})
    assert "## Search" not in render_markdown(plain) and 'id="search"' not in render_html(plain)
    assert "search" not in json.loads(plain.to_json())  # an optimize run's file stays as older readers know it
