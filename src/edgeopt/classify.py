"""Classify images with any model file: what the device does for each camera frame."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.errors import ConfigError, ModelError
from edgeopt.images import load_pixels
from edgeopt.pixels import PIXELS, PixelTransform
from edgeopt.runtimes.registry import runtime_for


@dataclass(frozen=True)
class Prediction:
    image: Path
    top: tuple[tuple[str, float], ...]  # (label, probability), best first


def load_labels(path: Path) -> list[str]:
    """labels.json written by edgeopt ({"classes": [...]}) or a text file, one label a line."""
    if not path.is_file():
        raise ConfigError(f"labels file {path} does not exist; pass --labels FILE (labels.json or one label a line)")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            return list(data["classes"] if isinstance(data, dict) else data)
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a labels file ({exc}); expected {{\"classes\": [...]}}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _default_labels(model: Path) -> list[str] | None:
    for candidate in (model.parent / "labels.json", model.parent.parent / "labels.json"):
        if candidate.is_file():
            return load_labels(candidate)
    return None


def classify(
    model: Path,
    images: list[Path],
    labels_path: Path | None = None,
    top_k: int = 3,
    threads: int = 1,
    transform: PixelTransform = PIXELS,
) -> list[Prediction]:
    if not images:
        raise ConfigError("no images given; pass one or more image files after the model")
    if top_k < 1:
        raise ConfigError(f"--top-k {top_k} must be >= 1")
    runtime = runtime_for(model)
    session = runtime.open(model, threads, transform)
    labels = load_labels(labels_path) if labels_path else _default_labels(model)
    size = session.input.image_size
    predictions = []
    for image in images:
        pixels = load_pixels(image, size)
        probs = session.predict(pixels[None])[0]
        if labels is not None and len(labels) != len(probs):
            raise ModelError(
                f"{model} outputs {len(probs)} classes but the labels have {len(labels)}; "
                "pass the matching --labels FILE"
            )
        names = labels or [str(i) for i in range(len(probs))]
        order = np.argsort(-probs)[:top_k]
        predictions.append(Prediction(image, tuple((names[i], float(probs[i])) for i in order)))
    return predictions
