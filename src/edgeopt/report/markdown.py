"""report.md of an optimize run, and the Markdown comparison of a choice remade by `choose` per device.

Reads only the typed results (edgeopt.results), so one reader serves optimize's results.json,
device benchmarks and the reference benchmark's files.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgeopt.report.table import TABLE_HEADER, guard_words, paired_text, table_rows, verdict
from edgeopt.report.table import pct as _pct
from edgeopt.results import FITTED_TO_IN_WORDS, Results

PLOT_FILE = "size_latency.png"

def markdown_table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _choice_lines(results: Results) -> list[str]:
    choice = results.choice
    if choice is None:
        return []
    obj = choice.objective
    guard = (f", accuracy guard {obj['max_metric_loss']:g} pp ({obj.get('guard', 'benefit-of-doubt')}) at "
             f"{obj['confidence']:.0%}" if obj["max_metric_loss"] is not None else ", no accuracy guard")
    margin = obj.get("margin", 0.0)
    lines = [
        f"Selected: **{choice.selected}** (marked *) for {', '.join(choice.target)}. Objective: `{obj['form']}`, "
        f"L = {obj['weight_size']:g}*dS + {obj['weight_time']:g}*dT + {obj['weight_metric']:g}*dA{guard}; "
        f"S is the {'file size' if obj.get('size', 'file') == 'file' else 'transfer size (zstd)'}; variants whose L "
        f"differ by less than the margin, {margin:g}, are tied (--margin).",
        "",
        f"*Δ pp* is each variant's test accuracy minus the baseline's on the same images, with its paired "
        f"{obj['confidence']:.0%} interval (Tango's score interval); *disc.* counts the images on which exactly one of "
        "the two is right; *changed %* is the share of the baseline's answers the variant changes on every image "
        "evaluated (test and train sample; no labels needed), with its exact interval: it bounds the accuracy lost on "
        "those images. The L interval adds the spread of the latency rounds (paired by round) and the accuracy interval.",
        "",
        *markdown_table(TABLE_HEADER, table_rows(results)),
        "",
        *_guard_lines(results),
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


def _guard_lines(results: Results) -> list[str]:
    """Each variant's loss against the tolerance in plain words, and what would settle it."""
    lines = [f"- **{v.name}**: {words}." for v in results.variants if (words := guard_words(v, results))]
    if not lines:
        return []
    return ["## The accuracy guard, variant by variant", "", *lines, ""]


def setting_lines(results: Results) -> list[str]:
    """The model, the data, the machine and the latency protocol: one sentence each."""
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
    return [
        f"Model: `{results.model.source}`, {len(results.model.classes)} classes "
        f"({', '.join(results.model.classes)}), input {results.model.image_size} px.",
        f"Data: `{data.root}`{synthetic}; {len(data.test_items)} test images ({data.split_note}) and {train}; "
        f"{data.skipped_images} unreadable skipped.",
        f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, int8 dot-product instructions: "
        f"{', '.join(machine.get('int8_dot_product') or []) or 'none'}; {measure.get('threads')} interpreter thread(s).",
        f"Latency: median of {measure.get('rounds')} interleaved round medians of {measure.get('invocations')} "
        f"invocations each (batch 1, after {measure.get('warmup')} warm-up runs); image decoding "
        f"({measure.get('decode_ms_median', float('nan')):.2f} ms/image) not included.",
    ]


def graph_items(results: Results) -> list[str]:
    """What each transformation did to the graph, one item per variant."""
    items = []
    for v in results.variants:
        if v.graph is None:
            items.append(f"**{v.name}** — {v.summary}. Not loadable here: {v.load_error}.")
            continue
        g = v.graph
        inp = g.input
        quant = f" (scale {inp.scale:.4g}, zero point {inp.zero_point})" if inp.scale else ""
        versions = ", ".join(f"{op} v{'/'.join(map(str, vs))}" for op, vs in g.op_versions.items() if max(vs) > 1)
        items.append(
            f"**{v.name}** — {v.summary}. Input {inp.dtype}{quant}, output {g.output.dtype}; "
            f"{sum(g.op_counts.values())} ops, {g.quantize_ops} QUANTIZE, {g.dequantize_ops} DEQUANTIZE"
            + (f"; op versions above 1: {versions}" if versions else "")
            + f". Change against the baseline: {v.change_vs_baseline}."
        )
    return items


REPAIRS_TITLE = "Repairs (accuracy-guarded variants)"
REPAIRS_INTRO = (
    "A guarded variant is searched for when its plain int8 sibling changes more than the repair target's "
    "share of the float model's answers on held-out images (never the test photos), and built when a repair "
    "meets the target or changes significantly fewer answers; changed answers bound the accuracy loss from "
    "above and are not hidden by lucky changes.")
RETRAINED_TITLE = "Retrained variants (fine-tuned on the train split, never the test photos)"


def repair_items(results: Results) -> list[str]:
    items = []
    for v in results.variants:
        r = v.repair
        if r is None:
            continue
        spared = ", ".join(f"`{name}`" for name in r.spared) if r.spared else "nothing"
        items.append(
            f"**{v.name}**: spared from 8 bits: {spared}. "
            f"Held-out answers changed against the float model: {r.changed_before_pct:.2f}% before, "
            f"{r.changed_after_pct:.2f}% after (held-out loss {r.loss_before_pp:+.2f} -> {r.loss_after_pp:+.2f} pp). "
            f"{r.sensitivity} {r.note}".rstrip()
        )
    return items


