"""What a runtime offers, the same for .tflite and .onnx: open a model, feed pixels, read
probabilities, describe the graph. Measurement is written once against this; how pixels become
input tensors is in edgeopt.pixels.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeopt.errors import ModelError
from edgeopt.pixels import PIXELS, PixelTransform, TensorSpec


@dataclass(frozen=True)
class GraphSummary:
    path: Path
    format: str
    size_bytes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    op_counts: dict[str, int]
    # Stored weights (constant tensors) per dtype: (count, bytes).
    weight_dtypes: dict[str, tuple[int, int]]
    # Ops computing in float on int8 weights (dynamic-range "hybrid" ops).
    hybrid_ops: int = 0
    notes: tuple[str, ...] = field(default=())
    # Versions of each op in the file (TFLite opcode versions; ONNX: "opset:<domain>").
    op_versions: dict[str, list[int]] = field(default_factory=dict)
    # A .tflite file's SignatureDefs: {key: {"inputs": [names], "outputs": [names]}}.
    signatures: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @property
    def quantize_ops(self) -> int:
        return sum(n for op, n in self.op_counts.items() if op in ("QUANTIZE", "QuantizeLinear", "DynamicQuantizeLinear"))

    @property
    def dequantize_ops(self) -> int:
        return sum(n for op, n in self.op_counts.items() if op in ("DEQUANTIZE", "DequantizeLinear"))


class UnsupportedOpError(ModelError):
    """The file is a valid model, but this runtime lacks one of its ops (or an op version)."""


class Session(Protocol):
    input: TensorSpec
    output: TensorSpec

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (N, H, W, 3) -> float32 probabilities (N, C)."""
        ...


class Runtime(Protocol):
    name: str
    suffixes: tuple[str, ...]

    def available(self) -> bool: ...

    def version(self) -> str: ...

    def open(self, path: Path, threads: int = 1, transform: PixelTransform = PIXELS) -> Session: ...

    def describe(self, path: Path) -> GraphSummary: ...


def importable(*modules: str) -> bool:
    """True when every module can be imported (without importing it: runtimes load lazily)."""
    return all(importlib.util.find_spec(m) is not None for m in modules)
