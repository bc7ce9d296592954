"""Reference benchmark: the study's table reproduced on real waste photos (trashnet5), and ours.

    python bench/reference.py [--threads 1,2] [--image-size 224] [--out bench/results]

1. Transfer-trains MobileNetV2 (alpha 1.0, ImageNet backbone from ../shared/weights) on
   ../shared/data/trashnet5 through edgeopt's own API, with the study's recipe. The trained
   model is cached in bench/cache/ (git-ignored); reruns skip training unless --retrain.
2. Runs edgeopt's optimize on it at each thread count.
3. Writes bench/results/reference.json (per thread count, the same keys as optimize's
   results.json) and bench/results/reference.md (the study's table beside ours), and prints
   each target as met / not met.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRASHNET = SHARED / "data" / "trashnet5"
BACKBONE = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"

# The study's table (Akhmetzyanov et al. 2020): KB, ms per image, test accuracy %, L.
STUDY = {
    "f0_float32": {"kb": 3200, "ms": 23, "test_acc": 99.18, "L_paper": 0.00},
    "f1_dynamic_range": {"kb": 834, "ms": 47, "test_acc": 90.26, "L_paper": 0.21},
    "f2_int8": {"kb": 999, "ms": 483, "test_acc": 99.18, "L_paper": 19.31},
    "f3_int8_uint8io": {"kb": 1000, "ms": 486, "test_acc": 99.08, "L_paper": 19.44},
    "f4_float16": {"kb": 1612, "ms": 23, "test_acc": 99.18, "L_paper": -0.50},
}
TARGETS = {
    "float32_test_accuracy_min": 0.90,
    "selected_accuracy_drop_pp_max": 1.0,
    "selected_L_max_at_1_thread": -1.15,
    "stretch_selected_accuracy_drop_pp_max": 0.3,
    "optimize_seconds_max": 180.0,
}


def commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src", "bench/reference.py"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return sha + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def train_reference(cache: Path, image_size: int, retrain: bool) -> tuple[Path, float, bool]:
    from edgeopt.config import TrainConfig
    from edgeopt.train import train

    config = TrainConfig(
        image_size=image_size, alpha=1.0, weights=str(BACKBONE), epochs_head=8, epochs_finetune=6,
        finetune_layers=30, batch_size=32, lr_min=1e-4, lr_max=2e-3, augment=True, seed=0, patience=3,
    )
    model_dir = cache / f"trashnet5-mnv2-a1.0-{image_size}"
    if model_dir.is_dir() and not retrain:
        return model_dir, json.loads((model_dir / "history.json").read_text())["seconds"], True
    started = time.perf_counter()
    result = train(TRASHNET, model_dir, config, force=True, progress=_Printer())
    print(f"trained: val {result.val_accuracy:.4f}, test (Keras) {result.test_accuracy:.4f}", flush=True)
    return model_dir, time.perf_counter() - started, False


class _Printer:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1, info: str = "") -> None:
        pass

    def finish(self, summary: str = "") -> None:
        if summary:
            print(summary, flush=True)


def check_targets(by_threads: dict[str, dict[str, Any]], litert_only: dict[str, Any]) -> list[dict[str, Any]]:
    one = by_threads["1"]
    variants = {v["name"]: v for v in one["variants"]}
    f0 = variants[one["baseline"]]
    chosen = variants[one["selected"]]
    drop = 100 * (f0["test_accuracy"] - chosen["test_accuracy"])
    rows = [
        ("float32 test accuracy >= 90%", f0["test_accuracy"] >= TARGETS["float32_test_accuracy_min"],
         f"{100 * f0['test_accuracy']:.2f}%"),
        ("selected variant loses <= 1.0 pp (1 thread)", drop <= TARGETS["selected_accuracy_drop_pp_max"],
         f"{one['selected']}: {drop:+.2f} pp"),
        ("selected variant L <= -1.15 (1 thread, default objective)", chosen["L"] <= TARGETS["selected_L_max_at_1_thread"],
         f"{one['selected']}: L = {chosen['L']:.2f} ({chosen['size_ratio']:.2f}x smaller, {chosen['speedup']:.2f}x faster)"),
        ("stretch: selected variant loses <= 0.3 pp", drop <= TARGETS["stretch_selected_accuracy_drop_pp_max"],
         f"{drop:+.2f} pp"),
        ("optimize end to end, 5 LiteRT variants, <= 3 min (1 thread)",
         litert_only["timings"]["total_s"] <= TARGETS["optimize_seconds_max"],
         f"{litert_only['timings']['total_s']:.0f} s (build {litert_only['timings']['build_s']:.0f}, "
         f"accuracy {litert_only['timings']['evaluate_s']:.0f}, latency {litert_only['timings']['latency_s']:.0f}; "
         f"with the 4 ONNX Runtime variants too: {one['timings']['total_s']:.0f} s)"),
    ]
    return [{"target": t, "met": bool(ok), "value": v} for t, ok, v in rows]


def render(reference: dict[str, Any]) -> str:
    from edgeopt.report import _markdown_table

    lines = [
        "# Reference benchmark: the study's table on trashnet5",
        "",
        f"Generated by `python bench/reference.py` at commit `{reference['commit']}` on {reference['created']}.",
        f"Machine: {reference['machine']['cpu']}, {reference['machine']['cores']} cores, int8 dot-product "
        f"instructions: {', '.join(reference['machine']['int8_dot_product']) or 'none'}, AVX-512: "
        f"{'yes' if reference['machine']['avx512'] else 'no'}. Libraries: "
        + ", ".join(f"{k} {v}" for k, v in reference["machine"]["libraries"].items()) + ".",
        f"Model: MobileNetV2 alpha 1.0, {reference['image_size']} px, ImageNet backbone, trained on trashnet5 "
        f"({reference['data']['train_images']} train / {reference['data']['test_images']} test images, "
        "the 80/20 split of the model folder). Stage wall times: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in reference["stage_seconds"].items()) + ".",
        "",
    ]
    for threads, run in reference["runs"].items():
        lines += [f"## {threads} thread(s): study vs edgeopt (LiteRT rows f0-f4 are the study's; ort_* rows are ONNX Runtime)", ""]
        header = ("variant", "study test %", "ours test %", "ours train %", "study ms", "ours ms (p90)",
                  "study KB", "ours KB", "size x", "speed x", "study L (paper)", "ours L paper", "ours L default")
        rows = []
        for v in run["variants"]:
            s = STUDY.get(v["name"], {})
            rows.append((
                v["name"] + (" *" if v["name"] == run["selected"] else ""),
                f"{s.get('test_acc', float('nan')):.2f}", f"{100 * v['test_accuracy']:.2f}",
                f"{100 * v['train_accuracy']:.2f}", f"{s.get('ms', float('nan')):.0f}",
                f"{v['latency_ms_median']:.2f} ({v['latency_ms_p90']:.2f})", f"{s.get('kb', float('nan')):.0f}",
                f"{v['size_kb']:.0f}", f"{v['size_ratio']:.2f}", f"{v['speedup']:.2f}",
                f"{s.get('L_paper', float('nan')):.2f}", f"{v['L_paper']:.2f}", f"{v['L_default']:.2f}",
            ))
        lines += _markdown_table(header, rows)
        lines += [
            "",
            f"Winner, default objective: **{run['selected']}**; paper objective: "
            f"**{run['objective']['other_form_selected']}** (study: f4_float16, L = -0.50).",
            "Latency spread between rounds: "
            + ", ".join(f"{v['name']} {100 * v['latency_spread']:.0f}%" for v in run["variants"]) + ".",
            f"optimize wall time: {run['timings']['total_s']:.0f} s "
            f"(build {run['timings']['build_s']:.0f} s, accuracy {run['timings']['evaluate_s']:.0f} s, "
            f"latency {run['timings']['latency_s']:.0f} s).",
            "",
        ]
        classes = run["model"]["classes"]
        lines += [f"Test accuracy per class, {threads} thread(s):", ""]
        lines += _markdown_table(("variant", *classes), [
            (v["name"], *(f"{100 * v['test_per_class'][c]:.1f}" for c in classes)) for v in run["variants"]
        ])
        lines.append("")
    lines += ["## Targets", ""]
    lines += [f"- {'MET' if t['met'] else 'NOT MET'}: {t['target']} — {t['value']}" for t in reference["targets"]]
    notes = reference["runs"].get("1", {}).get("notes") or []
    if notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in notes]]
    diagnostics = reference["runs"].get("1", {}).get("diagnostics") or []
    if diagnostics:
        lines += ["", "## Diagnostics (1 thread, from the graphs and the CPU flags)", "", *[f"- {d}" for d in diagnostics]]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated interpreter thread counts")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "cache")
    parser.add_argument("--retrain", action="store_true", help="train again even if a cached model exists")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--invocations", type=int, default=50)
    args = parser.parse_args()
    if not TRASHNET.is_dir() or not BACKBONE.is_file():
        print(f"needs {TRASHNET} and {BACKBONE}; they are on the dev/CI machine only", file=sys.stderr)
        return 2

    from edgeopt.config import MeasureConfig, OptimizeConfig
    from edgeopt.pipeline import optimize

    started = time.perf_counter()
    model_dir, train_s, cached = train_reference(args.cache, args.image_size, args.retrain)
    stage_seconds = {("training (cached run)" if cached else "training"): train_s}
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        # The study's five variants alone first: the end-to-end time target is for them.
        config = OptimizeConfig(backends=("litert",), measure=MeasureConfig(threads=1, rounds=args.rounds, invocations=args.invocations))
        t = time.perf_counter()
        litert_only = optimize(model_dir, Path(tmp) / "opt-litert-1", config)
        stage_seconds["optimize, 5 LiteRT variants, 1 thread"] = time.perf_counter() - t
        print(f"optimize (5 LiteRT variants, 1 thread): {stage_seconds['optimize, 5 LiteRT variants, 1 thread']:.0f} s", flush=True)
        for threads in [int(t) for t in args.threads.split(",")]:
            config = OptimizeConfig(measure=MeasureConfig(threads=threads, rounds=args.rounds, invocations=args.invocations))
            t = time.perf_counter()
            runs[str(threads)] = optimize(model_dir, Path(tmp) / f"opt-{threads}", config)
            stage_seconds[f"optimize, all backends, {threads} thread(s)"] = time.perf_counter() - t
            print(f"optimize at {threads} thread(s): {stage_seconds[f'optimize, all backends, {threads} thread(s)']:.0f} s", flush=True)
    first = next(iter(runs.values()))
    reference = {
        "edgeopt_reference": 1,
        "commit": commit(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image_size": args.image_size,
        "machine": first["machine"],
        "data": first["data"],
        "study": STUDY,
        "targets_spec": TARGETS,
        "stage_seconds": stage_seconds,
        "total_seconds": time.perf_counter() - started,
        "runs": runs,
    }
    reference["litert_only_1_thread"] = {k: litert_only[k] for k in ("selected", "timings", "reasons")}
    reference["targets"] = check_targets(runs, litert_only) if "1" in runs else []
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "reference.json").write_text(json.dumps(reference, indent=1))
    (args.out / "reference.md").write_text(render(reference))
    print(render(reference))
    return 0


if __name__ == "__main__":
    sys.exit(main())
