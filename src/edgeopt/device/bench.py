"""`edgeopt device bench`: measure an optimize run's variants where they will run.

The same interleaved latency protocol as optimize, the accuracy check on the run's test images
(when the device has them) or on labelled samples the user ships, with the device's runtime --
and what does not run, and why. Each variant is measured in a process of its own
(device.variant_worker), so a runtime that crashes on one variant costs that variant's row, not
the benchmark; a runtime that cannot run even a tiny model is refused before anything is measured,
with its fix (runtimes.health). The output is a results file (kind "device-bench") that
`edgeopt choose` reads to choose for this device. Needs no TensorFlow and no scipy: one
inference runtime, numpy and Pillow.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np

from edgeopt import __version__
from edgeopt.config import MeasureConfig
from edgeopt.contract import PixelContract, contract_from_dict
from edgeopt.data.imagefolder import decode_images, scan_image_folder
from edgeopt.device.variant_worker import InProcess, LatencyTimer, VariantRefused, Worker
from edgeopt.errors import DataError, ModelError
from edgeopt.machine import accuracy_threads, describe_machine
from edgeopt.machine import device_class as device_class_of
from edgeopt.measure import accuracy_of, accuracy_record, latency_record, measure_interleaved, predictions_record
from edgeopt.methods.base import sha256_of
from edgeopt.progress import NullProgress, Progress
from edgeopt.results import RESULTS_FILE, Data, Results, Variant, load_results
from edgeopt.runtimes.health import RuntimeHealth, require_healthy
from edgeopt.runtimes.registry import RUNTIMES


def _images(run: Results, images: Path | None) -> tuple[Path, list[tuple[str, int]], str]:
    """The labelled images to check accuracy on: the user's samples, else the run's test split."""
    classes = run.model.classes
    if images is not None:
        folder = scan_image_folder(images)
        unknown = [c for c in folder.classes if c not in classes]
        if unknown:
            raise DataError(f"{images} has class folder(s) {', '.join(unknown)} the model does not know ({', '.join(classes)})")
        items = [(path, classes.index(folder.classes[label])) for path, label in folder.items]
        return folder.root, items, f"the device's labelled samples in {images}"
    root = Path(run.data.root)
    if root.is_dir() and all((root / p).is_file() for p, _ in run.data.test_items[:20]):
        return root, [(p, int(c)) for p, c in run.data.test_items], "the run's test split"
    raise DataError(
        f"the run's test images ({root}) are not on this device; pass --images DIR with labelled samples "
        "(DIR/<class>/*.jpg, class names as in labels.json)"
    )


def _unrunnable(v: Variant, run_dir: Path) -> str:
    """Why a variant cannot even be tried here, or ""."""
    runtime = RUNTIMES.get(v.backend)
    if runtime is None or not runtime.available():
        return f"no {v.backend} runtime is installed on this device"
    path = run_dir / v.file
    if not path.is_file():
        return f"{v.file} is missing from {run_dir}"
    if sha256_of(path) != v.sha256:
        return f"{v.file} differs from the file the run measured (sha256); copy the run again"
    return ""


def _is_float(v: Variant) -> bool:
    return v.graph is not None and set(v.graph.weight_dtypes) <= {"float32", "int32", "int64"}


def bench_run(
    run_dir: Path, measure: MeasureConfig, images: Path | None = None, progress: Progress | None = None,
    device_class: str | None = None, source_sha256: str | None = None, isolate: bool = True,
) -> Results:
    """Every variant of an optimize run, measured on this machine with its runtime(s).

    `device_class` names devices that should measure alike (fleet benchmarks pool them);
    `source_sha256` identifies the run when its results.json was trimmed to the job's candidates;
    `isolate` False measures in this process (see device.variant_worker)."""
    progress = progress or NullProgress()
    run_dir = Path(run_dir)
    run = load_results(run_dir)
    started = time.perf_counter()
    machine = _profile(device_class, require_healthy({v.backend for v in run.variants}))  # a broken runtime: exit 2
    root, items, note = _images(run, images)
    contract = contract_of_run(run)
    decoded = decode_images(root, items, (run.model.image_size, run.model.image_size), resize=contract.resize)
    if len(decoded.labels) == 0:
        raise DataError(f"none of the {len(items)} images in {root} could be read")
    transform = contract.transform
    eval_threads = accuracy_threads(measure.threads)
    errors: dict[str, str] = {}
    accuracy = {}
    workers: dict[str, Worker | InProcess] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
            pixels = Path(tmp) / "pixels.npy"  # each worker maps it instead of receiving a copy
            np.save(pixels, decoded.pixels)
            progress.start("checking accuracy on this device", len(run.variants))
            for v in run.variants:
                errors[v.name] = _unrunnable(v, run_dir)
                if not errors[v.name]:
                    workers[v.name] = (Worker if isolate else InProcess)(RUNTIMES[v.backend].version(), v.name)
                    try:
                        workers[v.name].call("load", v.backend, str(run_dir / v.file), eval_threads, transform.scale, transform.offset,
                                            transform.channel_order)
                        predicted, confidence = workers[v.name].call("accuracy", str(pixels), run.model.classes)
                        accuracy[v.name] = accuracy_of(predicted, confidence, decoded.labels, run.model.classes)
                        workers[v.name].call("release")
                        workers[v.name].call("latency_session", measure.threads, decoded.pixels[:16])
                    except VariantRefused as exc:
                        errors[v.name] = str(exc).removeprefix(f"{run_dir / v.file} ")
                        workers.pop(v.name).stop()
                progress.advance(1, v.name)
            errors = {name: why for name, why in errors.items() if why}
            progress.finish(f"checked {len(decoded.labels)} images; {len(errors)} variant(s) do not run here")
        order = _order(run, workers, run_dir, errors)
        latency, failed = measure_interleaved({v.name: LatencyTimer(workers[v.name]) for v in order}, measure, progress)
        for v in order:
            try:
                workers[v.name].call("finish")
            except VariantRefused as exc:
                failed.setdefault(v.name, str(exc))
    finally:
        for worker in workers.values():
            worker.stop()
    errors.update(failed)
    order = _order(run, workers, run_dir, errors)
    variants = []
    for v in [*order, *(v for v in run.variants if v.name in errors)]:
        base = dict(name=v.name, paper_label=v.paper_label, backend=v.backend, summary=v.summary, file=v.file,
                    sha256=v.sha256, size_bytes=v.size_bytes, transfer_bytes=v.transfer_bytes, graph=v.graph,
                    input=v.input, change_vs_baseline=v.change_vs_baseline, repair=v.repair)
        if v.name in errors:
            variants.append(Variant(**base, runtime=_runtime_name(v.backend), loadable=False, load_error=errors[v.name]))
        else:
            variants.append(Variant(**base, runtime=_runtime_name(v.backend), test=accuracy_record(accuracy[v.name]),
                                    latency=latency_record(latency[v.name], measure.threads),
                                    predictions=predictions_record(accuracy[v.name])))
    notes = [f"Measured on this device from the optimize run {run_dir} ({len(run.variants)} variants)."]
    if order[0].name != run.variants[0].name:
        notes.append(f"The run's baseline {run.variants[0].name} does not load here, so L is relative to {order[0].name}.")
    return Results(
        kind="device-bench", created=time.strftime("%Y-%m-%dT%H:%M:%S%z"), edgeopt_version=__version__,
        model=run.model,
        data=Data(root=str(root), synthetic=run.data.synthetic, test_items=[(p, int(c)) for p, c in zip(
            decoded.paths, decoded.labels, strict=True)], train_images=0, train_total=0,
            skipped_images=len(decoded.skipped), split_note=note),
        machine=machine, measure={**measure.to_jsonable(), "accuracy_threads": eval_threads},
        variants=variants, notes=notes, timings={"total_s": time.perf_counter() - started},
        source_results_sha256=source_sha256 or hashlib.sha256((run_dir / RESULTS_FILE).read_bytes()).hexdigest(),
    )


def _order(run: Results, workers: dict[str, Worker | InProcess], run_dir: Path, errors: dict[str, str]) -> list[Variant]:
    """The variants measured, the baseline first: the run's, or (when it does not run here) the
    first float variant that does."""
    order = [v for v in run.variants if v.name in workers and v.name not in errors]
    if not order:
        raise ModelError(f"no variant of {run_dir} runs on this device: " + "; ".join(f"{k}: {e}" for k, e in errors.items()))
    if order[0].name != run.variants[0].name:
        order.sort(key=lambda v: not _is_float(v))
    return order


def _profile(device_class: str | None, health: dict[str, RuntimeHealth]) -> dict[str, object]:
    profile = describe_machine()
    return {**profile, "device_class": device_class or device_class_of(profile),
            "runtime_health": {name: h.to_jsonable() for name, h in health.items()}}


def _runtime_name(backend: str) -> str:
    runtime = RUNTIMES.get(backend)
    return runtime.version() if runtime is not None and runtime.available() else f"{backend} (not installed)"


def contract_of_run(run: Results) -> PixelContract:
    """The input contract the run measured its variants with (edgeopt.contract)."""
    record = next((v.input for v in run.variants if v.input is not None), None)
    return contract_from_dict(record.model_dump() if record is not None else None)
