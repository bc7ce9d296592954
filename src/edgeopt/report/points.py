"""What the charts draw, as plain numbers: each measured variant's latency, size and accuracy
change with their intervals, its colour and marker, and the Pareto fronts of the chart's panels.

One source for both renderers (the interactive HTML chart and the PNG beside report.md), so
the two always show the same points, intervals and fronts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edgeopt.objective import Candidate, pareto_front
from edgeopt.report.table import verdict
from edgeopt.results import Results, Variant

# Tableau 10: told apart by most colour-blind readers; a marker per variant as well, so no two
# of the first 70 variants share both.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
MARKERS = ("o", "s", "D", "^", "v", "P", "X")  # matplotlib's names; PLOTLY_SYMBOLS in the same order
PLOTLY_SYMBOLS = {"o": "circle", "s": "square", "D": "diamond", "^": "triangle-up", "v": "triangle-down",
                  "P": "cross", "X": "x"}

Axis = Literal["latency", "size"]


@dataclass(frozen=True)
class ChartPoint:
    """One variant as the charts draw it."""

    name: str
    latency_ms: float  # median of the interleaved rounds
    # Interval of the latency: the interval of its ratio to the baseline's (same rounds) times the
    # baseline's median; None when not known (the baseline itself, or a file without rounds).
    latency_interval_ms: tuple[float, float] | None
    size_kb: float
    # Test accuracy minus the baseline's on the same images, percentage points, with its paired interval.
    delta_pp: float
    delta_interval_pp: tuple[float, float] | None
    accuracy_pct: float
    verdict: str  # table.verdict: "eligible", "clearly worse", "other runtime", ...
    chosen: bool
    baseline: bool
    eligible: bool
    colour: str
    marker: str

    @property
    def label(self) -> str:
        """The legend's words for it: its name, and what the objective made of it."""
        if self.chosen:
            return f"{self.name} (chosen)"
        return f"{self.name} ({self.verdict})"


def not_drawn(results: Results) -> list[str]:
    """The variants without a latency or a test accuracy, and why: "ort_int8_dynamic (stopped early)"."""
    drawn = {p.name for p in chart_points(results)}
    return [f"{v.name} ({verdict(v)})" for v in results.variants if v.name not in drawn]


def style_of(index: int) -> tuple[str, str]:
    """The colour and marker of the index-th variant of a run (the same in every chart of it)."""
    return PALETTE[index % len(PALETTE)], MARKERS[index % len(MARKERS)]


def _latency_interval(v: Variant, base: Variant) -> tuple[float, float] | None:
    lat, base_lat = v.latency, base.latency
    if lat is None or base_lat is None or lat.ratio_low is None or lat.ratio_high is None or v.name == base.name:
        return None
    low, high = lat.ratio_low * base_lat.median_ms, lat.ratio_high * base_lat.median_ms
    return min(low, lat.median_ms), max(high, lat.median_ms)


def chart_points(results: Results) -> list[ChartPoint]:
    """Every variant with a latency and a test accuracy, in the results' order."""
    base = results.baseline
    chosen = results.choice.selected if results.choice else ""
    points = []
    for i, v in enumerate(results.variants):
        if v.latency is None or v.test is None or base.test is None:
            continue
        if v.paired is not None:
            p = v.paired
            delta, interval = 100 * p.difference, (100 * p.low, 100 * p.high)
        else:  # the baseline, or a file without per-image answers: no interval to draw
            delta, interval = 100 * (v.test.accuracy - base.test.accuracy), None
        colour, marker = style_of(i)
        points.append(ChartPoint(
            name=v.name, latency_ms=v.latency.median_ms, latency_interval_ms=_latency_interval(v, base),
            size_kb=v.size_bytes / 1024, delta_pp=delta, delta_interval_pp=interval, accuracy_pct=100 * v.test.accuracy,
            verdict=verdict(v), chosen=v.name == chosen, baseline=v.name == base.name,
            eligible=v.score is not None and v.score.eligible, colour=colour, marker=marker,
        ))
    return points


def front(points: Sequence[ChartPoint], axis: Axis) -> list[ChartPoint]:
    """The Pareto front of one panel, sorted by its x: the points that no other point beats on
    both x (latency or size: lower is better) and the accuracy change (higher is better) --
    objective.pareto_front with the other axis held equal. Drawn as a step line: left of each
    front point, nothing as accurate is as fast (or as small)."""
    candidates = [Candidate(name=p.name, size_bytes=p.size_kb if axis == "size" else 0.0,
                            latency_ms=p.latency_ms if axis == "latency" else 0.0, metric=p.delta_pp) for p in points]
    on_front = pareto_front(candidates)
    return sorted((p for p in points if p.name in on_front), key=lambda p: (x_of(p, axis), -p.delta_pp))


def x_of(point: ChartPoint, axis: Axis) -> float:
    return point.latency_ms if axis == "latency" else point.size_kb


def x_interval(point: ChartPoint, axis: Axis) -> tuple[float, float] | None:
    return point.latency_interval_ms if axis == "latency" else None


def axis_title(results: Results, axis: Axis) -> str:
    if axis == "latency":
        return f"latency per image, ms (median, {results.measure.get('threads')} thread(s))"
    return "file size, KB"


def y_title(results: Results) -> str:
    confidence = results.choice.objective.get("confidence", 0.95) if results.choice else 0.95
    return f"test accuracy − {results.baseline.name}'s, pp\n(bars: {confidence:.0%} paired interval)"


def allowed_loss_pp(results: Results) -> float | None:
    """The accuracy guard's tolerance (a loss below -this is more than allowed), None without a guard."""
    if results.choice is None:
        return None
    limit = results.choice.objective.get("max_metric_loss")
    return float(limit) if limit is not None else None


def _padded(low: float, high: float, share: float = 0.06) -> tuple[float, float]:
    pad = (high - low) * share or max(abs(high), 1.0) * share
    return low - pad, high + pad


def x_range(points: Sequence[ChartPoint], axis: Axis) -> tuple[float, float]:
    """The panel's x extent: every point and interval, padded (the front's steps run to its edges)."""
    values = [0.0] if not points else []
    for p in points:
        values += [x_of(p, axis), *(x_interval(p, axis) or ())]
    low, high = _padded(min(values), max(values))
    return max(low, 0.0), high


def y_range(points: Sequence[ChartPoint], allowed_loss: float | None) -> tuple[float, float]:
    """The shared accuracy axis: every point and interval, 0, and the allowed loss, padded."""
    values = [0.0, *([-allowed_loss] if allowed_loss is not None else [])]
    for p in points:
        values += [p.delta_pp, *(p.delta_interval_pp or ())]
    return _padded(min(values), max(values))


def front_line(points: Sequence[ChartPoint], axis: Axis, x_extent: tuple[float, float],
               y_extent: tuple[float, float]) -> tuple[list[float], list[float]]:
    """The front as a step line (horizontal, then vertical: 'steps-post'): up from the bottom edge
    at the fastest (or smallest) front point, through each front point, out to the right edge at
    the most accurate one -- so a front of one point still reads as a front."""
    steps = front(points, axis)
    if not steps:
        return [], []
    xs = [x_of(steps[0], axis), *(x_of(p, axis) for p in steps), x_extent[1]]
    ys = [y_extent[0], *(p.delta_pp for p in steps), steps[-1].delta_pp]
    return xs, ys
