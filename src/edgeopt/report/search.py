"""A search's part of the report (edgeopt search): the trials and every variant on one chart of
accuracy against latency, in report.md (a table and search_accuracy_latency.png) and in
report.html (a section with an interactive chart).

Reads only the typed results -- results.json's `search` and its variants -- and draws from
report.points, so its intervals and fronts are those of the run's other charts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.report.page import esc, table, unordered
from edgeopt.report.points import ChartPoint, allowed_loss_pp, axis_title, chart_points, front_line, x_range, y_range, y_title
from edgeopt.report.table import guard_words, pct, verdict
from edgeopt.results import Results, Trial, Variant

if TYPE_CHECKING:
    import plotly.graph_objects as go

SEARCH_PLOT_FILE = "search_accuracy_latency.png"
TEACHER = "teacher"
# Tableau 10 again, one colour per candidate (the teacher's own variants first).
GROUP_COLOURS = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
TRIALS_HEADER = ("candidate", "px", "alpha", "channels kept", "status", "epochs", "val acc %", "val loss",
                 "agrees with teacher %", "parameters", "s", "node", "its best variant", "L", "verdict")


def candidate_of(name: str, results: Results) -> str:
    """The candidate a variant was made from ("teacher" for the teacher's own)."""
    assert results.search is not None
    # a candidate's name has dots of its own (r128_a0.35_k0.5): match the whole prefix
    return next((t.name for t in results.search.trials if name.startswith(f"{t.name}.")), TEACHER)


def groups(results: Results) -> list[str]:
    assert results.search is not None
    return [TEACHER] + [t.name for t in results.search.trials]


def colour_of(group: str, results: Results) -> str:
    return GROUP_COLOURS[groups(results).index(group) % len(GROUP_COLOURS)]


@dataclass(frozen=True)
class SearchPoint:
    """A measured variant as the search's chart draws it: report.points' figures, its candidate
    and a marker area by file size."""

    point: ChartPoint
    group: str
    area: float  # marker area, points^2 (matplotlib's `s`; plotly takes its square root as the size)


def search_points(results: Results) -> list[SearchPoint]:
    points = chart_points(results)
    largest = max((p.size_kb for p in points), default=1.0) or 1.0
    return [SearchPoint(p, candidate_of(p.name, results), 40 + 360 * math.sqrt(p.size_kb / largest)) for p in points]


def best_variant(trial: Trial, results: Results) -> Variant | None:
    """The candidate's variant ranked first by the choice (eligible ones rank first), None: none scored."""
    if results.choice is None:
        return None
    return next((results.variant(n) for n in results.choice.ranking
                 if candidate_of(n, results) == trial.name and results.variant(n).score is not None), None)


def trial_rows(results: Results) -> list[tuple[str, ...]]:
    assert results.search is not None
    rows: list[tuple[str, ...]] = []
    for t in results.search.trials:
        best = best_variant(t, results)
        s = best.score if best is not None else None
        rows.append((
            t.name, str(t.resolution), f"{t.alpha:g}", f"{t.keep:.0%}", t.status + (f" ({t.note})" if t.note else ""),
            str(t.epochs), pct(t.val_accuracy), "-" if t.val_loss is None else f"{t.val_loss:.3f}", pct(t.val_agreement),
            f"{t.parameters:,}" if t.parameters else "-", f"{t.seconds:.0f}", t.node_ip or "-",
            best.name.removeprefix(f"{t.name}.") if best is not None else "-",
            f"{s.L:.2f} [{s.L_low:.2f}, {s.L_high:.2f}]" if s is not None else "-",
            verdict(best) if best is not None else "not built",
        ))
    return rows


def why_lines(results: Results) -> list[str]:
    """The chosen variant, the candidate it comes from, and why: the choice's first reason and the
    guard's word on it; then why the best variant of each other candidate was not chosen."""
    choice, search = results.choice, results.search
    if choice is None or search is None:
        return []
    chosen = results.selected
    group = candidate_of(chosen.name, results)
    lines = [f"Chosen: **{chosen.name}** ({'the teacher itself' if group == TEACHER else 'candidate ' + group}). "
             + choice.reasons[0]]
    if words := guard_words(chosen, results):
        lines.append(f"{chosen.name}: {words}.")
    for t in search.trials:
        best = best_variant(t, results)
        if best is None or best.name == chosen.name or best.score is None:
            continue
        s = best.score
        tied = ", tied with the chosen one" if best.name in choice.tie else ""
        why = (f"excluded: it {s.excluded_because}" if not s.eligible else
               f"eligible, L = {s.L:.2f} [{s.L_low:.2f}, {s.L_high:.2f}]{tied}")
        lines.append(f"{t.name}: its best variant {best.name} was {why}.")
    return lines


def search_markdown(results: Results, plot_name: str | None = SEARCH_PLOT_FILE) -> list[str]:
    """The search's section of report.md ([] for a run without a search)."""
    from edgeopt.report.markdown import markdown_table

    search = results.search
    if search is None:
        return []
    lines = ["", "## Search: the candidates trained", "",
             f"Baseline: the teacher's {search.teacher}; every L is against it (its size, its latency, its accuracy on the "
             f"same test photos). Candidates were trained on its train split; validation: {search.validation}. "
             f"Scheduling: {search.scheduler}. {search.ray}".rstrip(), "",
             *markdown_table(TRIALS_HEADER, trial_rows(results)), "",
             "*its best variant*: the candidate's variant ranked first by the choice, with its L against the teacher's "
             "float32 and the verdict (the guard's, or a budget's).", "",
             *[f"- {line}" for line in why_lines(results)]]
    if search.seconds:
        lines += ["", "Search wall times: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.0f} s"
                                                      for k, v in search.seconds.items()) + "."]
    if plot_name:
        lines += ["", f"![every variant's accuracy against its latency]({plot_name})"]
    return lines


