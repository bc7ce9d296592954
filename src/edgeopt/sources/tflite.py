"""A .tflite file a team brings: a float model, whose variants AI Edge Quantizer builds
(methods.aeq), or an already-quantized one (an integer input), measured as given."""

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
    except ModelError:
        raise
    except Exception as exc:  # a truncated flatbuffer fails in many ways
        raise ModelError(f"{path} is not a valid .tflite model ({type(exc).__name__}); pass an intact TFLite file") from None
    quantized = bool(inputs) and inputs[0].dtype in ("uint8", "int8")
    return ModelFacts(inputs, outputs, _input_rescaling(ops, tensors, in_index, interp), _ends_in_softmax(ops, out_index),
                      quantized)


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
