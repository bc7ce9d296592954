"""report.md and the size/latency plot of an optimize run (or of a choice remade by `choose`).

Reads only the typed results (edgeopt.results), so one reader serves optimize's results.json,
device benchmarks and the reference benchmark's files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from edgeopt.choose import ON_BUILD_MACHINE
from edgeopt.objective import EXCLUDED_BY_GUARD
from edgeopt.results import FITTED_TO_IN_WORDS, Results, Variant, write_results

REPORT_FILE = "report.md"
PLOT_FILE = "size_latency.png"
SEARCH_PLOT_FILE = "search_accuracy_latency.png"  # a search's run (edgeopt.search.report)

TABLE_HEADER = ("variant", "test acc %", "Δ pp [95%]", "disc.", "train acc %", "ms/image", "p90 ms", "KB",
                "zstd KB", "x smaller", "x faster", "L [interval]", "verdict")


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def paired_text(v: Variant) -> tuple[str, str]:
    """("-1.05 [-1.78, +0.38]", "9") for a variant against its baseline; ("baseline", "") for it."""
    if v.paired is None:
        return ("baseline", "") if v.score is not None and v.score.guard == "baseline" else ("-", "")
    p = v.paired
    return f"{100 * p.difference:+.2f} [{100 * p.low:+.2f},{100 * p.high:+.2f}]", str(p.discordant)


def _verdict(v: Variant) -> str:
    """One or two words: why a variant may or may not be chosen (the reasons say it in full)."""
    s = v.score
    if s is None:
        if not v.loadable:
            return "not loadable"
        if ON_BUILD_MACHINE in v.stopped_early:  # choose: what the build machine's test split excluded
            return f"excluded {ON_BUILD_MACHINE}"
        return "stopped early" if v.stopped_early else "not measured"
    if s.guard == "baseline":
        return "baseline"
    if not s.eligible:
        if s.guard in EXCLUDED_BY_GUARD:
            return s.guard
        return "other runtime" if "runtime" in s.excluded_because else "excluded"
    return "eligible, loss unproven" if s.guard == "loss unproven" else "eligible"


def table_rows(results: Results) -> list[tuple[str, ...]]:
    """The study's table (test acc, train acc, ms/image, KB, L) with the paired accuracy interval,
    the discordant images, the L interval, the guard's verdict, and ratios to the baseline."""
    base = results.baseline
    selected = results.choice.selected if results.choice else ""
    rows: list[tuple[str, ...]] = []
    for v in results.variants:
        mark = " *" if v.name == selected else ""
        delta, discordant = paired_text(v)
        lat = v.latency
        speed = f"{base.latency.median_ms / lat.median_ms:.2f}" if lat and base.latency else "-"
        s = v.score
        verdict = _verdict(v)
        rows.append((
            v.name + mark,
            _pct(v.test.accuracy) if v.test else "-",
            delta,
            discordant,
            _pct(v.train.accuracy) if v.train else "-",
            f"{lat.median_ms:.2f}" if lat else "-",
            f"{lat.p90_ms:.2f}" if lat else "-",
            f"{v.size_bytes / 1024:.0f}",
            f"{v.transfer_bytes / 1024:.0f}" if v.transfer_bytes else "-",
            f"{base.size_bytes / v.size_bytes:.2f}",
            speed,
            f"{s.L:.2f} [{s.L_low:.2f},{s.L_high:.2f}]" if s else "-",
            verdict,
        ))
    return rows


