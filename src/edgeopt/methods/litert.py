"""The study's five post-training transformations, made with TensorFlow's TFLite converter.

The converter is fed a concrete function of the Keras model. Do not pass the Keras model as
the converter's second argument: that route silently leaves the weights unfrozen (a ~180 KB
model of VAR_HANDLE ops that outputs NaN).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._tf import import_tensorflow
from edgeopt.methods.base import BuildContext, Method
from edgeopt.quiet import captured_output


def _concrete_function(ctx: BuildContext) -> Any:
    def make() -> Any:
        from edgeopt.train import load_keras_model

        tf = import_tensorflow()
        model = load_keras_model(ctx.source)
        shape = [None, *model.input_shape[1:]]  # a free batch size lets evaluation batch
        fn = tf.function(lambda pixels: model(pixels, training=False))
        return model, fn.get_concrete_function(tf.TensorSpec(shape, tf.float32, name="pixels"))

    return ctx.cached("keras_concrete_function", make)[1]


def _representative(ctx: BuildContext) -> Iterator[list[np.ndarray]]:
    for pixels in ctx.representative:
        yield [pixels[None].astype(np.float32)]


def _convert(ctx: BuildContext, out: Path, mode: str) -> None:
    tf = import_tensorflow()
    cf = _concrete_function(ctx)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([cf])
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode in ("int8", "int8_uint8io"):
        converter.representative_dataset = lambda: _representative(ctx)
    if mode == "int8_uint8io":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    with captured_output(ctx.log_path):
        flatbuffer = converter.convert()
    out.write_bytes(flatbuffer)


def _mode(mode: str) -> Any:
    return lambda ctx, out: _convert(ctx, out, mode)


LITERT_METHODS = {
    "f0_float32": Method(
        name="f0_float32", backend="litert", source="keras", suffix=".tflite", paper_label="f0",
        summary="no transformation: float32 weights and activations (the baseline)",
        build=_mode("float32"),
    ),
    "f1_dynamic_range": Method(
        name="f1_dynamic_range", backend="litert", source="keras", suffix=".tflite", paper_label="f1",
        summary="dynamic range: int8 weights, float activations quantized on the fly (hybrid ops)",
        build=_mode("dynamic_range"),
    ),
    "f2_int8": Method(
        name="f2_int8", backend="litert", source="keras", suffix=".tflite", paper_label="f2",
        summary="int8 weights and activations calibrated on a representative dataset; float input/output",
        build=_mode("int8"), calibrated=True,
    ),
    "f3_int8_uint8io": Method(
        name="f3_int8_uint8io", backend="litert", source="keras", suffix=".tflite", paper_label="f3",
        summary="full integer: int8 inside, uint8 input and output (a device feeds camera bytes)",
        build=_mode("int8_uint8io"), calibrated=True,
    ),
    "f4_float16": Method(
        name="f4_float16", backend="litert", source="keras", suffix=".tflite", paper_label="f4",
        summary="float16 weights, dequantized to float32 at load/run time",
        build=_mode("float16"),
    ),
}
