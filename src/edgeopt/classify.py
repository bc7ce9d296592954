"""Classify images with any model file: what the device does for each camera frame."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.contract import PixelContract, contract_from_dict
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
    return load_labels_and_input(path)[0]


def load_labels_and_input(path: Path) -> tuple[list[str], PixelContract | None]:
    """The labels, and the input contract labels.json records for the model (edgeopt.contract:
    pixel normalisation, channel order, resize; None when the file does not say: a plain label list)."""
    if not path.is_file():
        raise ConfigError(f"labels file {path} does not exist; pass --labels FILE (labels.json or one label a line)")
    text = path.read_text()
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                return [str(c) for c in data], None
            recorded = data.get("input")
            contract = contract_from_dict(recorded) if isinstance(recorded, dict) and "pixel_scale" in recorded else None
            return [str(c) for c in data["classes"]], contract
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a labels file ({exc}); expected {{\"classes\": [...]}}") from None
    return [line.strip() for line in text.splitlines() if line.strip()], None


def _default_labels(model: Path) -> Path | None:
    for candidate in (model.parent / "labels.json", model.parent.parent / "labels.json"):
        if candidate.is_file():
            return candidate
    return None


def classify(
    model: Path,
    images: list[Path],
    labels_path: Path | None = None,
    top_k: int = 3,
    threads: int = 1,
    transform: PixelTransform | None = None,
    resize: str | None = None,
) -> list[Prediction]:
    """Top-k labels per image, with the scores the model outputs (dequantized, not renormalised).

    Without `transform` and `resize`, the input contract labels.json records for the model is
    applied (pixels 0..255 as they are, RGB, squashed, for every model edgeopt makes)."""
    if not images:
        raise ConfigError("no images given; pass one or more image files after the model")
    if top_k < 1:
        raise ConfigError(f"--top-k {top_k} must be >= 1")
    runtime = runtime_for(model)
    labels_file = labels_path or _default_labels(model)
    labels, recorded = load_labels_and_input(labels_file) if labels_file else (None, None)
    session = runtime.open(model, threads, transform or (recorded.transform if recorded else PIXELS))
    fit = resize or (recorded.resize if recorded else "squash")
    size = session.input.image_size
    predictions = []
    for image in images:
        pixels = load_pixels(image, size, fit)
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
