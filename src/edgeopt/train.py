"""Transfer-train a Keras MobileNetV2 classifier with the study's recipe.

The model takes RGB pixel values 0..255 (float) and does its own scaling to [-1, 1], so every
variant made from it, and every device, is fed camera pixels as they are. Augmentation runs in
the input pipeline only and is not part of the saved model.

Recipe: new head (global pooling, dropout, softmax), Adam with a triangular cyclical learning
rate, phase 1 on the head (backbone frozen), phase 2 fine-tuning the top of the backbone at a
fraction of the rate (a tenth by default), label smoothing (0.1 by default), early stopping on a
validation part of the train split.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._tf import import_keras, import_tensorflow
from edgeopt.config import TrainConfig, write_config
from edgeopt.data.imagefolder import decode_images, scan_image_folder
from edgeopt.data.split import SPLIT_FILE, build_split, save_split
from edgeopt.data.synthetic import is_synthetic
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.outputs import staged_output
from edgeopt.pixels import PIXELS, PixelTransform
from edgeopt.progress import NullProgress, Progress

MODEL_FILE = "model.keras"
LABELS_FILE = "labels.json"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class TrainedModel:
    """What `train` wrote, and the figures a person wants to see at once."""

    folder: Path
    classes: tuple[str, ...]
    val_accuracy: float
    test_accuracy: float
    epochs_run: int
    seconds: float


def triangular_lr(step: Any, lr_min: float, lr_max: float, half_cycle_steps: float) -> Any:
    """Smith's triangular schedule: linear from lr_min up to lr_max and back every 2 half cycles."""
    keras = import_keras()
    ops = keras.ops
    step = ops.cast(step, "float32")
    cycle = ops.floor(1.0 + step / (2.0 * half_cycle_steps))
    x = ops.abs(step / half_cycle_steps - 2.0 * cycle + 1.0)
    return lr_min + (lr_max - lr_min) * ops.maximum(0.0, 1.0 - x)


def _schedule(lr_min: float, lr_max: float, half_cycle_steps: float) -> Any:
    keras = import_keras()

    class TriangularCyclicalLR(keras.optimizers.schedules.LearningRateSchedule):  # type: ignore[misc,name-defined]
        def __call__(self, step: Any) -> Any:
            return triangular_lr(step, lr_min, lr_max, half_cycle_steps)

        def get_config(self) -> dict[str, float]:
            return {"lr_min": lr_min, "lr_max": lr_max, "half_cycle_steps": half_cycle_steps}

    return TriangularCyclicalLR()


def build_model(config: TrainConfig, num_classes: int) -> tuple[Any, Any]:
    """Return (classifier, backbone). The classifier's input is pixels 0..255."""
    keras = import_keras()
    size = config.image_size
    weights: str | None
    if config.weights == "none":
        weights = None
    elif config.weights == "imagenet":
        weights = "imagenet"
    else:
        path = Path(config.weights)
        if not path.is_file():
            raise ModelError(
                f"weights file {path} does not exist; pass a Keras .weights.h5 file, "
                "'imagenet' (needs internet) or 'none'"
            )
        weights = str(path)
    try:
        backbone = keras.applications.MobileNetV2(
            input_shape=(size, size, 3), alpha=config.alpha, include_top=False, weights=weights
        )
    except ValueError as exc:
        raise ConfigError(f"MobileNetV2 cannot be built with these options: {exc}") from None
    except Exception as exc:  # download failures come as many kinds of error
        if weights == "imagenet":
            raise ModelError(
                f"could not load ImageNet weights ({type(exc).__name__}: {exc}); without internet "
                "pass --weights PATH to a local MobileNetV2 no-top weights file, or --weights none"
            ) from None
        raise ModelError(
            f"weights file {weights} does not fit MobileNetV2 alpha={config.alpha} "
            f"({type(exc).__name__}); use the file made for that alpha"
        ) from None
    if config.bn_momentum is not None:
        for layer in backbone.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = config.bn_momentum
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
    from_scratch = weights is None
    # A pretrained backbone keeps BatchNorm in inference mode, also when fine-tuned.
    x = backbone(x) if from_scratch else backbone(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(config.dropout, name="dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="edgeopt_mobilenetv2"), backbone


def _augmenter(seed: int) -> Any:
    keras = import_keras()
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.08, fill_mode="reflect", seed=seed),
            keras.layers.RandomZoom(0.15, fill_mode="reflect", seed=seed),
            keras.layers.RandomBrightness(0.15, value_range=(0, 255), seed=seed),
            keras.layers.RandomContrast(0.2, value_range=(0, 255), seed=seed),
        ],
        name="augment",
    )


