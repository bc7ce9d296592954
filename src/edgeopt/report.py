"""results.json, report.md and the size/latency plot of an optimize run.

Reads only the results dict, so one reader serves optimize's results.json and the reference
benchmark's files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

RESULTS_FILE = "results.json"
REPORT_FILE = "report.md"
PLOT_FILE = "size_latency.png"

TABLE_HEADER = ("variant", "test acc %", "train acc %", "ms/image", "p90 ms", "KB", "x smaller", "x faster", "L")


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def table_rows(results: dict[str, Any]) -> list[tuple[str, ...]]:
    """The study's table (test acc, train acc, ms/image, KB, L) plus p90 and ratios to f0."""
    rows: list[tuple[str, ...]] = []
    for v in results["variants"]:
        mark = " *" if v["name"] == results["selected"] else ""
        rows.append((
            v["name"] + mark,
            _pct(v["test_accuracy"]),
            _pct(v["train_accuracy"]),
            f"{v['latency_ms_median']:.2f}",
            f"{v['latency_ms_p90']:.2f}",
            f"{v['size_kb']:.0f}",
            f"{v['size_ratio']:.2f}",
            f"{v['speedup']:.2f}",
            f"{v['L']:.2f}",
        ))
    return rows


def _markdown_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def render_markdown(results: dict[str, Any], plot_name: str | None = PLOT_FILE) -> str:
    obj = results["objective"]
    machine = results["machine"]
    measure = results["measure"]
    data = results["data"]
    synthetic = " (SYNTHETIC images made by edgeopt's demo generator, not photographs)" if data["synthetic"] else ""
    lines = [
        "# edgeopt optimize report",
        "",
        f"Model: `{results['model']['source']}`, {len(results['model']['classes'])} classes "
        f"({', '.join(results['model']['classes'])}), input {results['model']['image_size']} px.",
        f"Data: `{data['root']}`{synthetic}; {data['test_images']} test and {data['train_images']} "
        f"train images (the model's own split), {data['skipped_images']} unreadable skipped.",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, int8 dot-product instructions: "
        f"{', '.join(machine['int8_dot_product']) or 'none'}; {measure['threads']} interpreter thread(s).",
        f"Latency: median of {measure['rounds']} interleaved round medians of {measure['invocations']} "
        f"invocations each (batch 1, after {measure['warmup']} warm-up runs); image decoding "
        f"({measure.get('decode_ms_median', float('nan')):.2f} ms/image) not included.",
        "",
        "## Results",
        "",
        f"Selected: **{results['selected']}** (marked *). Objective: `{obj['form']}`, "
        f"L = {obj['weight_size']:g}*dS + {obj['weight_time']:g}*dT + {obj['weight_metric']:g}*dA"
        + (f", variants losing more than {obj['max_metric_loss']:g} pp excluded" if obj["max_metric_loss"] is not None else "")
        + ".",
        "",
        *_markdown_table(TABLE_HEADER, table_rows(results)),
        "",
        "## Why the winner won",
        "",
        *[f"- {r}" for r in results["reasons"]],
        f"- Under the other objective form the choice would be **{obj['other_form_selected']}**.",
        "",
        "## Ranking",
        "",
    ]
    by_name = {v["name"]: v for v in results["variants"]}
    for rank, name in enumerate(results["ranking"], 1):
        v = by_name[name]
        flags = [f for f, on in (("Pareto front", v["pareto"]), ("excluded: " + v["excluded_because"], not v["eligible"])) if on]
        lines.append(
            f"{rank}. {name}: L = {v['L']:.3f} (dS {v['delta_size']:+.3f}, dT {v['delta_time']:+.3f}, "
            f"dA {v['delta_accuracy']:+.4f})" + (f" — {'; '.join(flags)}" if flags else "")
        )
    lines += ["", "## What each transformation did to the graph", ""]
    for v in results["variants"]:
        g = v["graph"]
        inp = g["input"]
        quant = f" (scale {inp['scale']:.4g}, zero point {inp['zero_point']})" if inp["scale"] else ""
        lines.append(
            f"- **{v['name']}** — {v['summary']}. Input {inp['dtype']}{quant}, output {g['output']['dtype']}; "
            f"{sum(g['op_counts'].values())} ops, {g['quantize_ops']} QUANTIZE, {g['dequantize_ops']} DEQUANTIZE. "
            f"Change against the baseline: {v['change_vs_baseline']}."
        )
    lines += ["", "## Accuracy per class (test split)", ""]
    classes = results["model"]["classes"]
    header = ("variant", *classes)
    rows = [(v["name"], *(_pct(v["test_per_class"].get(c)) for c in classes)) for v in results["variants"]]
    lines += _markdown_table(header, rows)
    notes = results.get("notes") or []
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    diagnostics = results.get("diagnostics") or []
    if diagnostics:
        lines += ["", "## Diagnostics", "", *[f"- {d}" for d in diagnostics]]
    if plot_name:
        lines += ["", f"![size vs latency]({plot_name})"]
    libs = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items())
    lines += ["", f"Libraries: {libs}. Python {machine['python']}.", ""]
    return "\n".join(lines)


def render_plot(results: dict[str, Any], path: Path) -> None:
    """Size against latency, coloured by test accuracy, Pareto front outlined and joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = results["variants"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    sizes = [v["size_kb"] for v in variants]
    times = [v["latency_ms_median"] for v in variants]
    accs = [100 * v["test_accuracy"] for v in variants]
    points = ax.scatter(times, sizes, c=accs, cmap="viridis", s=90, zorder=3, edgecolors="none")
    front = sorted((v for v in variants if v["pareto"]), key=lambda v: v["latency_ms_median"])
    ax.scatter([v["latency_ms_median"] for v in front], [v["size_kb"] for v in front], s=220,
               facecolors="none", edgecolors="crimson", linewidths=1.5, zorder=4, label="Pareto front")
    ax.plot([v["latency_ms_median"] for v in front], [v["size_kb"] for v in front], color="crimson",
            linestyle="--", linewidth=1, zorder=2)
    for v in variants:
        label = v["name"] + ("  (selected)" if v["name"] == results["selected"] else "")
        ax.annotate(label, (v["latency_ms_median"], v["size_kb"]), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    fig.colorbar(points, ax=ax, label="test accuracy (%)")
    ax.set_xlabel(f"latency per image, ms (median, {results['measure']['threads']} thread(s))")
    ax.set_ylabel("file size, KB")
    title = "edgeopt: size vs latency"
    if results["data"]["synthetic"]:
        title += " (synthetic demo data)"
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(results: dict[str, Any], folder: Path) -> None:
    (folder / RESULTS_FILE).write_text(json.dumps(results, indent=1, allow_nan=True))
    render_plot(results, folder / PLOT_FILE)
    (folder / REPORT_FILE).write_text(render_markdown(results))

