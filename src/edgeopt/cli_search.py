"""`edgeopt search`: parse, build a SearchConfig, call edgeopt.search, print. Ray and TensorFlow are
imported only when the command runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from edgeopt.console import RichProgress, out_console
from edgeopt.errors import ConfigError
from edgeopt.settings import build_settings, read_config_file

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h)?\s*$")


def parse_duration(text: str | None) -> float | None:
    """"7200", "120m", "2h" -> seconds."""
    if text is None:
        return None
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"--time-budget {text!r} is not a duration; e.g. 7200, 90m or 2h")
    scale = {None: 1, "s": 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]
    return float(match.group(1)) * scale


def _list(text: str | None, kind: type, option: str) -> tuple | None:
    if text is None:
        return None
    try:
        return tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r} needs comma-separated numbers, e.g. 96,128,160") from None


def _names(text: str | None) -> tuple[str, ...] | None:
    return tuple(t.strip() for t in text.split(",") if t.strip()) if text is not None else None


def _numbers(text: str | None, count: int, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count:
        raise ConfigError(f"{option} {text!r} needs {count} comma-separated numbers")
    return values


def _backbones(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    found = {}
    for value in values:
        alpha, sep, path = value.partition("=")
        if not sep or not path:
            raise ConfigError(f"--backbone {value!r} needs ALPHA=PATH, e.g. 0.5=mobilenet_v2_0.5_224_no_top.weights.h5")
        found[alpha.strip()] = path.strip()
    return found


def search(
    model: Annotated[Path, typer.Argument(help="The teacher: anything 'edgeopt optimize' takes (a folder written by 'edgeopt "
                                          "train', a .keras / .h5 file, a SavedModel folder, a .tflite or an .onnx file; the "
                                          "last five need --data)")],
    out: Annotated[Path, typer.Option(help="Folder for the run (results.json, report.md, variants/) and the search's state; "
                                      "run again to resume")],
    data: Annotated[Path | None, typer.Option(help="The photos (DIR/<class>/*.jpg): a foreign teacher's, or a train folder's "
                                              "if they moved")] = None,
    test_data: Annotated[Path | None, typer.Option(help="Held-out photos used whole for test (as optimize's --test-data)")] = None,
    labels: Annotated[Path | None, typer.Option(help="A foreign teacher's output order (as optimize's --labels)")] = None,
    input_range: Annotated[str | None, typer.Option(help="The pixel range a foreign teacher takes, e.g. -1,1 (as optimize's)")] = None,
    input_mean: Annotated[str | None, typer.Option(help="Per-channel mean of pixel/255 (as optimize's)")] = None,
    input_std: Annotated[str | None, typer.Option(help="Per-channel std of pixel/255 (as optimize's)")] = None,
    channel_order: Annotated[str | None, typer.Option(help="rgb | bgr (as optimize's)")] = None,
    resize: Annotated[str | None, typer.Option(help="squash | center-crop (as optimize's)")] = None,
    custom_objects: Annotated[str | None, typer.Option(help="Keras custom layers: module:attr[,...] (as optimize's)")] = None,
    resolutions: Annotated[str | None, typer.Option(help="Input sides the candidates compute at [default: 96,128,160]")] = None,
    keep: Annotated[str | None, typer.Option(help="Shares of each block's expanded channels kept (structured pruning of the "
                                             "teacher) [default: 1,0.75,0.5]")] = None,
    backbone: Annotated[list[str] | None, typer.Option(help="ALPHA=PATH: also candidates of this width, from a MobileNetV2 no-top "
                                                       "weights file (repeat for several)")] = None,
    epochs: Annotated[int | None, typer.Option(help="Most epochs a candidate trains [default: 6]")] = None,
    grace_epochs: Annotated[int | None, typer.Option(help="Epochs every candidate trains before successive halving [default: 2]")] = None,
    reduction_factor: Annotated[int | None, typer.Option(help="Successive halving keeps the best 1/N at each rung [default: 2]")] = None,
    max_latency_ms: Annotated[float | None, typer.Option(help="Budget: median ms per image at most (a filter before L)")] = None,
    max_kb: Annotated[float | None, typer.Option(help="Budget: model file KB at most")] = None,
    max_transfer_kb: Annotated[float | None, typer.Option(help="Budget: KB a delivery sends (zstd) at most")] = None,
    time_budget: Annotated[str | None, typer.Option(help="Wall time for the whole search, e.g. 2h or 90m (trials still running "
                                                    "then are cut; the build and measurement are kept time for)")] = None,
    device_results: Annotated[list[Path] | None, typer.Option(
        "--device-results", help="Then choose for a device from 'edgeopt device bench OUT' run there (repeatable)")] = None,
    ray_address: Annotated[str | None, typer.Option(help="A Ray cluster to run the trials on, e.g. 10.0.0.5:6379 or auto "
                                                    "[default: a local Ray on this machine]")] = None,
    max_concurrent_trials: Annotated[int | None, typer.Option(help="Trials at once [default: 1]")] = None,
    cpus_per_trial: Annotated[int | None, typer.Option(help="CPUs a trial takes [default: all of them / trials at once]")] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="Interpreter threads when timing (the device's cores) [default: 1]")] = None,
    rounds: Annotated[int | None, typer.Option(help="Interleaved latency rounds [default: 11]")] = None,
    max_accuracy_drop: Annotated[float | None, typer.Option(help="The accuracy guard's tolerance, PP [default: 1.0]")] = None,
    guard: Annotated[str | None, typer.Option(help="The guard's rule: bounded | non-inferiority | benefit-of-doubt "
                                              "(docs/choice.md) [default: bounded]")] = None,
    margin: Annotated[float | None, typer.Option(help="Variants whose L differ by less than this are tied [default: 0.03]")] = None,
    target: Annotated[str | None, typer.Option(help="Runtimes the chosen variant must run on [default: the teacher's]")] = None,
    size: Annotated[str | None, typer.Option(help="S in L: file or transfer [default: file]")] = None,
    config: Annotated[Path | None, typer.Option(help="TOML/JSON file with a [search] section (and [search.optimize], "
                                                "[search.distill]); flags override it")] = None,
    force: Annotated[bool, typer.Option(help="Start over: replace --out (a folder edgeopt wrote) instead of resuming it")] = False,
) -> None:
    """Search smaller networks for the teacher's job: lower resolutions, fewer channels, other widths, each distilled from the
    teacher, quantized, measured against it and chosen (trials on Ray Tune, successive halving, resumable)."""
    from edgeopt.search.space import SearchConfig

    cfg = build_settings(SearchConfig, read_config_file(config, "search"), {
        "resolutions": ("--resolutions", _list(resolutions, int, "--resolutions")),
        "keeps": ("--keep", _list(keep, float, "--keep")),
        "backbones": ("--backbone", _backbones(backbone)),
        "distill.epochs": ("--epochs", epochs),
        "grace_epochs": ("--grace-epochs", grace_epochs),
        "reduction_factor": ("--reduction-factor", reduction_factor),
        "time_budget_s": ("--time-budget", parse_duration(time_budget)),
        "ray_address": ("--ray-address", ray_address),
        "max_concurrent_trials": ("--max-concurrent-trials", max_concurrent_trials),
        "cpus_per_trial": ("--cpus-per-trial", cpus_per_trial),
        "optimize.measure.threads": ("--threads", threads),
        "optimize.measure.rounds": ("--rounds", rounds),
        "optimize.objective.max_metric_loss": ("--max-accuracy-drop", max_accuracy_drop),
        "optimize.objective.guard": ("--guard", guard),
        "optimize.objective.margin": ("--margin", margin),
        "optimize.input_range": ("--input-range", _numbers(input_range, 2, "--input-range")),
        "optimize.input_mean": ("--input-mean", _numbers(input_mean, 3, "--input-mean")),
        "optimize.input_std": ("--input-std", _numbers(input_std, 3, "--input-std")),
        "optimize.channel_order": ("--channel-order", channel_order),
        "optimize.resize": ("--resize", resize),
        "optimize.custom_objects": ("--custom-objects", _names(custom_objects)),
        "optimize.objective.max_latency_ms": ("--max-latency-ms", max_latency_ms),
        "optimize.objective.max_file_kb": ("--max-kb", max_kb),
        "optimize.objective.max_transfer_kb": ("--max-transfer-kb", max_transfer_kb),
        "optimize.objective.size": ("--size", size),
        "optimize.target": ("--target", _names(target)),
    }, config, "search")
    from edgeopt.cli import _print_table, choose
    from edgeopt.search.runner import require_ray
    from edgeopt.search.study import run_search

    require_ray()
    results = run_search(model, out, cfg, data_dir=data, force=force, progress=RichProgress(), test_data=test_data, labels=labels)
    _print_table(results)
    out_console.print(f"wrote {out}/ (report.md, results.json, {len(results.search.trials) if results.search else 0} trials; "
                      f"run again to resume or to choose again with other budgets)")
    if device_results:
        choose(out, device_results=device_results, fleet=None, device_class=None, out=None, objective=None,
               max_accuracy_drop=None, no_guard=False, guard=None, margin=None, confidence=None, force=False)
