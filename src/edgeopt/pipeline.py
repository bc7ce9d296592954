"""optimize(): the one place that calls every stage in order.

data (the model's own test/train split) -> methods (build variants) -> runtimes (open them)
-> measure (accuracy, latency) -> objective (score, choose) -> report (files).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt import __version__ as edgeopt_version
from edgeopt.answers_ahead import AnswersAhead
from edgeopt.choose import decide
from edgeopt.config import MeasureConfig, OptimizeConfig, write_config
from edgeopt.data.imagefolder import DecodedImages, decode_images_cached, scan_image_folder
from edgeopt.data.split import SPLIT_FILE, Split, build_split, check_data_matches, load_split, save_split
from edgeopt.data.synthetic import is_synthetic
from edgeopt.diagnose import diagnose
from edgeopt.errors import BackendUnavailableError, ConfigError, DataError, ModelError
from edgeopt.evaluate import CHUNK, Predict, hopeless, race
from edgeopt.graph import describe_change, describe_model, graph_record, input_contract
from edgeopt.machine import accuracy_threads, describe_machine
from edgeopt.measure import (
    AccuracyResult,
    LatencyResult,
    accuracy_of,
    accuracy_record,
    latency_record,
    measure_decode_ms,
    measure_latency,
    predictions_record,
)
from edgeopt.methods._tfmot import require_tfmot
from edgeopt.methods.base import Artifact, BuildContext, Method
from edgeopt.methods.build import build_variants
from edgeopt.methods.registry import get_method, list_methods
from edgeopt.outputs import check_output, staged_output
from edgeopt.pixels import PIXELS, PixelTransform
from edgeopt.progress import NullProgress, Progress
from edgeopt.report import write_report
from edgeopt.results import Data, ModelInfo, Repair, Results, Training, Variant
from edgeopt.runtimes.base import GraphSummary, Runtime
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
    # Where the test split came from, for the report.
    split_note: str = "the model's own split"


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
    return Source(path, "onnx", folder.classes, spec.image_size, split, folder.root, is_synthetic(folder.root), notes,
                  split_note=f"drawn by edgeopt: 20% of each class, seed {seed}")


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
    # The retraining methods fine-tune for minutes: only when named.
    names = list(config.methods) if config.methods else [
        m for m in list_methods() if get_method(m).backend in backends and not get_method(m).retrains
    ]
    methods = [get_method(n) for n in names]
    if source.kind == "onnx":
        dropped = [m.name for m in methods if m.source == "keras"]
        methods = [m for m in methods if m.source != "keras"]
        if config.methods and dropped:
            notes.append(f"Not built from an ONNX model: {', '.join(dropped)}.")
    if any(m.retrains for m in methods):
        require_tfmot()
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


def optimize(
    model: Path,
    out: Path,
    config: OptimizeConfig,
    force: bool = False,
    data_dir: Path | None = None,
    progress: Progress | None = None,
    more_methods: Sequence[Method] = (),
) -> Results:
    """Build, measure, score and choose; write variants/, results.json, report.md, the plot,
    selected.<ext> and labels.json to `out`. Returns the results as written.

    `model` is a folder written by `edgeopt train`, or an .onnx file (then `data_dir` is needed).
    `more_methods` are built after the configured ones, e.g. a search's candidates (edgeopt.search).
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
    methods += list(more_methods)
    runtimes = {m.backend: get_runtime(m.backend) for m in methods}
    split, root, size = source.split, source.data_root, source.image_size

    check_data_matches(split, root, split.test)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    test = decode_images_cached(root, split.test, size, strict=config.strict)
    if len(test.labels) == 0:
        raise DataError(f"none of the {len(split.test)} test images in {root} could be read")
    train_items = _sample(split.train_all, config.measure.train_images, split.seed)
    train = decode_images_cached(root, train_items, size, strict=config.strict) if train_items else None
    # Calibration draws from the train part only (never validation or test), whatever is evaluated.
    calibration_items = _sample(split.train, config.representative_samples, split.seed + 1)
    calibration = decode_images_cached(root, calibration_items, size, strict=config.strict)
    holdout = decode_images_cached(root, _holdout_items(split, calibration_items), size, strict=config.strict) if any(
        m.guarded for m in methods) else None
    # The retraining methods fine-tune on the whole train part (never validation or test).
    fine_tune = decode_images_cached(root, split.train, size, strict=config.strict) if any(
        m.retrains for m in methods) else None
    timings["decode_s"] = time.perf_counter() - t
    transform = config.pixel_transform() if source.kind == "onnx" else PIXELS

    with staged_output(out, force, reads, command="optimize") as staging:
        variants_dir = staging / "variants"
        variants_dir.mkdir()
        ctx = BuildContext(
            source=source.path,
            representative=calibration.pixels,
            log_path=staging / "convert.log",
            work_dir=staging / "work",
            pixel_transform=transform,
            calibration_method=config.calibration_method,
            reduce_range=config.ort_reduce_range,
            holdout=holdout.pixels if holdout is not None else None,
            holdout_labels=holdout.labels if holdout is not None else None,
            repair_target_pp=config.repair_target_pp,
            repair_confidence=config.objective.confidence,
            train_pixels=fine_tune.pixels if fine_tune is not None else None,
            train_labels=fine_tune.labels if fine_tune is not None else None,
            retrain=config.retrain,
        )
        progress.start("building variants", len(methods))
        t = time.perf_counter()
        # What the evaluation will ask, in its order: the baseline's test answers, the others' (the
        # race), then the train answers; the build's idle core computes them while a worker
        # builds another runtime's variants.
        backends = {m.name: m.backend for m in methods}
        ahead = AnswersAhead(
            [(m.name, which) for which in ("test", "train") for m in methods],
            {"test": test.pixels, **({"train": train.pixels} if train is not None else {})}, source.classes,
            open_session=lambda name: runtimes[backends[name]].open(ctx.built[name], ctx.holdout_threads, transform),
            is_built=lambda name: name in ctx.built,
        )
        try:
            built = build_variants(methods, ctx, variants_dir, progress, config.build_processes, meanwhile=ahead.step)
        finally:
            ahead.close()
        artifacts, build_seconds = built.artifacts, built.seconds
        methods = [m for m in methods if m.name in artifacts]
        method_notes += [f"{name}: {why}." for name, why in built.not_built.items()]
        progress.finish(f"built {len(artifacts)} variants" + (
            f" (meanwhile, {ahead.images_answered} image answers computed ahead for the evaluation)"
            if ahead.images_answered else ""))
        timings["build_s"] = time.perf_counter() - t

        accuracy, latency, stopped = _measure(methods, artifacts, runtimes, transform, test, train, source.classes,
                                              config, timings, progress, ahead)
        eval_threads = accuracy_threads(config.measure.threads)
        threads = config.measure.threads

        graphs = {m.name: describe_model(artifacts[m.name].path) for m in methods}
        base_graph = graphs[methods[0].name]
        variants = [
            _variant(m, artifacts[m.name], build_seconds[m.name], accuracy[m.name], latency.get(m.name), threads,
                     graphs[m.name], transform, runtimes[m.backend].version(),
                     describe_change(graphs[m.name], base_graph) if i else "baseline", stopped.get(m.name, ""))
            for i, m in enumerate(methods)
        ]
        for name in ("ort_int8_static", "ort_int8_guarded"):
            seven = artifacts[name].metadata.get("seven_bit_weights") if name in artifacts else None
            if seven:
                method_notes.append(
                    f"{name} has 7-bit weights on the {seven} convs fed by activations that can be negative, 8-bit "
                    "elsewhere: on x86 without VNNI, ONNX Runtime's u8s8 kernels add byte products in 16 bits "
                    "(VPMADDUBSW), which saturates on those convs with full 8-bit weights; 7-bit weights everywhere "
                    "would cost accuracy instead. The same file is exact on a VNNI CPU. ort_reduce_range overrides it."
                )
        measure = {**config.measure.to_jsonable(), "accuracy_threads": eval_threads,
                   "decode_ms_median": measure_decode_ms([root / p for p in test.paths], size)}
        results = Results(
            kind="optimize",
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            edgeopt_version=edgeopt_version,
            model=ModelInfo(source=str(source.path), kind=source.kind, classes=list(source.classes), image_size=size[0]),
            data=Data(
                root=str(root), synthetic=source.synthetic, test_items=[(p, int(c)) for p, c in zip(test.paths, test.labels, strict=True)],
                train_images=int(len(train.labels)) if train is not None else 0, train_total=len(split.train_all),
                skipped_images=len(test.skipped) + (len(train.skipped) if train is not None else 0),
                split_note=source.split_note,
            ),
            machine=describe_machine(),
            measure=measure,
            representative_samples=int(len(calibration.labels)),
            variants=variants,
            notes=list(source.notes) + method_notes,
        )
        results = decide(results, config.objective, config.target)
        results = results.model_copy(update={"diagnostics": diagnose(results)})
        selected = results.selected
        shutil.copyfile(staging / selected.file, staging / f"selected{Path(selected.file).suffix}")
        write_labels(staging / LABELS_FILE, source.classes, size[0], source.synthetic, transform)
        if source.kind == "onnx":
            save_split(split, staging / SPLIT_FILE)
        write_config(config, staging / "optimize_config.json")
        if ctx.work_dir is not None and ctx.work_dir.exists():
            shutil.rmtree(ctx.work_dir)
        timings["total_s"] = time.perf_counter() - started
        results = results.model_copy(update={"timings": timings})
        write_report(results, staging)
    return results


