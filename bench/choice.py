"""The figures behind the choice's rules (issue 29), computed exactly -- no training, no timing; seconds.

    python bench/choice.py [--out bench/results]

1. Coverage of the paired accuracy interval: the probability, over every test set of n paired photos,
   that the 95% interval covers the true difference -- the interval before issue 29 (exact McNemar,
   conditional on the discordant photos) against Tango's score interval (stats.paired_interval) -- on
   the audit's cases and over the whole grid of issue 29 (n = 100..2,000; no loss, one-sided losses
   and losses with changes both ways, 0.5-3 pp).
2. The guard: the share of 478-photo test sets in which a variant losing 0-3 pp stays eligible at a
   tolerance of 1 pp, under each rule (edgeopt.guard.judge, the code optimize runs), and the rule
   before with its old interval (the audit's table).
3. The margin: the run-to-run spread of L in bench/results/reference.json (four 1-thread runs of the
   same files, raced and full) and device.json (the same files under ai-edge-litert on the same host).
Writes bench/results/choice.json and choice.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

import provenance  # bench/, beside this script
from edgeopt.guard import GUARD_MODES, judge
from edgeopt.objective import Objective
from edgeopt.stats import paired_interval, paired_tables

ROOT = Path(__file__).resolve().parents[1]
N_AUDIT = 478
AUDIT_CASES = [  # (case, lost share, gained share)
    ("no loss, 1% changed each way", 0.01, 0.01),
    ("-0.4 pp, the variant only loses", 0.004, 0.0),
    ("-1.5 pp, 2% lost and 0.5% gained", 0.02, 0.005),
    ("-2.5 pp, the variant only loses", 0.025, 0.0),
]
SIZES = (100, 150, 200, 300, 478, 700, 1000, 1500, 2000)
GRID = ([(p, p) for p in (0.0, 0.002, 0.005, 0.01, 0.02, 0.03)]
        + [(loss + each, each) for loss in np.arange(0.005, 0.0301, 0.0025) for each in (0.0, 0.005, 0.01, 0.02)])
GUARD_CASES = [(loss, each) for loss in (0.0, 0.005, 0.01, 0.015, 0.02, 0.03) for each in (0.01, 0.02)]


def old_interval(b: np.ndarray, c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """stats.conditional_difference elementwise (tests/test_stats.py checks that they agree)."""
    d = b + c
    with np.errstate(invalid="ignore"):
        pi_low = np.where(b > 0, scipy_stats.beta.ppf(0.025, b, d - b + 1), 0.0)
        pi_high = np.where(b < d, scipy_stats.beta.ppf(0.975, b + 1, d - b), 1.0)
    return np.where(d > 0, d / n * (1 - 2 * pi_high), 0.0), np.where(d > 0, d / n * (1 - 2 * pi_low), 0.0)


def new_interval(b: np.ndarray, c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    low, high = paired_interval(b, c, n, 0.95)
    return np.asarray(low), np.asarray(high)


def coverage(interval: Any, n: int, lost: float, gained: float) -> float:
    b, c, probability = paired_tables(n, lost, gained)
    low, high = interval(b, c, n)
    truth = gained - lost
    return float(np.sum(probability * ((low <= truth + 1e-12) & (truth <= high + 1e-12))))


def eligible(rule: str, lost: float, gained: float, n: int = N_AUDIT, tolerance: float = 1.0) -> float:
    """The share of test sets in which the guard keeps the variant; rule "before": benefit-of-doubt
    with the interval before issue 29."""
    b, c, probability = paired_tables(n, lost, gained)
    low, high = (old_interval if rule == "before" else new_interval)(b, c, n)
    mode = "benefit-of-doubt" if rule == "before" else rule
    kept = np.array([judge(100 * (x - y) / n, -100 * hi, -100 * lo, tolerance, mode, "pp", "accuracy")[1] == ""  # type: ignore[arg-type]
                     for x, y, lo, hi in zip(b, c, low, high, strict=True)])
    return float(np.sum(probability * kept))


def l_spread() -> dict[str, Any]:
    """L of each LiteRT variant in the committed 1-thread reference runs (recomputed from their sizes,
    median latencies and test accuracies: default form, file size), and the spread of each pair's
    difference between runs; the device benchmark's latencies on the same host beside them."""
    reference = json.loads((ROOT / "bench" / "results" / "reference.json").read_text())
    runs = {label: run for label, run in reference["runs"].items() if "2 threads" not in label}
    runs["1 thread, full evaluation"] = reference["full_evaluation"]
    runs["LiteRT five, 1 thread, full evaluation"] = reference["litert_full_evaluation"]

    def scores(run: dict[str, Any]) -> dict[str, float]:
        base = run["variants"][0]
        out = {}
        for v in run["variants"]:
            if v["backend"] == "litert" and v.get("latency") and v.get("test") and not v.get("stopped_early"):
                out[v["name"]] = ((v["size_bytes"] - base["size_bytes"]) / base["size_bytes"]
                                  + (v["latency"]["median_ms"] - base["latency"]["median_ms"]) / base["latency"]["median_ms"]
                                  + (base["test"]["accuracy"] - v["test"]["accuracy"]) / base["test"]["accuracy"])
        return out

    L = {label: scores(run) for label, run in runs.items()}
    names = sorted(set.intersection(*(set(s) for s in L.values())))
    pairs = {}
    for a, b in itertools.combinations(names, 2):
        differences = [L[label][a] - L[label][b] for label in L]
        pairs[f"{a} - {b}"] = {"differences": differences, "spread": max(differences) - min(differences)}
    device = json.loads((ROOT / "bench" / "results" / "device.json").read_text())
    new = device["devices"]["ai-edge-litert 2.3"]["variants"]
    ms = {v["name"]: v["latency_ms_median"] for v in new}
    return {"runs": L, "pairs": pairs, "device_ms": ms,
            "device_f2_minus_f3_time": (ms["f2_int8"] - ms["f3_int8_uint8io"]) / ms["f0_float32"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    started = time.perf_counter()
    audit = [{"case": case, "n": N_AUDIT, "before": coverage(old_interval, N_AUDIT, lost, gained),
              "now": coverage(new_interval, N_AUDIT, lost, gained)} for case, lost, gained in AUDIT_CASES]
    grid = [{"n": n, "lost": lost, "gained": gained, "before": coverage(old_interval, n, lost, gained),
             "now": coverage(new_interval, n, lost, gained)} for n in SIZES for lost, gained in GRID]
    rules = ["before", *GUARD_MODES]
    guard = [{"true loss pp": 100 * loss, "changed each way %": 100 * each,
              **{rule: eligible(rule, loss + each, each) for rule in rules}} for loss, each in GUARD_CASES]
    spread = l_spread()
    record = {
        "edgeopt_choice": 1, "commit": provenance.commit("bench/choice.py"), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "audit_coverage": audit, "grid_coverage": grid,
        "grid_summary": {"now_min": min(r["now"] for r in grid), "now_mean": float(np.mean([r["now"] for r in grid])),
                         "before_min": min(r["before"] for r in grid)},
        "guard_eligible_at_478": guard, "margin": {"default": Objective().margin, **spread},
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "choice.json").write_text(json.dumps(record, indent=1))
    text = render(record)
    (args.out / "choice.md").write_text(text)
    print(text)
    return 0


def render(record: dict[str, Any]) -> str:
    s = record["grid_summary"]
    lines = [
        "# The figures behind the choice's rules (issue 29)", "",
        f"Generated by `python bench/choice.py` at commit `{record['commit']}`; exact probabilities over every test set "
        "(no random draws), in seconds.", "",
        "## Coverage of the 95% paired accuracy interval, 478 photos", "",
        "| case | before (exact McNemar, conditional) | now (Tango's score, continuity-corrected) |", "|---|---|---|",
        *[f"| {r['case']} | {r['before']:.3f} | {r['now']:.3f} |" for r in record["audit_coverage"]], "",
        f"Over the whole grid ({len(record['grid_coverage'])} cases: n = {', '.join(map(str, SIZES))}; no loss, one-sided "
        "losses and losses with changes both ways of 0.5-3 pp): now at least "
        f"**{s['now_min']:.3f}** (mean {s['now_mean']:.3f}); before as low as {s['before_min']:.3f}.", "",
        "## The guard: share of 478-photo test sets in which the variant stays eligible (tolerance 1 pp)", "",
        "| true loss pp | changed each way % | before (benefit-of-doubt, old interval) | "
        + " | ".join(GUARD_MODES) + " |", "|---|---|---|" + "---|" * len(GUARD_MODES),
        *[f"| {r['true loss pp']:.1f} | {r['changed each way %']:.0f} | {r['before']:.3f} | "
          + " | ".join(f"{r[m]:.3f}" for m in GUARD_MODES) + " |" for r in record["guard_eligible_at_478"]], "",
        "## The margin: run-to-run spread of L (the same files, four 1-thread runs)", "",
        "| pair | differences of L, run by run | spread |", "|---|---|---|",
        *[f"| {pair} | {', '.join(f'{d:+.4f}' for d in v['differences'])} | {v['spread']:.4f} |"
          for pair, v in record["margin"]["pairs"].items()], "",
        f"On the same host under ai-edge-litert 2.3 (bench/device.py), f2_int8 - f3_int8_uint8io in time: "
        f"{record['margin']['device_f2_minus_f3_time']:+.4f} of f0's latency. Default margin: "
        f"**{record['margin']['default']:g}**.", "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
