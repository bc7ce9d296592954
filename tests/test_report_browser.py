"""report.html in a real browser (headless Chromium): it loads with no console error, no broken
image and no request off this machine, and shows its chart, its table and its gallery. Each test
saves a screenshot (browser_helpers: where). Skips where no chromium is installed."""

from __future__ import annotations

import pytest

from edgeopt.cli import main
from edgeopt.config import MeasureConfig
from edgeopt.device.bench import bench_run
from edgeopt.report import HTML_FILE
from edgeopt.report.gallery import GALLERY_MAX, disagreements
from edgeopt.report.html import render_html
from edgeopt.report.points import chart_points
from edgeopt.results import Choice, Predictions, load_results, write_results
from edgeopt.runtimes import litert as litert_runtime

pytestmark = pytest.mark.browser
QUICK = MeasureConfig(rounds=2, invocations=5, warmup=1)


def _rows(visit, selector: str) -> list[str]:
    return visit.page.locator(selector).all_inner_texts()


def test_the_harness_fails_a_page_with_an_error_a_broken_image_or_a_request_off_this_host(open_page, tmp_path):
    """The checks below can fail: each fault a page can have is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><html><body><img src='absent.png'><img src='https://example.invalid/a.png'>"
                   "<script>console.error('broken on purpose');</script></body></html>")
    good = tmp_path / "good.html"
    pixel = "data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"
    good.write_text(f"<!DOCTYPE html><html><body><img src='{pixel}' alt=''></body></html>")
    problems = "\n".join(open_page(bad.as_uri()).problems())
    assert "console error: broken on purpose" in problems
    assert "request off this host: https://example.invalid/a.png" in problems
    assert "image did not load: file://" in problems and "absent.png" in problems
    assert open_page(good.as_uri()).problems() == []


def _check_report(visit, results) -> None:
    """What every optimize report must show: the chart with each measured variant, the table with
    every variant and the chosen marked."""
    assert visit.problems() == []
    chart = visit.page.locator("#chart-variants .main-svg").first
    chart.wait_for(state="visible")
    plotted = [p.name for p in chart_points(results)]
    legend = " ".join(visit.page.locator("#chart-variants .legendtext").all_text_contents())
    for name in plotted:
        assert name in legend
    assert visit.page.locator("#chart-variants .scatterlayer .points path").count() >= 2 * len(plotted)
    assert visit.page.locator("#variants-table").is_visible()
    rows = _rows(visit, "#variants-table tbody tr")
    assert len(rows) == len(results.variants)
    assert visit.page.locator("#variants-table tr.chosen td").first.inner_text() == f"{results.choice.selected} *"
    assert visit.page.locator("#per-class-table").is_visible()


def test_the_optimize_report_as_optimize_wrote_it(tiny_optimized, open_page):
    run, _ = tiny_optimized
    results = load_results(run)
    visit = open_page((run / HTML_FILE).resolve().as_uri())
    _check_report(visit, results)
    expected = min(len(disagreements(results)), GALLERY_MAX)
    assert visit.page.locator("#disagreements").is_visible()
    assert visit.page.locator("#gallery figure").count() == expected
    print("screenshot:", visit.screenshot("report-optimize"))


def test_the_gallery_shows_each_disagreeing_photo_with_both_answers(tiny_optimized, open_page, tmp_path):
    """The tiny run, with the chosen variant's answers made to differ from the baseline's on
    three photos (which photos a tiny model gets wrong is not for a test to rely on)."""
    results = load_results(tiny_optimized[0])
    base = results.baseline
    chosen = next(v for v in results.variants[1:] if v.predictions is not None and not v.stopped_early)
    n = len(results.model.classes)
    answers = [(b + 1) % n if i < 3 else b for i, b in enumerate(base.predictions.test)]
    forced = chosen.model_copy(update={"predictions": Predictions(test=answers, test_confidence=base.predictions.test_confidence)})
    choice = Choice(**{**results.choice.model_dump(), "selected": chosen.name})
    results = results.model_copy(update={"choice": choice, "variants": [forced if v.name == chosen.name else v
                                                                         for v in results.variants]})
    page = tmp_path / HTML_FILE
    page.write_text(render_html(results), encoding="utf-8")
    visit = open_page(page.as_uri())
    _check_report(visit, results)
    figures = visit.page.locator("#gallery figure")
    assert figures.count() == 3
    for i in range(3):
        figure = figures.nth(i)
        assert figure.is_visible()
        assert figure.locator("img").evaluate("img => img.naturalWidth") == 128
        path, label = results.data.test_items[i]
        text = figure.inner_text()
        assert path in text.replace("\n", "") and f"true: {results.model.classes[label]}" in text
        assert f"{chosen.name}: {results.model.classes[answers[i]]}" in text.replace("\n", " ")
    print("screenshot:", visit.screenshot("report-gallery"))


def test_the_device_choice_report_shows_the_targets_side_by_side(tiny_optimized, open_page, tmp_path, monkeypatch):
    run, _ = tiny_optimized
    real = litert_runtime._interpreter

    def old_runtime(path, threads, delegates=True):  # a device whose runtime cannot load dynamic range
        if path.name == "f1_dynamic_range.tflite":
            raise litert_runtime.UnsupportedOpError(f"{path} needs FULLY_CONNECTED version 12")
        return real(path, threads, delegates)

    monkeypatch.setattr(litert_runtime, "_interpreter", old_runtime)
    device = bench_run(run, QUICK, isolate=False)  # measured in this process, where the patch is
    write_results(device, tmp_path)
    out = tmp_path / "choice"
    assert main(["choose", str(run), "--device-results", str(tmp_path / "results.json"), "--out", str(out)]) == 0
    visit = open_page((out / HTML_FILE).as_uri())
    assert visit.problems() == []
    visit.page.locator("#chart-targets .main-svg").first.wait_for(state="visible")
    assert visit.page.locator("#targets .target").count() == 2
    rows = _rows(visit, "#targets-table tbody tr")
    assert len(rows) == len(load_results(run).variants)
    f1 = next(r for r in rows if r.startswith("f1_dynamic_range"))
    assert "not loadable" in f1
    assert visit.page.locator("#targets-table td.chosen-cell").count() == 2 * 3  # each target's chosen row, 3 cells
    print("screenshot:", visit.screenshot("report-device-choice"))


def test_a_search_report_draws_every_variant_and_each_trial(open_page, tmp_path):
    from edgeopt.report import write_report
    from tests.report_helpers import search_results

    results = search_results(tmp_path / "photos")
    write_report(results, tmp_path)
    visit = open_page((tmp_path / HTML_FILE).as_uri())
    assert visit.problems() == []
    search = visit.page.locator("#search")
    assert search.is_visible() and search.locator("#chart-search .main-svg").first.is_visible()
    # the markers plotly drew in the left panel: every measured variant, and the chosen one's star
    drawn = visit.page.evaluate("() => document.getElementById('chart-search').data"
                                ".filter(t => t.mode === 'markers').reduce((n, t) => n + t.x.length, 0)")
    assert drawn == len(chart_points(results)) + 1
    assert search.locator("#trials-table tbody tr").count() == len(results.search.trials)
    assert "r32_a0.35: its best variant r32_a0.35.f3_int8_uint8io was excluded" in search.inner_text()
    print("screenshot:", visit.screenshot("report-search"))


def test_a_browser_named_but_absent_is_no_browser(monkeypatch):
    from tests import browser_helpers

    monkeypatch.setenv("EDGEOPT_CHROMIUM", "/nonexistent/chromium")
    assert browser_helpers.find_chromium() is None  # the browser tests then skip, saying so