def retrained_items(results: Results) -> list[str]:
    items = []
    for v in results.variants:
        t = v.training
        if t is None:
            continue
        reached = (f"; sparsity {t.sparsity_reached:.1%} of the pruned kernels (target {t.target_sparsity:.0%})"
                   if t.sparsity_reached is not None else "")
        values = (f"; at most {t.max_unique_values_per_kernel} values per clustered kernel"
                  if t.clusters is not None else "")
        fitted = FITTED_TO_IN_WORDS[t.fitted_to]
        items.append(f"**{v.name}**: {t.epochs} epochs on {t.images} train images fitted to {fitted}, "
                     f"Adam {t.learning_rate:g}, "
                     f"{t.seconds:.0f} s; last epoch's train accuracy {100 * t.train_accuracy_last_epoch:.1f}%"
                     f"{reached}{values}.")
    return items


def timing_line(results: Results) -> str:
    return "Stage wall times: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in results.timings.items()) + "."


def libraries_line(results: Results) -> str:
    machine = results.machine
    libs = ", ".join(f"{k} {v}" for k, v in (machine.get("libraries") or {}).items())
    return f"Libraries: {libs}. Python {machine.get('python')}. edgeopt {results.edgeopt_version}."


def render_markdown(results: Results, plot_name: str | None = PLOT_FILE, html_name: str | None = None) -> str:
    lines = [
        "# edgeopt optimize report" if results.kind == "optimize" else "# edgeopt device benchmark report",
        "",
        *setting_lines(results),
        *([f"The same report with an interactive chart and the test photos the chosen variant and the baseline "
           f"answer differently: [{html_name}]({html_name})."] if html_name else []),
        "",
        "## Results",
        "",
        *_choice_lines(results),
        "",
        "## What each transformation did to the graph",
        "",
        *[f"- {item}" for item in graph_items(results)],
    ]
    if repair := repair_items(results):
        lines += ["", f"## {REPAIRS_TITLE}", "", REPAIRS_INTRO, "", *[f"- {item}" for item in repair]]
    if retrained := retrained_items(results):
        lines += ["", f"## {RETRAINED_TITLE}", "", *[f"- {item}" for item in retrained]]
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
        lines += ["", timing_line(results)]
    if plot_name:
        lines += ["", f"![accuracy change against latency and file size]({plot_name})"]
    if results.search is not None:
        from edgeopt.report.search import SEARCH_PLOT_FILE, search_markdown

        lines += search_markdown(results, SEARCH_PLOT_FILE if plot_name else None)
    lines += ["", libraries_line(results), ""]
    return "\n".join(lines)


def runtimes_words(results: Results) -> str:
    return ", ".join(f"{k} {v}" for k, v in (results.machine.get("runtimes") or {}).items())


def machine_words(results: Results) -> str:
    """"CPU (arch, N cores, int8 dot product: ...)": the machine a results file was measured on."""
    m = results.machine
    return (f"{m.get('cpu')} ({m.get('machine')}, {m.get('cores')} cores, int8 dot product: "
            f"{', '.join(m.get('int8_dot_product') or []) or 'none'})")


def change_reason(run: Results, dev: Results) -> str:
    """Why a device's choice differs from the build machine's, in a sentence; "" when it does not."""
    assert run.choice is not None and dev.choice is not None
    if dev.choice.selected == run.choice.selected:
        return ""
    bv, dv = run.variant(dev.choice.selected), dev.selected
    why = []
    old = next((x for x in dev.variants if x.name == run.choice.selected), None)
    if old is None or not old.loadable:
        why.append(f"{run.choice.selected} does not load on this device ({old.load_error if old else 'not benchmarked'})")
    elif old.score is not None and not old.score.eligible:
        why.append(f"{run.choice.selected} is not eligible here: it {old.score.excluded_because}")
    elif old.latency and dv.latency and bv.latency:
        margin = dev.choice.objective.get("margin", 0.0)
        gap = ""
        if old.score is not None and dv.score is not None:
            apart = old.score.L - dv.score.L
            gap = (f"; their L differ by {apart:.3f}, more than the margin of {margin:g}" if apart >= margin else
                   f"; their L differ by {apart:.3f}, within the margin of {margin:g}: a tie, broken by "
                   f"{dev.choice.tie_broken_by or 'the order of the tie rule'}")
        why.append(f"here {run.choice.selected} takes {old.latency.median_ms:.2f} ms against {dv.latency.median_ms:.2f} ms "
                   f"for {dv.name} (build machine: {run.variant(run.choice.selected).latency.median_ms:.2f} vs "  # type: ignore[union-attr]
                   f"{bv.latency.median_ms:.2f} ms){gap}")
    return "The choice changed because " + "; ".join(why or ["the device's figures rank the variants differently"]) + "."


def render_device_comparison(run: Results, devices: list[tuple[str, Results]]) -> str:
    """The build machine's figures and each device's side by side, and whether the choice changed."""
    assert run.choice is not None
    lines = ["# edgeopt: the choice, per target", ""]
    lines.append(f"Build machine: {run.machine.get('cpu')}, {runtimes_words(run)}; "
                 f"chose **{run.choice.selected}** for {', '.join(run.choice.target)}.")
    for label, dev in devices:
        assert dev.choice is not None
        changed = dev.choice.selected != run.choice.selected
        lines += [
            "",
            f"## {label}: {machine_words(dev)}, {runtimes_words(dev)}",
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
                verdict(v),
                verdict(d) if d is not None else "-",
            ))
        lines += markdown_table(header, rows)
        lines += ["", f"Accuracy on this device: {len(dev.data.test_items)} images ({dev.data.split_note}).", "",
                  "Why:", "", *[f"- {r}" for r in dev.choice.reasons]]
        if changed:
            lines += ["", change_reason(run, dev)]
        lines += ["", *[f"Note: {n}" for n in dev.notes]]
    return "\n".join(lines) + "\n"
