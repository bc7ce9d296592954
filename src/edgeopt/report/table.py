"""The variants' table as text cells, shared by every renderer (terminal, Markdown, HTML).

Reads only the typed results; the cells say what the objective decided, they decide nothing.
"""

from __future__ import annotations

import math

from edgeopt.choose import ON_BUILD_MACHINE
from edgeopt.objective import EXCLUDED_BY_GUARD
from edgeopt.results import Results, Variant

TABLE_HEADER = ("variant", "test acc %", "Δ pp [95%]", "disc.", "changed % [95%]", "train acc %", "ms/image", "p90 ms",
                "KB", "zstd KB", "x smaller", "x faster", "L [interval]", "verdict")


def pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def paired_text(v: Variant) -> tuple[str, str]:
    """("-1.05 [-1.78, +0.38]", "9") for a variant against its baseline; ("baseline", "") for it."""
    if v.paired is None:
        return ("baseline", "") if v.score is not None and v.score.guard == "baseline" else ("-", "")
    p = v.paired
    return f"{100 * p.difference:+.2f} [{100 * p.low:+.2f},{100 * p.high:+.2f}]", str(p.discordant)


def fidelity_text(v: Variant) -> str:
    """"0.26 [0.03,0.92]": the share of the baseline's answers the variant changes (every image evaluated)."""
    f = v.fidelity
    return "-" if f is None else f"{100 * f.changed / f.images:.2f} [{100 * f.low:.2f},{100 * f.high:.2f}]"


def guard_words(v: Variant, results: Results) -> str:
    """The variant's loss against the guard's tolerance in words (edgeopt.guard.in_words), with the
    test photos that would settle it; "" for the baseline, without a guard or without paired figures."""
    from edgeopt.guard import in_words
    from edgeopt.stats import photos_to_settle

    choice = results.choice
    limit = choice.objective.get("max_metric_loss") if choice else None
    if limit is None or v.paired is None or v.score is None or choice is None:
        return ""
    p, s = v.paired, v.score
    scale = choice.objective.get("metric", {}).get("display_scale", 100.0)
    unit = choice.objective.get("metric", {}).get("loss_unit", "pp")
    undecided = s.metric_loss_low <= limit < s.metric_loss_high
    to_settle = photos_to_settle(p.baseline_only, p.variant_only, p.n, limit / scale, p.confidence) if undecided else None
    at_tolerance = p.baseline_only - p.variant_only == round(limit / scale * p.n, 9)
    return in_words(s.metric_loss_low, s.metric_loss_high, limit, unit, p.n, to_settle, settles=not at_tolerance)


def verdict(v: Variant) -> str:
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
        if s.over_budget:  # a constraint, applied before the guard
            return "over budget"
        if s.guard in EXCLUDED_BY_GUARD:
            return s.guard
        return "other runtime" if "runtime" in s.excluded_because else "excluded"
    return {"loss unproven": "eligible, loss unproven", "within twice the tolerance": "eligible, not shown within"}.get(
        s.guard, "eligible")


def verdict_detail(v: Variant) -> str:
    """The verdict's reason in full, as the objective or the evaluation wrote it ("" when eligible)."""
    if v.score is not None:
        return v.score.excluded_because
    return v.load_error or v.stopped_early or "no latency or accuracy measured"


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
        rows.append((
            v.name + mark,
            pct(v.test.accuracy) if v.test else "-",
            delta,
            discordant,
            fidelity_text(v) if v.paired is not None else "",
            pct(v.train.accuracy) if v.train else "-",
            f"{lat.median_ms:.2f}" if lat else "-",
            f"{lat.p90_ms:.2f}" if lat else "-",
            f"{v.size_bytes / 1024:.0f}",
            f"{v.transfer_bytes / 1024:.0f}" if v.transfer_bytes else "-",
            f"{base.size_bytes / v.size_bytes:.2f}",
            speed,
            f"{s.L:.2f} [{s.L_low:.2f},{s.L_high:.2f}]" if s else "-",
            verdict(v),
        ))
    return rows
