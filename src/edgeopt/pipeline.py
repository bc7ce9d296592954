"""optimize(): the one place that calls every stage in order.

data (the model's own test/train split) -> methods (build variants) -> runtimes (open them)
-> measure (accuracy, latency) -> objective (score, choose) -> report (files).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.config import OptimizeConfig, to_jsonable, write_config
from edgeopt.data.imagefolder import DecodedImages, decode_images
from edgeopt.data.split import SPLIT_FILE, load_split
from edgeopt.data.synthetic import is_synthetic
from edgeopt.diagnose import diagnose
from edgeopt.errors import DataError, ModelError
from edgeopt.graph import describe_change, describe_model
from edgeopt.machine import describe_machine
from edgeopt.measure import measure_accuracy, measure_decode_ms, measure_latency
from edgeopt.methods.base import Artifact, BuildContext, build_artifact
from edgeopt.methods.registry import get_method
from edgeopt.objective import Candidate, Objective, select
from edgeopt.outputs import staged_output
from edgeopt.progress import NullProgress, Progress
from edgeopt.report import write_report
from edgeopt.runtimes.registry import get_runtime

LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class ModelFolder:
    """A train output folder, checked."""

    path: Path
    classes: tuple[str, ...]
    image_size: int
    synthetic: bool


def load_model_folder(path: Path) -> ModelFolder:
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path} is not a folder; pass the folder written by 'edgeopt train'")
    for name in ("model.keras", LABELS_FILE, SPLIT_FILE):
        if not (path / name).is_file():
            raise ModelError(f"{path / name} is missing; pass the folder written by 'edgeopt train'")
    try:
        labels = json.loads((path / LABELS_FILE).read_text())
        return ModelFolder(
            path=path, classes=tuple(labels["classes"]), image_size=int(labels["image_size"]),
            synthetic=bool(labels.get("synthetic_data", False)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path / LABELS_FILE} is not a valid labels file ({exc}); re-run 'edgeopt train'") from None


def _representative(pixels: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pixels))[: min(count, len(pixels))]
    return pixels[np.sort(order)]


def optimize(
    model_dir: Path,
    out: Path,
    config: OptimizeConfig,
    force: bool = False,
    data_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Build, measure, score and choose; write variants/, results.json, report.md, the plot,
    selected.<ext> and labels.json to `out`. Returns the results as written."""
    progress = progress or NullProgress()
    started = time.perf_counter()
    model = load_model_folder(model_dir)
    split = load_split(model.path / SPLIT_FILE)
    if tuple(split.classes) != model.classes:
        raise ModelError(
            f"{model.path} has {len(model.classes)} classes in labels.json but {len(split.classes)} "
            "in split.json; re-run 'edgeopt train'"
        )
    root = Path(data_dir) if data_dir else Path(split.data_root)
    if not root.is_dir():
        raise DataError(f"the model's data folder {root} is gone; pass it with --data DIR")
    methods = [get_method(name) for name in config.methods]
    runtimes = {m.backend: get_runtime(m.backend) for m in methods}
    size = (model.image_size, model.image_size)

    timings: dict[str, float] = {}
    t = time.perf_counter()
    test = decode_images(root, split.test, size, strict=config.strict)
    train = decode_images(root, split.train_all, size, strict=config.strict) if config.measure.train_accuracy else None
    calibration = decode_images(root, split.train, size, strict=config.strict) if train is None else train
    if len(test.labels) == 0:
        raise DataError(f"none of the {len(split.test)} test images in {root} could be read")
    timings["decode_s"] = time.perf_counter() - t

    with staged_output(out, force) as staging:
        variants_dir = staging / "variants"
        variants_dir.mkdir()
        ctx = BuildContext(
            source=model.path,
            representative=_representative(calibration.pixels, config.representative_samples, split.seed),
            log_path=staging / "convert.log",
            work_dir=staging / "work",
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

        threads = config.measure.threads
        sessions = {m.name: runtimes[m.backend].open(artifacts[m.name].path, threads) for m in methods}
        t = time.perf_counter()
        accuracy: dict[str, dict[str, Any]] = {}
        progress.start("evaluating accuracy", len(methods))
        for name, session in sessions.items():
            accuracy[name] = {"test": measure_accuracy(session, test.pixels, test.labels, model.classes)}
            if train is not None:
                accuracy[name]["train"] = measure_accuracy(session, train.pixels, train.labels, model.classes)
            progress.advance(1, name)
        progress.finish(f"evaluated {len(test.labels)} test + {len(train.labels) if train else 0} train images")
        timings["evaluate_s"] = time.perf_counter() - t

        t = time.perf_counter()
        latency = measure_latency(sessions, test.pixels[:16], config.measure, progress)
        timings["latency_s"] = time.perf_counter() - t
        del sessions

        graphs = {name: describe_model(a.path) for name, a in artifacts.items()}
        results = _results(
            model, root, test, train, config, artifacts, build_seconds, accuracy, latency, graphs,
            methods=[m.name for m in methods],
        )
        results["diagnostics"] = diagnose(results)
        results["measure"]["decode_ms_median"] = measure_decode_ms(
            [root / p for p in test.paths], size
        )
        selected = results["selected"]
        suffix = artifacts[selected].path.suffix
        shutil.copyfile(artifacts[selected].path, staging / f"selected{suffix}")
        shutil.copyfile(model.path / LABELS_FILE, staging / LABELS_FILE)
        write_config(config, staging / "optimize_config.json")
        if ctx.work_dir is not None and ctx.work_dir.exists():
            shutil.rmtree(ctx.work_dir)
        timings["total_s"] = time.perf_counter() - started
        results["timings"] = timings
        write_report(results, staging)
    return results


def _scores_under(objective: Objective, candidates: list[Candidate], baseline: str) -> dict[str, float]:
    return {s.name: s.L for s in select(candidates, baseline, objective).ranking}


def _results(
    model: ModelFolder, root: Path, test: DecodedImages, train: DecodedImages | None,
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
    other_form = "paper" if objective.form == "default" else "default"
    other = Objective(
        form=other_form, weight_size=objective.weight_size, weight_time=objective.weight_time,
        weight_metric=objective.weight_metric, max_metric_loss=objective.max_metric_loss,
        metric=objective.metric,
    )
    l_other = _scores_under(other, candidates, baseline)
    other_choice = select(candidates, baseline, other).selected
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
        "model": {"source": str(model.path), "classes": list(model.classes), "image_size": model.image_size},
        "data": {
            "root": str(root),
            "synthetic": model.synthetic or is_synthetic(root),
            "test_images": int(len(test.labels)),
            "train_images": int(len(train.labels)) if train is not None else 0,
            "skipped_images": len(test.skipped) + (len(train.skipped) if train is not None else 0),
        },
        "machine": describe_machine(),
        "measure": to_jsonable(config.measure),
        "representative_samples": config.representative_samples,
        "objective": {**to_jsonable(objective), "other_form_selected": other_choice},
        "baseline": baseline,
        "selected": choice.selected,
        "reasons": list(choice.reasons),
        "ranking": [s.name for s in choice.ranking],
        "variants": variants,
    }
