"""Reference benchmark: the study's table reproduced on real waste photos (trashnet5), and ours.

    python bench/reference.py [--threads 1,2] [--image-size 224] [--out bench/results]

1. Transfer-trains MobileNetV2 (alpha 1.0, ImageNet backbone from ../shared/weights) on
   ../shared/data/trashnet5 through edgeopt's own API, with the study's ingredients in a stronger
   recipe (`reference_recipe`). The trained model is cached in bench/cache/ (git-ignored); reruns
   skip training unless --retrain, or unless the cached model was trained with another recipe.
2. Runs edgeopt's optimize on it: (a) the study's five LiteRT variants and (b) every default
   variant of both runtimes, at 1 thread, each raced (the default) and as a full evaluation (every
   variant on every image), to time the race and check that it chooses as the full evaluation
   does; then (b) at each other thread count. Before them, TensorFlow is imported and f0_float32
   alone is optimized twice: that warms the process (the runtimes' imports, the first model load
   and conversion, the decoded-image cache on disk and the OS's file cache), so that the runs
   compare fairly (before, the first, (a) raced, paid it and looked slower than the full
   evaluation after it). What a fresh process adds -- the import, plus the first f0 run's time
   over the second's -- is measured, and the time targets are judged with it added: a user's
   `edgeopt optimize` starts in a fresh process.
3. Writes bench/results/reference.json (each run in edgeopt's results schema, and the full
   evaluation of (b) that tests replay the race on) and bench/results/reference.md, and prints
   each target as met / not met.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import provenance  # bench/, beside this script

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
TRASHNET = SHARED / "data" / "trashnet5"
BACKBONE = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"
# Before the timed runs (see 2. above).
IMPORT = "warm-up: importing TensorFlow in a fresh process"
COLD_F0 = "warm-up: f0_float32 alone, first"
WARM_F0 = "warm-up: f0_float32 alone, again"
STUDY_METHODS = ("f0_float32", "f1_dynamic_range", "f2_int8", "f3_int8_uint8io", "f4_float16")

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
    "selected_loss_pp_max": 0.5,
    "several_pp": 2.0,  # "several points": twice the guard's default tolerance
    "ort_static_loss_pp_max": 1.0,
    "litert_five_seconds_max": 90.0,
    "all_default_seconds_max": 180.0,
}


def shared_data_missing() -> bool:
    """Whether ../shared's photos or backbone are absent (they are on the dev/CI machine only); says so."""
    if TRASHNET.is_dir() and BACKBONE.is_file():
        return False
    print(f"needs {TRASHNET} and {BACKBONE}; they are on the dev/CI machine only", file=sys.stderr)
    return True


def reference_recipe(image_size: int, seed: int = 0) -> Any:
    """The reference model's training recipe: the study's ingredients (ImageNet transfer learning,
    augmentation, Adam, a triangular cyclical rate), made stronger for issue 13. Against the recipe
    before (8 + 6 epochs, the last 30 backbone layers, no smoothing; 88.5-90.6% on three runs) it
    fine-tunes blocks 7-16 and the last conv (the last 91 layers) for 16 epochs, four whole
    cycles that end at the lowest rate, with label smoothing 0.1 and early stopping's patience 4.
    These are edgeopt train's defaults."""
    from edgeopt.config import TrainConfig

    return TrainConfig(
        image_size=image_size, alpha=1.0, weights=str(BACKBONE), epochs_head=8, epochs_finetune=16,
        finetune_layers=91, batch_size=32, lr_min=1e-4, lr_max=2e-3, finetune_lr_scale=0.1,
        label_smoothing=0.1, augment=True, seed=seed, patience=4,
    )


def reference_model_dir(cache: Path, image_size: int, seed: int = 0) -> Path:
    return cache / (f"trashnet5-mnv2-a1.0-{image_size}" + (f"-seed{seed}" if seed else ""))


def train_reference(cache: Path, image_size: int, retrain: bool, seed: int = 0) -> tuple[Path, float, bool]:
    """The reference model (trained, or the cached one if it was trained with this recipe):
    (folder, training seconds, whether it was cached)."""
    from edgeopt.train import train

    config = reference_recipe(image_size, seed)
    model_dir = reference_model_dir(cache, image_size, seed)
    if model_dir.is_dir() and not retrain:
        try:  # every key as written: one missing (older code) is another recipe, not a default
            same = json.loads((model_dir / "train_config.json").read_text()) == config.to_jsonable()
            seconds = json.loads((model_dir / "history.json").read_text())["seconds"]
        except (OSError, ValueError, KeyError):
            same = False
        if same:
            return model_dir, seconds, True
        print(f"{model_dir} was trained with another recipe, or is incomplete; training it again", flush=True)
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


