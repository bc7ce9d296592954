"""An .onnx file a team brings (a PyTorch export, most often): ONNX Runtime variants from it, and
the LiteRT ones through onnx2tf (sources.onnx2tf) when its environment is set up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import BackendUnavailableError
from edgeopt.sources.base import ModelFacts

PASS_THROUGH = {"Identity", "Cast", "Transpose", "Reshape"}
RESCALING_OPS = {"Sub", "Mul", "Div", "Add"}


def is_onnx_file(path: Path) -> bool:
    """A protobuf ModelProto: its first field is ir_version (tag 0x08), and onnx parses it."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        if f.read(1) != b"\x08":
            return False
    try:
        import onnx
    except ImportError:  # cannot look further: the suffix decides, and loading says what to install
        return path.suffix.lower() == ".onnx"
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return len(model.graph.node) > 0


def read_facts(path: Path) -> ModelFacts:
    from edgeopt.runtimes.registry import get_runtime

    try:
        import onnx
    except ImportError:
        raise BackendUnavailableError(f"{path} is an ONNX model: pip install 'edgeopt[onnx]' to optimize it") from None
    get_runtime("onnxruntime")  # refuses, saying what to install, without the [onnx] extra
    from edgeopt.runtimes.onnxruntime import _session, _spec

    session = _session(path, 1)
    inputs = tuple(_spec(i) for i in session.get_inputs())
    outputs = tuple(_spec(o) for o in session.get_outputs())
    model = onnx.load(str(path))
    return ModelFacts(inputs, outputs, _input_rescaling(model, inputs[0].name if inputs else ""),
                      _ends_in_softmax(model, outputs[0].name if outputs else ""))


def _constant(name: str, initializers: dict[str, Any], producers: dict[str, Any]) -> np.ndarray | None:
    from onnx import numpy_helper

    if name in initializers:
        return numpy_helper.to_array(initializers[name])
    node = producers.get(name)
    if node is not None and node.op_type == "Constant":
        for attribute in node.attribute:
            if attribute.name == "value":
                return numpy_helper.to_array(attribute.t)
    return None


def _input_rescaling(model: Any, name: str) -> str:
    graph = model.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    steps, current = [], name
    for _ in range(6):
        node = next(iter(consumers.get(current, [])), None)
        if node is None:
            break
        if node.op_type in PASS_THROUGH:
            current = node.output[0]
            continue
        if node.op_type not in RESCALING_OPS:
            break
        values = [_constant(i, initializers, producers) for i in node.input if i != current]
        value = next((v for v in values if v is not None), None)
        if value is None:
            break
        flat = np.asarray(value, dtype=np.float64).ravel()
        shown = f"{flat[0]:.6g}" if flat.size and np.allclose(flat, flat[0]) else \
            "[" + ", ".join(f"{v:.4g}" for v in flat[:3]) + "]"
        steps.append(f"{node.op_type} {shown} ('{node.name}')")
        current = node.output[0]
    return ", then ".join(steps) + " on the input" if steps else ""


def _ends_in_softmax(model: Any, name: str) -> bool | None:
    producers = {o: n for n in model.graph.node for o in n.output}
    node = producers.get(name)
    for _ in range(4):
        if node is None:
            return None
        if node.op_type in ("Softmax", "LogSoftmax"):
            return node.op_type == "Softmax"
        if node.op_type not in PASS_THROUGH | {"Flatten", "Squeeze"}:
            return False
        node = producers.get(node.input[0])
    return None
