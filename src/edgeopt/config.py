"""Typed, frozen configuration of each command, validated once where it is built (pydantic;
see edgeopt.settings for how a bad value is reported)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, field_validator, model_validator

from edgeopt.objective import Objective
from edgeopt.pixels import PixelTransform
from edgeopt.settings import Settings

# Lists in a TOML/JSON file become these tuples.
Names = Annotated[tuple[str, ...], Strict(False)]
Pair = Annotated[tuple[float, float], Strict(False)]
Triple = Annotated[tuple[float, float, float], Strict(False)]


class TrainConfig(Settings):
    """How `edgeopt train` builds and fits the classifier: the study's ingredients; the defaults are
    the recipe of bench/reference.py (93.31, 90.79 and 92.89% on trashnet5 at 224 px with seeds 0-2:
    bench/baseline.py)."""

    # Square input side in pixels; MobileNetV2's ImageNet weights exist for 96..224.
    image_size: int = Field(224, ge=32, le=512)
    # MobileNetV2 width multiplier (0.35, 0.5, 0.75, 1.0, 1.3, 1.4).
    alpha: float = Field(1.0, gt=0)
    # "imagenet" (download), "none" (random init, trained from scratch) or a local weights file.
    weights: str = "imagenet"
    # Epochs of phase 1 (new head only; or the whole net when weights == "none").
    epochs_head: int = Field(8, ge=1)
    # Epochs of phase 2 (fine-tune the top of the backbone); 0 skips it.
    epochs_finetune: int = Field(16, ge=0)
    # How many of the backbone's last layers phase 2 unfreezes (BatchNorm stays frozen); 91 are
    # MobileNetV2's blocks 7-16 and its last conv.
    finetune_layers: int = Field(91, ge=0)
    batch_size: int = Field(32, ge=1)
    # Triangular cyclical learning rate (Smith 2017): bounds for phase 1; phase 2 scales them.
    lr_min: float = Field(1e-4, gt=0)
    lr_max: float = Field(2e-3, gt=0)
    # Phase 2's learning-rate bounds as a fraction of phase 1's: a pretrained backbone wants small steps.
    finetune_lr_scale: float = Field(0.1, gt=0, le=1)
    # Label smoothing e (Szegedy et al. 2016): targets 1 - e + e/k for the true class and e/k for
    # each of the other k - 1, so a small data set does not drive the softmax to overconfidence.
    # Measured on transfer learning (bench/baseline.py); it applies to a net trained from scratch too.
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # Half a cycle, in epochs (Smith suggests 2-8 x an epoch's steps).
    lr_half_cycle_epochs: float = Field(2.0, gt=0)
    # Early stopping: epochs without a better validation loss before stopping.
    patience: int = Field(4, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    # Fractions of each class held out: test (for optimize), then validation of the rest.
    test_fraction: float = Field(0.2, gt=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    # Random flips, rotations, zoom, brightness and contrast while fitting (never exported).
    augment: bool = True
    # BatchNorm momentum override; a net trained from scratch for few steps needs ~0.9
    # (Keras's 0.999 leaves the moving statistics near their initial values).
    bn_momentum: float | None = Field(None, gt=0, lt=1)
    # Stop on unreadable images instead of skipping them.
    strict: bool = False

    @model_validator(mode="after")
    def _check(self) -> TrainConfig:
        if self.lr_min > self.lr_max:
            raise ValueError(f"learning rates need lr_min ({self.lr_min}) <= lr_max ({self.lr_max})")
        return self


class MeasureConfig(Settings):
    """The latency protocol and accuracy evaluation."""

    # Interpreter threads (the device's core count).
    threads: int = Field(1, ge=1)
    # Interleaved rounds over all variants (f0 f1 ... f0 f1 ...); latency is the median of
    # the round medians, so a slow moment of the machine hits every variant alike. Many short
    # rounds rather than a few long ones: the noise is between rounds, and the interval of a
    # median of 5 rounds is their whole range; from 9 rounds on it leaves out the extremes.
    rounds: int = Field(11, ge=1)
    # Timed invocations per variant per round, after the warm-up.
    invocations: int = Field(25, ge=1)
    # Untimed invocations per variant before the first round.
    warmup: int = Field(10, ge=0)
    # Evaluate where it can change the choice: variants that cannot win are found by a short
    # latency pass and by the guard's statistics on part of the test split, and stopped
    # (edgeopt.evaluate). False: every variant on every image (a full evaluation).
    race: bool = True
    # Train accuracy is a study figure, not an input to the choice: measured on a seeded sample
    # of this many train images (None: all of them; 0: not measured).
    train_images: int | None = Field(300, ge=0)


class RetrainConfig(Settings):
    """How the retraining methods (qat_int8, pruned_int8, clustered_int8) fine-tune a copy of the
    model on its own train split before converting it."""

    # Fine-tuning epochs over the train split (the test split is never seen).
    epochs: int = Field(2, ge=1)
    # Adam's learning rate, constant. None: 1e-5 for qat_int8 (a small correction of a trained model),
    # 1e-4 for pruned_int8 and clustered_int8 (which must recover from a large change of the weights).
    learning_rate: float | None = Field(None, gt=0)
    batch_size: int = Field(32, ge=1)
    # pruned_int8: the share of each pointwise and dense kernel set to zero.
    sparsity: float = Field(0.5, gt=0, lt=1)
    # clustered_int8: distinct values per pointwise and dense kernel.
    clusters: int = Field(16, ge=2, le=256)
    # pruned_int8, clustered_int8: leave alone every pointwise or dense kernel holding less than
    # this share of those kernels' weights (MobileNetV2's early blocks, the layers compression breaks
    # most, and a head of few classes: few bytes; methods.retrain._compressed_layers). 0: compress
    # them all.
    min_kernel_share: float = Field(0.01, ge=0, lt=1)
    # pruned_int8 fits the float model's answers on each train image (knowledge distillation)
    # rather than the labels; False: the labels, as qat_int8 and clustered_int8 always do.
    distill: bool = True
    seed: int = 0


class OptimizeConfig(Settings):
    """What `edgeopt optimize` builds, how it measures and how it chooses."""

    # Method names from the registry, built in this order; the first is the baseline.
    # None: every method of the chosen backends, in registry order (f0_float32 first).
    methods: Names | None = None
    # Runtimes to build for: "litert", "onnxruntime". None: every one that is installed.
    backends: Names | None = None
    # Train-split images fed to calibration (f2, f3, ort_int8_static).
    representative_samples: int = Field(200, ge=1)
    # Guarded (repaired) int8 variants are searched for when the plain int8 variant changes more than
    # this share (percent) of the float model's answers on held-out images, and keep ops in float
    # (LiteRT) or 16-bit (ONNX Runtime) until they change at most this share; when even the most ops
    # tried miss it, they are built only if those change significantly fewer answers than none (at
    # objective.confidence), else not at all (methods.repair).
    repair_target_pp: float = Field(1.0, ge=0, le=100)
    # ONNX Runtime static calibration: MinMax, Entropy or Percentile.
    calibration_method: Literal["MinMax", "Entropy", "Percentile"] = "MinMax"
    # ONNX Runtime static int8 weights: None (default) gives 7-bit weights only to the convs fed by
    # activations that can be negative, whose int16 pair sums saturate on x86 without VNNI, and 8
    # bits elsewhere (methods.onnx.saturating_conv_weights); True: 7-bit everywhere; False: 8-bit
    # everywhere. The file is the same whatever the build machine's CPU.
    ort_reduce_range: bool | None = None
    # The input contract (edgeopt.contract), for a model with float input: the pixel range it
    # expects, e.g. (-1.0, 1.0); or torchvision-style per-channel mean and std (of pixel/255).
    # None: pixels 0..255 (right for a model that rescales them itself, which optimize detects).
    input_range: Pair | None = None
    input_mean: Triple | None = None
    input_std: Triple | None = None
    # The channel order the model was trained on (None: rgb, or what labels.json recorded).
    channel_order: Literal["rgb", "bgr"] | None = None
    # How an image of another aspect ratio is fitted: "squash" (resize whole) or "center-crop"
    # (None: squash, or what labels.json recorded).
    resize: Literal["squash", "center-crop"] | None = None
    # Keras custom layers a .keras / .h5 model needs: "module:attr" (a class, or a dict of them).
    custom_objects: Names | None = None
    # Processes building variants at once: the baseline's runtime in this one, each other runtime's
    # methods (in order) in a worker, since converters and quantizers mostly use one core; with
    # LiteRT alone, its calibrated methods in the worker (methods.build); never more than the
    # cores. 1: everything here, one method after another. The files are the same.
    build_processes: int = Field(2, ge=1)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    # The opt-in retraining methods' fine-tuning.
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)
    objective: Objective = Field(default_factory=Objective)
    # The runtimes the chosen variant must run on. None: the baseline's (LiteRT for a Keras
    # model, as the study did); a variant of another runtime is measured and shown, not chosen.
    target: Names | None = None
    strict: bool = False

    @field_validator("backends", "target")
    @classmethod
    def _known_runtimes(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from edgeopt.runtimes.registry import list_runtimes

        unknown = [name for name in value or () if name not in list_runtimes()]
        if unknown:
            raise ValueError(f"unknown runtime {unknown[0]!r}; use one of: {', '.join(list_runtimes())}")
        return value

    @field_validator("input_range")
    @classmethod
    def _ordered(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError("the low end must be below the high end, e.g. -1,1")
        return value

    @model_validator(mode="after")
    def _check(self) -> OptimizeConfig:
        if self.methods is not None and not self.methods:
            raise ValueError("no methods given; name at least the baseline, e.g. f0_float32")
        self.pixel_transform()  # raises ValueError for a contradictory or incomplete normalisation
        return self

    def pixel_transform(self) -> PixelTransform:
        return PixelTransform.from_options(self.input_range, self.input_mean, self.input_std, self.channel_order)

    def given_transform(self) -> PixelTransform | None:
        """The pixel transform the settings give; None when they give none."""
        if self.input_range is None and self.input_mean is None and self.input_std is None and self.channel_order is None:
            return None
        return self.pixel_transform()


def write_config(config: Settings, path: Path) -> None:
    """The resolved config, beside the outputs it made."""
    import json

    path.write_text(json.dumps(config.to_jsonable(), indent=1, allow_nan=False))  # JSON has no Infinity


def to_jsonable(value: Any) -> Any:
    """A config object or a frozen dataclass (e.g. a TensorSpec) as plain JSON values."""
    import dataclasses
    import json

    if isinstance(value, Settings):
        return value.to_jsonable()
    return json.loads(json.dumps(dataclasses.asdict(value), default=str))
