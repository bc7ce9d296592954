"""The study's variants of a float .tflite a team brings, made with LiteRT's own quantizer.

TensorFlow's converter cannot re-read a .tflite, so for such a source every LiteRT method builds
with AI Edge Quantizer (ai-edge-quantizer), which takes a float .tflite and writes a new one:
- f0: the file as given (with a signature added when it has none);
- f1: dynamic range (recipe dynamic_wi8_afp32: int8 weights, activations quantized on the fly);
- f2: static int8 (static_wi8_ai8) calibrated on the representative images through the model's
  signature, input and output left float (a QUANTIZE in, a DEQUANTIZE out: what the converter's f2 is);
- f3: that model with uint8 input and output (TensorFlow's modify_model_interface, the converter's own
  last step for inference_input_type=uint8);
- f4: float16 weights (AEQ's float casting, weight-only);
- weight-only int8 (weight_only_wi8_afp32): int8 weights dequantized to float at run time.
AEQ calibrates only through a SignatureDef ("model has 0 Signatures" otherwise), hence methods.signature.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from edgeopt.errors import BackendUnavailableError
from edgeopt.methods.base import BuildContext, Method
from edgeopt.methods.signature import add_signature
from edgeopt.pixels import encode_pixels
from edgeopt.quiet import captured_output

# TFLite's TensorType values, as modify_model_interface takes them.
_UINT8 = 3


def _require_aeq() -> Any:
    try:
        from ai_edge_quantizer import quantizer
    except ImportError:
        raise BackendUnavailableError(
            "a .tflite model's variants are built with AI Edge Quantizer: pip install 'edgeopt[build]'"
        ) from None
    return quantizer


def _signed_source(ctx: BuildContext) -> Path:
    """The source .tflite with a signature (a copy in the work folder when it had none)."""

    def make() -> Path:
        work = ctx.work_dir or Path(".")
        work.mkdir(parents=True, exist_ok=True)
        # Written under a name of this process's own, then renamed: a build worker makes the same file
        # while this process may have it mapped in memory (AI Edge Quantizer mmaps its input), and a
        # file rewritten in place under a mapping ends the process with SIGBUS.
        copy, tmp = work / "source-signed.tflite", work / f".source-signed.{os.getpid()}.tflite"
        shutil.copyfile(ctx.source, tmp)
        add_signature(tmp)
        os.replace(tmp, copy)
        return copy

    return ctx.cached("aeq_source", make)


def _signature_input(path: Path) -> tuple[str, str, Any]:
    """(signature key, its input's name, the input's TensorSpec)."""
    from edgeopt.runtimes.litert import _interpreter, _spec

    interp = _interpreter(path, 1, delegates=False)
    key, names = next(iter(interp.get_signature_list().items()))
    return key, names["inputs"][0], _spec(interp.get_input_details()[0])


def _calibration(ctx: BuildContext, quantizer: Any, recipe: Any) -> Any:
    """The activation ranges of the representative images (computed once for f2 and f3)."""

    def make() -> Any:
        key, name, spec = _signature_input(_signed_source(ctx))
        samples = [{name: encode_pixels(p[None], spec, ctx.pixel_transform)} for p in ctx.representative]
        calibrating = quantizer.Quantizer(str(_signed_source(ctx)), recipe)
        with captured_output(ctx.log_path):
            return calibrating.calibrate({key: samples}, num_threads=max(1, ctx.holdout_threads))

    return ctx.cached("aeq_calibration", make)


def _static_int8_recipe() -> Any:
    from ai_edge_quantizer import qtyping, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    manager = recipe_manager.RecipeManager()
    manager.load_quantization_recipe(recipe.static_wi8_ai8())
    for io in (qtyping.TFLOperationName.INPUT, qtyping.TFLOperationName.OUTPUT):  # float I/O, as the converter's f2
        manager.add_quantization_config(".*", io, None, AlgorithmName.NO_QUANTIZE)
    return manager.get_quantization_recipe()


def _recipe(mode: str) -> Any:
    from ai_edge_quantizer import qtyping, recipe, recipe_manager
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    if mode == "dynamic_range":
        return recipe.dynamic_wi8_afp32()
    if mode == "weight_only":
        return recipe.weight_only_wi8_afp32()
    if mode in ("int8", "int8_uint8io"):
        return _static_int8_recipe()
    if mode == "float16":
        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(".*", qtyping.TFLOperationName.ALL_SUPPORTED, 16,
                                       algorithm_key=AlgorithmName.FLOAT_CASTING)
        return manager.get_quantization_recipe()
    raise ValueError(f"no AI Edge Quantizer recipe for {mode}")


def quantize_tflite(ctx: BuildContext, out: Path, mode: str) -> None:
    """Write the `mode` variant of the float .tflite source to `out` (see module doc)."""
    if mode == "float32":
        shutil.copyfile(_signed_source(ctx), out)
        return
    quantizer = _require_aeq()
    recipe = _recipe(mode)
    source = _signed_source(ctx)
    making = quantizer.Quantizer(str(source), recipe)
    calibration = _calibration(ctx, quantizer, recipe) if making.need_calibration else None
    with captured_output(ctx.log_path):
        result = making.quantize(calibration, enable_progress_report=False)
    out.write_bytes(bytes(result.quantized_model))
    if mode == "int8_uint8io":
        _uint8_io(out)


def _uint8_io(path: Path) -> None:
    """Float input/output (QUANTIZE in, DEQUANTIZE out) -> uint8 input/output, in place."""
    from edgeopt._tf import import_tensorflow

    import_tensorflow()  # first: it quiets TensorFlow's logging before anything imports it
    from ai_edge_litert.tools import flatbuffer_utils
    from tensorflow.lite.python import _pywrap_modify_model_interface as interface

    # AI Edge Quantizer stores a large model's weights after the flatbuffer (buffer offsets), which
    # modify_model_interface does not carry over ("Constant buffer 1 specified an out of range
    # offset"): the weights go inline first.
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    tmp = path.with_name(path.name + ".uint8io")
    try:
        if interface.modify_model_interface(str(path), str(tmp), _UINT8, _UINT8) != 0 or not tmp.is_file():
            raise RuntimeError(f"modify_model_interface could not give {path} uint8 input and output")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)



def _copy_as_given(ctx: BuildContext, out: Path) -> None:
    shutil.copyfile(ctx.source, out)


AEQ_METHODS = {
    "weight_only_int8": Method(
        name="weight_only_int8", backend="litert", source="tflite", suffix=".tflite",
        summary="AI Edge Quantizer weight-only: int8 weights, dequantized to float at run time (float compute); "
        "built from a float .tflite only",
        build=lambda ctx, out: quantize_tflite(ctx, out, "weight_only"),
    ),
    "as_given": Method(
        name="as_given", backend="litert", source="tflite", suffix=".tflite",
        summary="the already-quantized .tflite as given (a signature added when it had none): measured, not transformed",
        build=_copy_as_given,
    ),
}