def _loss_pp(run: Any, name: str, against: str) -> float | None:
    v, base = run.variant(name), run.variant(against)
    if v.test is None or base.test is None or v.stopped_early:
        return None
    return 100 * (base.test.accuracy - v.test.accuracy)


def start_up_seconds(stage_seconds: dict[str, float]) -> tuple[float, str]:
    """What a fresh process adds to an optimize run, and how it was measured."""
    first_run = max(0.0, stage_seconds[COLD_F0] - stage_seconds[WARM_F0])
    return stage_seconds[IMPORT] + first_run, (
        f"a fresh process adds {stage_seconds[IMPORT] + first_run:.1f} s (importing TensorFlow {stage_seconds[IMPORT]:.1f} s, "
        f"and the first run's start {first_run:.1f} s: f0_float32 alone took {stage_seconds[COLD_F0]:.1f} s first and "
        f"{stage_seconds[WARM_F0]:.1f} s again)")


def check_targets(runs: dict[str, Any], full: Any, litert: Any, litert_full: Any,
                  start_up: tuple[float, str]) -> list[dict[str, Any]]:
    one = runs["1 thread"]
    f0 = one.baseline
    chosen = one.selected
    loss = _loss_pp(one, chosen.name, f0.name) or 0.0
    names = {v.name for v in one.variants}
    ort_loss = _loss_pp(one, "ort_int8_static", "ort_fp32") if {"ort_int8_static", "ort_fp32"} <= names else None
    guarded = {b: [v.name for v in one.variants if v.name.endswith("_guarded") and v.backend == b] for b in ("litert", "onnxruntime")}
    guard_notes = [n for n in one.notes if "_guarded:" in n]
    worst = max((v for v in one.variants[1:] if v.test is not None), key=lambda v: f0.test.accuracy - v.test.accuracy)
    rows = [
        ("float32 test accuracy >= 90%", f0.test.accuracy >= TARGETS["float32_test_accuracy_min"], f"{100 * f0.test.accuracy:.2f}%"),
        ("default objective: the selected variant loses <= 0.5 pp (1 thread)", loss <= TARGETS["selected_loss_pp_max"],
         f"{chosen.name}: {loss:+.2f} pp; paired {100 * chosen.paired.difference:+.2f} [{100 * chosen.paired.low:+.2f}, "
         f"{100 * chosen.paired.high:+.2f}]" if chosen.paired else f"{chosen.name}: the baseline itself"),
        # by its loss, not its name: a variant tied with the worst (f2 and f3 are) loses as much
        ("a variant losing several points is never selected by default", loss < TARGETS["several_pp"],
         f"selected: {chosen.name} (loses {loss:.2f} pp); worst: {worst.name} (loses "
         f"{100 * (f0.test.accuracy - worst.test.accuracy):.2f} pp), verdict: "
         f"{(worst.score.excluded_because or worst.score.guard) if worst.score else worst.stopped_early}"),
        ("ort_int8_static within 1.0 pp of ort_fp32", ort_loss is not None and ort_loss <= TARGETS["ort_static_loss_pp_max"],
         f"{ort_loss:+.2f} pp" if ort_loss is not None else "not measured"),
        ("a guarded variant for each runtime (built when its plain int8 sibling needs a repair)",
         all(guarded[b] or any(n.startswith(f"{'f2' if b == 'litert' else 'ort'}_int8_guarded:") and "nothing to repair" in n
                               for n in guard_notes)
             for b in guarded),
         "; ".join([f"built: {', '.join(guarded[b])}" for b in guarded if guarded[b]]
                   + [n.removesuffix(".") for n in guard_notes]) or "none"),
        _time_row("optimize, the study's five LiteRT variants, <= 90 s (1 thread)", litert, litert_full,
                  TARGETS["litert_five_seconds_max"], start_up),
        _time_row("optimize, every default variant of both runtimes, <= 180 s (1 thread)", one, full,
                  TARGETS["all_default_seconds_max"], start_up),
        _same_choice_row(runs, full, litert_full),
        ("the race chooses as the full evaluation does (both runs)",
         one.selected.name == full.selected.name and litert.selected.name == litert_full.selected.name,
         f"all variants: {one.selected.name} vs {full.selected.name}; LiteRT five: {litert.selected.name} vs "
         f"{litert_full.selected.name}"),
    ]
    return [{"target": t, "met": bool(ok), "value": v} for t, ok, v in rows]


