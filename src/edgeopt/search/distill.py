"""Knowledge distillation: the teacher's answers on the train split (computed once, cached), and a
candidate fitted to them one epoch at a time, judged after each on validation images carved
from the train split. The teacher's test photos are never read here.

Loss (Hinton et al. 2015): (1 - w) * T^2 * KL(teacher_T || student_T) + w * CE(labels, student),
where x_T softens a probability vector x to x^(1/T), renormalised. Augmentation is a mirror
image (the teacher's answer on the mirrored photo is cached too, so the target stays the
teacher's own) and mild brightness and contrast changes, under which the teacher's answer is
taken as unchanged.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.data.split import Split
from edgeopt.pixels import PixelTransform
from edgeopt.search.space import Candidate, DistillConfig

Items = tuple[tuple[str, int], ...]
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"


def search_split(split: Split, val_fraction: float, seed: int) -> tuple[Items, Items, str]:
    """(train items, validation items, where the validation came from): the teacher's own
    validation part when it has one, else a stratified share of its train part. Never test."""
    if split.validation:
        return tuple(split.train), tuple(split.validation), "the teacher's validation part of its train split"
    rng = np.random.default_rng(seed)
    train: list[tuple[str, int]] = []
    val: list[tuple[str, int]] = []
    for label in sorted({c for _, c in split.train}):
        members = [item for item in split.train if item[1] == label]
        order = rng.permutation(len(members))
        count = max(1, round(len(members) * val_fraction)) if len(members) > 1 else 0
        val += [members[i] for i in order[:count]]
        train += [members[i] for i in order[count:]]
    return tuple(sorted(train)), tuple(sorted(val)), f"{val_fraction:.0%} of each class of the teacher's train split (seed {seed})"


def soften(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """p^(1/T), renormalised per row."""
    logp = np.log(np.clip(probabilities.astype(np.float64), 1e-7, 1.0)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    soft = np.exp(logp)
    return (soft / soft.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class TrialData:
    """What a trial fits and judges a candidate on (arrays in memory, the same for every trial)."""

    train_pixels: np.ndarray  # uint8 (N, H, W, 3) at the teacher's input size
    train_labels: np.ndarray
    teacher_train: np.ndarray  # the teacher's probabilities on each train image (N, C)
    teacher_train_mirrored: np.ndarray  # ... on its mirror image
    val_pixels: np.ndarray
    val_labels: np.ndarray
    teacher_val: np.ndarray
    classes: tuple[str, ...]
    transform: PixelTransform


def _distillation_loss(num_classes: int, temperature: float, label_weight: float) -> Any:
    from edgeopt._tf import import_keras

    ops = import_keras().ops

    def loss(target: Any, probabilities: Any) -> Any:
        soft, hard = target[:, :num_classes], target[:, num_classes:]
        log_p = ops.log(ops.clip(probabilities, 1e-7, 1.0))
        log_q = ops.log_softmax(log_p / temperature, axis=-1)
        kl = ops.sum(soft * (ops.log(ops.clip(soft, 1e-7, 1.0)) - log_q), axis=-1) * temperature * temperature
        cross_entropy = -ops.sum(hard * log_p, axis=-1)
        return (1.0 - label_weight) * kl + label_weight * cross_entropy

    return loss


def _dataset(data: TrialData, config: DistillConfig) -> Any:
    from edgeopt._tf import import_tensorflow

    tf = import_tensorflow()
    k = len(data.classes)
    hard = np.full((len(data.train_labels), k), config.label_smoothing / k, np.float32)
    hard[np.arange(len(hard)), data.train_labels] += 1.0 - config.label_smoothing
    soft = soften(data.teacher_train, config.temperature)
    soft_mirrored = soften(data.teacher_train_mirrored, config.temperature)
    ds = tf.data.Dataset.from_tensor_slices((data.train_pixels, soft, soft_mirrored, hard))
    ds = ds.shuffle(len(hard), seed=config.seed, reshuffle_each_iteration=True)

    def augment(pixels: Any, soft: Any, mirrored: Any, hard: Any) -> tuple[Any, Any]:
        x = tf.cast(pixels, tf.float32)
        mirror = tf.random.uniform(()) < 0.5
        x = tf.cond(mirror, lambda: tf.image.flip_left_right(x), lambda: x)
        target = tf.where(mirror, mirrored, soft)
        x = tf.image.random_brightness(x, 0.08 * 255.0)
        x = tf.clip_by_value(tf.image.random_contrast(x, 0.9, 1.1), 0.0, 255.0)
        if data.transform.channel_order == "bgr":  # the student takes what the teacher takes (pixels.encode_pixels)
            x = x[..., ::-1]
        if not data.transform.is_identity:
            x = x * tf.constant(data.transform.scale) + tf.constant(data.transform.offset)
        return x, tf.concat([target, hard], axis=-1)

    return ds.map(augment, num_parallel_calls=2).batch(config.batch_size).prefetch(2)


def _fed(pixels: np.ndarray, transform: PixelTransform) -> np.ndarray:
    from edgeopt.pixels import TensorSpec, encode_pixels

    return encode_pixels(pixels, TensorSpec("pixels", (-1, *pixels.shape[1:]), "float32"), transform)


def fit_candidate(
    candidate: Candidate, data: TrialData, config: DistillConfig, weights: dict[str, list[np.ndarray]],
    ranking: dict[str, np.ndarray] | None, out_dir: Path, report: Callable[[dict[str, Any]], None], threads: int = 0,
) -> dict[str, Any]:
    """Train `candidate` for config.epochs epochs (or until the scheduler stops it: `report` then
    does not return); after each, save it to out_dir/model.keras and report its validation figures."""
    from edgeopt._tf import import_keras, import_tensorflow
    from edgeopt.search.student import build_student, kept_channels

    tf = import_tensorflow()
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))
        except RuntimeError:  # already initialised in this process: keep its threads
            pass
    keras = import_keras()
    keras.utils.set_random_seed(config.seed)
    started = time.perf_counter()
    size = int(data.train_pixels.shape[1])
    kept = kept_channels(ranking, candidate.keep) if ranking is not None and candidate.keep < 1 else {}
    model = build_student(candidate, size, len(data.classes), weights, kept, data.transform)
    for layer in model.layers:  # BatchNorm stays in inference mode, as the teacher was fine-tuned
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    dataset = _dataset(data, config)
    steps = math.ceil(len(data.train_labels) / config.batch_size)
    loss = _distillation_loss(len(data.classes), config.temperature, config.label_weight)
    head_first = candidate.init == "backbone"

    def compile_for(epochs: int, rate: float, head_only: bool) -> None:
        for layer in model.layers:
            if not isinstance(layer, keras.layers.BatchNormalization) and layer.weights:
                layer.trainable = layer.name == "probabilities" or not head_only
        schedule = keras.optimizers.schedules.CosineDecay(rate, max(1, epochs * steps), alpha=0.1)
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=loss)

    out_dir.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, Any]] = []
    val_fed = _fed(data.val_pixels, data.transform)
    for epoch in range(1, config.epochs + 1):
        if epoch == 1:
            compile_for(1 if head_first else config.epochs, config.head_learning_rate if head_first else config.learning_rate,
                        head_only=head_first)
        elif epoch == 2 and head_first:
            compile_for(config.epochs - 1, config.learning_rate, head_only=False)
        t = time.perf_counter()
        fitted = model.fit(dataset, epochs=1, verbose=0)
        probs = model.predict(val_fed, batch_size=64, verbose=0)
        chosen = probs.argmax(axis=1)
        figures = {
            "epoch": epoch,
            "train_loss": float(fitted.history["loss"][-1]),
            "val_loss": float(-np.mean(np.log(np.clip(probs[np.arange(len(chosen)), data.val_labels], 1e-7, 1.0)))),
            "val_accuracy": float(np.mean(chosen == data.val_labels)),
            "val_agreement": float(np.mean(chosen == data.teacher_val.argmax(axis=1))),
            "epoch_seconds": time.perf_counter() - t,
            "seconds": time.perf_counter() - started,
        }
        history.append(figures)
        _save(model, out_dir, candidate, history)
        report(figures)  # under a scheduler, may not return (the trial is stopped here)
    return history[-1]


def _save(model: Any, out_dir: Path, candidate: Candidate, history: list[dict[str, Any]]) -> None:
    """model.keras and history.json, each replaced whole (a reader never sees half a file)."""
    tmp = out_dir / f".{MODEL_FILE}.tmp-{os.getpid()}.keras"
    model.save(tmp)
    os.replace(tmp, out_dir / MODEL_FILE)
    text = json.dumps({"candidate": candidate.to_dict(), "name": candidate.name,
                       "parameters": int(model.count_params()), "epochs": history}, indent=1)
    tmp_history = out_dir / f".{HISTORY_FILE}.tmp-{os.getpid()}"
    tmp_history.write_text(text)
    os.replace(tmp_history, out_dir / HISTORY_FILE)
