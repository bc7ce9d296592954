"""The study's future work measured: quantization-aware training, pruning and weight clustering
against the study's post-training variants, on the reference model (issue 13).

    python bench/retrain.py [--epochs 2] [--sparsity 0.5] [--clusters 16] [--out bench/results]

Uses the reference model that bench/reference.py trains and caches (trains it if absent), runs
edgeopt's optimize with f0, f2, f3, f4 and the three retraining methods, every variant on every test
image (no race), at 1 thread, and writes bench/results/retrain.{json,md} with each target as
met / not met. Needs pip install 'edgeopt[tfmot]'. About 30 minutes on 2 cores.
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
from reference import ROOT, shared_data_missing, train_reference

METHODS = ("f0_float32", "f2_int8", "f3_int8_uint8io", "f4_float16", "qat_int8", "pruned_int8", "clustered_int8")
TARGETS = {
    "float32_test_accuracy_min": 0.92,
    "qat_loss_pp_max": 0.3,
    "qat_same_as_f2_within": 0.10,  # size and median latency within 10% of f2's
    "compressed_transfer_of_f0_file_max": 0.15,
    "compressed_loss_pp_max": 0.5,
}


def check_targets(results: Any) -> dict[str, dict[str, Any]]:
    f0, f2 = results.variant("f0_float32"), results.variant("f2_int8")
    qat = results.variant("qat_int8")

    def loss_pp(name: str) -> float:
        paired = results.variant(name).paired
        return -100 * paired.difference if paired else float("nan")

    within = TARGETS["qat_same_as_f2_within"]
    size_ratio = qat.size_bytes / f2.size_bytes
    time_ratio = qat.latency.median_ms / f2.latency.median_ms if qat.latency and f2.latency else float("nan")
    targets = {
        "float32 >= 92% test accuracy": {"value": round(100 * f0.test.accuracy, 2), "met": f0.test.accuracy >= 0.92,
                                         "note": "the reference model, seed 0; bench/baseline.py gives the spread over seeds"},
        "qat_int8 point loss <= 0.3 pp": {"value": round(loss_pp("qat_int8"), 2), "met": loss_pp("qat_int8") <= 0.3},
        "qat_int8 size and latency within 10% of f2": {
            "value": f"size x{size_ratio:.3f}, latency x{time_ratio:.3f}",
            "met": abs(size_ratio - 1) <= within and abs(time_ratio - 1) <= within},
    }
    for name in ("pruned_int8", "clustered_int8"):
        v = results.variant(name)
        share = (v.transfer_bytes or v.size_bytes) / f0.size_bytes
        targets[f"{name}: transfer <= 0.15 x f0 file, loss <= 0.5 pp"] = {
            "value": f"transfer x{share:.3f} of f0's file, loss {loss_pp(name):+.2f} pp",
            "met": share <= TARGETS["compressed_transfer_of_f0_file_max"] and loss_pp(name) <= TARGETS["compressed_loss_pp_max"],
        }
    return targets


def render(record: dict[str, Any], results: Any) -> str:
    from edgeopt.results import FITTED_TO_IN_WORDS

    f0 = results.variant("f0_float32")
    lines = [
        "# The study's future work on the reference model (bench/retrain.py)", "",
        f"Commit {record['commit']}, {record['created']}. {record['machine'].get('cpu', '')}, 1 thread, "
        f"{len(results.data.test_items)} test photos, every variant on every photo. Fine-tuning: "
        f"{record['retrain']['epochs']} epochs on the {record['train_images']} "
        f"train photos, sparsity {record['retrain']['sparsity']}, {record['retrain']['clusters']} clusters per kernel. "
        f"Total {record['total_seconds']:.0f} s. zstd KB: the file compressed as a delivery sends it "
        f"({record.get('transfer_codec', 'zstd')}).", "",
        "| variant | KB | zstd KB | zstd / f0 file | test acc % | Δ pp [95%] | disc. | ms (median) | L | build s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in results.variants:
        p = v.paired
        delta = f"{100 * p.difference:+.2f} [{100 * p.low:+.2f}, {100 * p.high:+.2f}]" if p else "baseline"
        disc = str(p.baseline_only + p.variant_only) if p else ""
        lines.append(
            f"| {v.name} | {v.size_bytes / 1024:.0f} | {(v.transfer_bytes or 0) / 1024:.0f} | "
            f"{(v.transfer_bytes or 0) / f0.size_bytes:.3f} | {100 * v.test.accuracy:.2f} | {delta} | {disc} | "
            f"{v.latency.median_ms:.2f} | {v.score.L if v.score else float('nan'):+.2f} | {v.build_seconds:.0f} |"
        )
    lines += ["", "## What the fine-tuning did", ""]
    for v in results.variants:
        if v.training is not None:
            t = v.training
            lines.append(f"- **{v.name}**: {t.seconds:.0f} s of fine-tuning, fitted to {FITTED_TO_IN_WORDS[t.fitted_to]}, "
                         f"Adam {t.learning_rate:g}; "
                         "last epoch's train accuracy "
                         f"{100 * t.train_accuracy_last_epoch:.1f}%"
                         + (f"; sparsity reached {t.sparsity_reached:.1%}" if t.sparsity_reached is not None else "")
                         + (f"; at most {t.max_unique_values_per_kernel} values per kernel" if t.clusters else ""))
    lines += ["", f"Selected by the default objective: **{results.choice.selected}**.", "", "## Targets (issue 13)", ""]
    for label, t in record["targets"].items():
        lines.append(f"- {label}: {t['value']} — **{'met' if t['met'] else 'NOT MET'}**" + (f" ({t['note']})" if t.get("note") else ""))
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs [default: edgeopt's]")
    parser.add_argument("--sparsity", type=float, default=None)
    parser.add_argument("--clusters", type=int, default=None)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--cache", type=Path, default=ROOT / "bench" / "cache")
    args = parser.parse_args()
    if shared_data_missing():
        return 2

    from edgeopt.config import MeasureConfig, OptimizeConfig, RetrainConfig
    from edgeopt.methods.base import TRANSFER_LEVEL
    from edgeopt.pipeline import optimize

    commit = provenance.commit("bench/retrain.py")  # the code the run starts with
    started = time.perf_counter()
    model_dir, _, _ = train_reference(args.cache, 224, False)
    chosen = {k: v for k, v in (("epochs", args.epochs), ("sparsity", args.sparsity), ("clusters", args.clusters)) if v is not None}
    retrain = RetrainConfig(**chosen)
    config = OptimizeConfig(methods=METHODS, retrain=retrain, measure=MeasureConfig(threads=1, race=False))
    with tempfile.TemporaryDirectory() as tmp:
        results = optimize(model_dir, Path(tmp) / "retrain", config)
    record = {
        "edgeopt_retrain": 1,
        "commit": commit,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": results.machine,
        "retrain": retrain.model_dump(),
        "train_images": results.variant("qat_int8").training.images,
        "targets_spec": TARGETS,
        "transfer_codec": f"zstd level {TRANSFER_LEVEL}",
        "total_seconds": time.perf_counter() - started,
        "run": json.loads(results.to_json()),
        "targets": check_targets(results),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    provenance.write_json(args.out / "retrain.json", record)
    text = render(record, results)
    provenance.write_text(args.out / "retrain.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