def _error(value: float, interval: tuple[float, float] | None) -> list[list[float]] | None:
    return None if interval is None else [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]


def render_search_png(results: Results, path: Path) -> None:
    """Left: every measured variant's accuracy change against the teacher's float32 by its latency,
    with their intervals, marker area by file size, the front and the chosen one starred. Right:
    every trial's validation accuracy after each epoch (x: stopped before the last)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert results.search is not None
    points = search_points(results)
    plain = [sp.point for sp in points]
    limit = allowed_loss_pp(results)
    xs, ys = x_range(plain, "latency"), y_range(plain, limit)
    fig, (ax, curves) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    ax.axhline(0.0, color="#999999", linewidth=0.8, zorder=1)
    if limit is not None:
        ax.axhline(-limit, color="#c0392b", linewidth=0.8, linestyle=":", zorder=1, label=f"allowed loss ({limit:g} pp)")
    front_x, front_y = front_line(plain, "latency", xs, ys)
    if front_x:
        ax.plot(front_x, front_y, drawstyle="steps-post", color="#444444", linewidth=1.2, zorder=2,
                label="Pareto front (latency, accuracy)")
    for group in groups(results):
        members = [sp for sp in points if sp.group == group]
        colour = colour_of(group, results)
        for sp in members:
            p = sp.point
            ax.errorbar(p.latency_ms, p.delta_pp, xerr=_error(p.latency_ms, p.latency_interval_ms),
                        yerr=_error(p.delta_pp, p.delta_interval_pp), fmt="none", ecolor=colour, alpha=0.5, linewidth=1, zorder=2)
        if members:
            ax.scatter([sp.point.latency_ms for sp in members], [sp.point.delta_pp for sp in members],
                       s=[sp.area for sp in members], color=colour, alpha=0.75, zorder=3, label=group,
                       edgecolors=["black" if sp.point.eligible or sp.point.baseline else colour for sp in members],
                       linewidths=[1.2 if sp.point.eligible or sp.point.baseline else 0.0 for sp in members])
    chosen = next((sp.point for sp in points if sp.point.chosen), None)
    if chosen is not None and results.selected.score is not None:
        s = results.selected.score
        ax.scatter([chosen.latency_ms], [chosen.delta_pp], marker="*", s=420, color="gold", edgecolors="black", zorder=5,
                   label=f"chosen: {chosen.name}")
        ax.annotate(f"{chosen.name}\nL = {s.L:.2f} [{s.L_low:.2f}, {s.L_high:.2f}]", (chosen.latency_ms, chosen.delta_pp),
                    textcoords="offset points", xytext=(10, -28), fontsize=8)
    ax.set_xlim(*xs)
    ax.set_ylim(*ys)
    ax.set_xlabel(axis_title(results, "latency"))
    ax.set_ylabel(y_title(results))
    ax.set_title("every candidate's variants and the teacher's; marker area: file size; edged: eligible", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=7, markerscale=0.4)
    for t in results.search.trials:
        epochs, accs = _curve(t)
        if not epochs:
            continue
        colour = colour_of(t.name, results)
        curves.plot(epochs, accs, marker="o", markersize=3, color=colour, label=f"{t.name} ({t.status})")
        if t.status != "completed":
            curves.scatter([epochs[-1]], [accs[-1]], marker="x", s=60, color=colour, zorder=3)
    from matplotlib.ticker import MaxNLocator

    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation accuracy, % (train split)")
    curves.set_title("the trials (x: stopped before the last epoch)", fontsize=10)
    curves.grid(True, alpha=0.3)
    curves.legend(fontsize=7)
    fig.suptitle("edgeopt search" + (" (SYNTHETIC demo data)" if results.data.synthetic else ""))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _curve(t: Trial) -> tuple[list[float], list[float]]:
    return [h["epoch"] for h in t.history], [100 * h["val_accuracy"] for h in t.history]


def _hover(sp: SearchPoint) -> str:
    p = sp.point
    lat = f"{p.latency_ms:.3g} ms" + (f" [{p.latency_interval_ms[0]:.3g}, {p.latency_interval_ms[1]:.3g}]"
                                      if p.latency_interval_ms else "")
    delta = f"{p.delta_pp:+.2f} pp" + (f" [{p.delta_interval_pp[0]:+.2f}, {p.delta_interval_pp[1]:+.2f}]"
                                       if p.delta_interval_pp else "")
    return (f"<b>{p.name}</b> ({sp.group})<br>{p.verdict}<br>test accuracy {p.accuracy_pct:.2f}% ({delta})<br>"
            f"latency {lat}<br>size {p.size_kb:.0f} KB<extra></extra>")


def search_figure(results: Results) -> go.Figure:
    """The PNG's two panels, interactive: hover a point for its figures, click a candidate in the
    legend to hide it."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    assert results.search is not None
    points = search_points(results)
    plain = [sp.point for sp in points]
    limit = allowed_loss_pp(results)
    xs, ys = x_range(plain, "latency"), y_range(plain, limit)
    fig = make_subplots(rows=1, cols=2, column_widths=[0.6, 0.4], horizontal_spacing=0.08)
    front_x, front_y = front_line(plain, "latency", xs, ys)
    fig.add_trace(go.Scatter(x=front_x, y=front_y, mode="lines", line={"shape": "hv", "color": "#444444", "width": 1.5},
                             name="Pareto front (latency, accuracy)", hoverinfo="skip"), row=1, col=1)
    if limit is not None:
        fig.add_trace(go.Scatter(x=list(xs), y=[-limit, -limit], mode="lines", name=f"allowed loss ({limit:g} pp)",
                                 line={"color": "#c0392b", "dash": "dot", "width": 1}, hoverinfo="skip"), row=1, col=1)
    drawn = set()
    for group in groups(results):
        members = [sp for sp in points if sp.group == group]
        if not members:
            continue
        drawn.add(group)
        colour = colour_of(group, results)
        fig.add_trace(go.Scatter(
            x=[sp.point.latency_ms for sp in members], y=[sp.point.delta_pp for sp in members], mode="markers",
            name=group, legendgroup=group, hovertemplate=[_hover(sp) for sp in members],
            marker={"color": colour, "opacity": 0.8, "size": [math.sqrt(sp.area) for sp in members],
                    "line": {"width": [1.5 if sp.point.eligible or sp.point.baseline else 0 for sp in members], "color": "black"}},
            error_x=_errors([(sp.point.latency_ms, sp.point.latency_interval_ms) for sp in members]),
            error_y=_errors([(sp.point.delta_pp, sp.point.delta_interval_pp) for sp in members]),
        ), row=1, col=1)
    for trial in results.search.trials:  # every trial's curve, also of those stopped before any variant was built
        if trial.history:
            epochs, accs = _curve(trial)
            fig.add_trace(go.Scatter(
                x=epochs, y=accs, mode="lines+markers", name=trial.name, legendgroup=trial.name,
                showlegend=trial.name not in drawn, line={"color": colour_of(trial.name, results)},
                hovertemplate=f"{trial.name} ({trial.status})<br>epoch %{{x}}: %{{y:.1f}}%<extra></extra>"), row=1, col=2)
    chosen = next((sp.point for sp in points if sp.point.chosen), None)
    if chosen is not None:
        fig.add_trace(go.Scatter(x=[chosen.latency_ms], y=[chosen.delta_pp], mode="markers", name=f"chosen: {chosen.name}",
                                 marker={"symbol": "star", "size": 22, "color": "gold", "line": {"width": 1.5, "color": "black"}},
                                 hoverinfo="skip"), row=1, col=1)
    fig.update_xaxes(title_text=axis_title(results, "latency"), range=list(xs), zeroline=False, row=1, col=1)
    fig.update_yaxes(title_text=y_title(results).replace("\n", "<br>"), range=list(ys), zeroline=True,
                     zerolinecolor="#999999", row=1, col=1)
    fig.update_xaxes(title_text="epoch", row=1, col=2)
    fig.update_yaxes(title_text="validation accuracy, % (train split)", row=1, col=2)
    fig.update_layout(height=540, margin={"l": 70, "r": 20, "t": 30, "b": 10}, template="plotly_white",
                      legend={"orientation": "h", "yanchor": "top", "y": -0.16, "xanchor": "left", "x": 0},
                      hoverlabel={"align": "left"})
    return fig


