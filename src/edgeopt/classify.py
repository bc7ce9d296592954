"""Classify images with any model file: what the device does for each camera frame."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.contract import PixelContract, contract_from_dict
from edgeopt.errors import ConfigError, DataError, EdgeoptError, ModelError
from edgeopt.images import load_pixels
from edgeopt.pixels import PIXELS, PixelTransform
from edgeopt.runtimes.registry import runtime_for


@dataclass(frozen=True)
class Prediction:
    image: Path
    top: tuple[tuple[str, float], ...]  # (label, probability), best first; empty when it failed
    error: str = ""  # why this image could not be classified (one line, naming the file)


def load_labels(path: Path) -> list[str]:
    """labels.json written by edgeopt ({"classes": [...]}) or a text file, one label a line."""
    return load_labels_and_input(path)[0]


_KINDS = "pass labels.json (written by edgeopt) or a UTF-8 text file with one label a line"


def load_labels_and_input(path: Path) -> tuple[list[str], PixelContract | None]:
    """The labels, and the input contract labels.json records for the model (edgeopt.contract:
    pixel normalisation, channel order, resize; None when the file does not say: a plain label list)."""
    if not path.is_file():
        raise ConfigError(f"labels file {path} does not exist; pass --labels FILE (labels.json or one label a line)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"labels file {path} cannot be read ({exc.strerror}); {_KINDS}") from None
    if b"\x00" in data:
        raise ConfigError(f"labels file {path} is binary, not text; {_KINDS}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"labels file {path} is not UTF-8 text (byte {exc.start}); save it as UTF-8, or {_KINDS}") from None
    if path.suffix.lower() != ".json":
        labels = [line.strip() for line in text.splitlines() if line.strip()]
        if not labels:
            raise ConfigError(f"labels file {path} holds no labels; {_KINDS}")
        return labels, None
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{path} is not a labels file ({exc}); expected {{\"classes\": [...]}}") from None
    classes = parsed.get("classes") if isinstance(parsed, dict) else parsed
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str | int) for c in classes):
        raise ConfigError(f"{path} is not a labels file: it needs \"classes\", a list of label names, "
                          "e.g. {\"classes\": [\"can\", \"carton\"]}")
    recorded = parsed.get("input") if isinstance(parsed, dict) else None
    contract = None
    if isinstance(recorded, dict) and ("pixel_scale" in recorded or "pixel_offset" in recorded):
        scale, offset = _channels(path, recorded, "pixel_scale", 1.0), _channels(path, recorded, "pixel_offset", 0.0)
        try:
            contract = contract_from_dict({**recorded, "pixel_scale": list(scale), "pixel_offset": list(offset)})
        except EdgeoptError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return [str(c) for c in classes], contract


def _channels(path: Path, contract: dict[str, object], key: str, default: float) -> tuple[float, float, float]:
    """One per-channel number of labels.json's "input" entry: three finite numbers (R, G, B)."""
    value = contract.get(key, [default] * 3)
    if (not isinstance(value, list) or len(value) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise ConfigError(f"{path}: input.{key} must be three numbers, one per RGB channel, not {json.dumps(value)}; "
                          f"correct it, or copy labels.json again from the optimize run")
    return float(value[0]), float(value[1]), float(value[2])


def _default_labels(model: Path) -> Path | None:
    for candidate in (model.parent / "labels.json", model.parent.parent / "labels.json"):
        if candidate.is_file():
            return candidate
    return None


class Classifier:
    """A model opened with its labels, checked against each other before any image is read."""

    def __init__(self, model: Path, labels_path: Path | None = None, top_k: int = 3, threads: int = 1,
                 transform: PixelTransform | None = None, resize: str | None = None) -> None:
        """Without `transform` and `resize`, the input contract labels.json records for the model
        is applied (pixels 0..255 as they are, RGB, squashed, for every model edgeopt makes)."""
        if top_k < 1:
            raise ConfigError(f"--top-k {top_k} must be >= 1")
        runtime = runtime_for(model)
        labels_file = labels_path or _default_labels(model)
        self.labels: list[str] | None = None
        recorded = None
        if labels_file is not None:
            self.labels, recorded = load_labels_and_input(labels_file)
        self.model, self.top_k = model, top_k
        self.session = runtime.open(model, threads, transform or (recorded.transform if recorded else PIXELS))
        self.resize = resize or (recorded.resize if recorded else "squash")
        outputs = self.session.output.shape[-1] if self.session.output.shape else -1
        if self.labels is not None and outputs > 0:
            self._check_count(outputs)

    def _check_count(self, outputs: int) -> None:
        if self.labels is not None and len(self.labels) != outputs:
            raise ModelError(f"{self.model} outputs {outputs} classes but the labels have {len(self.labels)}; "
                             "pass the matching --labels FILE")

    def classify(self, image: Path) -> Prediction:
        """Top-k labels of one image, with the scores the model outputs (dequantized, not
        renormalised); an unreadable image is a Prediction with its error."""
        try:
            pixels = load_pixels(image, self.session.input.image_size, self.resize)
        except DataError as exc:
            return Prediction(image, (), str(exc))
        probs = self.session.predict(pixels[None])[0]
        self._check_count(len(probs))
        names = self.labels or [str(i) for i in range(len(probs))]
        order = np.argsort(-probs)[: self.top_k]
        return Prediction(image, tuple((names[i], float(probs[i])) for i in order))


def classify(
    model: Path,
    images: list[Path],
    labels_path: Path | None = None,
    top_k: int = 3,
    threads: int = 1,
    transform: PixelTransform | None = None,
    resize: str | None = None,
) -> Iterator[Prediction]:
    """Top-k labels per image (see Classifier), one image at a time as the iterator is consumed;
    an image that cannot be read gets its error. The model, labels and options are checked at once."""
    if not images:
        raise ConfigError("no images given; pass one or more image files after the model")
    classifier = Classifier(model, labels_path, top_k, threads, transform, resize)
    return (classifier.classify(image) for image in images)
