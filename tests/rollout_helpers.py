"""Tiny image classifiers (ONNX, built in code: no TensorFlow) for the rollout tests and bench/fleet.py.

Each model averages the frame's RGB, maps it through a fixed matrix to five logits and a softmax:
- "good":   confident answers (top-1 confidence ~0.9 on ordinary frames)
- "nan":    like "good", but answers NaN for frames brighter than NAN_ABOVE: a model that fails the
            smoke test only on devices whose camera sees bright frames
- "flat":   the same answers with logits divided by 20: passes every smoke test, but its top-1
            confidence in service falls to near 1/5
`variant` changes the weights slightly, so two "good" models differ in bytes and both work.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

CLASSES = ["aluminium", "carton", "glass", "pet", "tin"]
SIZE = 8
# Mean pixel value (0..255) above which the "nan" model answers NaN.
NAN_ABOVE = 160.0


def write_model(path: Path, kind: str = "good", variant: int = 0, pad_bytes: int = 0) -> Path:
    """`pad_bytes` of random (incompressible) weights ride along unused, so a transfer weighs what a
    real model's would."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(variant)
    weights = (np.array([[4, -2, 0, 1, -3], [-2, 4, -1, 0, 1], [0, -1, 4, -2, -1]], np.float32) / 40.0
               + rng.normal(0, 0.002, (3, 5)).astype(np.float32))
    scale = np.array([1.0 / 20 if kind == "flat" else 1.0], np.float32)
    bias = np.array([-3.0, -3.0, -3.0, -3.0, -3.0], np.float32)
    nodes = [
        helper.make_node("ReduceMean", ["pixels"], ["rgb"], axes=[1, 2], keepdims=0),
        helper.make_node("MatMul", ["rgb", "w"], ["z"]),
        helper.make_node("Add", ["z", "b"], ["zb"]),
        helper.make_node("Mul", ["zb", "scale"], ["logits"]),
    ]
    inits = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(scale, "scale")]
    if pad_bytes:
        padding = rng.integers(0, 256, pad_bytes, dtype=np.uint8)
        inits.append(numpy_helper.from_array(padding, "padding"))  # in the file (what is sent), unused by the graph
    last = "logits"
    if kind == "nan":  # sqrt(NAN_ABOVE - brightness) * 0 is 0, or NaN when the frame is brighter
        nodes += [
            helper.make_node("ReduceMean", ["rgb"], ["brightness"], axes=[1], keepdims=1),
            helper.make_node("Sub", ["limit", "brightness"], ["room"]),
            helper.make_node("Sqrt", ["room"], ["root"]),
            helper.make_node("Mul", ["root", "zero"], ["nothing"]),
            helper.make_node("Add", ["logits", "nothing"], ["guarded"]),
        ]
        inits += [numpy_helper.from_array(np.array([NAN_ABOVE], np.float32), "limit"),
                  numpy_helper.from_array(np.array([0.0], np.float32), "zero")]
        last = "guarded"
    nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=1))
    graph = helper.make_graph(
        nodes, f"tiny_{kind}_{variant}",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1, SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, len(CLASSES)])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def write_release(folder: Path, kind: str = "good", variant: int = 0, pad_bytes: int = 0) -> tuple[Path, Path, dict[str, Any]]:
    """(model, labels, custom) as `edgeopt publish` would sign them."""
    model = write_model(folder / f"{kind}-{variant}.onnx", kind, variant, pad_bytes)
    labels = folder / "labels.json"
    labels.write_text(json.dumps({"classes": CLASSES}))
    custom = {"format": "onnx", "method": f"tiny_{kind}_{variant}", "classes": CLASSES,
              "input": {"tensor": {"shape": [1, SIZE, SIZE, 3]}}}
    return model, labels, custom


def frame(brightness: float, seed: int = 0) -> np.ndarray:
    """A camera frame (SIZE x SIZE RGB uint8) around a mean brightness, with a colour cast by seed."""
    rng = np.random.default_rng(seed)
    cast = rng.normal(0, 25, 3)
    pixels = np.clip(brightness + cast + rng.normal(0, 6, (SIZE, SIZE, 3)), 0, 255)
    return pixels.astype(np.uint8)


def write_frame(path: Path, brightness: float, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame(brightness, seed)).save(path)
    return path
