"""A search's part of the report: the trials table and the accuracy-against-latency figure.

Reads only the typed results (results.json's `search` and the variants), as edgeopt.report does,
which calls it for a run that holds a search.
"""

from __future__ import annotations

import math
from pathlib import Path

from edgeopt.report import SEARCH_PLOT_FILE
from edgeopt.results import Results, Variant


def candidate_of(variant: Variant, results: Results) -> str:
    """The candidate a variant was made from ("teacher" for the teacher's own)."""
    assert results.search is not None
    # a candidate's name has dots of its own (r128_a0.35_k0.5): match the whole prefix
    return next((t.name for t in results.search.trials if variant.name.startswith(f"{t.name}.")), "teacher")


def render_search_markdown(results: Results, plot_name: str | None = SEARCH_PLOT_FILE) -> list[str]:
    search = results.search
    if search is None:
        return []
    lines = ["", "## Search: the candidates trained", "",
             f"Baseline: the teacher's {search.teacher}; every L above is against it (its size, its latency, its accuracy "
             "on the same test photos). Candidates were trained on its train split; validation: "
             f"{search.validation}. Scheduling: {search.scheduler}. {search.ray}", ""]
    header = ("candidate", "px", "alpha", "channels kept", "status", "epochs", "val acc %", "val loss", "agrees with teacher %",
              "parameters", "s", "node")
    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}"

    rows = []
    for t in search.trials:
        rows.append((t.name, str(t.resolution), f"{t.alpha:g}", f"{t.keep:.0%}", t.status + (f" ({t.note})" if t.note else ""),
                     str(t.epochs), pct(t.val_accuracy), "-" if t.val_loss is None else f"{t.val_loss:.3f}", pct(t.val_agreement),
                     f"{t.parameters:,}" if t.parameters else "-", f"{t.seconds:.0f}", t.node_ip or "-"))
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    if results.choice is not None:
        chosen = results.variant(results.choice.selected)
        lines += ["", f"Chosen: **{chosen.name}** ({candidate_of(chosen, results)}); why: {results.choice.reasons[0]}"]
    if search.seconds:
        lines += ["", "Search wall times: " + ", ".join(f"{k.removesuffix('_s').replace('_', ' ')} {v:.0f} s"
                                                      for k, v in search.seconds.items()) + "."]
    if plot_name:
        lines += ["", f"![accuracy against latency]({plot_name})"]
    return lines


def _intervals(v: Variant, base: Variant) -> tuple[float, float, float, float, float, float]:
    """(latency ms, its low, high; accuracy %, its low, high) with the run's paired intervals."""
    assert v.latency is not None and v.test is not None and base.test is not None and base.latency is not None
    ms = v.latency.median_ms
    low = base.latency.median_ms * v.latency.ratio_low if v.latency.ratio_low is not None else ms
    high = base.latency.median_ms * v.latency.ratio_high if v.latency.ratio_high is not None else ms
    acc = 100 * v.test.accuracy
    if v.paired is not None:
        a_low, a_high = 100 * (base.test.accuracy + v.paired.low), 100 * (base.test.accuracy + v.paired.high)
    else:
        a_low = a_high = acc
    return ms, min(low, ms), max(high, ms), acc, min(a_low, acc), max(a_high, acc)


def render_search_plot(results: Results, path: Path) -> None:
    """Left: every measured variant's test accuracy against its latency, with their intervals, marker
    area by file size, the Pareto front joined and the chosen one starred. Right: every trial's
    validation accuracy after each epoch (x: stopped early)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert results.search is not None
    base = results.baseline
    measured = [v for v in results.variants if v.latency is not None and v.test is not None]
    fig, (ax, curves) = plt.subplots(1, 2, figsize=(13, 5.5), dpi=100, gridspec_kw={"width_ratios": [3, 2]})
    groups = ["teacher"] + [t.name for t in results.search.trials]
    colours = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(groups)}
    largest = max((v.size_bytes for v in measured), default=1)
    for group in groups:
        members = [v for v in measured if candidate_of(v, results) == group]
        if not members:
            continue
        for v in members:
            ms, lo, hi, acc, a_lo, a_hi = _intervals(v, base)
            ax.errorbar(ms, acc, xerr=[[ms - lo], [hi - ms]], yerr=[[acc - a_lo], [a_hi - acc]], fmt="none",
                        ecolor=colours[group], alpha=0.5, linewidth=1, zorder=2)
        ax.scatter([v.latency.median_ms for v in members if v.latency], [100 * v.test.accuracy for v in members if v.test],
                   s=[40 + 360 * math.sqrt(v.size_bytes / largest) for v in members], color=colours[group], alpha=0.75,
                   edgecolors="black" if group == "teacher" else "none", label=group, zorder=3)
    front = sorted((v for v in measured if v.score is not None and v.score.pareto), key=lambda v: v.latency.median_ms if v.latency else 0)
    ax.plot([v.latency.median_ms for v in front if v.latency], [100 * v.test.accuracy for v in front if v.test], color="crimson",
            linestyle="--", linewidth=1, zorder=1, label="Pareto front (size, latency, accuracy)")
    if results.choice is not None:
        chosen = results.variant(results.choice.selected)
        if chosen.latency is not None and chosen.test is not None and chosen.score is not None:
            ax.scatter([chosen.latency.median_ms], [100 * chosen.test.accuracy], marker="*", s=420, color="gold",
                       edgecolors="black", zorder=5, label=f"chosen: {chosen.name}")
            ax.annotate(f"{chosen.name}\nL = {chosen.score.L:.2f} [{chosen.score.L_low:.2f}, {chosen.score.L_high:.2f}]",
                        (chosen.latency.median_ms, 100 * chosen.test.accuracy), textcoords="offset points", xytext=(10, -28),
                        fontsize=8)
    ax.set_xlabel(f"latency per image, ms (median and interval, {results.measure.get('threads')} thread(s))")
    ax.set_ylabel("test accuracy, % (paired interval against the teacher)")
    ax.set_title("every candidate's variants and the teacher's; marker area: file size")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=7, markerscale=0.4)
    for t in results.search.trials:
        epochs = [h["epoch"] for h in t.history]
        accs = [100 * h["val_accuracy"] for h in t.history]
        if not epochs:
            continue
        curves.plot(epochs, accs, marker="o", markersize=3, color=colours.get(t.name), label=f"{t.name} ({t.status})")
        if t.status != "completed":
            curves.scatter([epochs[-1]], [accs[-1]], marker="x", s=60, color=colours.get(t.name), zorder=3)
    curves.set_xlabel("epoch")
    curves.set_ylabel("validation accuracy, % (train split)")
    curves.set_title("the trials (x: stopped early)")
    curves.grid(True, alpha=0.3)
    curves.legend(fontsize=7)
    title = "edgeopt search" + (" (synthetic demo data)" if results.data.synthetic else "")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
