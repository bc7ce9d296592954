"""report.html: one self-contained page per optimize run and per device choice.

Everything the page shows is inside it -- styles, plotly.js, the thumbnails as data: URIs -- so it
opens from a file, a mail attachment or an offline device, and fetches nothing when viewed. It
reads the typed results only (what report.md says, plus the chart and the photo gallery).
"""

from __future__ import annotations

from pathlib import Path

from edgeopt.report import charts
from edgeopt.report.gallery import GALLERY_MAX, KINDS, Disagreement, disagreements, image_root, thumbnail_uri
from edgeopt.report.markdown import (
    REPAIRS_INTRO,
    REPAIRS_TITLE,
    RETRAINED_TITLE,
    graph_items,
    libraries_line,
    repair_items,
    retrained_items,
    setting_lines,
    timing_line,
)
from edgeopt.report.page import esc, inline, page, table, unordered
from edgeopt.report.points import not_drawn
from edgeopt.report.search import search_section_html
from edgeopt.report.table import TABLE_HEADER, guard_words, pct, table_rows, verdict, verdict_detail
from edgeopt.results import PairedClass, Results


def _headline(results: Results) -> str:
    choice = results.choice
    if choice is None:
        return ""
    chosen, base = results.selected, results.baseline
    head = (f'<p class="headline">Chosen for {esc(", ".join(choice.target))}: <span class="chosen-name" id="chosen">'
            f"{esc(choice.selected)}</span>")
    if chosen.name == base.name:
        return head + " &mdash; the baseline itself.</p>"
    smaller = base.size_bytes / chosen.size_bytes
    figures = [f"{smaller:.2f}x smaller" if smaller >= 1 else f"{1 / smaller:.2f}x larger"]
    if chosen.latency and base.latency:
        speed = base.latency.median_ms / chosen.latency.median_ms
        figures.append(f"{speed:.2f}x faster" if speed >= 1 else f"{1 / speed:.2f}x slower")
    if chosen.paired:
        p = chosen.paired
        figures.append(f"test accuracy {100 * p.difference:+.2f} pp [{100 * p.low:+.2f}, {100 * p.high:+.2f}]")
    return head + f" &mdash; against {esc(base.name)}: {esc(', '.join(figures))}.</p>"


def _variants_table(results: Results) -> str:
    selected = results.choice.selected if results.choice else ""
    rows = []
    for v, cells in zip(results.variants, table_rows(results), strict=True):
        word = verdict(v)
        detail = verdict_detail(v)
        html_cells = [esc(c) for c in cells]
        if detail:
            html_cells[-1] = f'<abbr title="{esc(detail)}">{esc(word)}</abbr>'
        cls = "chosen" if v.name == selected else ("excluded" if v.score is None or not v.score.eligible else "")
        rows.append((html_cells, cls))
    return table(TABLE_HEADER, rows, "variants-table")


def _class_cell(acc: float | None, pc: PairedClass | None) -> str:
    text = esc(pct(acc))
    if pc is None:
        return f"<td>{text}</td>"
    cls = "worse" if pc.high < 0 else "better" if pc.low > 0 else ""
    title = f"{100 * pc.difference:+.1f} pp [{100 * pc.low:+.1f}, {100 * pc.high:+.1f}], {pc.discordant} discordant of {pc.n}"
    return f'<td class="{cls}" title="{esc(title)}">{text} ({100 * pc.difference:+.1f})</td>'


def _guard_list(results: Results) -> str:
    """Each variant's loss against the guard's tolerance in plain words ("" without a guard)."""
    items = [f"{v.name}: {words}." for v in results.variants if (words := guard_words(v, results))]
    return f"<h3>The accuracy guard, variant by variant</h3>{unordered(items, 'guard')}" if items else ""


