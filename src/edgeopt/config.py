"""Typed, frozen configuration of each command, validated once where it is built."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.errors import ConfigError
from edgeopt.objective import Objective
from edgeopt.pixels import PIXELS, PixelTransform


@dataclass(frozen=True)
class TrainConfig:
    """How `edgeopt train` builds and fits the classifier (the study's recipe)."""

    # Square input side in pixels; MobileNetV2's ImageNet weights exist for 96..224.
    image_size: int = 224
    # MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4).
    alpha: float = 1.0
    # "imagenet" (download), "none" (random init, trained from scratch) or a local weights file.
    weights: str = "imagenet"
    # Epochs of phase 1 (new head only; or the whole net when weights == "none").
    epochs_head: int = 8
    # Epochs of phase 2 (fine-tune the top of the backbone); 0 skips it.
    epochs_finetune: int = 6
    # How many of the backbone's last layers phase 2 unfreezes (BatchNorm stays frozen).
    finetune_layers: int = 30
    batch_size: int = 32
    # Triangular cyclical learning rate (Smith 2017): bounds for phase 1; phase 2 uses a tenth.
    lr_min: float = 1e-4
    lr_max: float = 2e-3
    # Half a cycle, in epochs (Smith suggests 2-8 x an epoch's steps).
    lr_half_cycle_epochs: float = 2.0
    # Early stopping: epochs without a better validation loss before stopping.
    patience: int = 3
    dropout: float = 0.2
    # Fractions of each class held out: test (for optimize), then validation of the rest.
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    seed: int = 0
    # Random flips, rotations, zoom, brightness and contrast while fitting (never exported).
    augment: bool = True
    # BatchNorm momentum override; a net trained from scratch for few steps needs ~0.9
    # (Keras's 0.999 leaves the moving statistics near their initial values).
    bn_momentum: float | None = None
    # Stop on unreadable images instead of skipping them.
    strict: bool = False

    def __post_init__(self) -> None:
        if not 32 <= self.image_size <= 512:
            raise ConfigError(f"--image-size {self.image_size} is out of range; use 32..512 (e.g. 224)")
        if self.alpha <= 0:
            raise ConfigError(f"--alpha {self.alpha} must be > 0 (e.g. 0.35, 1.0)")
        if self.epochs_head < 1 or self.epochs_finetune < 0:
            raise ConfigError("--epochs-head must be >= 1 and --epochs-finetune >= 0")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be >= 1")
        if not 0 < self.lr_min <= self.lr_max:
            raise ConfigError(f"learning rates need 0 < lr_min ({self.lr_min}) <= lr_max ({self.lr_max})")
        if not 0 <= self.val_fraction < 1:
            raise ConfigError(f"validation fraction {self.val_fraction} must be in [0, 1)")


@dataclass(frozen=True)
class MeasureConfig:
    """The latency protocol and accuracy evaluation."""

    # Interpreter threads (the device's core count).
    threads: int = 1
    # Interleaved rounds over all variants (f0 f1 ... f0 f1 ...); latency is the median of
    # the round medians, so a slow moment of the machine hits every variant alike.
    rounds: int = 5
    # Timed invocations per variant per round, after the warm-up.
    invocations: int = 50
    # Untimed invocations per variant before the first round.
    warmup: int = 10
    # Evaluate accuracy on the train split as well as the test split (the study reports both).
    train_accuracy: bool = True

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ConfigError(f"--threads {self.threads} must be >= 1")
        if self.rounds < 1 or self.invocations < 1 or self.warmup < 0:
            raise ConfigError("--rounds and --invocations must be >= 1, --warmup >= 0")


@dataclass(frozen=True)
class OptimizeConfig:
    """What `edgeopt optimize` builds, how it measures and how it chooses."""

    # Method names from the registry, built in this order; the first is the baseline.
    # None: every method of the chosen backends, in registry order (f0_float32 first).
    methods: tuple[str, ...] | None = None
    # Runtimes to build for: "litert", "onnxruntime". None: every one that is installed.
    backends: tuple[str, ...] | None = None
    # Train-split images fed to calibration (f2, f3, ort_int8_static).
    representative_samples: int = 200
    # ONNX Runtime static calibration: MinMax, Entropy or Percentile.
    calibration_method: str = "MinMax"
    # ONNX Runtime static int8 with 7-bit weights. On x86 without VNNI, ORT's u8s8 kernels use
    # VPMADDUBSW, whose int16 pair sums saturate with full 8-bit weights (measured: 57% -> 33%
    # accuracy on the test model). None: decide from this CPU's flags.
    ort_reduce_range: bool | None = None
    # For an .onnx input model with float input: pixel range it expects, e.g. (-1.0, 1.0);
    # or torchvision-style per-channel mean and std (of pixel/255). None: pixels 0..255.
    input_range: tuple[float, float] | None = None
    input_mean: tuple[float, float, float] | None = None
    input_std: tuple[float, float, float] | None = None
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    objective: Objective = field(default_factory=Objective)
    strict: bool = False

    def __post_init__(self) -> None:
        if self.methods is not None and not self.methods:
            raise ConfigError("no methods given; name at least the baseline, e.g. f0_float32")
        if self.representative_samples < 1:
            raise ConfigError("--representative-samples must be >= 1")
        if self.calibration_method not in ("MinMax", "Entropy", "Percentile"):
            raise ConfigError(
                f"--calibration {self.calibration_method!r} is unknown; use MinMax, Entropy or Percentile"
            )
        if self.input_range is not None and self.input_mean is not None:
            raise ConfigError("give either --input-range or --input-mean/--input-std, not both")
        if (self.input_mean is None) != (self.input_std is None):
            raise ConfigError("--input-mean and --input-std go together")

    def pixel_transform(self) -> PixelTransform:
        if self.input_range is not None:
            return PixelTransform.from_range(*self.input_range)
        if self.input_mean is not None and self.input_std is not None:
            try:
                return PixelTransform.from_mean_std(self.input_mean, self.input_std)
            except ValueError as exc:
                raise ConfigError(f"--input-mean/--input-std: {exc}") from None
        return PIXELS


def to_jsonable(config: Any) -> dict[str, Any]:
    """A config (nested dataclasses) as plain JSON values, to write beside the outputs."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def write_config(config: Any, path: Path) -> None:
    path.write_text(json.dumps(to_jsonable(config), indent=1))
