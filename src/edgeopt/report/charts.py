"""The interactive charts of report.html, drawn with plotly from report.points (the PNG draws the
same points). Each chart is an HTML fragment: plotly.js is inlined once per page by the caller
(`chart_html(..., include_script=True)` for the first), so the page fetches nothing when viewed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from edgeopt.report.points import (
    PLOTLY_SYMBOLS,
    Axis,
    ChartPoint,
    allowed_loss_pp,
    axis_title,
    chart_points,
    front_line,
    style_of,
    x_interval,
    x_of,
    x_range,
    y_range,
    y_title,
)
from edgeopt.results import Results

if TYPE_CHECKING:
    import plotly.graph_objects as go

FRONT_COLOUR = "#444444"
PANELS: tuple[Axis, Axis] = ("latency", "size")
# Plotly's own buttons, less those that would need the network (none here) or a logo link.
CONFIG = {"displaylogo": False, "responsive": True, "modeBarButtonsToRemove": ["sendDataToCloud", "lasso2d", "select2d"]}


def _errors(value: float, interval: tuple[float, float] | None) -> dict[str, Any]:
    if interval is None:
        return {"visible": False}
    return {"type": "data", "symmetric": False, "array": [max(0.0, interval[1] - value)],
            "arrayminus": [max(0.0, value - interval[0])], "thickness": 1.2, "width": 4}


def _hover(p: ChartPoint) -> str:
    lat = f"{p.latency_ms:.3g} ms" + (f" [{p.latency_interval_ms[0]:.3g}, {p.latency_interval_ms[1]:.3g}]"
                                      if p.latency_interval_ms else "")
    delta = f"{p.delta_pp:+.2f} pp" + (f" [{p.delta_interval_pp[0]:+.2f}, {p.delta_interval_pp[1]:+.2f}]"
                                       if p.delta_interval_pp else "")
    return (f"<b>{p.name}</b><br>{p.verdict}<br>test accuracy {p.accuracy_pct:.2f}% ({delta})<br>"
            f"latency {lat}<br>size {p.size_kb:.0f} KB<extra></extra>")


def variants_figure(results: Results) -> go.Figure:
    """Accuracy change against latency (left) and file size (right), one shared accuracy axis."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    points = chart_points(results)
    limit = allowed_loss_pp(results)
    ys = y_range(points, limit)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.04)
    for col, axis in enumerate(PANELS, 1):
        xs = x_range(points, axis)
        first = col == 1
        front_x, front_y = front_line(points, axis, xs, ys)
        fig.add_trace(go.Scatter(x=front_x, y=front_y, mode="lines", line={"shape": "hv", "color": FRONT_COLOUR, "width": 1.5},
                                 name="Pareto front of each panel", legendgroup="front", showlegend=first, hoverinfo="skip"),
                      row=1, col=col)
        for p in points:
            symbol = PLOTLY_SYMBOLS[p.marker] + ("" if p.eligible or p.baseline else "-open")
            fig.add_trace(go.Scatter(
                x=[x_of(p, axis)], y=[p.delta_pp], mode="markers", name=p.label, legendgroup=p.name, showlegend=first,
                marker={"color": p.colour, "symbol": symbol, "size": 12, "line": {"width": 1.5, "color": p.colour}},
                error_x=_errors(x_of(p, axis), x_interval(p, axis)), error_y=_errors(p.delta_pp, p.delta_interval_pp),
                hovertemplate=_hover(p)), row=1, col=col)
        chosen = [p for p in points if p.chosen]
        if chosen:
            fig.add_trace(go.Scatter(
                x=[x_of(chosen[0], axis)], y=[chosen[0].delta_pp], mode="markers", name="chosen", legendgroup="chosen",
                showlegend=first, marker={"symbol": "circle-open", "size": 26, "color": "black", "line": {"width": 2}},
                hoverinfo="skip"), row=1, col=col)
        if limit is not None:
            fig.add_trace(go.Scatter(x=list(xs), y=[-limit, -limit], mode="lines", name=f"allowed loss ({limit:g} pp)",
                                     legendgroup="limit", showlegend=first, line={"color": "#c0392b", "dash": "dot", "width": 1},
                                     hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(title_text=axis_title(results, axis), range=list(xs), zeroline=False, row=1, col=col)
    fig.update_yaxes(title_text=y_title(results).replace("\n", "<br>"), range=list(ys), zeroline=True,
                     zerolinecolor="#999999", row=1, col=1)
    fig.update_layout(
        height=520, margin={"l": 70, "r": 20, "t": 30, "b": 10}, template="plotly_white",
        legend={"orientation": "h", "yanchor": "top", "y": -0.16, "xanchor": "left", "x": 0, "font": {"size": 12},
                "title": {"text": "open marker: not eligible for the target "}},
        hoverlabel={"align": "left"},
    )
    return fig


def device_figure(run: Results, devices: list[tuple[str, Results]]) -> go.Figure:
    """Per variant, its latency (top, log scale: one runtime's slow kernels must not flatten the
    rest) and its accuracy change (bottom) on the build machine and on each device, side by side,
    with their intervals; the chosen variant of each target a star."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    targets = [("build machine", run), *devices]
    names = [v.name for v in run.variants]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.55, 0.45])
    for i, (label, res) in enumerate(targets):
        colour, _ = style_of(i)
        by_name = {p.name: p for p in chart_points(res)}
        chosen = res.choice.selected if res.choice else ""
        shown = [n for n in names if n in by_name]
        pts = [by_name[n] for n in shown]
        marker = {"color": colour, "size": [16 if n == chosen else 10 for n in shown],
                  "symbol": ["star" if n == chosen else "circle" for n in shown], "line": {"width": 1, "color": "black"}}
        fig.add_trace(go.Scatter(
            x=shown, y=[p.latency_ms for p in pts], mode="markers", name=label, legendgroup=label, marker=marker,
            error_y={"type": "data", "symmetric": False,
                     "array": [p.latency_interval_ms[1] - p.latency_ms if p.latency_interval_ms else 0 for p in pts],
                     "arrayminus": [p.latency_ms - p.latency_interval_ms[0] if p.latency_interval_ms else 0 for p in pts]},
            hovertemplate=[_hover(p) for p in pts], offsetgroup=str(i)), row=1, col=1)
        fig.add_trace(go.Scatter(
            x=shown, y=[p.delta_pp for p in pts], mode="markers", name=label, legendgroup=label, showlegend=False,
            marker=marker,
            error_y={"type": "data", "symmetric": False,
                     "array": [p.delta_interval_pp[1] - p.delta_pp if p.delta_interval_pp else 0 for p in pts],
                     "arrayminus": [p.delta_pp - p.delta_interval_pp[0] if p.delta_interval_pp else 0 for p in pts]},
            hovertemplate=[_hover(p) for p in pts], offsetgroup=str(i)), row=2, col=1)
    latencies = [p.latency_ms for _, res in targets for p in chart_points(res)]
    ticks = log_ticks(min(latencies, default=1.0), max(latencies, default=1.0))
    fig.update_yaxes(title_text="latency per image, ms (log scale)", type="log", tickvals=ticks,
                     ticktext=[f"{t:g}" for t in ticks], row=1, col=1)
    fig.update_yaxes(title_text=y_title(run).replace("\n", "<br>"), zeroline=True, zerolinecolor="#999999", row=2, col=1)
    fig.update_layout(
        height=620, scattermode="group", template="plotly_white",
        margin={"l": 70, "r": 20, "t": 30, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0,
                "title": {"text": "star: the variant chosen for that target "}},
        hoverlabel={"align": "left"},
    )
    return fig


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks from below low to above high: every tick labelled in full on a log axis."""
    ticks = []
    for exponent in range(math.floor(math.log10(max(low, 1e-9))) - 1, math.ceil(math.log10(max(high, 1e-9))) + 1):
        ticks += [k * 10.0 ** exponent for k in (1, 2, 5)]
    below = [t for t in ticks if t <= low]
    above = [t for t in ticks if t >= high]
    return [t for t in ticks if (below[-1] if below else ticks[0]) <= t <= (above[0] if above else ticks[-1])]


def chart_html(fig: go.Figure, div_id: str, include_script: bool) -> str:
    """The figure as an HTML fragment; with include_script, plotly.js itself, inlined."""
    return fig.to_html(full_html=False, include_plotlyjs=include_script, div_id=div_id, config=CONFIG,
                       default_height=f"{fig.layout.height}px")
