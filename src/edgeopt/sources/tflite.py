"""A .tflite file a team brings: a float model, whose variants AI Edge Quantizer builds
(methods.aeq), or an already-quantized one (an integer input, or int8 / float16 inside), measured
as given."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import ModelError
from edgeopt.sources.base import ModelFacts

RESCALING_OPS = {"MUL", "ADD", "SUB", "DIV"}


def is_tflite_file(path: Path) -> bool:
    """A TFLite flatbuffer: its file identifier "TFL3" at bytes 4..8."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(8)[4:8] == b"TFL3"


def read_facts(path: Path) -> ModelFacts:
    from edgeopt.runtimes.litert import _interpreter, _spec

    try:
        interp = _interpreter(path, 1, delegates=False)
        interp.allocate_tensors()
        ops = interp._get_ops_details()
        tensors = {t["index"]: t for t in interp.get_tensor_details()}
        inputs = tuple(_spec(d) for d in interp.get_input_details())
        outputs = tuple(_spec(d) for d in interp.get_output_details())
        in_index = interp.get_input_details()[0]["index"] if inputs else -1
        out_index = interp.get_output_details()[0]["index"] if outputs else -1
        signatures = list(interp.get_signature_list())
    except ModelError:
        raise
    except Exception as exc:  # a truncated flatbuffer fails in many ways
        raise ModelError(f"{path} is not a valid .tflite model ({type(exc).__name__}); pass an intact TFLite file") from None
    if len(signatures) > 1:  # the tensors read above are subgraph 0's, which may be any of them
        raise ModelError(f"{path} has {len(signatures)} signatures ({', '.join(signatures)}); edgeopt optimizes a "
                         "classifier alone: convert only its function (TFLiteConverter.from_saved_model(DIR, "
                         "signature_keys=['serving_default']))")
    quantized = _quantized_how(inputs, list(tensors.values()), ops)
    return ModelFacts(inputs, outputs, _input_rescaling(ops, tensors, in_index, interp), _ends_in_softmax(ops, out_index),
                      bool(quantized), quantized)


# Tensor types that only a quantized (or float16) model holds.
QUANTIZED_TYPES = ("int8", "uint8", "int16", "float16")


def _quantized_how(inputs: tuple[Any, ...], tensors: list[dict[str, Any]], ops: list[dict[str, Any]]) -> str:
    """How the file is already quantized, in words ("" for a float model): from its input's type,
    then from its tensors' types -- the converter's f2 keeps float input and output with int8
    inside; a dynamic-range model has int8 weights; a float16 one float16 weights."""
    if inputs and inputs[0].dtype in ("uint8", "int8"):
        return f"{inputs[0].dtype} input"
    found = {np.dtype(t["dtype"]).name for t in tensors} & set(QUANTIZED_TYPES)
    names = {op["op_name"] for op in ops}
    if found & {"int8", "uint8", "int16"}:
        kinds = "/".join(sorted(found - {"float16"}))
        if "QUANTIZE" in names:
            return f"{kinds} weights and activations inside a float input and output"
        return f"{kinds} weights (dynamic range or weight-only)"
    if "float16" in found:
        return "float16 weights"
    return ""


def _input_rescaling(ops: list[dict[str, Any]], tensors: dict[int, Any], index: int, interp: Any) -> str:
    """MUL/ADD/SUB/DIV with a constant applied to the input first, in words ("" when none). The
    converter folds a Rescaling that feeds a convolution into its weights where that is exact; then
    nothing shows here."""
    produced = {int(o) for op in ops for o in op["outputs"]}
    steps, current = [], index
    for _ in range(3):
        op = next((o for o in ops if current in [int(i) for i in o["inputs"]]), None)
        if op is None or op["op_name"] not in RESCALING_OPS:
            break
        constants = [int(i) for i in op["inputs"] if int(i) != current and int(i) not in produced and int(i) >= 0]
        if not constants:
            break
        try:
            value = np.asarray(interp.get_tensor(constants[0]), dtype=np.float64).ravel()
        except ValueError:
            break
        steps.append(f"{op['op_name']} {value[0]:.6g}" if value.size and np.allclose(value, value[0]) else op["op_name"])
        current = int(op["outputs"][0])
    return ", then ".join(steps) + " on the input" if steps else ""


def _ends_in_softmax(ops: list[dict[str, Any]], index: int) -> bool | None:
    current = index
    for _ in range(3):
        op = next((o for o in ops if current in [int(i) for i in o["outputs"]]), None)
        if op is None:
            return None
        if op["op_name"] == "SOFTMAX":
            return True
        if op["op_name"] not in ("DEQUANTIZE", "QUANTIZE", "RESHAPE"):
            return False
        current = int(op["inputs"][0])
    return None
