"""The `edgeopt` command: one function per command that parses, builds a config, calls the API
and prints. No logic lives here."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import BaseModel, ValidationError
from rich.table import Table

from edgeopt import interrupts
from edgeopt.config import OptimizeConfig, TrainConfig
from edgeopt.console import (
    EXIT_BUG,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    RichProgress,
    err_console,
    out_console,
)
from edgeopt.errors import ConfigError, EdgeoptError, is_disk_full
from edgeopt.settings import build_settings, describe_errors, read_config_file

if TYPE_CHECKING:
    from edgeopt.results import Results

app = typer.Typer(
    help="Make a trained image classifier fit a small CPU device, and prove by measurement which version to ship.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: Rich's tables cut long option names ("--representative-…") in narrow
    # terminals and read "[train]" in a help text as markup.
    rich_markup_mode=None,
)


def _print_table(results: Results) -> None:
    from edgeopt.report import TABLE_HEADER, table_rows

    title = "edgeopt variants"
    if results.data.synthetic:
        title += " — SYNTHETIC demo data"
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(TABLE_HEADER):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in table_rows(results):
        table.add_row(*row)
    out_console.print(table)
    if results.choice is not None:
        out_console.print(f"selected: [bold]{results.choice.selected}[/bold] (for {', '.join(results.choice.target)})")
        for reason in results.choice.reasons:
            out_console.print(f"  - {reason}", highlight=False, markup=False)


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="ImageFolder: DATA_DIR/<class>/*.jpg")],
    out: Annotated[Path, typer.Option(help="Folder to write model.keras, labels.json, split.json, history.json")],
    image_size: Annotated[int | None, typer.Option(help="Square input side in pixels [default: 224]")] = None,
    alpha: Annotated[float | None, typer.Option(help="MobileNetV2 width multiplier [default: 1.0]")] = None,
    weights: Annotated[str | None, typer.Option(help="imagenet | none | PATH to a Keras weights file [default: imagenet]")] = None,
    epochs_head: Annotated[int | None, typer.Option(help="Epochs training the new head [default: 8]")] = None,
    epochs_finetune: Annotated[int | None, typer.Option(help="Epochs fine-tuning the top of the backbone [default: 16]")] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split and the training [default: 0]")] = None,
    augment: Annotated[bool | None, typer.Option("--augment/--no-augment")] = None,
    strict: Annotated[bool | None, typer.Option("--strict", help="Stop on unreadable images instead of skipping them")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON file with [train] settings; flags override it")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists")] = False,
) -> None:
    """Transfer-train MobileNetV2 on your photos (80/20 split saved with the model)."""
    from edgeopt.train import train as run_train

    cfg = build_settings(TrainConfig, read_config_file(config, "train"), {
        "image_size": ("--image-size", image_size), "alpha": ("--alpha", alpha), "weights": ("--weights", weights),
        "epochs_head": ("--epochs-head", epochs_head), "epochs_finetune": ("--epochs-finetune", epochs_finetune),
        "batch_size": ("--batch-size", batch_size), "seed": ("--seed", seed),
        "augment": ("--augment" if augment else "--no-augment", augment), "strict": ("--strict", strict),
    }, config, "train")
    result = run_train(data_dir, out, cfg, force=force, progress=RichProgress())
    out_console.print(
        f"wrote {result.folder}: {len(result.classes)} classes, {result.epochs_run} epochs, "
        f"validation accuracy {100 * result.val_accuracy:.1f}%, test accuracy (Keras) "
        f"{100 * result.test_accuracy:.1f}%, {result.seconds:.0f} s"
    )


def _numbers(text: str | None, count: int, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{option} {text!r} needs {count} comma-separated finite numbers")
    return values


GUARD_HELP = ("The accuracy guard's rule: bounded (shown within the tolerance, or within it at its point estimate and "
              "shown within twice it) | non-inferiority (shown within it) | benefit-of-doubt (excluded only when shown "
              "worse, or beyond it and measurably worse than nothing); docs/choice.md [default: bounded]")
MARGIN_HELP = "Variants whose L differ by less than this are tied (docs/choice.md) [default: 0.03]"


def _optimize_config(
    config: Path | None, methods: str | None, threads: int | None, rounds: int | None,
    invocations: int | None, representative_samples: int | None, objective: str | None,
    w_size: float | None, w_time: float | None, w_accuracy: float | None,
    max_accuracy_drop: float | None, strict: bool | None, train_images: str | None,
    backends: str | None = None, calibration: str | None = None, input_range: str | None = None,
    input_mean: str | None = None, input_std: str | None = None, target: str | None = None,
    confidence: float | None = None, no_guard: bool = False, race: bool | None = None, size: str | None = None,
    fine_tune_epochs: int | None = None, sparsity: float | None = None, clusters: int | None = None,
    guard: str | None = None, margin: float | None = None,
    channel_order: str | None = None, resize: str | None = None, custom_objects: str | None = None,
) -> OptimizeConfig:
    def names(text: str | None) -> tuple[str, ...] | None:
        return tuple(m.strip() for m in text.split(",") if m.strip()) if text is not None else None

    def count_or_all(text: str | None) -> int | str | None:
        if text is None or text == "all":
            return text
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--train-images {text!r} must be a count (0 skips) or 'all'") from None

    train_count = count_or_all(train_images)
    if no_guard and max_accuracy_drop is not None:
        raise ConfigError("give --max-accuracy-drop or --no-guard, not both")
    file_values = read_config_file(config, "optimize")
    if train_count == "all" or no_guard:  # None in the settings, which a flag value of None cannot say
        file_values = json.loads(json.dumps(file_values))
        if train_count == "all":
            file_values.setdefault("measure", {})["train_images"] = None
            train_count = None
        if no_guard:
            file_values.setdefault("objective", {})["max_metric_loss"] = None

    return build_settings(OptimizeConfig, file_values, {
        "methods": ("--methods", names(methods)),
        "backends": ("--backends", names(backends)),
        "representative_samples": ("--representative-samples", representative_samples),
        "strict": ("--strict", strict),
        "calibration_method": ("--calibration", calibration),
        "input_range": ("--input-range", _numbers(input_range, 2, "--input-range")),
        "input_mean": ("--input-mean", _numbers(input_mean, 3, "--input-mean")),
        "input_std": ("--input-std", _numbers(input_std, 3, "--input-std")),
        "channel_order": ("--channel-order", channel_order),
        "resize": ("--resize", resize),
        "custom_objects": ("--custom-objects", names(custom_objects)),
        "measure.threads": ("--threads", threads),
        "measure.rounds": ("--rounds", rounds),
        "measure.invocations": ("--invocations", invocations),
        "measure.train_images": ("--train-images", train_count),
        "measure.race": ("--no-race" if race is False else "--race", race),
        "target": ("--target", names(target)),
        "objective.confidence": ("--confidence", confidence),
        "objective.size": ("--size", size),
        "objective.form": ("--objective", objective),
        "objective.weight_size": ("--w-size", w_size),
        "objective.weight_time": ("--w-time", w_time),
        "objective.weight_metric": ("--w-accuracy", w_accuracy),
        "objective.max_metric_loss": ("--max-accuracy-drop", max_accuracy_drop),
        "objective.guard": ("--guard", guard),
        "objective.margin": ("--margin", margin),
        "retrain.epochs": ("--fine-tune-epochs", fine_tune_epochs),
        "retrain.sparsity": ("--sparsity", sparsity),
        "retrain.clusters": ("--clusters", clusters),
    }, config, "optimize")


def _check_retrain_flags(cfg: OptimizeConfig, **flags: float | None) -> None:
    """A retraining flag without the method it tunes would be silently ignored: refuse it."""
    wanted = {"fine_tune_epochs": ("qat_int8", "pruned_int8", "clustered_int8"), "sparsity": ("pruned_int8",),
              "clusters": ("clustered_int8",)}
    for flag, value in flags.items():
        if value is not None and not set(wanted[flag]) & set(cfg.methods or ()):
            raise ConfigError(f"--{flag.replace('_', '-')} tunes {' / '.join(wanted[flag])}, which --methods does not "
                              f"name; add it, e.g. --methods f0_float32,f2_int8,{wanted[flag][0]}")


@app.command()
def optimize(
    model_dir: Annotated[Path, typer.Argument(
        help="The model: a folder written by 'edgeopt train', a .keras / .h5 file, a SavedModel folder, a .tflite or "
        "an .onnx file (detected from its content; the last five need --data or --test-data)")],
    out: Annotated[Path, typer.Option(help="Folder for variants/, results.json, report.md, report.html, selected model")],
    methods: Annotated[str | None, typer.Option(help="Comma-separated methods, baseline first (see 'edgeopt methods')")] = None,
    backends: Annotated[str | None, typer.Option(help="litert,onnxruntime [default: every installed one]")] = None,
    calibration: Annotated[str | None, typer.Option(help="ONNX Runtime static calibration: MinMax | Entropy | Percentile")] = None,
    input_range: Annotated[str | None, typer.Option(
        help="The pixel range a float-input model was trained on, e.g. -1,1 or 0,1 [default: 0..255, right for a "
        "model that rescales pixels itself]")] = None,
    input_mean: Annotated[str | None, typer.Option(
        help="Per-channel mean of pixel/255 it was trained with, e.g. 0.485,0.456,0.406")] = None,
    input_std: Annotated[str | None, typer.Option(help="Per-channel std of pixel/255, e.g. 0.229,0.224,0.225")] = None,
    channel_order: Annotated[str | None, typer.Option(help="rgb | bgr: the channel order it was trained on [default: rgb]")] = None,
    resize: Annotated[str | None, typer.Option(
        help="squash | center-crop: how an image of another aspect ratio is fitted to the input [default: squash]")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="Output index -> class: one name a line, or a JSON list [default: the sorted class folder names]")] = None,
    test_data: Annotated[Path | None, typer.Option(
        help="Held-out photos (DIR/<class>/*.jpg), used whole for test, never for calibration")] = None,
    calibration_data: Annotated[Path | None, typer.Option(help="Photos to calibrate on [default: the train part of --data]")] = None,
    custom_objects: Annotated[str | None, typer.Option(
        help="Keras custom layers: module:attr[,module:attr] (a class, or a dict of them) on PYTHONPATH")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Interpreter threads [default: 1]")] = None,
    rounds: Annotated[int | None, typer.Option(help="Interleaved latency rounds [default: 11]")] = None,
    invocations: Annotated[int | None, typer.Option(help="Timed invocations per variant per round [default: 25]")] = None,
    representative_samples: Annotated[int | None, typer.Option(help="Train images for calibration [default: 200]")] = None,
    objective: Annotated[str | None, typer.Option(help="default (a loss of accuracy raises L) | paper (the study's sign)")] = None,
    w_size: Annotated[float | None, typer.Option(help="Weight of the size term [default: 1]")] = None,
    w_time: Annotated[float | None, typer.Option(help="Weight of the time term [default: 1]")] = None,
    w_accuracy: Annotated[float | None, typer.Option(help="Weight of the accuracy term [default: 1]")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(
        help="The accuracy guard's tolerance, PP; --guard says which variants it allows [default: 1.0]")] = None,
    no_guard: Annotated[bool, typer.Option("--no-guard", help="No accuracy guard: any loss is traded by the weights")] = False,
    guard: Annotated[str | None, typer.Option(help=GUARD_HELP)] = None,
    margin: Annotated[float | None, typer.Option(help=MARGIN_HELP)] = None,
    confidence: Annotated[float | None, typer.Option(
        help="Confidence of the accuracy and L intervals, and of the test that a guarded repair changes fewer answers "
        "[default: 0.95]")] = None,
    target: Annotated[str | None, typer.Option(
        help="Runtimes the chosen variant must run on, e.g. litert [default: the baseline's]")] = None,
    train_images: Annotated[str | None, typer.Option(
        help="Train accuracy (a study figure) on a seeded sample of N train images, 'all', or 0 [default: 300]")] = None,
    size: Annotated[str | None, typer.Option(
        help="S in L: file (the model file) or transfer (the bytes a delivery sends, zstd) [default: file]")] = None,
    race: Annotated[bool | None, typer.Option("--race/--no-race",
        help="Stop variants that cannot win early (default), or evaluate every variant on every image")] = None,
    fine_tune_epochs: Annotated[int | None, typer.Option(
        help="Retraining methods (qat_int8, pruned_int8, clustered_int8): epochs on the train split [default: 2]")] = None,
    sparsity: Annotated[float | None, typer.Option(
        help="pruned_int8: share of each pointwise and dense kernel set to zero [default: 0.5]")] = None,
    clusters: Annotated[int | None, typer.Option(
        help="clustered_int8: distinct values per pointwise and dense kernel [default: 16]")] = None,
    data: Annotated[Path | None, typer.Option(
        help="The photos (DIR/<class>/*.jpg): for a model made elsewhere, edgeopt draws its test split from them; "
        "for a train folder, the data folder if it moved")] = None,
    strict: Annotated[bool | None, typer.Option("--strict", help="Stop on unreadable images")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON file with [optimize] settings; flags override it")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists")] = False,
) -> None:
    """Build every variant, measure it on this CPU, score it and choose one."""
    from edgeopt.pipeline import optimize as run_optimize

    cfg = _optimize_config(config, methods, threads, rounds, invocations, representative_samples,
                           objective, w_size, w_time, w_accuracy, max_accuracy_drop, strict, train_images,
                           backends, calibration, input_range, input_mean, input_std, target, confidence, no_guard, race,
                           size, fine_tune_epochs=fine_tune_epochs, sparsity=sparsity, clusters=clusters, guard=guard,
                           margin=margin, channel_order=channel_order, resize=resize, custom_objects=custom_objects)
    _check_retrain_flags(cfg, fine_tune_epochs=fine_tune_epochs, sparsity=sparsity, clusters=clusters)
    results = run_optimize(model_dir, out, cfg, force=force, data_dir=data, progress=RichProgress(), test_data=test_data,
                           calibration_data=calibration_data, labels=labels)
    _print_table(results)
    out_console.print(f"wrote {out}/ (report.html, report.md, results.json, selected model)")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic data, model and optimize results")] = Path("runs/demo"),
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads")] = 1,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists")] = False,
) -> None:
    """Everything on a SYNTHETIC bottles-and-cans set: generate, train, optimize, print the table."""
    from edgeopt.demo import run_demo

    started = time.perf_counter()
    results = run_demo(out, threads=threads, force=force, progress=RichProgress())
    _print_table(results)
    out_console.print(
        f"demo finished in {time.perf_counter() - started:.0f} s; report: {out / 'optimized' / 'report.html'} (and report.md)"
    )


@app.command(name="inspect")
def inspect_cmd(model: Annotated[Path, typer.Argument(help="A .tflite (or .onnx) model file")]) -> None:
    """Input/output types, what a device must feed, op histogram, QUANTIZE/DEQUANTIZE, weight dtypes."""
    from edgeopt.graph import describe_model, render_summary

    for line in render_summary(describe_model(model)):
        out_console.print(line, highlight=False)


@app.command()
def classify(
    model: Annotated[Path, typer.Argument(help="A .tflite (or .onnx) model")],
    images: Annotated[list[Path], typer.Argument(help="Image files")],
    labels: Annotated[Path | None, typer.Option(help="labels.json or a text file, one label a line [default: beside the model]")] = None,
    top_k: Annotated[int, typer.Option(help="How many labels to print per image")] = 3,
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads")] = 1,
    input_range: Annotated[str | None, typer.Option(help="For a foreign float-input model: the range it expects, e.g. -1,1")] = None,
    input_mean: Annotated[str | None, typer.Option(help="For a foreign model: per-channel mean of pixel/255")] = None,
    input_std: Annotated[str | None, typer.Option(help="For a foreign model: per-channel std of pixel/255")] = None,
    channel_order: Annotated[str | None, typer.Option(help="rgb | bgr [default: what labels.json records, else rgb]")] = None,
    resize: Annotated[str | None, typer.Option(
        help="squash | center-crop [default: what labels.json records, else squash]")] = None,
) -> None:
    """Print the top-k labels for each image, with the scores the model outputs (dequantized, not
    renormalised: what a device sees)."""
    from edgeopt.classify import classify as run_classify
    from edgeopt.images import RESIZES
    from edgeopt.pixels import PixelTransform

    try:
        transform = PixelTransform.from_options(
            _numbers(input_range, 2, "--input-range"), _numbers(input_mean, 3, "--input-mean"),
            _numbers(input_std, 3, "--input-std"), channel_order,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if resize is not None and resize not in RESIZES:
        raise ConfigError(f"--resize {resize!r} must be one of {', '.join(RESIZES)}")
    given = transform if input_range or input_mean or input_std or channel_order else None
    failed = 0
    for pred in run_classify(model, images, labels, top_k, threads, given, resize):  # each file as it comes
        if pred.error:  # an unreadable file stops nothing
            failed += 1
            err_console.print(f"error: {pred.error}", highlight=False, markup=False, soft_wrap=True)
        else:
            ranked = ", ".join(f"{label} {prob:.3f}" for label, prob in pred.top)
            out_console.print(f"{pred.image}: {ranked}", highlight=False, markup=False, soft_wrap=True)
    if failed:
        raise typer.Exit(EXIT_USAGE)


@app.command()
def choose(
    run_dir: Annotated[Path, typer.Argument(help="Folder written by 'edgeopt optimize'")],
    device_results: Annotated[list[Path] | None, typer.Option(
        "--device-results",
        help="Results file written by 'edgeopt device bench' on a target device (repeat the option for several devices)")] = None,
    fleet: Annotated[Path | None, typer.Option(help="A release repository: use its fleet's benchmarks of this run")] = None,
    device_class: Annotated[str | None, typer.Option(help="With --fleet: only this device class [default: each class]")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for report.md, report.html and each device's results with its choice")] = None,
    objective: Annotated[str | None, typer.Option(help="default | paper [default: the run's]")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="The accuracy guard's tolerance, PP [default: the run's]")] = None,
    no_guard: Annotated[bool, typer.Option("--no-guard", help="No accuracy guard")] = False,
    guard: Annotated[str | None, typer.Option(help=GUARD_HELP.replace("bounded]", "the run's]"))] = None,
    margin: Annotated[float | None, typer.Option(help=MARGIN_HELP.replace("0.03]", "the run's]"))] = None,
    confidence: Annotated[float | None, typer.Option(help="Confidence of the intervals [default: the run's]")] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists")] = False,
) -> None:
    """Choose again for each device, from its own measurements: its latency, its accuracy, what it can load."""
    import hashlib

    from edgeopt.choose import choose_for_device, fleet_results, pool_devices
    from edgeopt.objective import Objective
    from edgeopt.outputs import staged_output
    from edgeopt.report import HTML_FILE, REPORT_FILE, render_device_comparison
    from edgeopt.results import RESULTS_FILE, load_results, run_folder, write_results

    run_dir = run_folder(run_dir)
    run = load_results(run_dir)
    if run.choice is None:
        raise ConfigError(f"{run_dir} holds no choice; re-run 'edgeopt optimize'")
    stored = dict(run.choice.objective)
    if no_guard and max_accuracy_drop is not None:
        raise ConfigError("give --max-accuracy-drop or --no-guard, not both")
    if no_guard:
        stored["max_metric_loss"] = None
    obj = build_settings(Objective, stored, {
        "form": ("--objective", objective), "max_metric_loss": ("--max-accuracy-drop", max_accuracy_drop),
        "confidence": ("--confidence", confidence), "guard": ("--guard", guard), "margin": ("--margin", margin),
    })
    run_sha = hashlib.sha256((run_dir / RESULTS_FILE).read_bytes()).hexdigest()
    if not device_results and fleet is None:
        raise ConfigError("give --device-results FILE (from 'edgeopt device bench') or --fleet REPO (from a benchmark job)")
    measured = [(path.stem, load_results(path)) for path in device_results or []]
    if fleet is not None:
        classes = fleet_results(fleet, run_sha)
        if device_class is not None:
            classes = {k: v for k, v in classes.items() if k == device_class}
        if not classes:
            raise ConfigError(f"{fleet} holds no device benchmark of this run" + (f" for class {device_class!r}" if device_class else "")
                              + f"; publish one with 'edgeopt publish-job {run_dir} --repo {fleet} --keys KEYS'")
        measured += [(f"{name} ({len(results)} device(s))", pool_devices(results)) for name, results in classes.items()]
    decided = [(label, choose_for_device(run, run_sha, device, obj)) for label, device in measured]
    text = render_device_comparison(run, decided)
    for label, dev in decided:
        assert dev.choice is not None
        out_console.print(f"{label}: [bold]{dev.choice.selected}[/bold] (build machine: {run.choice.selected})")
        for reason in dev.choice.reasons[:2]:
            out_console.print(f"  - {reason}", highlight=False, markup=False)
    if out is not None:
        with staged_output(out, force, reads=(run_dir, *(device_results or [])), command="choose") as staging:
            from edgeopt.report.device_page import render_device_html

            (staging / REPORT_FILE).write_text(text)
            (staging / HTML_FILE).write_text(render_device_html(run, decided), encoding="utf-8")
            for i, (_, dev) in enumerate(decided, 1):
                (staging / f"target-{i}").mkdir()
                write_results(dev, staging / f"target-{i}")
        out_console.print(f"wrote {out}/{REPORT_FILE} and {out}/{HTML_FILE}")


@app.command()
def setup(
    tool: Annotated[str, typer.Argument(help="onnx2tf: ONNX -> TensorFlow, so an .onnx model gets the LiteRT variants")],
    force: Annotated[bool, typer.Option(help="Create the environment again")] = False,
) -> None:
    """Install a converter that cannot share edgeopt's environment into one of its own (downloads it)."""
    from edgeopt.sources import onnx2tf

    if tool != "onnx2tf":
        raise ConfigError(f"edgeopt setup knows onnx2tf, not {tool!r}")
    out_console.print(f"creating {onnx2tf.env_dir()} with {onnx2tf.ONNX2TF} (about 2.6 GB; minutes)...", highlight=False)
    converter = onnx2tf.setup(force=force)
    out_console.print(f"ready: {converter.version} in {converter.python.parent.parent}; optimize now converts "
                      ".onnx models for the LiteRT variants", highlight=False)


