"""What `optimize` checks before any work: every setting against the model and the data it
starts from, so that a mistake is refused in seconds, not after every variant was built and
measured, and the refusal names the user's own files and flags.

- the target runtimes are runtimes some requested method builds for;
- a folder written by `edgeopt train`: the model's output has one value per class of its data
  (read from the Keras file's config, without TensorFlow; every other kind of model is checked
  when edgeopt.sources loads it);
- the guarded methods have held-out images left to measure their repair on.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from pathlib import Path

from edgeopt.errors import ConfigError, ModelError
from edgeopt.methods.base import Method


def check_target(target: Sequence[str] | None, methods: Sequence[Method]) -> None:
    """Refuse a target no requested method builds for (the names are checked in OptimizeConfig)."""
    built = sorted({m.backend for m in methods})
    for name in target or ():
        if name not in built:
            raise ConfigError(
                f"--target {name}: none of the methods to build runs on {name} (they run on {', '.join(built)}); "
                f"add methods for it with --methods or --backends, or choose another --target"
            )


def output_classes(model: Path, kind: str) -> int | None:
    """How many classes a train folder's model outputs, read from its Keras file; None when it
    cannot be told without loading the model (then the evaluation checks it), or for another kind
    of source (edgeopt.sources checked those when it loaded them)."""
    if kind == "train":
        return _keras_output_units(model / "model.keras")
    return None


def _keras_output_units(path: Path) -> int | None:
    """The units of a Keras 3 file's output layer, when that is a Dense layer (edgeopt's head)."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))["config"]
        outputs = config["output_layers"]  # [name, 0, 0] for one output, [[name, 0, 0], ...] for several
        if not isinstance(outputs[0], str):
            return None
        layer = next(layer for layer in config["layers"] if layer["config"]["name"] == outputs[0])
        if layer["class_name"] != "Dense":
            return None
        return int(layer["config"]["units"])
    except (OSError, KeyError, ValueError, TypeError, StopIteration, zipfile.BadZipFile):
        return None  # another layout: the evaluation checks the class count


def check_classes(model: Path, kind: str, classes: Sequence[str], data_root: Path) -> None:
    """Refuse a model whose output does not have one value per class of the data."""
    outputs = output_classes(model, kind)
    if outputs is not None and outputs != len(classes):
        source = model / "model.keras" if model.is_dir() else model
        raise ModelError(
            f"{source} outputs {outputs} classes but the data have {len(classes)} ({', '.join(classes)} in "
            f"{data_root}); use the data the model was trained on (--data DIR)"
        )


def check_holdout(methods: Sequence[Method], holdout_images: int, representative_samples: int) -> None:
    """Refuse guarded methods when no image is left to measure their repair on."""
    guarded = [m.name for m in methods if m.guarded]
    if guarded and holdout_images == 0:
        raise ConfigError(
            f"{', '.join(guarded)} cannot be built: a guarded method measures its repair on held-out images, and "
            f"none is left (the split has no validation part, and --representative-samples {representative_samples} "
            f"takes every train image for calibration); lower --representative-samples, or leave {guarded[0]} out "
            "with --methods"
        )
