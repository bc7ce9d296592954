"""The study's future work: quantization-aware training, pruning and weight clustering, each a
fine-tuning of the model on its own train split, then int8 as f2 is (float input and output).

Made with TensorFlow Model Optimization (tfmot), the library these techniques come from. What we
chose and why (see also TECH-NOTES):
- tfmot 0.8 works only with the legacy tf-keras (Keras 2); edgeopt's models are Keras 3. tf-keras
  needs the `tensorflow` package (edgeopt's [build] extra installs it rather than tensorflow-cpu:
  the same release, so nothing else changes) and tfmot sets TF_USE_LEGACY_KERAS=1 when imported.
  The rest of edgeopt imports `keras` (3) directly, which that variable does not affect.
- The Keras 3 classifier is rebuilt in tf-keras, layer by layer with the same names, and its weights
  copied (outputs agree to ~1e-7). Only that copy is fine-tuned: the source model is never modified.
- The rebuild is flat (MobileNetV2's layers inside the classifier's own graph): tfmot cannot wrap or
  quantize a model nested in a model.
- BatchNorm stays frozen (inference mode), as in edgeopt's own fine-tuning of a pretrained backbone.
- QAT: the activation ranges start from the float model's on the calibration images, and depthwise
  kernels are left to the converter (per channel): methods.qat. With tfmot's defaults (ranges from
  [-6, 6], one range per depthwise kernel) a first run of bench/retrain.py lost 6.07 points; with
  these, 0.21.
- Pruning and clustering touch the pointwise and dense kernels only, and of those only the ones
  holding at least 1% of their weights (RetrainConfig.min_kernel_share): 91% of MobileNetV2's
  weights at alpha 1.0. The depthwise and first convs, the early blocks' pointwise kernels and a
  head of few classes are small, and the early layers the most sensitive (_compressed_layers has
  the figures). Clustering is per kernel, k-means++ (int8 then scales each output channel on its
  own: at most k values per channel in the file).
- Pruning learns the float model's answers (its probabilities on each train image, flipped or not
  as fitted: knowledge distillation), not the labels: they say more than the label about what the
  pruned model must keep. On the first reference model (bench/retrain.py), 2 epochs of pruning to
  50% lost 6.7 points of int8 test accuracy distilled, against 12.1 fitted to the labels. tfmot has
  no distillation; it is a loss. QAT, a small correction of the same weights, fits the labels
  with the label smoothing the model was trained with, and so does clustering: distilled, it lost
  13 points on the tiny test model (fitting the labels loses under 5 there), and 4.8 in an
  experiment on that model (the labels: 3.6). These figures predate leaving the small kernels
  alone and the smoothing; bench/results/retrain.md has the current ones.
- The combination tfmot supports (sparsity- and cluster-preserving QAT) is not built: each step is
  another fine-tuning, and the table shows whether its parts pay off first.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.config import RetrainConfig
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.methods._tfmot import import_tfmot
from edgeopt.methods.base import BuildContext, Method
from edgeopt.methods.litert import concrete_function_of, representative_images, source_keras_model
from edgeopt.methods.qat import quantize_for_training
from edgeopt.quiet import captured_output

# What `edgeopt methods` says these cost, measured by bench/retrain.py (reference model, 2 cores).
COST = "retrains: ~3.5 min per fine-tuning epoch at 224 px on 2 cores (1,720 photos)"


def _settings(ctx: BuildContext) -> RetrainConfig:
    return ctx.retrain or RetrainConfig()


def _legacy_copy(ctx: BuildContext) -> Any:
    """edgeopt's Keras 3 classifier rebuilt flat in tf-keras with the same weights (a new model on every call)."""
    _, tf_keras, _ = import_tfmot()
    source = source_keras_model(ctx)
    by_name = {layer.name: layer for layer in source.layers}
    backbones = [layer for layer in source.layers if re.fullmatch(r"mobilenetv2_[0-9.]+_\d+", layer.name)]
    if len(backbones) != 1 or not {"to_unit_range", "probabilities"} <= set(by_name):
        raise ModelError(f"{ctx.source}: the retraining methods rebuild edgeopt's own MobileNetV2 classifier "
                         "(made by 'edgeopt train'); this model has another architecture")
    alpha = float(backbones[0].name.split("_")[1])
    by_name.update({layer.name: layer for layer in backbones[0].layers})
    size = source.input_shape[1]
    dropout = by_name["dropout"].rate if "dropout" in by_name else 0.0
    tf_keras.utils.set_random_seed(0)
    inputs = tf_keras.Input((size, size, 3), name="pixels")
    x = tf_keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="to_unit_range")(inputs)
    backbone = tf_keras.applications.MobileNetV2(input_tensor=x, alpha=alpha, include_top=False, weights=None)
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(backbone.output)
    x = tf_keras.layers.Dropout(dropout, name="dropout")(x)
    outputs = tf_keras.layers.Dense(source.output_shape[-1], activation="softmax", name="probabilities")(x)
    model = tf_keras.Model(inputs, outputs, name="edgeopt_mobilenetv2")
    for layer in model.layers:
        if not layer.weights:
            continue
        twin = by_name.get(layer.name)
        weights = [np.asarray(w) for w in twin.get_weights()] if twin is not None else []
        if [w.shape for w in weights] != [tuple(w.shape) for w in layer.weights]:
            raise ModelError(f"{ctx.source}: layer {layer.name} does not match MobileNetV2 alpha={alpha}; the "
                             "retraining methods need a model made by 'edgeopt train'")
        layer.set_weights(weights)
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            layer.trainable = False
    return model


