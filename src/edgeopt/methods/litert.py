"""The study's five post-training transformations, made with TensorFlow's TFLite converter.

The converter is fed a concrete function of the Keras model. Do not pass the Keras model as
the converter's second argument: that route silently leaves the weights unfrozen (a ~180 KB
model of VAR_HANDLE ops that outputs NaN).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt._tf import import_tensorflow
from edgeopt.errors import ModelError
from edgeopt.methods import repair
from edgeopt.methods.base import BuildContext, Method
from edgeopt.quiet import captured_output

# Held-out images the quantization debugger runs to rank the layers (more only slows it).
SENSITIVITY_IMAGES = 64


def source_keras_model(ctx: BuildContext) -> Any:
    """The source Keras model, loaded once per run (methods never modify it)."""
    from edgeopt.train import load_keras_model

    return ctx.cached("keras_model", lambda: load_keras_model(ctx.source))


def concrete_function_of(model: Any) -> Any:
    """The inference function the converter takes (a Keras 3 or tf-keras model)."""
    tf = import_tensorflow()
    shape = [None, *model.input_shape[1:]]  # a free batch size lets evaluation batch
    fn = tf.function(lambda pixels: model(pixels, training=False))
    return fn.get_concrete_function(tf.TensorSpec(shape, tf.float32, name="pixels"))


def _concrete_function(ctx: BuildContext) -> Any:
    """The source's inference function: a Keras model's, a SavedModel's serving signature, or that of
    the SavedModel an .onnx source was converted to."""
    from edgeopt.sources.tensorflow import inference_function

    def make() -> Any:
        if ctx.source_kind == "onnx":
            if ctx.converted is None:
                raise ModelError(f"{ctx.source} is an ONNX model that was not converted to TensorFlow; the LiteRT "
                                 "methods need 'edgeopt setup onnx2tf' first")
            return inference_function("savedmodel", ctx.converted)
        if ctx.source_kind == "train":
            model = source_keras_model(ctx)
            return model, concrete_function_of(model)
        return inference_function(ctx.source_kind, ctx.source, ctx.custom_objects)

    return ctx.cached("keras_concrete_function", make)[1]


def representative_images(ctx: BuildContext) -> Iterator[list[np.ndarray]]:
    """The calibration images, one at a time, as the converter's representative_dataset yields them."""
    for pixels in ctx.representative:
        yield [pixels[None].astype(np.float32)]


def _converter(ctx: BuildContext, mode: str) -> Any:
    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([_concrete_function(ctx)])
    if mode != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode in ("int8", "int8_uint8io"):
        converter.representative_dataset = lambda: representative_images(ctx)
    if mode == "int8_uint8io":
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter


def _convert(ctx: BuildContext, out: Path, mode: str) -> None:
    if ctx.source_kind == "tflite":  # no converter re-reads a .tflite: LiteRT's own quantizer
        from edgeopt.methods.aeq import quantize_tflite

        quantize_tflite(ctx, out, mode)
        return
    if mode in ("int8", "int8_uint8io"):
        out.write_bytes(_quantized(ctx, uint8_io=mode == "int8_uint8io"))
        return
    converter = _converter(ctx, mode)
    with captured_output(ctx.log_path):
        flatbuffer = converter.convert()
    out.write_bytes(flatbuffer)


def _calibrated(ctx: BuildContext) -> bytes:
    """The float model with the activation ranges of the representative images recorded: the
    slow half of int8 conversion (the model runs on every image), done once for f2, f3 and the
    guarded variant."""

    def make() -> bytes:
        converter = _converter(ctx, "int8")
        converter._experimental_calibrate_only = True  # what tf.lite's own debugger does
        with captured_output(ctx.log_path):
            return bytes(converter.convert())

    return ctx.cached("litert_calibrated", make)


def _quantized(ctx: BuildContext, uint8_io: bool = False, denylisted_nodes: Sequence[str] = (),
               numeric_verify: bool = False) -> bytes:
    """The int8 model from the calibrated one (the converter's own second step, TF's mlir_quantize):
    float or uint8 input/output; the denylisted layers left in float; with NumericVerify ops for
    the quantization debugger."""
    tf = import_tensorflow()
    from tensorflow.lite.python.convert import mlir_quantize

    io_type = tf.uint8 if uint8_io else tf.float32
    with captured_output(ctx.log_path):
        return bytes(mlir_quantize(
            _calibrated(ctx), input_data_type=io_type, output_data_type=io_type, enable_numeric_verify=numeric_verify,
            denylisted_nodes=list(denylisted_nodes) or None,
        ))


def _float_model(ctx: BuildContext) -> Path:
    """The float32 .tflite the guarded method compares against (converted once per run)."""

    def make() -> Path:
        work = ctx.work_dir or Path(".")
        work.mkdir(parents=True, exist_ok=True)
        _convert(ctx, work / "float32.tflite", "float32")
        return work / "float32.tflite"

    return ctx.cached("litert_float32", make)


def _noise_to_signal(float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int) -> float:
    """A layer's own quantization error: mean squared error of its dequantized output against the
    float op's output on the same (quantized) inputs, over the float output's variance."""
    dequantized = (quantized.astype(np.float32) - zero_point) * scale
    return float(np.mean((float_values - dequantized) ** 2) / (np.var(float_values) + 1e-12))


def build_int8_guarded(ctx: BuildContext, out: Path) -> dict[str, Any]:
    """f2 (int8, float I/O) with the layers whose quantization hurts most left in float."""
    tf = import_tensorflow()
    held = repair.held_out(ctx, "litert")
    if "f2_int8" in ctx.built:
        repair.check_needed(ctx.built["f2_int8"], _float_model(ctx), held, ctx.repair_target_pp, "f2_int8")
    sample = held.pixels[:SENSITIVITY_IMAGES]

    def debug_data() -> Iterator[list[np.ndarray]]:
        for pixels in sample:
            yield [pixels[None].astype(np.float32)]

    options = tf.lite.experimental.QuantizationDebugOptions(layer_direct_compare_metrics={"nsr": _noise_to_signal})
    debug_model = _quantized(ctx, numeric_verify=True)
    with captured_output(ctx.log_path):
        debugger = tf.lite.experimental.QuantizationDebugger(
            quant_debug_model_content=debug_model, debug_dataset=debug_data, debug_options=options
        )
        debugger.run()
        dump = io.StringIO()
        debugger.layer_statistics_dump(dump)
    rows = list(csv.DictReader(io.StringIO(dump.getvalue())))
    ranked = [r["tensor_name"] for r in sorted(rows, key=lambda r: -float(r["nsr"]))]

    def build(names: Sequence[str], path: Path) -> None:
        path.write_bytes(_quantized(ctx, denylisted_nodes=names))

    return repair.search(
        ranked, build, _float_model(ctx), held, ctx.repair_target_pp, out,
        sensitivity=(f"Sensitivity: each layer's own quantization noise (mean squared error over the float output's "
                     f"variance, LiteRT's quantization debugger) on {len(sample)} held-out images."),
        sibling_built="f2_int8" in ctx.built, confidence=ctx.repair_confidence, unguarded=ctx.built.get("f2_int8"),
    )


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
    "f2_int8_guarded": Method(
        name="f2_int8_guarded", backend="litert", source="keras", suffix=".tflite",
        summary="f2_int8 repaired: the layers whose quantization hurts most (ranked on held-out images) stay in "
        "float until it changes few of the float model's held-out answers (built only when f2_int8 needs it and a "
        "repair is found)",
        build=build_int8_guarded, calibrated=True, guarded=True, repairs="f2_int8",
    ),
}