def markdown_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _choice_lines(results: Results) -> list[str]:
    choice = results.choice
    if choice is None:
        return []
    obj = choice.objective
    guard = (f", accuracy guard {obj['max_metric_loss']:g} pp at {obj['confidence']:.0%}" if obj["max_metric_loss"] is not None
             else ", no accuracy guard")
    lines = [
        f"Selected: **{choice.selected}** (marked *) for {', '.join(choice.target)}. Objective: `{obj['form']}`, "
        f"L = {obj['weight_size']:g}*dS + {obj['weight_time']:g}*dT + {obj['weight_metric']:g}*dA{guard}; "
        f"S is the {'file size' if obj.get('size', 'file') == 'file' else 'transfer size (zstd)'}.",
        "",
        f"*Δ pp* is each variant's test accuracy minus the baseline's on the same images, with its exact paired "
        f"{obj['confidence']:.0%} interval (McNemar); *disc.* counts the images on which exactly one of the two is right. "
        "The L interval adds the spread of the latency rounds (paired by round) and the accuracy interval.",
        "",
        *markdown_table(TABLE_HEADER, table_rows(results)),
        "",
        "## Why the winner won",
        "",
        *[f"- {r}" for r in choice.reasons],
        f"- Under the other objective form the choice would be **{choice.other_form_selected}**.",
        "",
        "## Ranking",
        "",
    ]
    for rank, name in enumerate(choice.ranking, 1):
        v = results.variant(name)
        s = v.score
        if s is None:
            lines.append(f"{rank}. {name}: not scored ({v.load_error or v.stopped_early or 'not measured'})")
            continue
        flags = [f for f, on in (("Pareto front", s.pareto), ("excluded: " + s.excluded_because, not s.eligible)) if on]
        lines.append(
            f"{rank}. {name}: L = {s.L:.3f} [{s.L_low:.3f}, {s.L_high:.3f}] (dS {s.delta_size:+.3f}, dT {s.delta_time:+.3f}, "
            f"dA {s.delta_metric:+.4f})" + (f" — {'; '.join(flags)}" if flags else "")
        )
    return lines


