"""report.html of `edgeopt choose --device-results`: the build machine and each device side by
side -- what each is and runs, what was chosen for it and why, each variant's figures on each --
with the chart of latency and accuracy per target. Self-contained as the optimize page is.
"""

from __future__ import annotations

from edgeopt.report import charts
from edgeopt.report.markdown import change_reason, machine_words, runtimes_words
from edgeopt.report.page import esc, inline, page, unordered
from edgeopt.report.table import paired_text, verdict, verdict_detail
from edgeopt.results import Results, Variant

TITLE = "edgeopt: the choice, per target"
COLUMNS = ("ms/image", "Δ pp [95%]", "verdict")


def _card(label: str, res: Results, run: Results) -> str:
    assert res.choice is not None and run.choice is not None
    same = res is run or res.choice.selected == run.choice.selected
    note = "" if res is run else (" (the same as the build machine's)" if same else f" (the build machine's: {run.choice.selected})")
    return (f'<div class="target"><strong>{esc(label)}</strong><br>{esc(machine_words(res))}<br>'
            f"runtime: {esc(runtimes_words(res) or 'not recorded')}; {res.measure.get('threads')} thread(s)<br>"
            f"accuracy on {len(res.data.test_items)} images ({esc(res.data.split_note)})<br>"
            f'chosen: <span class="chosen-name">{esc(res.choice.selected)}</span>{esc(note)}</div>')


def _cells(v: Variant | None) -> list[str]:
    if v is None:
        return ["-", "-", "not benchmarked"]
    word, detail = verdict(v), verdict_detail(v)
    shown = f'<abbr title="{esc(detail)}">{esc(word)}</abbr>' if detail else esc(word)
    return [f"{v.latency.median_ms:.2f}" if v.latency else "-", esc(paired_text(v)[0]), shown]


def _side_by_side(targets: list[tuple[str, Results]], run: Results) -> str:
    top = '<th rowspan="2">variant</th>' + "".join(f'<th colspan="{len(COLUMNS)}">{esc(label)}</th>' for label, _ in targets)
    sub = "".join(f"<th>{esc(c)}</th>" for _ in targets for c in COLUMNS)
    rows = []
    for v in run.variants:
        cells = [f"<td>{esc(v.name)}</td>"]
        for _, res in targets:
            mine = next((x for x in res.variants if x.name == v.name), None)
            chosen = res.choice is not None and res.choice.selected == v.name
            cls = ' class="chosen-cell"' if chosen else ""
            cells += [f"<td{cls}>{c}</td>" for c in _cells(mine)]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table id="targets-table"><thead><tr>{top}</tr><tr>{sub}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def render_device_html(run: Results, devices: list[tuple[str, Results]]) -> str:
    """The page of a choice remade for each device (labels and results as `choose` made them)."""
    assert run.choice is not None
    targets = [("build machine", run), *devices]
    cards = "".join(_card(label, res, run) for label, res in targets)
    chart = charts.chart_html(charts.device_figure(run, devices), "chart-targets", include_script=True)
    why = []
    for label, dev in devices:
        assert dev.choice is not None
        changed = change_reason(run, dev)
        why.append(f"<h3>{esc(label)}: {esc(dev.choice.selected)}</h3>" + unordered(dev.choice.reasons, "reasons")
                   + (f"<p><strong>{inline(changed)}</strong></p>" if changed else "")
                   + "".join(f'<p class="setting">Note: {inline(n)}</p>' for n in dev.notes))
    body = f"""<h1>{esc(TITLE)}</h1>
<section id="summary"><p class="setting">The build machine chose {esc(run.choice.selected)} for {esc(", ".join(run.choice.target))};
each device's choice is remade from its own measurements: its latency, its accuracy, what it can load.</p>
<div class="targets" id="targets">{cards}</div></section>
<section id="chart"><h2>Latency and accuracy on each target</h2>{chart}
<p class="caption">Top: each variant's median latency per image on each target, with the interval of its latency ratio to
that target's baseline (same interleaved rounds) times the baseline's median. Bottom: its accuracy change against the
baseline on that target's images, with its paired interval. A missing point: not loadable or not measured there.</p></section>
<section id="variants"><h2>Side by side</h2>{_side_by_side(targets, run)}
<p class="caption">Highlighted: the variant chosen for that target. <em>Δ pp</em>: accuracy minus the baseline's on that
target's images, with its paired interval. Hover an underlined verdict for its reason.</p></section>
<section id="why"><h2>Why, per device</h2>{"".join(why)}</section>"""
    return page(TITLE, body)
