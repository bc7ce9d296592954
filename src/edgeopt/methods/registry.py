"""Every way edgeopt can make a variant, in one literal dict: name -> Method."""

from __future__ import annotations

from edgeopt.errors import ConfigError
from edgeopt.methods.aeq import AEQ_METHODS
from edgeopt.methods.base import Method
from edgeopt.methods.litert import LITERT_METHODS
from edgeopt.methods.onnx import ONNX_METHODS
from edgeopt.methods.retrain import RETRAIN_METHODS

METHODS: dict[str, Method] = {
    **LITERT_METHODS,
    **AEQ_METHODS,
    **ONNX_METHODS,
    **RETRAIN_METHODS,
}


def list_methods(backend: str | None = None) -> list[str]:
    return [name for name, m in METHODS.items() if backend is None or m.backend == backend]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; known methods: {', '.join(METHODS)}")
    return METHODS[name]


# The kinds of model (edgeopt.sources) from which TensorFlow's converter builds the LiteRT methods.
CONVERTER_KINDS = ("train", "keras", "h5", "savedmodel")


def why_not_from(method: Method, kind: str, quantized: bool = False, converted: bool = False) -> str:
    """Why `method` cannot be built from a model of this kind ("" when it can): an already-quantized
    .tflite is only measured as given; AI Edge Quantizer's methods need a float .tflite; the
    converter's need a TensorFlow model (or an .onnx converted to one); the retraining methods
    rebuild edgeopt's own MobileNetV2; ONNX Runtime's need an ONNX model or a TensorFlow one to export."""
    if quantized:
        return "" if method.name == "as_given" else "the .tflite is already quantized, so it is measured as given"
    if method.name == "as_given":
        return "only an already-quantized .tflite is measured as given"
    if method.source == "tflite":
        return "" if kind == "tflite" else "built from a float .tflite only"
    if method.retrains:
        return "" if kind == "train" else "the retraining methods fine-tune a model written by 'edgeopt train'"
    if method.backend == "litert" and method.guarded and kind not in CONVERTER_KINDS and not (kind == "onnx" and converted):
        return "its repair ranks layers with TensorFlow's quantization debugger, which needs a TensorFlow model"
    if method.source == "keras":
        if kind == "onnx" and not converted:
            return "the .onnx model was not converted to TensorFlow (see the note on onnx2tf)"
        return ""
    if method.source == "onnx" and kind == "tflite":
        return "ONNX Runtime variants are not built from a .tflite model"
    return ""
