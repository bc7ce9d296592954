"""The report from results alone: the gallery of disagreements, a page that fetches nothing, the
charts' fronts, and a PNG whose words never overlap. (The pages in a real browser:
test_report_browser.py.)"""

from __future__ import annotations

import base64
import io
import sys
from html.parser import HTMLParser

import pytest
from PIL import Image

from edgeopt.objective import Objective
from edgeopt.report import HTML_FILE, PLOT_FILE, REPORT_FILE, write_report
from edgeopt.report import gallery as gallery_module
from edgeopt.report.gallery import KINDS, disagreements
from edgeopt.report.html import render_html
from edgeopt.report.png import draw_png
from edgeopt.report.points import ChartPoint, front, front_line
from tests.report_helpers import CLASSES, built_results, variant, write_photos

PER_CLASS = 10


def _wrong(label: int, by: int = 1) -> int:
    return (label + by) % len(CLASSES)


@pytest.fixture
def run(tmp_path):
    """30 photos; f2_int8 (4x smaller, 3x faster) is chosen and answers differently from the
    baseline on four: 1 and 4 only the baseline right, 5 only f2 right, 6 both wrong. Without an
    accuracy guard: 30 photos could not show its 3.3 pp loss within any tolerance, and the gallery
    is what is tested here."""
    items = write_photos(tmp_path / "photos", PER_CLASS)
    labels = [label for _, label in items]
    base = [_wrong(t) if i in (5, 6) else t for i, t in enumerate(labels)]
    f2 = [_wrong(t) if i == 1 else _wrong(t, 2) if i in (4, 6) else t for i, t in enumerate(labels)]
    variants = [
        variant("f0_float32", 4_000_000, [10.0, 10.2, 9.9, 10.1, 10.0], base, labels),
        variant("f2_int8", 1_000_000, [3.0, 3.1, 2.9, 3.0, 3.05], f2, labels),
        variant("ort_int8_static", 1_100_000, [2.5, 2.6, 2.4, 2.5, 2.55], base, labels, backend="onnxruntime"),
    ]
    return built_results(tmp_path / "photos", items, variants, Objective(max_metric_loss=None))


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(text)
    return parser.tags


def _gallery_images(text: str) -> list[dict[str, str | None]]:
    start = text.index('id="gallery"')
    return [attrs for tag, attrs in _tags(text[start:]) if tag == "img"]


def test_the_gallery_shows_where_the_chosen_variant_and_the_baseline_disagree_losses_first(run):
    assert run.choice.selected == "f2_int8"
    found = disagreements(run)
    assert [d.index for d in found] == [1, 4, 5, 6]
    assert [d.kind for d in found] == [KINDS[0], KINDS[0], KINDS[1], KINDS[2]]
    first = found[0]
    assert (first.true_class, first.baseline_class, first.chosen_class) == (CLASSES[0], CLASSES[0], CLASSES[1])
    assert first.chosen_confidence == run.selected.predictions.test_confidence[1]

    page = render_html(run)
    assert "against f0_float32: 4.00x smaller, 3.33x faster, test accuracy -3.33 pp [" in page
    images = _gallery_images(page)
    assert [img["alt"] for img in images] == [run.data.test_items[i][0] for i in (1, 4, 5, 6)]
    assert "4 test photo(s) on which f2_int8 and f0_float32 answer differently (2 only the baseline right, " \
           "1 only the chosen variant right, 1 both wrong)" in page
    thumbnail = Image.open(io.BytesIO(base64.b64decode(images[0]["src"].split(",", 1)[1])))
    assert thumbnail.format == "JPEG" and thumbnail.size == (128, 128)


def test_the_gallery_is_bounded_and_says_how_many_there_are(run, monkeypatch):
    monkeypatch.setattr(gallery_module, "GALLERY_MAX", 2)
    monkeypatch.setattr("edgeopt.report.html.GALLERY_MAX", 2)
    page = render_html(run)
    assert len(_gallery_images(page)) == 2
    assert "4 test photo(s)" in page and "the first 2 are shown" in page


def test_photos_that_are_not_here_are_said_missing_not_broken(run, tmp_path):
    page = render_html(run, photos=tmp_path / "elsewhere")
    assert _gallery_images(page) == []
    assert page.count("photo not found at") == 4


def test_the_page_fetches_nothing_and_escapes_what_it_is_given(run):
    hostile = run.model_copy(update={"notes": ["<script>alert('note')</script> & more"]})
    page = render_html(hostile)
    for tag, attrs in _tags(page):
        assert not (tag == "script" and attrs.get("src")), "a script is fetched"
        assert not (tag == "link" and attrs.get("href")), "a style sheet is fetched"
        if tag == "img":
            assert (attrs.get("src") or "").startswith("data:image/"), attrs.get("src", "")[:60]
    assert "&lt;script&gt;alert(&#x27;note&#x27;)&lt;/script&gt; &amp; more" in page
    assert "<script>alert(" not in page
    assert "Plotly.newPlot" in page  # plotly.js and the chart are inline


