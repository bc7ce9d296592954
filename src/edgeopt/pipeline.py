"""optimize(): the one place that calls every stage in order.

data (the model's own test/train split) -> methods (build variants) -> runtimes (open them)
-> measure (accuracy, latency) -> objective (score, choose) -> report (files).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edgeopt import __version__ as edgeopt_version
from edgeopt import preflight
from edgeopt.answers_ahead import AnswersAhead
from edgeopt.baseline import check_answers, check_onnx_source, open_variant, usable_variants
from edgeopt.choose import decide
from edgeopt.config import MeasureConfig, OptimizeConfig, write_config
from edgeopt.contract import PixelContract
from edgeopt.data.imagefolder import DecodedImages, decode_images_cached
from edgeopt.data.split import SPLIT_FILE, Split, check_data_matches, save_split
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
from edgeopt.methods.registry import get_method, list_methods, why_not_from
from edgeopt.outputs import check_output, staged_output
from edgeopt.pixels import PixelTransform
from edgeopt.progress import NullProgress, Progress
from edgeopt.report import write_report
from edgeopt.results import Data, ModelInfo, Repair, Results, Training, Variant
from edgeopt.runtimes.base import GraphSummary, Runtime
from edgeopt.runtimes.registry import EXTRAS, get_runtime, list_runtimes
from edgeopt.sources.base import Source, SourceOptions
from edgeopt.sources.onnx2tf import SETUP_COMMAND, convert_onnx, find_converter
from edgeopt.sources.registry import load_source
from edgeopt.train import write_labels

LABELS_FILE = "labels.json"
log = logging.getLogger(__name__)


def resolve_methods(config: OptimizeConfig, source: Source, converted: bool = False) -> tuple[list[Method], list[str]]:
    """The methods to build (baseline first) and notes on what was left out and why; `converted`:
    an .onnx source has a TensorFlow conversion (sources.onnx2tf)."""
    notes = []
    installed = list_runtimes(installed_only=True, for_building=True)
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
    if source.quantized and not config.methods:
        names = ["as_given"]
    methods = [get_method(n) for n in names]
    # What this kind of model cannot give, said once per reason: always for methods named with
    # --methods; in a default run, not for the methods made for another kind of model, nor for the
    # LiteRT ones of an unconverted .onnx (optimize says how to convert it).
    dropped: dict[str, list[str]] = {}
    for m in methods:
        why = why_not_from(m, source.kind, source.quantized, converted)
        quiet = m.source == "tflite" or (source.kind == "onnx" and m.source == "keras")
        if why and (config.methods or not quiet):
            dropped.setdefault(why, []).append(m.name)
    methods = [m for m in methods if not why_not_from(m, source.kind, source.quantized, converted)]
    notes += [f"Not built: {', '.join(names)} ({why})." for why, names in dropped.items()]
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
            "onnxruntime backend (pip install 'edgeopt[onnx]'), or 'edgeopt setup onnx2tf' for LiteRT"
        )
    return methods, notes


def load_model_source(model: Path, config: OptimizeConfig, data_dir: Path | None = None, test_data: Path | None = None,
                      calibration_data: Path | None = None, labels: Path | None = None) -> Source:
    """The model as optimize reads it, with optimize's settings and options (edgeopt.sources)."""
    return load_source(Path(model), SourceOptions(
        data_dir=data_dir, test_dir=test_data, calibration_dir=calibration_data, labels_file=labels,
        custom_objects=tuple(config.custom_objects or ()), transform=config.given_transform(), resize=config.resize,
    ))


