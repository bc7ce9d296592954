"""The variants' table as text cells, shared by every renderer (terminal, Markdown, HTML).

Reads only the typed results; the cells say what the objective decided, they decide nothing.
"""

from __future__ import annotations

import math

from edgeopt.choose import ON_BUILD_MACHINE
from edgeopt.objective import EXCLUDED_BY_GUARD
from edgeopt.results import Results, Variant

TABLE_HEADER = ("variant", "test acc %", "Δ pp [95%]", "disc.", "train acc %", "ms/image", "p90 ms", "KB",
                "zstd KB", "x smaller", "x faster", "L [interval]", "verdict")


def pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}"


def paired_text(v: Variant) -> tuple[str, str]:
    """("-1.05 [-1.78, +0.38]", "9") for a variant against its baseline; ("baseline", "") for it."""
    if v.paired is None:
        return ("baseline", "") if v.score is not None and v.score.guard == "baseline" else ("-", "")
    p = v.paired
    return f"{100 * p.difference:+.2f} [{100 * p.low:+.2f},{100 * p.high:+.2f}]", str(p.discordant)


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
        if s.guard in EXCLUDED_BY_GUARD:
            return s.guard
        return "other runtime" if "runtime" in s.excluded_because else "excluded"
    return "eligible, loss unproven" if s.guard == "loss unproven" else "eligible"


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