def _point(name: str, latency_ms: float, size_kb: float, delta_pp: float) -> ChartPoint:
    return ChartPoint(name=name, latency_ms=latency_ms, latency_interval_ms=None, size_kb=size_kb, delta_pp=delta_pp,
                      delta_interval_pp=None, accuracy_pct=90 + delta_pp, verdict="eligible", chosen=False, baseline=False,
                      eligible=True, colour="#000000", marker="o")


def test_each_panels_front_is_the_staircase_of_the_points_nothing_beats():
    points = [_point("slow_best", 10, 4000, 0.0), _point("fast_worse", 3, 1000, -2.0),
              _point("middle", 5, 1500, -0.5), _point("small", 6, 900, -1.0)]
    # "small" is slower than "middle" and less accurate; "fast_worse" is bigger than "small" and less accurate
    assert [p.name for p in front(points, "latency")] == ["fast_worse", "middle", "slow_best"]
    assert [p.name for p in front(points, "size")] == ["small", "middle", "slow_best"]
    xs, ys = front_line(points, "latency", (0.0, 12.0), (-3.0, 1.0))
    # up from the bottom edge at the fastest, through each front point, out to the right edge
    assert xs == [3, 3, 5, 10, 12.0] and ys == [-3.0, -2.0, -0.5, 0.0, 0.0]


def _overlap(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_the_png_names_every_variant_once_and_no_two_words_overlap(run):
    import matplotlib.pyplot as plt

    # f2_int8 and a twin at the same point: the old plot printed their names on top of each other
    twin = run.selected.model_copy(update={"name": "f3_int8_uint8io"})
    crowded = run.model_copy(update={"variants": [*run.variants, twin]})
    fig = draw_png(crowded)
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        legend = fig.legends[0]
        names = [t.get_text() for t in legend.get_texts()]
        for v in crowded.variants:
            assert sum(n.startswith(v.name + " ") for n in names) == 1, names
        assert any("(chosen)" in n for n in names)
        texts = [*legend.get_texts(), legend.get_title(), fig._suptitle]
        for ax in fig.axes:
            texts += [ax.xaxis.label, ax.yaxis.label, ax.title, *ax.texts]  # ax.texts: any label beside a point
            for axis in (ax.xaxis, ax.yaxis):  # the tick labels drawn: those inside the view
                low, high = sorted(axis.get_view_interval())
                texts += [t.label1 for t in axis.get_major_ticks() if low <= t.get_loc() <= high and t.label1.get_visible()]
        texts = [t for t in texts if t is not None and t.get_visible() and t.get_text().strip()]
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
        for i, (text_a, a) in enumerate(boxes):
            for text_b, b in boxes[i + 1:]:
                assert not _overlap(a, b), f"{text_a!r} overlaps {text_b!r}"
        legend_box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not _overlap(legend_box, ax.get_window_extent(renderer)), "the legend covers a panel"
    finally:
        plt.close(fig)


def test_write_report_writes_the_page_beside_the_markdown(run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    write_report(run, out)
    for name in ("results.json", REPORT_FILE, HTML_FILE, PLOT_FILE):
        assert (out / name).stat().st_size > 0, name
    assert f"[{HTML_FILE}]({HTML_FILE})" in (out / REPORT_FILE).read_text()
    assert '<td>f2_int8 *</td>' in (out / HTML_FILE).read_text()


def test_when_the_baseline_is_chosen_the_gallery_says_so(tmp_path):
    items = write_photos(tmp_path / "photos", 3)
    labels = [label for _, label in items]
    only = built_results(tmp_path / "photos", items, [variant("f0_float32", 1000, [1.0, 1.0, 1.0], labels, labels)])
    assert disagreements(only) == []
    assert "The baseline itself was chosen" in render_html(only)


def test_results_without_per_image_answers_say_so_instead_of_claiming_agreement(run):
    bare = run.model_copy(update={"variants": [v.model_copy(update={"predictions": None}) for v in run.variants]})
    page = render_html(bare)
    assert disagreements(bare) == []
    assert "keep no per-image answers" in page and "give the same answer" not in page
    assert 'id="variants-table"' in page


def test_without_plotly_the_run_keeps_everything_but_the_page_and_says_how_to_get_it(run, tmp_path, monkeypatch, caplog):
    for name in ("plotly", "plotly.graph_objects", "plotly.subplots"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as in an install older than report.html
    out = tmp_path / "out"
    out.mkdir()
    write_report(run, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(["results.json", REPORT_FILE, PLOT_FILE])
    assert HTML_FILE not in (out / REPORT_FILE).read_text()
    assert f"{HTML_FILE} not written" in caplog.text and "pip install -e '.[build]'" in caplog.text