def optimize(
    model: Path,
    out: Path,
    config: OptimizeConfig,
    force: bool = False,
    data_dir: Path | None = None,
    progress: Progress | None = None,
    test_data: Path | None = None,
    calibration_data: Path | None = None,
    labels: Path | None = None,
    more_methods: Sequence[Method] = (),
) -> Results:
    """Build, measure, score and choose; write variants/, results.json, report.md, report.html, the plot,
    selected.<ext> and labels.json to `out`. Returns the results as written.

    `model` is any kind edgeopt.sources accepts, detected from its content: a folder written by
    `edgeopt train`, a .keras / .h5 file, a SavedModel folder, a .tflite or an .onnx file (the
    foreign kinds need `data_dir` or `test_data`). `labels` gives their output order.
    `more_methods` are built after the configured ones, e.g. a search's candidates (edgeopt.search).
    """
    progress = progress or NullProgress()
    started = time.perf_counter()
    source = load_model_source(model, config, data_dir, test_data, calibration_data, labels)
    reads = tuple(p for p in (source.path, source.data_root, source.test_root,
                              source.calibration[0] if source.calibration else None) if p is not None)
    check_output(out, force, reads)
    converter = find_converter() if source.kind == "onnx" else None
    methods, method_notes = resolve_methods(config, source, converted=converter is not None)
    # Converted only when a LiteRT variant is asked for (not with --backends onnxruntime).
    onnx2tf = converter if any(m.source == "keras" for m in methods) else None
    if source.kind == "onnx" and converter is None:
        method_notes.append(f"The LiteRT variants (the study's f0..f4) were not built: converting ONNX to TensorFlow "
                            f"needs onnx2tf in an environment of its own; create it once with '{SETUP_COMMAND}'.")
    methods += list(more_methods)
    runtimes = {m.backend: get_runtime(m.backend) for m in methods}
    split, root, size = source.split, source.data_root, source.image_size
    test_root = source.test_root or root
    resize = source.contract.resize
    # Every setting against this model and its data, before any work.
    preflight.check_target(config.target, methods)
    preflight.check_classes(source.path, source.kind, source.classes, root)
    # Calibration draws from the train part only (never validation or test), whatever is evaluated,
    # or from --calibration-data.
    calibration_root, calibration_pool = source.calibration or (root, split.train)
    calibration_items = _sample(calibration_pool, config.representative_samples, split.seed + 1)
    preflight.check_holdout(methods, len(_holdout_items(split, calibration_items)), config.representative_samples)

    check_data_matches(split, test_root, split.test)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    test = decode_images_cached(test_root, split.test, size, strict=config.strict, resize=resize)
    if len(test.labels) == 0:
        raise DataError(f"none of the {len(split.test)} test images in {test_root} could be read")
    train_items = _sample(split.train_all, config.measure.train_images, split.seed)
    train = decode_images_cached(root, train_items, size, strict=config.strict, resize=resize) if train_items else None
    calibration = decode_images_cached(calibration_root, calibration_items, size, strict=config.strict, resize=resize)
    holdout = decode_images_cached(root, _holdout_items(split, calibration_items), size, strict=config.strict,
                                   resize=resize) if any(m.guarded for m in methods) else None
    # The retraining methods fine-tune on the whole train part (never validation or test).
    fine_tune = decode_images_cached(root, split.train, size, strict=config.strict, resize=resize) if any(
        m.retrains for m in methods) else None
    timings["decode_s"] = time.perf_counter() - t
    transform = source.contract.transform

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
            source_kind=source.kind,
            custom_objects=source.custom_objects,
        )
        if onnx2tf is not None:
            check_onnx_source(get_runtime("onnxruntime"), test, source, accuracy_threads(config.measure.threads))
            t = time.perf_counter()
            progress.start("converting ONNX to TensorFlow (onnx2tf)", 1)
            spec = source.model_input
            ctx.converted, why = convert_onnx(onnx2tf, source.path, staging / "work" / "onnx2tf", ctx.log_path,
                                              nhwc_input=spec.name if spec is not None and spec.layout == "NHWC" else None,
                                              sample_pixels=calibration.pixels)
            progress.finish("converted with onnx2tf" if ctx.converted else "onnx2tf could not convert the model")
            timings["convert_s"] = time.perf_counter() - t
            if ctx.converted is None:
                dropped = [m.name for m in methods if m.source == "keras"]
                methods = [m for m in methods if m.source != "keras"]
                method_notes.append(f"The LiteRT variants ({', '.join(dropped)}) were not built: {why}. The ONNX "
                                    "Runtime variants were.")
                runtimes = {m.backend: get_runtime(m.backend) for m in methods}
                if not methods:
                    raise ModelError(f"{source.path}: {why}; and no ONNX Runtime method was asked for")
            else:
                method_notes.append("The LiteRT variants were built from the ONNX model converted to TensorFlow by "
                                    f"onnx2tf ({onnx2tf.version}, in its own environment {onnx2tf.python.parent.parent}).")
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
            # The baseline is built first here and checked against chance before this process builds more.
            built = build_variants(methods, ctx, variants_dir, progress, config.build_processes, meanwhile=ahead.step,
                                   check_baseline=lambda artifact: _check_baseline(
                                       methods[0], artifact, runtimes, transform, test, source, config, ahead))
        finally:
            ahead.close()
        artifacts, build_seconds = built.artifacts, built.seconds
        method_notes += [f"{name}: {why}." for name, why in built.not_built.items()]
        usable, unusable = usable_variants([m.name for m in methods[1:] if m.name in artifacts],
                                           {n: a.path for n, a in artifacts.items()},
                                           {m.name: runtimes[m.backend] for m in methods}, transform, source.path)
        methods = [m for m in methods if m.name in artifacts and (m is methods[0] or m.name in usable)]
        method_notes += unusable
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
                     graphs[m.name], source.contract, runtimes[m.backend].version(),
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
                   "decode_ms_median": measure_decode_ms([test_root / p for p in test.paths], size)}
        results = Results(
            kind="optimize",
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            edgeopt_version=edgeopt_version,
            model=ModelInfo(source=str(source.path), kind=source.results_kind, classes=list(source.classes),  # type: ignore[arg-type]
                            image_size=size[0]),
            data=Data(
                root=str(test_root), synthetic=source.synthetic,
                test_items=[(p, int(c)) for p, c in zip(test.paths, test.labels, strict=True)],
                train_images=int(len(train.labels)) if train is not None else 0, train_total=len(split.train_all),
                skipped_images=len(test.skipped) + (len(train.skipped) if train is not None else 0),
                split_note=source.split_note,
            ),
            machine=describe_machine(),
            measure=measure,
            representative_samples=int(len(calibration.labels)),
            variants=variants,
            notes=list(source.notes) + method_notes + (
                [f"Built with AI Edge Quantizer from the float .tflite: {', '.join(m.name for m in methods)}."]
                if source.kind == "tflite" and not source.quantized else []) + (
                [f"The .tflite is already quantized: {source.quantized_how}. Nothing else was built from it (quantizing "
                 "it again would stack a second rounding on the first): it is measured as given; bring its float "
                 "model to get the study's variants."] if source.quantized else []),
        )
        results = decide(results, config.objective, config.target)
        results = results.model_copy(update={"diagnostics": diagnose(results)})
        selected = results.selected
        shutil.copyfile(staging / selected.file, staging / f"selected{Path(selected.file).suffix}")
        write_labels(staging / LABELS_FILE, source.classes, size[0], source.synthetic, transform, resize,
                     source.labels_note)
        if source.kind != "train":
            save_split(split, staging / SPLIT_FILE)
        write_config(config, staging / "optimize_config.json")
        if ctx.work_dir is not None and ctx.work_dir.exists():
            shutil.rmtree(ctx.work_dir)
        timings["total_s"] = time.perf_counter() - started
        results = results.model_copy(update={"timings": timings})
        write_report(results, staging)
    return results