def _datasets(
    config: TrainConfig, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
    num_classes: int,
) -> tuple[Any, Any]:
    tf = import_tensorflow()

    def targets(x: Any, y: Any) -> tuple[Any, Any]:
        # Keras smooths only one-hot targets; without smoothing the labels stay sparse.
        y = tf.one_hot(y, num_classes) if config.label_smoothing > 0 else y
        return tf.cast(x, tf.float32), y

    train_ds = tf.data.Dataset.from_tensor_slices(train).shuffle(len(train[0]), seed=config.seed)
    train_ds = train_ds.batch(config.batch_size).map(targets, num_parallel_calls=tf.data.AUTOTUNE)
    if config.augment:
        augment = _augmenter(config.seed)
        train_ds = train_ds.map(
            lambda x, y: (augment(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE
        )
    val_ds = tf.data.Dataset.from_tensor_slices(val).batch(config.batch_size)
    val_ds = val_ds.map(targets)
    return train_ds.prefetch(2), val_ds


def _progress_callback(progress: Progress, phase: str, epochs: int, steps: int) -> Any:
    keras = import_keras()

    class ProgressCallback(keras.callbacks.Callback):  # type: ignore[misc,name-defined]
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            progress.start(f"{phase} epoch {epoch + 1}/{epochs}", steps)

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            logs = logs or {}
            progress.advance(1, f"loss {logs.get('loss', float('nan')):.3f} acc {logs.get('accuracy', 0):.3f}")

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = logs or {}
            progress.finish(
                f"{phase} epoch {epoch + 1}/{epochs}: loss {logs.get('loss', 0):.3f} "
                f"acc {logs.get('accuracy', 0):.3f} val_loss {logs.get('val_loss', 0):.3f} "
                f"val_acc {logs.get('val_accuracy', 0):.3f}"
            )

    return ProgressCallback()


def _fit_phase(
    model: Any, config: TrainConfig, datasets: tuple[Any, Any], phase: str, epochs: int,
    lr_scale: float, steps: int, progress: Progress,
) -> dict[str, list[float]]:
    keras = import_keras()
    schedule = _schedule(
        config.lr_min * lr_scale, config.lr_max * lr_scale, config.lr_half_cycle_epochs * steps
    )
    loss = (
        keras.losses.CategoricalCrossentropy(label_smoothing=config.label_smoothing)
        if config.label_smoothing > 0 else "sparse_categorical_crossentropy"
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=schedule),
        loss=loss,
        metrics=["accuracy"],
    )
    stop = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=config.patience, restore_best_weights=True
    )
    history = model.fit(
        datasets[0], validation_data=datasets[1], epochs=epochs, verbose=0, shuffle=False,  # shuffled in the dataset
        callbacks=[stop, _progress_callback(progress, phase, epochs, steps)],
    )
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def _accuracy(model: Any, pixels: np.ndarray, labels: np.ndarray, batch: int) -> float:
    if len(labels) == 0:
        return float("nan")
    probs = model.predict(pixels.astype(np.float32), batch_size=batch, verbose=0)
    return float(np.mean(np.argmax(probs, axis=1) == labels))