def _errors(values: list[tuple[float, tuple[float, float] | None]]) -> dict[str, Any]:
    return {"type": "data", "symmetric": False, "thickness": 1, "width": 3,
            "array": [max(0.0, iv[1] - v) if iv else 0.0 for v, iv in values],
            "arrayminus": [max(0.0, v - iv[0]) if iv else 0.0 for v, iv in values]}


def search_section_html(results: Results) -> str:
    """report.html's search section ("" for a run without a search); plotly.js is on the page already."""
    from edgeopt.report import charts

    search = results.search
    if search is None:
        return ""
    chart = charts.chart_html(search_figure(results), "chart-search", include_script=False)
    confidence = results.choice.objective.get("confidence", 0.95) if results.choice else 0.95
    selected = results.choice.selected if results.choice else ""
    rows = [([esc(c) for c in row], "chosen" if selected.startswith(f"{t.name}.") else "")
            for t, row in zip(search.trials, trial_rows(results), strict=True)]
    return (f'<section id="search"><h2>Search: the candidates trained</h2>'
            f'<p class="setting">Baseline: the teacher\'s {esc(search.teacher)}; every L is against it. Validation: '
            f"{esc(search.validation)}.</p>"
            f'<p class="setting">{esc(search.scheduler)}. {esc(search.ray)}</p>'
            f"{unordered(why_lines(results), 'reasons')}{chart}"
            f'<p class="caption">Left: every variant of every candidate and of the teacher, its test accuracy minus the '
            f"teacher's float32's on the same photos against its latency; bars: the paired {confidence:.0%} interval of the "
            "accuracy change and the interval of the latency ratio (same interleaved rounds); marker area: file size; edged "
            "markers may be chosen; the step line is the front of latency and accuracy; the star is the chosen variant. "
            "Right: each trial's validation accuracy after each epoch, on images carved from the train split.</p>"
            f"{table(TRIALS_HEADER, rows, 'trials-table')}</section>")
