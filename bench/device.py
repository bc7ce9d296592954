"""Device benchmark: the reference model's variants measured under two runtimes on this machine --
tflite-runtime 2.14 with numpy < 2 (what many Raspberry Pi images ship) and ai-edge-litert 2.3 --
and the choice edgeopt makes for each.

    python bench/device.py [--out bench/results]

Needs the reference model (python bench/reference.py trains and caches it). Runs `edgeopt optimize`
on it (LiteRT variants, 1 thread) into bench/cache/device-run, then `edgeopt device bench` on that
run in this environment and in a second virtual environment with tflite-runtime 2.14 (made under
bench/cache/venv-tflite-2.14 with the light install), and `edgeopt choose` with both results.
Writes bench/results/device.json and device.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import provenance  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "bench" / "cache"
MODEL = CACHE / "trashnet5-mnv2-a1.0-224"
RUN = CACHE / "device-run"
OLD_VENV = CACHE / "venv-tflite-2.14"


def sh(*command: str | Path, **kwargs: object) -> subprocess.CompletedProcess[str]:
    print("$", " ".join(map(str, command)), flush=True)
    return subprocess.run([str(c) for c in command], check=True, text=True, **kwargs)  # type: ignore[call-overload]


def old_runtime_python() -> Path:
    python = OLD_VENV / "bin" / "python"
    if not python.exists():
        sh(sys.executable, "-m", "venv", OLD_VENV)
        sh(python, "-m", "pip", "install", "-q", "tflite-runtime==2.14.0", "numpy<2", f"{ROOT}[tflite-runtime]")
    else:
        sh(python, "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", ROOT)
    return python


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    if not MODEL.is_dir():
        print(f"{MODEL} is missing; run python bench/reference.py first", file=sys.stderr)
        return 2
    commit = provenance.commit("bench/device.py")  # the code the run starts with
    edgeopt = [sys.executable, "-m", "edgeopt"]
    started = time.perf_counter()
    sh(*edgeopt, "optimize", MODEL, "--out", RUN, "--backends", "litert", "--threads", "1", "--force")
    work = CACHE / "device-bench"
    work.mkdir(exist_ok=True)
    new = work / "ai-edge-litert-2.3.json"
    old = work / "tflite-runtime-2.14.json"
    sh(*edgeopt, "device", "bench", RUN, "--out", new, "--rounds", str(args.rounds), "--force")
    sh(old_runtime_python(), "-m", "edgeopt", "device", "bench", RUN, "--out", old, "--rounds", str(args.rounds), "--force")
    choice = work / "choice"
    sh(*edgeopt, "choose", RUN, "--device-results", new, "--device-results", old, "--out", choice, "--force")
    from edgeopt.results import load_results

    devices = {}
    for label, path in (("ai-edge-litert 2.3", choice / "target-1"), ("tflite-runtime 2.14", choice / "target-2")):
        results = load_results(path)
        assert results.choice is not None
        devices[label] = {
            "selected": results.choice.selected,
            # issue 29: a changed choice must come from a difference outside the margin, never from a tie's noise
            "tie": results.choice.tie, "tie_broken_by": results.choice.tie_broken_by,
            "margin": results.choice.objective.get("margin"),
            "reasons": results.choice.reasons,
            "variants": [{
                "name": v.name, "loadable": v.loadable, "load_error": v.load_error,
                "latency_ms_median": v.latency.median_ms if v.latency else None,
                "round_medians_ms": v.latency.round_medians_ms if v.latency else None,
                "test_accuracy": v.test.accuracy if v.test else None,
                "L": v.score.L if v.score else None,
                "verdict": ((v.score.excluded_because or v.score.guard) if v.score
                            else v.load_error or v.stopped_early or "not measured"),
            } for v in results.variants],
        }
    build = load_results(RUN)
    for entry in devices.values():
        entry["changed"] = entry["selected"] != (build.choice.selected if build.choice else None)
        scores = {v["name"]: v["L"] for v in entry["variants"]}
        old = scores.get(build.choice.selected) if build.choice else None
        # the build machine's choice against the device's, in the device's L: outside the margin when it changed
        entry["L_gap_to_build_choice"] = (old - scores[entry["selected"]]) if old is not None else None
        entry["changed_within_margin"] = bool(entry["changed"] and entry["L_gap_to_build_choice"] is not None
                                              and entry["L_gap_to_build_choice"] < entry["margin"])
    report = {
        "edgeopt_device_bench": 1,
        "commit": commit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": build.machine,
        "build_machine_choice": build.choice.selected if build.choice else None,
        "devices": devices,
        "seconds": time.perf_counter() - started,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    provenance.write_json(args.out / "device.json", report)
    text = (choice / "report.md").read_text().replace("# edgeopt: the choice, per target", "# Device benchmark: one model, two runtimes")
    summary = "".join(
        f"- {label}: **{entry['selected']}** -- " + (
            "the build machine's choice" if not entry["changed"] else
            f"a change {'WITHIN' if entry['changed_within_margin'] else 'outside'} the margin of {entry['margin']} "
            f"(L {entry['L_gap_to_build_choice']:+.3f} from the build machine's choice)" if entry["L_gap_to_build_choice"] is not None
            else "a change: the build machine's choice is not eligible there") + "\n"
        for label, entry in devices.items())
    provenance.write_text(args.out / "device.md", f"Generated by `python bench/device.py` at commit `{commit}`.\n\n{summary}\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
