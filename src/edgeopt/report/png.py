"""The PNG beside report.md: accuracy change against latency and against file size, drawn with
matplotlib from report.points (the HTML chart draws the same points).

Readable by construction: every name is in the legend under the panels (never beside a point,
where two close variants print on top of each other), the intervals are error bars, each
panel's Pareto front is a step line, and the chosen variant is ringed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.report.points import (
    Axis,
    ChartPoint,
    allowed_loss_pp,
    axis_title,
    chart_points,
    front_line,
    not_drawn,
    x_interval,
    x_of,
    x_range,
    y_range,
    y_title,
)
from edgeopt.results import Results

FRONT_COLOUR = "#444444"
PANELS: tuple[Axis, Axis] = ("latency", "size")


def _error(value: float, interval: tuple[float, float] | None) -> list[list[float]] | None:
    if interval is None:
        return None
    return [[max(0.0, value - interval[0])], [max(0.0, interval[1] - value)]]


def _draw_panel(ax: Any, results: Results, points: list[ChartPoint], axis: Axis) -> None:
    limit = allowed_loss_pp(results)
    xs, ys = x_range(points, axis), y_range(points, limit)
    ax.axhline(0.0, color="#999999", linewidth=0.8, zorder=1)
    if limit is not None:
        ax.axhline(-limit, color="#c0392b", linewidth=0.8, linestyle=":", zorder=1,
                   label=f"allowed loss ({limit:g} pp)" if axis == "latency" else None)
    front_x, front_y = front_line(points, axis, xs, ys)
    if front_x:
        ax.plot(front_x, front_y, drawstyle="steps-post", color=FRONT_COLOUR, linewidth=1.4, zorder=2,
                label="Pareto front of each panel" if axis == "latency" else None)
    for p in points:
        ax.errorbar(x_of(p, axis), p.delta_pp, xerr=_error(x_of(p, axis), x_interval(p, axis)),
                    yerr=_error(p.delta_pp, p.delta_interval_pp), fmt=p.marker, color=p.colour, markersize=8,
                    markerfacecolor=p.colour if p.eligible or p.baseline else "white", markeredgewidth=1.5,
                    elinewidth=1, capsize=3, zorder=3, label=p.label if axis == "latency" else None)
        if p.chosen:
            ax.plot(x_of(p, axis), p.delta_pp, "o", markersize=18, markerfacecolor="none", markeredgecolor="black",
                    markeredgewidth=1.5, zorder=4, label="chosen" if axis == "latency" else None)
    ax.set_xlim(*xs)
    ax.set_ylim(*ys)
    ax.set_xlabel(axis_title(results, axis))
    ax.grid(True, alpha=0.3)


def render_png(results: Results, path: Path) -> None:
    fig = draw_png(results)
    import matplotlib.pyplot as plt  # after draw_png chose the Agg backend

    fig.savefig(path)
    plt.close(fig)


def draw_png(results: Results) -> Any:
    """The figure (matplotlib): two panels sharing the accuracy axis, the legend below them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = chart_points(results)
    entries = len(points) + 3  # the allowed loss, the front, the ring
    columns = 3 if entries > 6 else 2
    legend_inches = 0.25 + 0.2 * -(-entries // columns) + (0.15 if not_drawn(results) else 0.0)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4 + legend_inches), dpi=110, sharey=True)
    for ax, axis in zip(axes, PANELS, strict=True):
        _draw_panel(ax, results, points, axis)
    axes[0].set_ylabel(y_title(results))
    title = "edgeopt: accuracy change against latency and file size"
    if results.data.synthetic:
        title += " (SYNTHETIC demo data)"
    fig.suptitle(title)
    handles, labels = axes[0].get_legend_handles_labels()
    missing = not_drawn(results)
    title = "open marker: not eligible for the target; bars: intervals"
    if missing:
        title += "\nnot drawn (no latency or accuracy): " + ", ".join(missing)
    fig.legend(handles, labels, loc="lower center", ncol=columns, fontsize=8, frameon=False, title=title, title_fontsize=8)
    fig.tight_layout(rect=(0, legend_inches / (4.4 + legend_inches), 1, 1))
    return fig