def run_choices(runs: dict[str, Any], full: Any, litert_full: Any) -> dict[str, str]:
    """The variant each of the five runs of the same build chose (raced and full, 1 and 2 threads)."""
    return {**{label: run.selected.name for label, run in runs.items()},
            "all default variants, 1 thread, full evaluation": full.selected.name,
            "LiteRT five, 1 thread, full evaluation": litert_full.selected.name}


def _same_choice_row(runs: dict[str, Any], full: Any, litert_full: Any) -> tuple[str, bool, str]:
    """Issue 29: runs of the same files choose the same variant (ties within the margin are broken alike)."""
    choices = run_choices(runs, full, litert_full)
    objective = runs["1 thread"].choice.objective
    return ("the five runs of the same build choose the same variant", len(set(choices.values())) == 1,
            "; ".join(f"{label}: {name}" for label, name in choices.items())
            + f" (guard {objective.get('guard')} at {objective.get('max_metric_loss')} pp, margin {objective.get('margin')})")


def _time_row(target: str, raced: Any, full: Any, limit: float, start_up: tuple[float, str]) -> tuple[str, bool, str]:
    """A wall-time target: the raced run as a user's fresh process would take it."""
    fresh_s, fresh = start_up
    warm = raced.timings["total_s"]
    stages = ", ".join(f"{k.removesuffix('_s')} {v:.1f}" for k, v in raced.timings.items() if k != "total_s")
    return (target, warm + fresh_s <= limit,
            f"{warm + fresh_s:.1f} s in a fresh process: {warm:.1f} s raced in a warm one (full evaluation "
            f"{full.timings['total_s']:.1f} s); {stages}; {fresh}")