# Invocations per variant in the short latency pass that finds hopeless variants.
SHORT_PASS = 20
# Held-out images for guarded methods: the validation part, then train images not calibrated on.
HOLDOUT_IMAGES = 1000


def _holdout_items(split: Split, calibration: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
    """The split's validation part (never fitted, never test) first, then train images the
    calibration did not use, up to HOLDOUT_IMAGES; never a test image."""
    used = set(calibration) | set(split.validation)
    rest = _sample(tuple(i for i in split.train if i not in used), max(0, HOLDOUT_IMAGES - len(split.validation)),
                   split.seed + 2)
    return tuple(split.validation) + rest


def _sample(items: tuple[tuple[str, int], ...], count: int | None, seed: int) -> tuple[tuple[str, int], ...]:
    """A seeded sample of `count` items (all of them when count is None or larger), in file order."""
    if count is None or count >= len(items):
        return tuple(items)
    order = np.random.default_rng(seed).permutation(len(items))[:count]
    return tuple(items[i] for i in sorted(order))


def _measure(
    methods: list[Method], artifacts: dict[str, Artifact], runtimes: dict[str, Runtime], transform: PixelTransform,
    test: DecodedImages, train: DecodedImages | None, classes: tuple[str, ...], config: OptimizeConfig,
    timings: dict[str, float], progress: Progress, ahead: AnswersAhead,
) -> tuple[dict[str, dict[str, AccuracyResult]], dict[str, LatencyResult], dict[str, str]]:
    """Accuracy and latency, spent where they can change the choice (edgeopt.evaluate): the baseline
    on every test image, a short latency pass, then the others raced on the test images; the full
    latency protocol for every variant still in contention; answers computed `ahead` are taken, not
    computed again. Returns accuracy, latency and why a variant was stopped early."""
    # Latency is measured with the device's thread count; accuracy with every core.
    eval_threads = accuracy_threads(config.measure.threads)
    threads = config.measure.threads
    base = methods[0].name
    t = time.perf_counter()
    evaluators = {m.name: runtimes[m.backend].open(artifacts[m.name].path, eval_threads, transform) for m in methods}
    timers = {m.name: runtimes[m.backend].open(artifacts[m.name].path, threads, transform) for m in methods}

    def measured(name: str, which: str, images: DecodedImages) -> AccuracyResult:
        return accuracy_of(*ahead.predict(name, which, evaluators[name], 0, len(images.labels)), images.labels, classes)

    accuracy: dict[str, dict[str, AccuracyResult]] = {base: {"test": measured(base, "test", test)}}
    timings["evaluate_s"] = time.perf_counter() - t

    t = time.perf_counter()
    short = measure_latency(timers, test.pixels[:16], MeasureConfig(threads=threads, rounds=1, invocations=SHORT_PASS, warmup=3))
    stopped = {}

    def size(name: str) -> int:  # the S of L
        a = artifacts[name]
        return a.transfer_bytes if config.objective.size == "transfer" and a.transfer_bytes else a.size_bytes

    # "hopeless" compares with a winner whose L is at most 0: true when the baseline itself may win
    baseline_may_win = config.target is None or methods[0].backend in config.target
    for m in methods[1:] if config.measure.race and baseline_may_win else []:
        why = hopeless(size(m.name) / size(base),
                       short[m.name].median_ms / short[base].median_ms, accuracy[base]["test"].accuracy, config.objective)
        if why:
            stopped[m.name] = why
    timings["latency_first_s"] = time.perf_counter() - t

    t = time.perf_counter()
    racing = [m.name for m in methods[1:] if m.name not in stopped]
    progress.start("evaluating accuracy (raced)", len(range(0, len(test.labels), CHUNK)) * max(1, len(racing)))

    def predictor(name: str) -> Predict:
        def predict(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
            progress.advance(1, name)
            return ahead.predict(name, "test", evaluators[name], start, stop)
        return predict

    judge = config.objective if config.measure.race else config.objective.replaced(max_metric_loss=None)
    raced = race({name: predictor(name) for name in racing}, test.labels, accuracy[base]["test"].predicted, judge)
    progress.finish()
    for name, result in raced.items():
        accuracy[name] = {"test": accuracy_of(result.predicted, result.confidence, test.labels, classes)}
        if result.stopped:
            stopped[name] = result.stopped
    if train is not None:
        for m in methods:
            if m.name not in stopped and m.name in accuracy:
                accuracy[m.name]["train"] = measured(m.name, "train", train)
    for m in methods:
        accuracy.setdefault(m.name, {})
    timings["evaluate_s"] += time.perf_counter() - t
    progress.finish(f"evaluated {len(test.labels)} test + {len(train.labels) if train else 0} train images; "
                    f"{len(stopped)} variant(s) stopped early")

    t = time.perf_counter()
    contenders = {m.name: timers[m.name] for m in methods if m.name not in stopped}
    latency = measure_latency(contenders, test.pixels[:16], config.measure, progress)
    for name in stopped:
        if name not in raced or not raced[name].predicted.size:  # hopeless: only the short pass timed it
            latency[name] = short[name]
    timings["latency_s"] = time.perf_counter() - t
    return accuracy, latency, stopped


def _variant(
    method: Method, artifact: Artifact, build_s: float, accuracy: dict[str, AccuracyResult], latency: LatencyResult | None,
    threads: int, graph: GraphSummary, transform: PixelTransform, runtime: str, change: str, stopped: str = "",
) -> Variant:
    test, train = accuracy.get("test"), accuracy.get("train")
    return Variant(
        name=method.name, paper_label=method.paper_label, backend=method.backend, summary=method.summary,
        file=f"variants/{artifact.path.name}", sha256=artifact.sha256, size_bytes=artifact.size_bytes, change_vs_baseline=change,
        transfer_bytes=artifact.transfer_bytes,
        build_seconds=build_s, runtime=runtime, graph=graph_record(graph), input=input_contract(graph.inputs[0], transform),
        test=accuracy_record(test) if test is not None else None,
        train=accuracy_record(train) if train is not None else None,
        latency=latency_record(latency, threads) if latency is not None else None, stopped_early=stopped,
        repair=Repair(**artifact.metadata) if method.guarded else None,
        training=Training(**artifact.metadata) if method.retrains else None,
        predictions=predictions_record(test, train) if test is not None else None,
    )