def _pointwise(layer: Any, tf_keras: Any) -> bool:
    """A pointwise conv or the dense layer: the kernels pruning and clustering may change."""
    if isinstance(layer, tf_keras.layers.DepthwiseConv2D):
        return False
    if isinstance(layer, tf_keras.layers.Conv2D):
        return layer.kernel_size == (1, 1)
    return isinstance(layer, tf_keras.layers.Dense)


def _compressed_layers(model: Any, ctx: BuildContext) -> set[str]:
    """The layers pruning and clustering change: the pointwise and dense kernels that each hold at
    least RetrainConfig.min_kernel_share of those kernels' weights. The rest -- at alpha 1.0
    MobileNetV2's blocks 0-6 (3% of the weights) and a head of under ~17 classes (5 classes: 0.3%)
    -- are few bytes, and the early blocks carry the features every later layer reads: on the
    reference model, one-shot 50% pruning of blocks 0-6 alone drops validation accuracy from 94.3%
    to 66.1%, and leaving the small kernels out lifts 16-cluster clustering before fine-tuning from
    38.5% to 89.6%."""
    _, tf_keras, _ = import_tfmot()
    sizes = {layer.name: int(np.prod(layer.kernel.shape)) for layer in model.layers if _pointwise(layer, tf_keras)}
    share = _settings(ctx).min_kernel_share
    names = {name for name, size in sizes.items() if size >= share * sum(sizes.values())}
    if not names:  # refused before minutes of fine-tuning that would change nothing
        largest = max(sizes.values(), default=0) / max(1, sum(sizes.values()))
        raise ConfigError(f"min_kernel_share = {share:g} leaves no kernel to prune or cluster (the largest holds "
                          f"{largest:.1%} of the pointwise and dense weights); set it below that in [optimize.retrain]")
    return names


def _fine_tune(model: Any, ctx: BuildContext, callbacks: list[Any], learning_rate: float,
               distill: bool = False) -> dict[str, Any]:
    """Fit on the train split (horizontal flips; the test split is never seen) with Adam: to the
    labels, or with `distill` to the float model's answers (see the module doc)."""
    tf, tf_keras, _ = import_tfmot()
    settings = _settings(ctx)
    learning_rate = settings.learning_rate or learning_rate
    if ctx.train_pixels is None or ctx.train_labels is None or not len(ctx.train_labels):
        raise DataError(f"{ctx.source}: none of the model's train images could be read, and the retraining methods "
                        "fine-tune on them; pass --data DIR if the data folder moved since training")
    pixels, labels = ctx.train_pixels, ctx.train_labels
    started = time.perf_counter()  # the float model's answers are part of a distilled fine-tuning's cost
    if distill:
        data, loss, metric = _distillation(ctx)
    else:
        tf_keras.utils.set_random_seed(settings.seed)

        def flip(x: Any, y: Any) -> tuple[Any, Any]:
            return tf.image.random_flip_left_right(x, seed=settings.seed), y

        smoothing = _label_smoothing_of(ctx)
        targets = np.eye(int(model.output_shape[-1]), dtype=np.float32)[labels] if smoothing > 0 else labels.astype(np.int32)
        data = (tf.data.Dataset.from_tensor_slices((pixels, targets))
                .shuffle(len(labels), seed=settings.seed, reshuffle_each_iteration=True)
                .map(lambda x, y: (tf.cast(x, tf.float32), y)).map(flip))
        # The loss the model was trained with (QAT, clustering, and pruning with distill off): a
        # fine-tuning that drops its label smoothing pulls every answer towards certainty, away
        # from the float model it should stay close to.
        loss = (tf_keras.losses.CategoricalCrossentropy(label_smoothing=smoothing) if smoothing > 0
                else "sparse_categorical_crossentropy")
        metric = "accuracy"
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate), loss=loss, metrics=[metric])
    with captured_output(ctx.log_path):
        history = model.fit(data.batch(settings.batch_size), epochs=settings.epochs, verbose=0, callbacks=callbacks)
    return {
        "epochs": settings.epochs,
        "images": int(len(labels)),
        "learning_rate": learning_rate,
        "seconds": round(time.perf_counter() - started, 1),
        "train_accuracy_last_epoch": round(float(history.history["accuracy"][-1]), 4),
        "fitted_to": "distilled" if distill else "labels",
    }