def render_markdown(results: Results, plot_name: str | None = PLOT_FILE) -> str:
    machine = results.machine
    measure = results.measure
    data = results.data
    synthetic = " (SYNTHETIC images made by edgeopt's demo generator, not photographs)" if data.synthetic else ""
    if not data.train_images:
        train = "no train images"
    elif data.train_images == data.train_total:
        train = f"all {data.train_images} train images"
    else:
        train = f"a seeded sample of {data.train_images} of the {data.train_total} train images"
    lines = [
        "# edgeopt optimize report" if results.kind == "optimize" else "# edgeopt device benchmark report",
        "",
        f"Model: `{results.model.source}`, {len(results.model.classes)} classes "
        f"({', '.join(results.model.classes)}), input {results.model.image_size} px.",
        f"Data: `{data.root}`{synthetic}; {len(data.test_items)} test images ({data.split_note}) and {train}; "
        f"{data.skipped_images} unreadable skipped.",
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, int8 dot-product instructions: "
        f"{', '.join(machine.get('int8_dot_product') or []) or 'none'}; {measure.get('threads')} interpreter thread(s).",
        f"Latency: median of {measure.get('rounds')} interleaved round medians of {measure.get('invocations')} "
        f"invocations each (batch 1, after {measure.get('warmup')} warm-up runs); image decoding "
        f"({measure.get('decode_ms_median', float('nan')):.2f} ms/image) not included.",
        "",
        "## Results",
        "",
        *_choice_lines(results),
        "",
        "## What each transformation did to the graph",
        "",
    ]
    for v in results.variants:
        if v.graph is None:
            lines.append(f"- **{v.name}** — {v.summary}. Not loadable here: {v.load_error}.")
            continue
        g = v.graph
        inp = g.input
        quant = f" (scale {inp.scale:.4g}, zero point {inp.zero_point})" if inp.scale else ""
        versions = ", ".join(f"{op} v{'/'.join(map(str, vs))}" for op, vs in g.op_versions.items() if max(vs) > 1)
        lines.append(
            f"- **{v.name}** — {v.summary}. Input {inp.dtype}{quant}, output {g.output.dtype}; "
            f"{sum(g.op_counts.values())} ops, {g.quantize_ops} QUANTIZE, {g.dequantize_ops} DEQUANTIZE"
            + (f"; op versions above 1: {versions}" if versions else "")
            + f". Change against the baseline: {v.change_vs_baseline}."
        )
    repaired = [v for v in results.variants if v.repair is not None]
    if repaired:
        lines += ["", "## Repairs (accuracy-guarded variants)", "",
                  "A guarded variant is searched for when its plain int8 sibling changes more than the repair target's "
                  "share of the float model's answers on held-out images (never the test photos), and built when a repair "
                  "meets the target or changes significantly fewer answers; changed answers bound the accuracy loss from "
                  "above and are not hidden by lucky changes.", ""]
        for v in repaired:
            r = v.repair
            assert r is not None
            spared = ", ".join(f"`{name}`" for name in r.spared) if r.spared else "nothing"
            lines.append(
                f"- **{v.name}**: spared from 8 bits: {spared}. "
                f"Held-out answers changed against the float model: {r.changed_before_pct:.2f}% before, "
                f"{r.changed_after_pct:.2f}% after (held-out loss {r.loss_before_pp:+.2f} -> {r.loss_after_pp:+.2f} pp). "
                f"{r.sensitivity} {r.note}".rstrip()
            )
    retrained = [v for v in results.variants if v.training is not None]
    if retrained:
        lines += ["", "## Retrained variants (fine-tuned on the train split, never the test photos)", ""]
        for v in retrained:
            t = v.training
            assert t is not None
            reached = (f"; sparsity {t.sparsity_reached:.1%} of the pruned kernels (target {t.target_sparsity:.0%})"
                       if t.sparsity_reached is not None else "")
            values = (f"; at most {t.max_unique_values_per_kernel} values per clustered kernel"
                      if t.clusters is not None else "")
            fitted = FITTED_TO_IN_WORDS[t.fitted_to]
            lines.append(f"- **{v.name}**: {t.epochs} epochs on {t.images} train images fitted to {fitted}, "
                         f"Adam {t.learning_rate:g}, "
                         f"{t.seconds:.0f} s; last epoch's train accuracy {100 * t.train_accuracy_last_epoch:.1f}%"
                         f"{reached}{values}.")
    lines += ["", "## Accuracy per class (test split): variant, and the paired difference to the baseline in pp", ""]
    classes = results.model.classes
    rows = []
    for v in results.variants:
        cells = []
        for c in classes:
            acc = v.test.per_class.get(c) if v.test else None
            pc = v.paired.per_class.get(c) if v.paired else None
            cells.append(_pct(acc) + (f" ({100 * pc.difference:+.1f}, {pc.discordant} disc.)" if pc else ""))
        rows.append((v.name, *cells))
    lines += markdown_table(("variant", *classes), rows)
    if results.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in results.notes]]
    if results.diagnostics:
        lines += ["", "## Diagnostics", "", *[f"- {d}" for d in results.diagnostics]]
    if results.timings:
        lines += ["", "Stage wall times: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in results.timings.items()) + "."]
    if plot_name:
        lines += ["", f"![size vs latency]({plot_name})"]
    if results.search is not None:
        from edgeopt.search.report import render_search_markdown

        lines += render_search_markdown(results, SEARCH_PLOT_FILE if plot_name else None)
    libs = ", ".join(f"{k} {v}" for k, v in (machine.get("libraries") or {}).items())
    lines += ["", f"Libraries: {libs}. Python {machine.get('python')}. edgeopt {results.edgeopt_version}.", ""]
    return "\n".join(lines)


def render_plot(results: Results, path: Path) -> None:
    """Size against latency, coloured by test accuracy, Pareto front outlined and joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = [v for v in results.variants if v.latency is not None and v.test is not None]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    sizes = [v.size_bytes / 1024 for v in variants]
    times = [v.latency.median_ms for v in variants if v.latency]
    accs = [100 * v.test.accuracy for v in variants if v.test]
    points = ax.scatter(times, sizes, c=accs, cmap="viridis", s=90, zorder=3, edgecolors="none")
    front = sorted((v for v in variants if v.score and v.score.pareto), key=lambda v: v.latency.median_ms if v.latency else 0)
    ax.scatter([v.latency.median_ms for v in front if v.latency], [v.size_bytes / 1024 for v in front], s=220,
               facecolors="none", edgecolors="crimson", linewidths=1.5, zorder=4, label="Pareto front")
    ax.plot([v.latency.median_ms for v in front if v.latency], [v.size_bytes / 1024 for v in front], color="crimson",
            linestyle="--", linewidth=1, zorder=2)
    selected = results.choice.selected if results.choice else ""
    for v in variants:
        label = v.name + ("  (selected)" if v.name == selected else "")
        ax.annotate(label, (v.latency.median_ms if v.latency else 0, v.size_bytes / 1024), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    fig.colorbar(points, ax=ax, label="test accuracy (%)")
    ax.set_xlabel(f"latency per image, ms (median, {results.measure.get('threads')} thread(s))")
    ax.set_ylabel("file size, KB")
    title = "edgeopt: size vs latency"
    if results.data.synthetic:
        title += " (synthetic demo data)"
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(results: Results, folder: Path) -> None:
    write_results(results, folder)
    render_plot(results, folder / PLOT_FILE)
    if results.search is not None:
        from edgeopt.search.report import render_search_plot

        render_search_plot(results, folder / SEARCH_PLOT_FILE)
    (folder / REPORT_FILE).write_text(render_markdown(results))


def render_device_comparison(run: Results, devices: list[tuple[str, Results]]) -> str:
    """The build machine's figures and each device's side by side, and whether the choice changed."""
    assert run.choice is not None
    lines = ["# edgeopt: the choice, per target", ""]
    lines.append(
        f"Build machine: {run.machine.get('cpu')}, {', '.join(f'{k} {v}' for k, v in (run.machine.get('runtimes') or {}).items())}; "
        f"chose **{run.choice.selected}** for {', '.join(run.choice.target)}."
    )
    for label, dev in devices:
        assert dev.choice is not None
        m = dev.machine
        runtimes = ", ".join(f"{k} {v}" for k, v in (m.get("runtimes") or {}).items())
        changed = dev.choice.selected != run.choice.selected
        lines += [
            "",
            f"## {label}: {m.get('cpu')} ({m.get('machine')}, {m.get('cores')} cores, int8 dot product: "
            f"{', '.join(m.get('int8_dot_product') or []) or 'none'}), {runtimes}",
            "",
            f"Chosen for this device: **{dev.choice.selected}**"
            + (f" -- not the build machine's {run.choice.selected}." if changed else " -- the same as on the build machine."),
            "",
        ]
        header = ("variant", "loads here", "build ms", "device ms", "device x faster", "build test %", "device acc %",
                  "device Δ pp [95%]", "build verdict", "device verdict")
        rows = []
        dev_base = dev.baseline
        for v in run.variants:
            d = next((x for x in dev.variants if x.name == v.name), None)
            loads = "yes" if d is not None and d.loadable else f"no: {d.load_error}" if d is not None else "not benchmarked"
            speed = (f"{dev_base.latency.median_ms / d.latency.median_ms:.2f}"
                     if d is not None and d.latency and dev_base.latency else "-")
            rows.append((
                v.name + (" *" if v.name == dev.choice.selected else ""),
                loads,
                f"{v.latency.median_ms:.2f}" if v.latency else "-",
                f"{d.latency.median_ms:.2f}" if d is not None and d.latency else "-",
                speed,
                _pct(v.test.accuracy) if v.test else "-",
                _pct(d.test.accuracy) if d is not None and d.test else "-",
                paired_text(d)[0] if d is not None else "-",
                _verdict(v),
                _verdict(d) if d is not None else "-",
            ))
        lines += markdown_table(header, rows)
        lines += ["", f"Accuracy on this device: {len(dev.data.test_items)} images ({dev.data.split_note}).", "",
                  "Why:", "", *[f"- {r}" for r in dev.choice.reasons]]
        if changed:
            bv, dv = run.variant(dev.choice.selected), dev.selected
            why = []
            old = next((x for x in dev.variants if x.name == run.choice.selected), None)
            if old is None or not old.loadable:
                why.append(f"{run.choice.selected} does not load on this device ({old.load_error if old else 'not benchmarked'})")
            elif old.score is not None and not old.score.eligible:
                why.append(f"{run.choice.selected} is not eligible here: it {old.score.excluded_because}")
            elif old.latency and dv.latency and bv.latency:
                why.append(f"here {run.choice.selected} takes {old.latency.median_ms:.2f} ms against {dv.latency.median_ms:.2f} ms "
                           f"for {dv.name} (build machine: {run.variant(run.choice.selected).latency.median_ms:.2f} vs "  # type: ignore[union-attr]
                           f"{bv.latency.median_ms:.2f} ms)")
            lines += ["", "The choice changed because " + "; ".join(why or ["the device's figures rank the variants differently"]) + "."]
        lines += ["", *[f"Note: {n}" for n in dev.notes]]
    return "\n".join(lines) + "\n"