def train(
    data_dir: Path, out: Path, config: TrainConfig, force: bool = False,
    progress: Progress | None = None,
) -> TrainedModel:
    """Split the data, fit the model and write model.keras, labels, split and history to `out`."""
    progress = progress or NullProgress()
    started = time.perf_counter()
    if config.weights not in ("imagenet", "none") and not Path(config.weights).is_file():
        raise ModelError(
            f"weights file {config.weights} does not exist; pass a Keras .weights.h5 file, 'imagenet' (needs "
            "internet) or 'none'"
        )
    folder = scan_image_folder(data_dir)
    split = build_split(folder, config.test_fraction, config.val_fraction, config.seed)
    size = (config.image_size, config.image_size)
    # The output is staged before any work: an unwritable --out fails here, not after decoding.
    with staged_output(out, force, reads=(folder.root,), command="train") as staging:
        subsets = {
            name: decode_images(folder.root, items, size, strict=config.strict)
            for name, items in (("train", split.train), ("validation", split.validation), ("test", split.test))
        }
        if len(subsets["train"].labels) == 0:
            raise DataError(f"no readable training images in {data_dir}; check the files")
        keras = import_keras()
        keras.utils.set_random_seed(config.seed)
        model, backbone = build_model(config, len(folder.classes))
        train_xy = (subsets["train"].pixels, subsets["train"].labels)
        val = subsets["validation"] if len(subsets["validation"].labels) else subsets["train"]
        datasets = _datasets(config, train_xy, (val.pixels, val.labels), len(folder.classes))
        steps = math.ceil(len(train_xy[1]) / config.batch_size)
        history: dict[str, Any] = {}
        from_scratch = config.weights == "none"
        backbone.trainable = from_scratch
        phase1 = "train" if from_scratch else "head"
        epochs1 = config.epochs_head + (config.epochs_finetune if from_scratch else 0)
        history[phase1] = _fit_phase(model, config, datasets, phase1, epochs1, 1.0, steps, progress)
        if not from_scratch and config.epochs_finetune > 0:
            backbone.trainable = True
            cut = max(0, len(backbone.layers) - config.finetune_layers)
            for i, layer in enumerate(backbone.layers):
                layer.trainable = i >= cut and not isinstance(layer, keras.layers.BatchNormalization)
            history["finetune"] = _fit_phase(
                model, config, datasets, "finetune", config.epochs_finetune, config.finetune_lr_scale, steps,
                progress,
            )
        val_acc = _accuracy(model, val.pixels, val.labels, config.batch_size)
        test_acc = _accuracy(model, subsets["test"].pixels, subsets["test"].labels, config.batch_size)
        # Saved with a stock optimizer: the cyclical schedule is edgeopt's class, and a model that
        # names it cannot be loaded by plain keras.models.load_model.
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.save(staging / MODEL_FILE)
        write_labels(staging / LABELS_FILE, folder.classes, config.image_size, is_synthetic(folder.root))
        save_split(split, staging / SPLIT_FILE)
        write_config(config, staging / "train_config.json")
        epochs_run = sum(len(h.get("loss", [])) for h in history.values())
        (staging / HISTORY_FILE).write_text(json.dumps({
            "phases": history,
            "epochs_run": epochs_run,
            "val_accuracy": val_acc,
            "test_accuracy_keras": test_acc,
            "skipped_images": {k: [list(s) for s in v.skipped] for k, v in subsets.items()},
            "seconds": time.perf_counter() - started,
        }, indent=1))
    return TrainedModel(
        folder=out, classes=folder.classes, val_accuracy=val_acc, test_accuracy=test_acc,
        epochs_run=epochs_run, seconds=time.perf_counter() - started,
    )


def write_labels(path: Path, classes: tuple[str, ...], image_size: int, synthetic: bool,
                 transform: PixelTransform = PIXELS, resize: str = "squash", labels_note: str = "") -> None:
    """labels.json: the classes, and the input contract every variant of the model shares
    (edgeopt.contract: camera pixels 0..255, mapped per channel to what a float input expects, in
    the channel order it expects, the image fitted by `resize`)."""
    contract: dict[str, object] = {
        "pixels": "RGB 0..255",
        "pixel_scale": list(transform.scale),
        "pixel_offset": list(transform.offset),
        "note": "the model scales pixels itself" if transform.is_identity else
                "a float input takes pixel * pixel_scale + pixel_offset per channel (set by optimize's "
                "--input-range or --input-mean/--input-std), channels in channel_order; edgeopt's classify and "
                "device apply it",
    }
    if transform.channel_order != "rgb":
        contract["channel_order"] = transform.channel_order
    if resize != "squash":
        contract["resize"] = resize
    labels: dict[str, object] = {"classes": list(classes), "image_size": image_size, "input": contract,
                                 "synthetic_data": synthetic}
    if labels_note:
        labels["labels_from"] = labels_note
    path.write_text(json.dumps(labels, indent=1))


def load_keras_model(folder: Path) -> Any:
    """Load model.keras from a train output folder, for inference and conversion only."""
    path = folder / MODEL_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise ModelError(f"{path} does not exist; pass the folder written by 'edgeopt train'")
    if path.suffix != ".keras":
        raise ModelError(f"{path} is not a .keras model; pass the folder written by 'edgeopt train'")
    keras = import_keras()
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:
        raise ModelError(f"cannot load {path} as a Keras model ({type(exc).__name__}: {exc})") from None