def _label_smoothing_of(ctx: BuildContext) -> float:
    """The label smoothing the source model was trained with (its train_config.json; 0 when the
    file or the key is absent: edgeopt trained without smoothing before the setting existed)."""
    import json

    path = ctx.source / "train_config.json"
    if not path.is_file():
        return 0.0
    try:
        return float(json.loads(path.read_text()).get("label_smoothing", 0.0))
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ModelError(f"{path} cannot be read ({exc}); the retraining methods fine-tune with the loss it "
                         "names: restore it from the training's output folder, or delete it to fine-tune "
                         "without label smoothing") from None


def _distillation(ctx: BuildContext) -> tuple[Any, Any, Any]:
    """The train images paired with the float model's probabilities on each, flipped left-right at
    random with their answers (computed on the flipped image); the loss that fits them; and the
    accuracy against the labels, which ride along as a last column."""
    tf, tf_keras, _ = import_tfmot()
    settings = _settings(ctx)
    assert ctx.train_pixels is not None and ctx.train_labels is not None
    pixels, labels = ctx.train_pixels, ctx.train_labels.astype(np.float32)[:, None]
    model = source_keras_model(ctx)

    def answers(flipped: bool) -> np.ndarray:
        batches = [pixels[i:i + 64, :, ::-1] if flipped else pixels[i:i + 64] for i in range(0, len(pixels), 64)]
        return np.concatenate([np.asarray(model(b.astype(np.float32), training=False)) for b in batches])

    as_is, mirrored = np.concatenate([answers(False), labels], 1), np.concatenate([answers(True), labels], 1)
    tf_keras.utils.set_random_seed(settings.seed)

    def flip(x: Any, y: Any, y_mirrored: Any) -> tuple[Any, Any]:
        mirror = tf.random.uniform([], seed=settings.seed) < 0.5
        x = tf.cast(x, tf.float32)
        return tf.where(mirror, tf.image.flip_left_right(x), x), tf.where(mirror, y_mirrored, y)

    data = (tf.data.Dataset.from_tensor_slices((pixels, as_is, mirrored))
            .shuffle(len(labels), seed=settings.seed, reshuffle_each_iteration=True).map(flip))

    def loss(y: Any, p: Any) -> Any:
        return tf_keras.losses.categorical_crossentropy(y[:, :-1], p)

    def accuracy(y: Any, p: Any) -> Any:
        return tf.cast(tf.equal(tf.cast(y[:, -1], tf.int64), tf.argmax(p, axis=-1)), tf.float32)

    return data, loss, accuracy


def _steps(ctx: BuildContext) -> int:
    """Optimizer steps of the whole fine-tuning (the last, partial batch of an epoch is one step)."""
    assert ctx.train_labels is not None
    settings = _settings(ctx)
    return settings.epochs * -(-len(ctx.train_labels) // settings.batch_size)


def _convert_int8(ctx: BuildContext, model: Any, out: Path) -> None:
    """int8 weights and activations, float input and output (as f2). For a QAT model the ranges come
    from its fake-quant nodes; the calibration images fill in the ops QAT does not cover (the
    input's rescaling)."""
    tf, _, _ = import_tfmot()
    # A concrete function, as litert.py converts: from_keras_model gives the same graph 15x slower.
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete_function_of(model)])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: representative_images(ctx)
    with captured_output(ctx.log_path):
        out.write_bytes(converter.convert())


def prepare_qat(ctx: BuildContext) -> Any:
    """A tf-keras copy of the model with fake-quant nodes (methods.qat)."""
    return quantize_for_training(_legacy_copy(ctx), ctx)


def build_qat_int8(ctx: BuildContext, out: Path) -> dict[str, Any]:
    model = prepare_qat(ctx)
    metadata = _fine_tune(model, ctx, callbacks=[], learning_rate=1e-5)
    _convert_int8(ctx, model, out)
    return metadata


