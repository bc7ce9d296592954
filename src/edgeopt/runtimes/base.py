"""What a runtime offers, the same for .tflite and .onnx: open a model, feed pixels, read
probabilities, describe the graph. Measurement is written once against this.

Pixels in, probabilities out: every session takes uint8 RGB pixels (N, H, W, 3) and returns
float32 class probabilities (N, C), whatever the model's own input and output types. How the
pixels become the model's input is decided here, from the input tensor alone:
- float input: pixel values as floats (edgeopt models scale them inside); a foreign model that
  expects another range is given `float_range`;
- integer input whose quantization maps 0..255 to real values spanning about 0..255 (edgeopt's
  f3: scale 1, zero point 0): pixels quantized with the tensor's scale and zero point;
- any other integer input (e.g. the Coral models: real range [-1, 1]): the model's quantization
  *is* its normalisation and a device feeds camera bytes as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

PIXEL_RANGE = (0.0, 255.0)


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 for a free dimension
    dtype: str  # numpy dtype name: float32, float16, uint8, int8
    scale: float = 0.0  # quantization; 0 when not quantized
    zero_point: int = 0

    @property
    def quantized(self) -> bool:
        return self.dtype in ("uint8", "int8") and self.scale > 0

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of an NHWC image input."""
        return int(self.shape[1]), int(self.shape[2])


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

    @property
    def quantize_ops(self) -> int:
        return sum(n for op, n in self.op_counts.items() if op in ("QUANTIZE", "QuantizeLinear", "DynamicQuantizeLinear"))

    @property
    def dequantize_ops(self) -> int:
        return sum(n for op, n in self.op_counts.items() if op in ("DEQUANTIZE", "DequantizeLinear"))


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

    def open(self, path: Path, threads: int = 1, float_range: tuple[float, float] = PIXEL_RANGE) -> Session: ...

    def describe(self, path: Path) -> GraphSummary: ...


def _real_range(spec: TensorSpec) -> tuple[float, float]:
    info = np.iinfo(np.dtype(spec.dtype))
    return spec.scale * (info.min - spec.zero_point), spec.scale * (info.max - spec.zero_point)


def takes_quantized_pixels(spec: TensorSpec) -> bool:
    """True when the integer input's real values are pixel values (edgeopt's f3)."""
    lo, hi = _real_range(spec)
    return spec.quantized and abs(lo) <= 8.0 and 200.0 <= hi <= 300.0


def encode_pixels(
    pixels: np.ndarray, spec: TensorSpec, float_range: tuple[float, float] = PIXEL_RANGE
) -> np.ndarray:
    """Turn uint8 pixels into what the model's input tensor takes (see module doc)."""
    if spec.dtype in ("float32", "float16"):
        x = pixels.astype(np.float32)
        if float_range != PIXEL_RANGE:
            lo, hi = float_range
            x = lo + x * ((hi - lo) / 255.0)
        return x.astype(spec.dtype)
    if spec.dtype not in ("uint8", "int8"):
        raise ValueError(f"input dtype {spec.dtype} is not supported")
    if takes_quantized_pixels(spec):
        info = np.iinfo(np.dtype(spec.dtype))
        q = np.round(pixels.astype(np.float32) / spec.scale + spec.zero_point)
        return np.clip(q, info.min, info.max).astype(spec.dtype)
    if spec.dtype == "uint8":
        return pixels.astype(np.uint8)
    return (pixels.astype(np.int16) - 128).astype(np.int8)


def decode_output(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The output tensor as float32 values (dequantized when integer)."""
    if spec.quantized:
        return (spec.scale * (raw.astype(np.float32) - spec.zero_point)).astype(np.float32)
    return raw.astype(np.float32)


def to_probabilities(values: np.ndarray) -> np.ndarray:
    """Outputs that are already probabilities are renormalised; logits go through a softmax.

    A quantized softmax (uint8, scale 1/256) sums to about 1, not exactly: rounding over
    1001 classes can move the sum by several percent, so the test is loose on purpose.
    """
    rows_sum = values.sum(axis=1, keepdims=True)
    if np.all(values >= -1e-3) and np.all(values <= 1 + 1e-3) and np.all(np.abs(rows_sum - 1) < 0.5):
        return (np.clip(values, 0, None) / rows_sum).astype(np.float32)
    shifted = values - values.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def feed_instructions(spec: TensorSpec) -> str:
    """What a device must feed this input, in one sentence."""
    h, w = spec.image_size
    if spec.dtype in ("float32", "float16"):
        return (
            f"{spec.dtype} tensor of RGB pixels {h}x{w}, values 0..255 as floats (edgeopt models "
            "scale them inside; a foreign float model may expect another range: see --input-range)"
        )
    if takes_quantized_pixels(spec):
        if abs(spec.scale - 1.0) < 1e-6 and spec.zero_point == 0 and spec.dtype == "uint8":
            return f"raw camera bytes: uint8 RGB {h}x{w}, no conversion (scale 1, zero point 0)"
        return (
            f"{spec.dtype} RGB {h}x{w}: round(pixel / {spec.scale:.6g} + {spec.zero_point}) "
            "(the input quantization is not the identity)"
        )
    lo, hi = _real_range(spec)
    if spec.dtype == "uint8":
        return (
            f"raw camera bytes: uint8 RGB {h}x{w}; the input quantization maps them to "
            f"[{lo:.3g}, {hi:.3g}], which is the model's own normalisation"
        )
    return f"int8 RGB {h}x{w}: pixel - 128 (the quantization maps it to [{lo:.3g}, {hi:.3g}])"
