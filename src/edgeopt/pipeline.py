"""optimize(): the one place that calls every stage in order.

data (the model's own test/train split) -> methods (build variants) -> runtimes (open them)
-> measure (accuracy, latency) -> objective (score, choose) -> report (files).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.config import OptimizeConfig, to_jsonable, write_config
from edgeopt.data.imagefolder import DecodedImages, decode_images, scan_image_folder
from edgeopt.data.split import SPLIT_FILE, Split, build_split, check_data_matches, load_split, save_split
from edgeopt.data.synthetic import is_synthetic
from edgeopt.diagnose import diagnose
from edgeopt.errors import BackendUnavailableError, ConfigError, DataError, ModelError
from edgeopt.graph import describe_change, describe_model
from edgeopt.machine import describe_machine, has_int8_dot_product
from edgeopt.measure import measure_accuracy, measure_decode_ms, measure_latency
from edgeopt.methods.base import Artifact, BuildContext, Method, build_artifact
from edgeopt.methods.registry import get_method, list_methods
from edgeopt.objective import Candidate, ObjectiveForm, select
from edgeopt.outputs import check_output, staged_output
from edgeopt.pixels import PIXELS
from edgeopt.progress import NullProgress, Progress
from edgeopt.report import write_report
from edgeopt.runtimes.registry import EXTRAS, get_runtime, list_runtimes
from edgeopt.train import write_labels

LABELS_FILE = "labels.json"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """The model optimize starts from, and the images it is measured on."""

    path: Path
    kind: str  # "keras" (a train folder) or "onnx" (a file)
    classes: tuple[str, ...]
    image_size: tuple[int, int]
    split: Split
    data_root: Path
    synthetic: bool
    notes: tuple[str, ...] = ()


def load_model_folder(path: Path, data_dir: Path | None) -> Source:
    """A train output folder: model.keras with its labels and its own split."""
    for name in ("model.keras", LABELS_FILE, SPLIT_FILE):
        if not (path / name).is_file():
            raise ModelError(f"{path / name} is missing; pass the folder written by 'edgeopt train'")
    try:
        labels = json.loads((path / LABELS_FILE).read_text())
        classes, size = tuple(labels["classes"]), int(labels["image_size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path / LABELS_FILE} is not a valid labels file ({exc}); re-run 'edgeopt train'") from None
    split = load_split(path / SPLIT_FILE)
    if tuple(split.classes) != classes:
        raise ModelError(
            f"{path} has {len(classes)} classes in labels.json but {len(split.classes)} in split.json; "
            "re-run 'edgeopt train'"
        )
    root = Path(data_dir) if data_dir else Path(split.data_root)
    if not root.is_dir():
        raise DataError(f"the model's data folder {root} is gone; pass it with --data DIR")
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    lacking = [c for c in classes if c not in folders]
    if lacking:
        raise DataError(
            f"{root} has no class folder(s) {', '.join(lacking)} of this model ({', '.join(classes)}); "
            "pass the data folder the model was trained on with --data"
        )
    extra = sorted(folders - set(classes))
    if extra:
        log.warning("%s has class folder(s) the model does not know (%s); they are not used", root, ", ".join(extra))
    return Source(path, "keras", classes, (size, size), split, root,
                  bool(labels.get("synthetic_data", False)) or is_synthetic(root))


def load_onnx_source(path: Path, data_dir: Path | None, seed: int = 0) -> Source:
    """An .onnx file from another framework: edgeopt draws a seeded 80/20 split of --data."""
    if data_dir is None:
        raise ConfigError(f"{path} is an ONNX model: pass --data DIR with its images (DIR/<class>/*.jpg)")
    runtime = get_runtime("onnxruntime")
    spec = runtime.open(path).input
    folder = scan_image_folder(data_dir)
    split = build_split(folder, seed=seed, val_fraction=0.0)
    notes = (
        "The input is an ONNX model, so only ONNX Runtime variants were built: the LiteRT variants need a "
        "Keras model (TensorFlow's TFLite converter reads Keras or SavedModel, not ONNX).",
        f"The test split was drawn by edgeopt (20% of each class of {data_dir}, seed {seed}); edgeopt cannot "
        "know which images trained this model, so accuracies are optimistic if these were among them.",
    )
    return Source(path, "onnx", folder.classes, spec.image_size, split, folder.root, is_synthetic(folder.root), notes)


def resolve_methods(config: OptimizeConfig, source: Source) -> tuple[list[Method], list[str]]:
    """The methods to build (baseline first) and notes on what was left out and why."""
    notes = []
    installed = list_runtimes(installed_only=True)
    if config.backends is None:
        backends = installed
        for name in list_runtimes():
            if name not in installed:
                notes.append(
                    f"Backend {name} is not installed, so its variants were not built "
                    f"(pip install 'edgeopt[{EXTRAS.get(name, name)}]')."
                )
    else:
        backends = [get_runtime(b).name for b in config.backends]  # refuses unknown or missing ones
    names = list(config.methods) if config.methods else [
        m for m in list_methods() if get_method(m).backend in backends
    ]
    methods = [get_method(n) for n in names]
    if source.kind == "onnx":
        dropped = [m.name for m in methods if m.source == "keras"]
        methods = [m for m in methods if m.source != "keras"]
        if config.methods and dropped:
            notes.append(f"Not built from an ONNX model: {', '.join(dropped)}.")
    missing = sorted({m.backend for m in methods} - set(installed))
    if missing:
        raise BackendUnavailableError(
            f"backend {missing[0]} is not installed; pip install 'edgeopt[{EXTRAS.get(missing[0], missing[0])}]'"
        )
    if not methods:
        raise ConfigError(
            "no method can be built for this model with these backends; for an .onnx model use the "
            "onnxruntime backend (pip install 'edgeopt[onnx]')"
        )
    return methods, notes


def _reduce_range(config: OptimizeConfig) -> bool:
    if config.ort_reduce_range is not None:
        return config.ort_reduce_range
    return not has_int8_dot_product()


def _representative(pixels: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pixels))[: min(count, len(pixels))]
    return pixels[np.sort(order)]


def optimize(
    model: Path,
    out: Path,
    config: OptimizeConfig,
    force: bool = False,
    data_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build, measure, score and choose; write variants/, results.json, report.md, the plot,
    selected.<ext> and labels.json to `out`. Returns the results as written.

    `model` is a folder written by `edgeopt train`, or an .onnx file (then `data_dir` is needed).
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    model = Path(model)
    if model.is_file() and model.suffix.lower() == ".onnx":
        source = load_onnx_source(model, data_dir)
    elif model.is_dir():
        source = load_model_folder(model, data_dir)
    else:
        raise ModelError(f"{model} is neither a folder written by 'edgeopt train' nor an .onnx file")
    reads = (source.path, source.data_root)
    check_output(out, force, reads)
    methods, method_notes = resolve_methods(config, source)
    runtimes = {m.backend: get_runtime(m.backend) for m in methods}
    split, root, size = source.split, source.data_root, source.image_size

    check_data_matches(split, root, split.test)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    test = decode_images(root, split.test, size, strict=config.strict)
    train = decode_images(root, split.train_all, size, strict=config.strict) if config.measure.train_accuracy else None
    calibration = decode_images(root, split.train, size, strict=config.strict) if train is None else train
    if len(test.labels) == 0:
        raise DataError(f"none of the {len(split.test)} test images in {root} could be read")
    timings["decode_s"] = time.perf_counter() - t
    transform = config.pixel_transform() if source.kind == "onnx" else PIXELS

    with staged_output(out, force, reads, command="optimize") as staging:
        variants_dir = staging / "variants"
        variants_dir.mkdir()
        ctx = BuildContext(
            source=source.path,
            representative=_representative(calibration.pixels, config.representative_samples, split.seed),
            log_path=staging / "convert.log",
            work_dir=staging / "work",
            pixel_transform=transform,
            calibration_method=config.calibration_method,
            reduce_range=_reduce_range(config),
        )
        artifacts: dict[str, Artifact] = {}
        build_seconds: dict[str, float] = {}
        progress.start("building variants", len(methods))
        t = time.perf_counter()
        for method in methods:
            t_method = time.perf_counter()
            artifacts[method.name] = build_artifact(method, ctx, variants_dir)
            build_seconds[method.name] = time.perf_counter() - t_method
            progress.advance(1, method.name)
        progress.finish(f"built {len(methods)} variants")
        timings["build_s"] = time.perf_counter() - t

        # Accuracy does not depend on the thread count, so it uses every core; latency is
        # measured with the device's thread count.
        eval_threads = max(config.measure.threads, os.cpu_count() or 1)
        t = time.perf_counter()
        accuracy: dict[str, dict[str, Any]] = {}
        progress.start("evaluating accuracy", len(methods))
        for method in methods:
            session = runtimes[method.backend].open(artifacts[method.name].path, eval_threads, transform)
            accuracy[method.name] = {"test": measure_accuracy(session, test.pixels, test.labels, source.classes)}
            if train is not None:
                accuracy[method.name]["train"] = measure_accuracy(session, train.pixels, train.labels, source.classes)
            progress.advance(1, method.name)
        progress.finish(f"evaluated {len(test.labels)} test + {len(train.labels) if train else 0} train images")
        timings["evaluate_s"] = time.perf_counter() - t

        threads = config.measure.threads
        sessions = {m.name: runtimes[m.backend].open(artifacts[m.name].path, threads, transform) for m in methods}
        t = time.perf_counter()
        latency = measure_latency(sessions, test.pixels[:16], config.measure, progress)
        timings["latency_s"] = time.perf_counter() - t
        del sessions

        graphs = {name: describe_model(a.path) for name, a in artifacts.items()}
        results = _results(
            source, test, train, config, artifacts, build_seconds, accuracy, latency, graphs,
            methods=[m.name for m in methods],
        )
        if ctx.reduce_range and "ort_int8_static" in artifacts:
            method_notes.append(
                "ort_int8_static uses 7-bit weights (reduce_range): this CPU has no int8 dot-product "
                "instructions (VNNI), and ONNX Runtime's u8s8 kernels on AVX2 use VPMADDUBSW, whose int16 "
                "sums saturate with full 8-bit weights and cost accuracy. Override with ort_reduce_range."
            )
        results["notes"] = list(source.notes) + method_notes
        results["diagnostics"] = diagnose(results)
        results["measure"]["accuracy_threads"] = eval_threads
        results["measure"]["decode_ms_median"] = measure_decode_ms([root / p for p in test.paths], size)
        selected = results["selected"]
        suffix = artifacts[selected].path.suffix
        shutil.copyfile(artifacts[selected].path, staging / f"selected{suffix}")
        write_labels(staging / LABELS_FILE, source.classes, size[0], source.synthetic)
        if source.kind == "onnx":
            save_split(split, staging / SPLIT_FILE)
        write_config(config, staging / "optimize_config.json")
        if ctx.work_dir is not None and ctx.work_dir.exists():
            shutil.rmtree(ctx.work_dir)
        timings["total_s"] = time.perf_counter() - started
        results["timings"] = timings
        write_report(results, staging)
    return results


def _results(
    source: Source, test: DecodedImages, train: DecodedImages | None,
    config: OptimizeConfig, artifacts: dict[str, Artifact], build_seconds: dict[str, float],
    accuracy: dict[str, dict[str, Any]], latency: dict[str, Any], graphs: dict[str, Any],
    methods: list[str],
) -> dict[str, Any]:
    baseline = methods[0]
    candidates = [
        Candidate(name, artifacts[name].size_bytes, latency[name].median_ms, accuracy[name]["test"].accuracy)
        for name in methods
    ]
    objective = config.objective
    choice = select(candidates, baseline, objective)
    other_form: ObjectiveForm = "paper" if objective.form == "default" else "default"
    other_choice = select(candidates, baseline, objective.replaced(form=other_form))
    l_other = {s.name: s.L for s in other_choice.ranking}
    variants = []
    for name in methods:
        method = get_method(name)
        s = choice.score_of(name)
        acc = accuracy[name]
        lat = latency[name]
        variants.append({
            "name": name,
            "paper_label": method.paper_label,
            "backend": method.backend,
            "summary": method.summary,
            "file": f"variants/{artifacts[name].path.name}",
            "sha256": artifacts[name].sha256,
            "size_bytes": artifacts[name].size_bytes,
            "size_kb": artifacts[name].size_bytes / 1024,
            "latency_ms_median": lat.median_ms,
            "latency_ms_p90": lat.p90_ms,
            "latency_spread": lat.spread,
            "latency_round_medians_ms": list(lat.round_medians_ms),
            "test_accuracy": acc["test"].accuracy,
            "train_accuracy": acc["train"].accuracy if "train" in acc else None,
            "test_per_class": acc["test"].per_class,
            "train_per_class": acc["train"].per_class if "train" in acc else None,
            "test_confusion": [list(r) for r in acc["test"].confusion],
            "L": s.L,
            f"L_{objective.form}": s.L,
            f"L_{other_form}": l_other[name],
            "delta_size": s.delta_size,
            "delta_time": s.delta_time,
            "delta_accuracy": s.delta_metric,
            "accuracy_loss_pp": s.metric_loss,
            "size_ratio": artifacts[baseline].size_bytes / artifacts[name].size_bytes,
            "speedup": latency[baseline].median_ms / lat.median_ms,
            "eligible": s.eligible,
            "excluded_because": s.excluded_because,
            "pareto": s.on_pareto_front,
            "graph": {
                "input": to_jsonable(graphs[name].inputs[0]),
                "output": to_jsonable(graphs[name].outputs[0]),
                "op_counts": graphs[name].op_counts,
                "quantize_ops": graphs[name].quantize_ops,
                "dequantize_ops": graphs[name].dequantize_ops,
                "hybrid_ops": graphs[name].hybrid_ops,
                "weight_dtypes": {k: {"tensors": c, "bytes": b} for k, (c, b) in graphs[name].weight_dtypes.items()},
            },
            "change_vs_baseline": describe_change(graphs[name], graphs[baseline]) if name != baseline else "baseline",
            "build_seconds": build_seconds[name],
        })
    return {
        "edgeopt_results": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": {"source": str(source.path), "kind": source.kind, "classes": list(source.classes),
                  "image_size": source.image_size[0]},
        "data": {
            "root": str(source.data_root),
            "synthetic": source.synthetic,
            "test_images": int(len(test.labels)),
            "train_images": int(len(train.labels)) if train is not None else 0,
            "skipped_images": len(test.skipped) + (len(train.skipped) if train is not None else 0),
        },
        "machine": describe_machine(),
        "measure": to_jsonable(config.measure),
        "representative_samples": config.representative_samples,
        "objective": {**to_jsonable(objective), "other_form_selected": other_choice.selected},
        "baseline": baseline,
        "selected": choice.selected,
        "reasons": list(choice.reasons),
        "ranking": [s.name for s in choice.ranking],
        "variants": variants,
    }
