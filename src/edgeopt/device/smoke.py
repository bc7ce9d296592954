"""The smoke test a release passes before it becomes active, and again right after.

It reads the release's own files first -- labels.json and the input contract in its signed
metadata; anything there the device cannot use is MalformedRelease, proven bad by its signed
bytes -- then loads the model with the device's runtime, feeds it the input the signed metadata
says (with the pixel normalisation it records), checks finite outputs of the right width on the
sample images, a latency budget, and optionally an accuracy floor on labelled samples.
"""

from __future__ import annotations

import json
import math
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
# Largest labels.json a release may have, bytes (class names, and the input contract).
MAX_LABELS_BYTES = 1024 * 1024


class SmokeTestFailed(Exception):
    """The release does not work on this device; the reason says how."""


class MalformedRelease(SmokeTestFailed):
    """The release's own signed files (labels.json, its input contract) cannot be used on any
    device: refused for good at once, with no second try."""


@dataclass(frozen=True)
class SmokeLimits:
    # Median milliseconds per image the model must stay under on this device.
    latency_budget_ms: float = 2000.0
    # Accuracy floor on labelled samples (samples/<class>/*.jpg); None: not checked.
    min_accuracy: float | None = None
    threads: int = 1


def read_classes(path: Path) -> list[str]:
    """The class names of a release's labels.json ({"classes": [...], "input": {...}}), checked."""
    if path.stat().st_size > MAX_LABELS_BYTES:
        raise MalformedRelease(f"its labels.json is larger than {MAX_LABELS_BYTES:,} bytes")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise MalformedRelease("its labels.json is not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise MalformedRelease(f"its labels.json is not JSON ({str(exc)[:100]})") from None
    classes = data.get("classes") if isinstance(data, dict) else None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) and c for c in classes)):
        raise MalformedRelease('its labels.json has no "classes": a list of class names')
    if len(set(classes)) < len(classes):
        raise MalformedRelease("its labels.json names a class twice")
    if data.get("input") is not None:
        _checked(data["input"], "its labels.json")
    return classes


def _triple(value: Any, name: str, where: str) -> tuple[float, float, float]:
    """Three finite numbers (signed metadata holds them as decimal strings: canonical JSON has no floats)."""
    try:
        if not isinstance(value, list) or len(value) != 3 or any(isinstance(v, bool) for v in value):
            raise ValueError
        a, b, c = (float(v) for v in value)
    except (TypeError, ValueError):
        raise MalformedRelease(f"{where}: input {name} must be three numbers, not {json.dumps(value)[:80]}") from None
    if not all(math.isfinite(v) for v in (a, b, c)):
        raise MalformedRelease(f"{where}: input {name} must be finite, not {json.dumps(value)[:80]}")
    return a, b, c


def _checked(contract: Any, where: str) -> PixelContract:
    """The input contract (edgeopt.contract), after checking what a device would trip over."""
    if not isinstance(contract, dict):
        raise MalformedRelease(f"{where}: its input contract is not an object")
    for name in ("pixel_scale", "pixel_offset"):
        if contract.get(name) is not None:
            _triple(contract[name], name, where)
    try:
        return contract_from_dict(contract)
    except EdgeoptError as exc:  # a channel order or resize this edgeopt does not know
        raise MalformedRelease(f"{where}: {exc}") from None


def _contract(record: dict[str, Any]) -> Any:
    return (record.get("custom") or {}).get("input")


def contract_of(record: dict[str, Any]) -> PixelContract:
    """The input contract the release's signed metadata records (edgeopt.contract), checked: the
    pixel normalisation of its float input, its channel order and how images are fitted."""
    contract = _contract(record)
    return contract_from_dict(None) if contract is None else _checked(contract, "its signed metadata")


def transform_of(record: dict[str, Any]) -> PixelTransform:
    """The pixel normalisation (and channel order) the release's signed metadata records."""
    return contract_of(record).transform


def signed_input_shape(record: dict[str, Any]) -> tuple[int, ...] | None:
    """The input tensor shape the release's signed metadata records, if it records one."""
    contract = _contract(record)
    tensor = contract.get("tensor") if isinstance(contract, dict) else None
    shape = tensor.get("shape") if isinstance(tensor, dict) else None
    if contract is None or shape is None:
        return None
    if not (isinstance(shape, list) and shape and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)):
        raise MalformedRelease(f"its signed metadata: input shape must be a list of whole numbers, not {json.dumps(shape)[:80]}")
    return tuple(shape)


def smoke_test(folder: Path, record: dict[str, Any], samples: Path, limits: SmokeLimits) -> dict[str, Any]:
    """Run the release in `folder`; raise SmokeTestFailed on any failure."""
    from edgeopt.runtimes.registry import runtime_for

    model_path = folder / record["model"]["file"]
    classes = read_classes(folder / record["labels"]["file"])
    transform, expected = transform_of(record), signed_input_shape(record)
    try:
        session = runtime_for(model_path).open(model_path, limits.threads, transform)
    except (EdgeoptError, ValueError, RuntimeError) as exc:
        raise SmokeTestFailed(f"model does not load: {exc}") from None
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