@app.command(name="methods")
def methods_cmd() -> None:
    """List the registered methods."""
    from edgeopt.methods.registry import METHODS

    for name, method in METHODS.items():
        opt_in = f" [opt-in, {method.cost}]" if method.retrains else ""
        out_console.print(f"{name:<20} {method.backend:<12} {method.summary}{opt_in}", highlight=False, markup=False)


def _register_subcommands() -> None:
    from edgeopt.cli_device import device_app
    from edgeopt.cli_release import register
    from edgeopt.cli_rollout import rollout_app
    from edgeopt.cli_search import search

    register(app)
    app.add_typer(device_app, name="device")
    app.add_typer(rollout_app, name="rollout")
    app.command()(search)


_register_subcommands()


def _interrupted(signum: int | None) -> int:
    # CPython marks a KeyboardInterrupt that leaves code run by exec(<string>) -- libraries build
    # classes that way on import -- as unhandled even when it is caught later, and under
    # `python -m edgeopt` then ends the process by SIGINT instead of with our exit code. Running
    # another exec(<string>) clears that mark.
    exec("pass", {})
    name = "terminated (SIGTERM)" if signum == signal.SIGTERM else "interrupted"
    err_console.print(f"{name}: nothing was written under a final output name", highlight=False, markup=False)
    return EXIT_TERMINATED if signum == signal.SIGTERM else EXIT_INTERRUPTED


