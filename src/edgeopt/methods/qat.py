"""Quantization-aware training's model: tfmot's fake-quant nodes on a tf-keras copy, with two of
tfmot's defaults replaced because they cost the reference model 6.07 points of int8 accuracy (0.21
with these, on the first reference model; bench/results/retrain.md has the current figure):
- depthwise kernels are left float while training and quantized per channel by the converter, as
  in f2 (depthwise_float_scheme);
- the activation ranges start at the float model's on the calibration images, not at [-6, 6]
  (start_activation_ranges)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeopt.methods._tfmot import import_tfmot
from edgeopt.methods.base import BuildContext
from edgeopt.quiet import captured_output


def quantize_for_training(model: Any, ctx: BuildContext) -> Any:
    """The tf-keras model with fake-quant nodes on every layer but the input's rescaling
    (quantize_apply), its activation ranges started from `model`'s on the calibration images."""
    _, tf_keras, tfmot = import_tfmot()
    quantization = tfmot.quantization.keras

    def annotate(layer: Any) -> Any:
        # Rescaling has no QAT config; the converter calibrates it from the representative images.
        return layer if isinstance(layer, tf_keras.layers.Rescaling) else quantization.quantize_annotate_layer(layer)

    # clone_function returns the copy's own layers (weights and all), wrapped or not.
    annotated = tf_keras.models.clone_model(model, clone_function=annotate)
    with quantization.quantize_scope(), captured_output(ctx.log_path):
        qat = quantization.quantize_apply(annotated, scheme=depthwise_float_scheme())
    start_activation_ranges(qat, model, ctx)
    return qat


def depthwise_float_scheme() -> Any:
    """tfmot's default 8-bit scheme, except that depthwise kernels are not fake-quantized while training.

    tfmot 0.8 quantizes a conv kernel "per axis" along its last axis, which for a depthwise kernel
    (h, w, channels, 1) is the depth multiplier: one range for all channels, and the converter keeps it.
    MobileNetV2's depthwise kernels differ per channel by orders of magnitude (BatchNorm rescales them
    after). Left float in training, they are quantized per channel by the converter, as in f2."""
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_registry as registry,
    )
    from tensorflow_model_optimization.python.core.quantization.keras.default_8bit import (
        default_8bit_quantize_scheme as scheme,
    )

    _, tf_keras, _ = import_tfmot()

    class Registry(registry.Default8BitQuantizeRegistry):  # type: ignore[misc]
        def get_quantize_config(self, layer: Any) -> Any:
            if isinstance(layer, tf_keras.layers.DepthwiseConv2D):
                return registry.Default8BitQuantizeConfig([], ["activation"], False)
            return super().get_quantize_config(layer)

    class Scheme(scheme.Default8BitQuantizeScheme):  # type: ignore[misc]
        def get_quantize_registry(self) -> Any:
            return Registry()

    return Scheme()


def start_activation_ranges(qat: Any, float_model: Any, ctx: BuildContext) -> None:
    """Start every activation range of the QAT model at the float model's min/max on the calibration
    images, as post-training int8 calibrates them. tfmot starts them at [-6, 6] and moves them by an
    exponential average of decay 0.999: a fine-tuning of a few hundred steps would leave them far from
    the activations' ranges (about +-38 at MobileNetV2's first projection)."""
    _, tf_keras, _ = import_tfmot()
    targets: list[tuple[str, Any, Any]] = []  # (float layer name, min variable, max variable)
    for layer in qat.layers:
        inner = getattr(layer, "layer", None)
        if inner is None:
            continue
        weight_ranges = {id(v) for _, _, variables in getattr(layer, "_weight_vars", []) for v in variables.values()}
        ranges = {v.name.split("/")[-1].split(":")[0]: v for v in layer.non_trainable_weights if id(v) not in weight_ranges}
        for name, low in ranges.items():
            high = ranges.get(name[:-len("_min")] + "_max") if name.endswith("_min") else None
            if high is not None:
                targets.append((inner.name, low, high))
    if not targets:
        return
    names = sorted({name for name, _, _ in targets})
    probe = tf_keras.Model(float_model.input, [float_model.get_layer(n).output for n in names])
    sample = ctx.representative.astype(np.float32)
    lows = {n: 0.0 for n in names}  # int8 ranges always hold 0
    highs = {n: 0.0 for n in names}
    for start in range(0, len(sample), 32):
        outputs = probe(sample[start:start + 32], training=False)
        for n, value in zip(names, outputs if len(names) > 1 else [outputs], strict=True):
            lows[n] = min(lows[n], float(np.min(value)))
            highs[n] = max(highs[n], float(np.max(value)))
    for name, low, high in targets:
        low.assign(lows[name])
        high.assign(highs[name])