def _check_baseline(method: Method, artifact: Artifact, runtimes: dict[str, Runtime], transform: PixelTransform,
                    test: DecodedImages, source: Source, config: OptimizeConfig, ahead: AnswersAhead) -> None:
    """The baseline's test answers (kept for the evaluation), refused when implausible for a model
    fed what it was trained on (baseline.check_answers)."""
    session = open_variant(runtimes[method.backend], method.name, artifact.path, accuracy_threads(config.measure.threads),
                           transform, source.path)
    predicted, confidence = check_answers(session, method.name, test, source, integer_input=bool(
        source.model_input is not None and source.model_input.dtype in ("uint8", "int8")))
    ahead.give(method.name, "test", predicted, confidence)


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
    threads: int, graph: GraphSummary, contract: PixelContract, runtime: str, change: str, stopped: str = "",
) -> Variant:
    test, train = accuracy.get("test"), accuracy.get("train")
    return Variant(
        name=method.name, paper_label=method.paper_label, backend=method.backend, summary=method.summary,
        file=f"variants/{artifact.path.name}", sha256=artifact.sha256, size_bytes=artifact.size_bytes, change_vs_baseline=change,
        transfer_bytes=artifact.transfer_bytes,
        build_seconds=build_s, runtime=runtime, graph=graph_record(graph), input=input_contract(graph.inputs[0], contract),
        test=accuracy_record(test) if test is not None else None,
        train=accuracy_record(train) if train is not None else None,
        latency=latency_record(latency, threads) if latency is not None else None, stopped_early=stopped,
        repair=Repair(**artifact.metadata) if method.guarded else None,
        training=Training(**artifact.metadata) if method.retrains else None,
        predictions=predictions_record(test, train) if test is not None else None,
    )