def _bug() -> int:
    """Anything that is not the user's: the traceback, and said to be a bug (called in an except)."""
    traceback.print_exc()
    err_console.print(
        "internal error: this is a bug in edgeopt, not something you did; please report it with the "
        "traceback above", highlight=False, markup=False,
    )
    return EXIT_BUG


def main(argv: list[str] | None = None) -> int:
    from typer._click.exceptions import ClickException, NoArgsIsHelpError

    logging.basicConfig(format="warning: %(message)s", level=logging.WARNING, stream=sys.stderr)
    previous = interrupts.install()
    try:
        code = app(args=argv, prog_name="edgeopt", standalone_mode=False)
    except EdgeoptError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_USAGE
    except ValidationError as exc:  # settings built from a user's value outside build_settings
        err_console.print(f"error: {describe_errors(exc, BaseModel)}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_USAGE
    except NoArgsIsHelpError as exc:
        exc.show()
        return EXIT_USAGE
    except ClickException as exc:  # typer's own click: a usage error (unknown option, missing --out, ...)
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        err_console.print(f"error: {exc.format_message()}{hint}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_USAGE
    except OSError as exc:
        if not is_disk_full(exc):
            return _bug()
        # a full disk outside an output folder (those say their --out themselves)
        err_console.print(f"error: disk full writing {exc.filename or 'a file'}: free space and run the command again",
                          highlight=False, markup=False, soft_wrap=True)
        return EXIT_USAGE
    except (KeyboardInterrupt, typer.Abort):
        return _interrupted(signal.SIGINT)
    except interrupts.Terminated:
        return _interrupted(signal.SIGTERM)
    except Exception:
        return _bug()
    finally:
        interrupts.restore(previous)
    if interrupts.received() is not None or code == EXIT_INTERRUPTED:
        # typer turns a KeyboardInterrupt into the return value 130; a library may have swallowed it
        return _interrupted(interrupts.received() or signal.SIGINT)
    return code if isinstance(code, int) else EXIT_OK


def entry() -> None:
    sys.exit(main())
