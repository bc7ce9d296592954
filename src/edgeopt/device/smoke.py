"""The smoke test a release passes before it becomes active, and again right after.

It loads the model with the device's runtime, feeds it the input the release's signed metadata
says (with the pixel normalisation it records), checks finite outputs of the right width on the
sample images, a latency budget, and optionally an accuracy floor on labelled samples.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.contract import PixelContract, contract_from_dict
from edgeopt.errors import EdgeoptError
from edgeopt.images import IMAGE_SUFFIXES, ImageError, load_pixels
from edgeopt.pixels import PixelTransform

# Sample images a smoke test runs at most.
MAX_SAMPLES = 32


class SmokeTestFailed(Exception):
    """The release does not work on this device; the reason says how."""


@dataclass(frozen=True)
class SmokeLimits:
    # Median milliseconds per image the model must stay under on this device.
    latency_budget_ms: float = 2000.0
    # Accuracy floor on labelled samples (samples/<class>/*.jpg); None: not checked.
    min_accuracy: float | None = None
    threads: int = 1


def contract_of(record: dict[str, Any]) -> PixelContract:
    """The input contract the release's signed metadata records (edgeopt.contract): the pixel
    normalisation of its float input, its channel order and how images are fitted."""
    return contract_from_dict((record.get("custom") or {}).get("input"))


def transform_of(record: dict[str, Any]) -> PixelTransform:
    """The pixel normalisation (and channel order) the release's signed metadata records."""
    return contract_of(record).transform


def smoke_test(folder: Path, record: dict[str, Any], samples: Path, limits: SmokeLimits) -> dict[str, Any]:
    """Run the release in `folder`; raise SmokeTestFailed on any failure."""
    from edgeopt.runtimes.registry import runtime_for

    model_path = folder / record["model"]["file"]
    classes = json.loads((folder / record["labels"]["file"]).read_text())["classes"]
    try:
        session = runtime_for(model_path).open(model_path, limits.threads, transform_of(record))
    except (EdgeoptError, ValueError, RuntimeError) as exc:
        raise SmokeTestFailed(f"model does not load: {exc}") from None
    expected = ((record.get("custom") or {}).get("input") or {}).get("tensor", {}).get("shape")
    if expected and tuple(session.input.shape[1:]) != tuple(expected[1:]):
        raise SmokeTestFailed(f"model input shape {session.input.shape} differs from the signed {tuple(expected)}")
    files = sorted(p for p in samples.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:MAX_SAMPLES] if samples.is_dir() else []
    size = session.input.image_size
    frames, used = [], []
    for path in files:
        try:
            frames.append(load_pixels(path, size, contract_of(record).resize))
            used.append(path)
        except ImageError:
            continue  # a broken sample is not the release's fault
    if not frames:  # no samples: at least one well-formed frame
        frames = [np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)]
    times, outputs = [], []
    try:
        for frame in frames:
            start = time.perf_counter()
            outputs.append(session.predict(frame[None])[0])
            times.append((time.perf_counter() - start) * 1000)
    except Exception as exc:  # a broken model can fail inside the runtime in many ways
        raise SmokeTestFailed(f"model fails on a sample image: {type(exc).__name__}: {exc}") from None
    probs = np.stack(outputs)
    if not np.isfinite(probs).all():
        raise SmokeTestFailed("model outputs non-finite values (NaN or inf) on the sample images")
    if probs.shape[1] != len(classes):
        raise SmokeTestFailed(f"model outputs {probs.shape[1]} classes, labels have {len(classes)}")
    latency = statistics.median(times)
    if latency > limits.latency_budget_ms:
        raise SmokeTestFailed(f"median latency {latency:.1f} ms exceeds the budget of {limits.latency_budget_ms:g} ms")
    accuracy = None
    # samples/<class>/*.jpg carry a label; frames directly in samples/ do not
    labelled = [(i, classes.index(p.parent.name)) for i, p in enumerate(used) if p.parent != samples and p.parent.name in classes]
    if limits.min_accuracy is not None and labelled:
        rows, truth = (np.array(v) for v in zip(*labelled, strict=True))
        accuracy = float(np.mean(probs[rows].argmax(1) == truth))
        if accuracy < limits.min_accuracy:
            raise SmokeTestFailed(f"accuracy {accuracy:.2f} on {len(labelled)} labelled samples is under {limits.min_accuracy}")
    return {"latency_ms": latency, "accuracy": accuracy, "samples": len(frames)}
