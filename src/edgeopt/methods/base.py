"""What a quantization method is: a model file in, a new model file out, described by a value."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgeopt.pixels import PIXELS, PixelTransform

if TYPE_CHECKING:
    from edgeopt.config import RetrainConfig


@dataclass(frozen=True)
class Artifact:
    """A built model file and what made it."""

    path: Path
    format: str  # "tflite" or "onnx"
    method: str
    sha256: str
    size_bytes: int
    # What the method reports about how it built the file (e.g. a repair's kept-float ops).
    metadata: dict[str, Any] = field(default_factory=dict)
    # The file compressed with zstd (TRANSFER_LEVEL): what a delivery sends.
    transfer_bytes: int = 0


@dataclass
class BuildContext:
    """What every method of one optimize run shares: the source model and calibration pixels.

    The loaded Keras model is cached here so that five conversions load it once; methods
    never modify it.
    """

    # The model file or folder optimize was given (edgeopt.sources).
    source: Path
    # Train-split pixels for calibration, uint8 (N, H, W, 3).
    representative: np.ndarray
    # Held-out images (the split's validation part: never fitted, never the test photos) and
    # their labels, on which accuracy-guarded methods measure the damage they repair.
    holdout: np.ndarray | None = None
    holdout_labels: np.ndarray | None = None
    # The share of held-out answers (percent) a guarded variant may change against the float model.
    repair_target_pp: float = 1.0
    # Confidence at which a repair that misses the target must still change significantly fewer
    # answers than none (the run's objective.confidence).
    repair_confidence: float = 0.95
    # The variants built so far (name -> file): a guarded method first checks its unguarded sibling.
    built: dict[str, Path] = field(default_factory=dict)
    # Each model file's top-1 answers on the held-out images, by sha256 (methods.repair).
    held_out_answers: dict[str, np.ndarray] = field(default_factory=dict)
    # Threads of those held-out passes: the cores shared among the processes building (methods.build).
    holdout_threads: int = 2
    # Where converter chatter goes.
    log_path: Path | None = None
    # Work files (e.g. an ONNX export) that more than one method needs.
    work_dir: Path | None = None
    # What a float-input source model takes (identity for edgeopt's own models).
    pixel_transform: PixelTransform = PIXELS
    # ONNX Runtime static calibration: MinMax, Entropy or Percentile.
    calibration_method: str = "MinMax"
    # ONNX Runtime static int8 weights (see OptimizeConfig.ort_reduce_range).
    reduce_range: bool | None = None
    # The model's whole train split (uint8 pixels, labels), decoded only for the retraining methods.
    train_pixels: np.ndarray | None = None
    train_labels: np.ndarray | None = None
    # How they fine-tune (None: RetrainConfig's defaults).
    retrain: RetrainConfig | None = None
    # What `source` is (edgeopt.sources.registry): "train", "keras", "h5", "savedmodel", "tflite", "onnx".
    source_kind: str = "train"
    # Keras custom layers to load the source with ("module:attr").
    custom_objects: tuple[str, ...] = ()
    # An .onnx source converted to a TensorFlow SavedModel (sources.onnx2tf), from which the LiteRT
    # methods build; None when there is none.
    converted: Path | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]


@dataclass(frozen=True)
class Method:
    """One entry of the registry."""

    name: str
    # The runtime that runs the result: "litert" or "onnxruntime".
    backend: str
    # What it needs as input: "keras" (a train folder) or "onnx" (an .onnx file or a Keras
    # model exported to ONNX first).
    source: str
    suffix: str
    # One line: what the transformation does to the graph.
    summary: str
    # Writes the new model to the given path (never modifying the source); may return what it
    # wants recorded about the build (Artifact.metadata).
    build: Callable[[BuildContext, Path], dict[str, Any] | None]
    # The study's label (f0..f4), if it has one.
    paper_label: str = ""
    # Needs the representative dataset.
    calibrated: bool = False
    # Measures accuracy on the held-out images while building (needs ctx.holdout); the variant it
    # repairs (built first), whose file it checks before repairing anything.
    guarded: bool = False
    repairs: str = ""
    # Fine-tunes the model on its train split (opt-in: never in the default set); what that costs.
    retrains: bool = False
    cost: str = ""


# zstd's level for what a delivery sends. 19, not zstd's default 3: measured on the reference model's
# files (bench/results/retrain.md against the run before), pruned_int8 (50%) comes out 4.4% smaller
# (0.175x of the float32 file against 0.183x) and clustered_int8 (16 clusters) 5.7% (0.165x against
# 0.175x); in scratch runs, 70% sparsity 7% and 8 clusters 6.5%. The float and plain int8 files come
# out 0.1-0.3% larger. It costs 0.4-1.8 s of compression per file on one core of the Xeon the
# benchmarks ran on (level 22: no smaller). zstd decompresses at the same speed whatever the level
# (its documentation; bench/update.py times whole deliveries), with a window no larger than the
# file, at most 8 MB at this level.
TRANSFER_LEVEL = 19


def compress_for_transfer(data: bytes) -> bytes:
    """The bytes a delivery sends for a model file (zstd, TRANSFER_LEVEL)."""
    import zstandard

    return zstandard.ZstdCompressor(level=TRANSFER_LEVEL).compress(data)


def transfer_size(path: Path) -> int:
    return len(compress_for_transfer(path.read_bytes()))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def build_artifact(method: Method, ctx: BuildContext, out_dir: Path) -> Artifact:
    """Run a method into out_dir/<name><suffix>, via a temporary name."""
    final = out_dir / f"{method.name}{method.suffix}"
    tmp = out_dir / f".{method.name}.partial{method.suffix}"
    try:
        metadata = method.build(ctx, tmp) or {}
        if method.suffix == ".tflite":
            from edgeopt.methods.signature import add_signature

            add_signature(tmp)  # every .tflite edgeopt writes has one (get_signature_runner, AI Edge Quantizer)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    fmt = method.suffix.lstrip(".")
    return Artifact(
        path=final, format=fmt, method=method.name, sha256=sha256_of(final),
        size_bytes=final.stat().st_size, metadata=metadata, transfer_bytes=transfer_size(final),
    )