def prepare_pruned(ctx: BuildContext) -> tuple[Any, set[str]]:
    """The model with the large pointwise and dense kernels (_compressed_layers) wrapped for
    magnitude pruning to the target sparsity (polynomial schedule over the first two thirds of the
    fine-tuning steps), and those layers' names."""
    _, tf_keras, tfmot = import_tfmot()
    sparsity = tfmot.sparsity.keras
    model = _legacy_copy(ctx)
    steps = _steps(ctx)
    schedule = sparsity.PolynomialDecay(initial_sparsity=0.0, final_sparsity=_settings(ctx).sparsity,
                                        begin_step=0, end_step=max(1, (2 * steps) // 3), frequency=max(1, steps // 20))

    names = _compressed_layers(model, ctx)

    def wrap(layer: Any) -> Any:
        return sparsity.prune_low_magnitude(layer, pruning_schedule=schedule) if layer.name in names else layer

    return tf_keras.models.clone_model(model, clone_function=wrap), names


def build_pruned_int8(ctx: BuildContext, out: Path) -> dict[str, Any]:
    _, tf_keras, tfmot = import_tfmot()
    model, names = prepare_pruned(ctx)
    metadata = _fine_tune(model, ctx, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()], learning_rate=1e-4,
                          distill=_settings(ctx).distill)
    stripped = tfmot.sparsity.keras.strip_pruning(model)
    kernels = [layer.get_weights()[0] for layer in stripped.layers if layer.name in names]
    metadata["target_sparsity"] = _settings(ctx).sparsity
    metadata["sparsity_reached"] = round(float(sum(np.sum(k == 0) for k in kernels) / sum(k.size for k in kernels)), 4)
    _convert_int8(ctx, stripped, out)
    return metadata


def prepare_clustered(ctx: BuildContext) -> tuple[Any, set[str]]:
    """The model with the large pointwise and dense kernels (_compressed_layers) clustered, each as a
    whole (k-means++ centroids, fine-tuned with the weights), and those layers' names."""
    _, tf_keras, tfmot = import_tfmot()
    clustering = tfmot.clustering.keras
    model = _legacy_copy(ctx)
    centroid_init = clustering.CentroidInitialization.KMEANS_PLUS_PLUS
    names = _compressed_layers(model, ctx)

    def wrap(layer: Any) -> Any:
        if layer.name not in names:
            return layer
        # Per layer: tfmot's per-channel clustering loops over channels in Python (with it, these tests on
        # the tiny model ran past 10 minutes instead of 3), and cluster_weights(cluster_per_channel=True) returns every
        # conv without bias (all of MobileNetV2's) unclustered: tfmot 0.8.1 counts its channels as the
        # size of its last trainable weight, the kernel. Nor would it save bytes on the wire: int8 scales
        # each channel's own centroids to codes of their own, so zstd's entropy coder sees up to 256
        # codes, not 16. One-shot on the reference model (zstd level 19), 16 centroids per channel came
        # to 0.223x of the float32 file, 16 per layer to 0.163x.
        return clustering.cluster_weights(layer, number_of_clusters=_settings(ctx).clusters,
                                          cluster_centroids_init=centroid_init)

    with captured_output(ctx.log_path):
        return tf_keras.models.clone_model(model, clone_function=wrap), names


def build_clustered_int8(ctx: BuildContext, out: Path) -> dict[str, Any]:
    _, tf_keras, tfmot = import_tfmot()
    model, names = prepare_clustered(ctx)
    metadata = _fine_tune(model, ctx, callbacks=[], learning_rate=1e-4)
    stripped = tfmot.clustering.keras.strip_clustering(model)
    kernels = [layer.get_weights()[0] for layer in stripped.layers if layer.name in names]
    metadata["clusters"] = _settings(ctx).clusters
    metadata["max_unique_values_per_kernel"] = int(max(np.unique(k).size for k in kernels))
    _convert_int8(ctx, stripped, out)
    return metadata


RETRAIN_METHODS = {
    "qat_int8": Method(
        name="qat_int8", backend="litert", source="keras", suffix=".tflite", retrains=True, cost=COST,
        summary="quantization-aware training: fake-quant nodes, fine-tuned on the train split, then int8 as f2",
        build=build_qat_int8, calibrated=True,
    ),
    "pruned_int8": Method(
        name="pruned_int8", backend="litert", source="keras", suffix=".tflite", retrains=True, cost=COST,
        summary="magnitude pruning of the large pointwise and dense kernels (--sparsity), fine-tuned, then int8 as f2",
        build=build_pruned_int8, calibrated=True,
    ),
    "clustered_int8": Method(
        name="clustered_int8", backend="litert", source="keras", suffix=".tflite", retrains=True, cost=COST,
        summary="weight clustering of the large pointwise and dense kernels (--clusters per layer), fine-tuned, then int8",
        build=build_clustered_int8, calibrated=True,
    ),
}