def _per_class_table(results: Results) -> str:
    classes = results.model.classes
    head = "".join(f"<th>{esc(h)}</th>" for h in ("variant", *classes))
    body = []
    for v in results.variants:
        cells = "".join(_class_cell(v.test.per_class.get(c) if v.test else None, v.paired.per_class.get(c) if v.paired else None)
                        for c in classes)
        body.append(f"<tr><td>{esc(v.name)}</td>{cells}</tr>")
    return (f'<div class="scroll"><table id="per-class-table"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def _answer(label: str, cls: str, confidence: float, truth: str) -> str:
    word, mark = ("right", "&#10003;") if cls == truth else ("wrong", "&#10007;")
    return f'<div class="{word}">{mark} {esc(label)}: {esc(cls)} ({100 * confidence:.0f}%)</div>'


def _figure(d: Disagreement, root: Path, baseline: str, chosen: str) -> str:
    uri = thumbnail_uri(root / d.path)
    image = (f'<img src="{uri}" alt="{esc(d.path)}" width="128" height="128">' if uri
             else f'<div class="missing">photo not found at {esc(root)}</div>')
    return (f'<figure data-kind="{esc(d.kind)}">{image}<figcaption><div class="path">{esc(d.path)}</div>'
            f"<div>true: <strong>{esc(d.true_class)}</strong></div>"
            f"{_answer(chosen, d.chosen_class, d.chosen_confidence, d.true_class)}"
            f"{_answer(baseline, d.baseline_class, d.baseline_confidence, d.true_class)}</figcaption></figure>")


def _gallery(results: Results, root: Path | None) -> str:
    choice = results.choice
    if choice is None:
        return ""
    if choice.selected == choice.baseline:
        return "<p>The baseline itself was chosen: nothing to compare.</p>"
    if results.baseline.predictions is None or results.selected.predictions is None:
        return (f"<p>These results keep no per-image answers of {esc(choice.selected)} or {esc(choice.baseline)}: "
                "the photos they disagree on cannot be shown.</p>")
    found = disagreements(results)
    if not found:
        return (f'<p id="gallery-count">{esc(choice.selected)} and {esc(choice.baseline)} give the same answer on every '
                f"test photo both were evaluated on.</p>")
    counts = ", ".join(f"{sum(d.kind == k for d in found)} {k}" for k in KINDS)
    shown = found[:GALLERY_MAX]
    more = f"; the first {len(shown)} are shown, losses first" if len(found) > len(shown) else ", losses first"
    folder = image_root(results, root)
    figures = "".join(_figure(d, folder, choice.baseline, choice.selected) for d in shown)
    return (f'<p id="gallery-count">{len(found)} test photo(s) on which {esc(choice.selected)} and {esc(choice.baseline)} '
            f"answer differently ({esc(counts)}){esc(more)}. Each shows the true class and both answers with the "
            f"probability the model gave its answer; the thumbnail is the photo squared, as the model sees it.</p>"
            f'<div class="gallery" id="gallery">{figures}</div>')


def _details(results: Results) -> str:
    parts = [f"<details open><summary>What each transformation did to the graph</summary>{unordered(graph_items(results))}</details>"]
    if repair := repair_items(results):
        parts.append(f"<details><summary>{esc(REPAIRS_TITLE)}</summary><p>{esc(REPAIRS_INTRO)}</p>{unordered(repair)}</details>")
    if retrained := retrained_items(results):
        parts.append(f"<details><summary>{esc(RETRAINED_TITLE)}</summary>{unordered(retrained)}</details>")
    if results.choice:
        parts.append(f"<details><summary>Ranking by L</summary><ol>{''.join(_ranking(results))}</ol></details>")
    if results.notes:
        parts.append(f"<details><summary>Notes</summary>{unordered(results.notes)}</details>")
    if results.diagnostics:
        parts.append(f"<details><summary>Diagnostics</summary>{unordered(results.diagnostics)}</details>")
    tail = [timing_line(results)] if results.timings else []
    parts.append("".join(f'<p class="setting">{inline(line)}</p>' for line in [*tail, libraries_line(results)]))
    return "".join(parts)


def _ranking(results: Results) -> list[str]:
    assert results.choice is not None
    items = []
    for name in results.choice.ranking:
        s = results.variant(name).score
        text = (f"{name}: L = {s.L:.3f} [{s.L_low:.3f}, {s.L_high:.3f}]" + ("" if s.eligible else f" — {s.excluded_because}")
                if s else f"{name}: not scored")
        items.append(f"<li>{esc(text)}</li>")
    return items


def render_html(results: Results, photos: Path | None = None) -> str:
    """The optimize run's page; photos: where the test photos are [default: the results' data root]."""
    title = "edgeopt optimize report" if results.kind == "optimize" else "edgeopt device benchmark report"
    banner = ('<p class="banner">SYNTHETIC demo data: images made by edgeopt\'s generator, not photographs.</p>'
              if results.data.synthetic else "")
    settings = "".join(f'<p class="setting">{inline(line)}</p>' for line in setting_lines(results))
    choice = results.choice
    reasons = unordered([*choice.reasons, f"Under the other objective form the choice would be **{choice.other_form_selected}**."],
                    "reasons") if choice else ""
    chart = charts.chart_html(charts.variants_figure(results), "chart-variants", include_script=True)
    confidence = choice.objective.get("confidence", 0.95) if choice else 0.95
    missing = f" Not drawn (no latency or accuracy): {esc(', '.join(not_drawn(results)))}." if not_drawn(results) else ""
    body = f"""<h1>{esc(title)}</h1>{banner}{settings}
<section id="summary">{_headline(results)}<h2>Why</h2>{reasons}</section>
<section id="chart"><h2>Accuracy, latency and size</h2>{chart}
<p class="caption">Each variant's test accuracy minus the baseline's on the same photos, against its latency (left) and its
file size (right). Vertical bars: the paired {confidence:.0%} interval of the accuracy change; horizontal bars: the interval of
its latency ratio to the baseline (same interleaved rounds), times the baseline's median. The step line in each panel is
that panel's Pareto front: no variant left of it is as accurate. Hover a point for its figures; click a legend entry to
hide it.{missing}</p>
</section>
{search_section_html(results)}
<section id="variants"><h2>Variants</h2>{_variants_table(results)}
<p class="caption"><em>Δ pp</em>: test accuracy minus the baseline's on the same images, with its paired interval
(Tango's score interval); <em>disc.</em>: images on which exactly one of the two is right; <em>changed %</em>: the share of
the baseline's answers the variant changes on every image evaluated. Hover an underlined verdict for its reason.</p>
{_guard_list(results)}</section>
<section id="per-class"><h2>Accuracy per class</h2>{_per_class_table(results)}
<p class="caption">Test accuracy per class, and in brackets the paired change against the baseline in pp; red: the class's
interval lies wholly below 0, green: wholly above (hover a cell for the interval).</p></section>
<section id="disagreements"><h2>Where the chosen variant and the baseline disagree</h2>{_gallery(results, photos)}</section>
<section id="details"><h2>Details</h2>{_details(results)}</section>"""
    return page(title, body)