def render(reference: dict[str, Any], runs: dict[str, Any]) -> str:
    from edgeopt.report import TABLE_HEADER, markdown_table, paired_text, table_rows

    lines = [
        "# Reference benchmark: the study's table on trashnet5",
        "",
        f"Generated by `python bench/reference.py` at commit `{reference['commit']}` on {reference['created']}.",
        f"Machine: {reference['machine']['cpu']}, {reference['machine']['cores']} cores, int8 dot-product "
        f"instructions: {', '.join(reference['machine']['int8_dot_product']) or 'none'}, AVX-512: "
        f"{'yes' if reference['machine']['avx512'] else 'no'}. Libraries: "
        + ", ".join(f"{k} {v}" for k, v in reference["machine"]["libraries"].items()) + ".",
        f"Model: MobileNetV2 alpha 1.0, {reference['image_size']} px, ImageNet backbone, trained on trashnet5 "
        f"({reference['data']['train_total']} train / {len(reference['data']['test_items'])} test images, "
        "the 80/20 split of the model folder). Stage wall times: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in reference["stage_seconds"].items()) + ".",
        "",
    ]
    for label, run in runs.items():
        if label.startswith("LiteRT"):
            continue
        lines += [f"## {label}: edgeopt's table (default objective, accuracy guard 1 pp)", ""]
        lines += markdown_table(TABLE_HEADER, table_rows(run))
        lines += ["", "Why:", "", *[f"- {r}" for r in run.choice.reasons], ""]
        lines += [f"### {label}: the study's columns beside ours", ""]
        header = ("variant", "study test %", "ours test %", "study ms", "ours ms", "study KB", "ours KB",
                  "study L (paper)", "ours L (paper)", "ours Δ pp [95%]")
        rows = []
        for v in run.variants:
            if v.name not in STUDY:
                continue
            s = STUDY[v.name]
            rows.append((v.name, f"{s['test_acc']:.2f}", f"{100 * v.test.accuracy:.2f}" if v.test else "-", f"{s['ms']:.0f}",
                         f"{v.latency.median_ms:.2f}" if v.latency else "-", f"{s['kb']:.0f}", f"{v.size_bytes / 1024:.0f}",
                         f"{s['L_paper']:.2f}", f"{v.score.L_other_form:.2f}" if v.score else "-", paired_text(v)[0]))
        lines += markdown_table(header, rows)
        lines += ["", f"Paper objective's choice: **{run.choice.other_form_selected}** (study: f4_float16, L = -0.50). "
                  "Stage wall times: " + ", ".join(f"{k.removesuffix('_s')} {v:.0f} s" for k, v in run.timings.items()) + ".",
                  ""]
    rules = reference.get("choice_rules", {})
    lines += ["## The choice of each run (the same files)", "",
              f"Guard {rules.get('guard')} at {rules.get('max_metric_loss')} pp, margin {rules.get('margin')} of L "
              "(docs/choice.md).", "",
              *[f"- {label}: **{name}**" for label, name in reference.get("choices", {}).items()], ""]
    lines += ["## Targets", ""]
    lines += [f"- {'MET' if t['met'] else 'NOT MET'}: {t['target']} — {t['value']}" for t in reference["targets"]]
    one = runs["1 thread"]
    if one.notes:
        lines += ["", "## Notes (1 thread)", "", *[f"- {n}" for n in one.notes]]
    if one.diagnostics:
        lines += ["", "## Diagnostics (1 thread, from the graphs and the CPU flags)", "", *[f"- {d}" for d in one.diagnostics]]
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", default="1,2", help="comma-separated interpreter thread counts")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "cache")
    parser.add_argument("--retrain", action="store_true", help="train again even if a cached model exists")
    args = parser.parse_args()
    if shared_data_missing():
        return 2

    from edgeopt._tf import import_tensorflow
    from edgeopt.config import MeasureConfig, OptimizeConfig
    from edgeopt.pipeline import optimize

    commit = provenance.commit("bench/reference.py")  # the code the run starts with
    started = time.perf_counter()
    model_dir, train_s, cached = train_reference(args.cache, args.image_size, args.retrain)
    stage_seconds = {("training (cached run)" if cached else "training"): train_s}
    runs: dict[str, Any] = {}

    def timed(label: str, config: OptimizeConfig, folder: Path) -> Any:
        t = time.perf_counter()
        result = optimize(model_dir, folder, config)
        stage_seconds[label] = time.perf_counter() - t
        print(f"{label}: {stage_seconds[label]:.0f} s, selected {result.selected.name}", flush=True)
        return result

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        t = time.perf_counter()
        import_tensorflow()
        stage_seconds[IMPORT] = time.perf_counter() - t
        f0_alone = OptimizeConfig(methods=("f0_float32",), measure=MeasureConfig(threads=1))
        timed(COLD_F0, f0_alone, work / "f0-first")
        timed(WARM_F0, f0_alone, work / "f0-again")
        five = OptimizeConfig(methods=STUDY_METHODS, measure=MeasureConfig(threads=1))
        runs["LiteRT five, 1 thread"] = litert = timed("optimize, LiteRT five, raced", five, work / "five")
        litert_full = timed("optimize, LiteRT five, full evaluation",
                            five.replaced(measure=MeasureConfig(threads=1, race=False)), work / "five-full")
        runs["1 thread"] = timed("optimize, all default variants, 1 thread, raced",
                                 OptimizeConfig(measure=MeasureConfig(threads=1)), work / "all")
        full = timed("optimize, all default variants, 1 thread, full evaluation",
                     OptimizeConfig(measure=MeasureConfig(threads=1, race=False)), work / "all-full")
        for threads in [int(t) for t in args.threads.split(",") if int(t) != 1]:
            runs[f"{threads} threads"] = timed(f"optimize, all default variants, {threads} threads, raced",
                                               OptimizeConfig(measure=MeasureConfig(threads=threads)), work / f"all-{threads}")
    first = runs["1 thread"]
    reference = {
        "edgeopt_reference": 2,
        "commit": commit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "image_size": args.image_size,
        "machine": first.machine,
        "data": first.data.model_dump(),
        "study": STUDY,
        "targets_spec": TARGETS,
        "stage_seconds": stage_seconds,
        "total_seconds": time.perf_counter() - started,
        "runs": {label: json.loads(run.to_json()) for label, run in runs.items()},
        "full_evaluation": json.loads(full.to_json()),
        "litert_full_evaluation": json.loads(litert_full.to_json()),
        "targets": check_targets(runs, full, litert, litert_full, start_up_seconds(stage_seconds)),
        # issue 29: what each run chose, and the rules it chose by
        "choices": run_choices(runs, full, litert_full),
        "choice_rules": {key: first.choice.objective.get(key) for key in ("guard", "max_metric_loss", "margin", "confidence")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    provenance.write_json(args.out / "reference.json", reference)
    text = render(reference, runs)
    provenance.write_text(args.out / "reference.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
