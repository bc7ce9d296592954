"""The input contract between camera pixels and a model's tensors, for every runtime.

Pixels in, probabilities out: every session takes uint8 RGB pixels (N, H, W, 3) and returns
float32 class probabilities (N, C), whatever the model's own input and output types. How the
pixels become the model's input is decided here, from the input tensor alone:
- float input: pixel values as floats (edgeopt models scale them inside); a foreign model that
  expects another range or a mean/std normalisation is given a `PixelTransform`;
- integer input whose quantization maps 0..255 to real values spanning about 0..255 (edgeopt's
  f3: scale 1, zero point 0): pixels quantized with the tensor's scale and zero point;
- any other integer input (e.g. the Coral models: real range [-1, 1]): the model's quantization
  *is* its normalisation and a device feeds camera bytes as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

CHANNEL_ORDERS = ("rgb", "bgr")


@dataclass(frozen=True)
class PixelTransform:
    """What a float-input model takes, as a per-channel affine map of pixel values 0..255:
    x_c = pixel_c * scale_c + offset_c, the channels in `channel_order` (scale and offset are
    given in the model's channel order). The identity for every model edgeopt makes."""

    scale: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    # "bgr" for a model trained on OpenCV-decoded images (Caffe-era weights): the channels are
    # reversed before anything else, whatever the input's dtype.
    channel_order: str = "rgb"

    @classmethod
    def from_range(cls, low: float, high: float) -> PixelTransform:
        """Pixels 0..255 mapped linearly onto [low, high], e.g. (-1, 1) or (0, 1)."""
        k = (high - low) / 255.0
        return cls((k, k, k), (low, low, low))

    @classmethod
    def from_mean_std(cls, mean: tuple[float, ...], std: tuple[float, ...]) -> PixelTransform:
        """torchvision-style (pixel/255 - mean) / std, mean and std per RGB channel."""
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError("--input-mean and --input-std need three values each, std > 0")
        return cls(
            tuple(1.0 / (255.0 * s) for s in std),  # type: ignore[arg-type]
            tuple(-m / s for m, s in zip(mean, std, strict=True)),  # type: ignore[arg-type]
        )

    @classmethod
    def from_options(
        cls, input_range: tuple[float, ...] | None, mean: tuple[float, ...] | None, std: tuple[float, ...] | None,
        channel_order: str | None = None,
    ) -> PixelTransform:
        """From --input-range or --input-mean/--input-std (at most one of the two) and
        --channel-order; identity without."""
        if input_range is not None and (mean is not None or std is not None):
            raise ValueError("give either --input-range or --input-mean/--input-std, not both")
        if channel_order is not None and channel_order not in CHANNEL_ORDERS:
            raise ValueError(f"--channel-order {channel_order!r} must be one of {', '.join(CHANNEL_ORDERS)}")
        if input_range is not None:
            affine = cls.from_range(input_range[0], input_range[1])
        elif mean is not None or std is not None:
            if mean is None or std is None:
                raise ValueError("--input-mean and --input-std go together")
            affine = cls.from_mean_std(mean, std)
        else:
            affine = cls()
        return cls(affine.scale, affine.offset, channel_order or "rgb")

    @property
    def is_identity(self) -> bool:
        return self == PixelTransform()


PIXELS = PixelTransform()


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 for a free dimension
    dtype: str  # numpy dtype name: float32, float16, uint8, int8
    scale: float = 0.0  # quantization; 0 when not quantized
    zero_point: int = 0
    # "NHWC" (TFLite, Keras) or "NCHW" (most PyTorch exports)
    layout: str = "NHWC"

    @property
    def quantized(self) -> bool:
        return self.dtype in ("uint8", "int8") and self.scale > 0

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of an image input."""
        if self.layout == "NCHW":
            return int(self.shape[2]), int(self.shape[3])
        return int(self.shape[1]), int(self.shape[2])


def image_layout(shape: tuple[int, ...] | list[Any]) -> str:
    """"NCHW" for a 4-D shape with 3 channels second (most PyTorch exports), else "NHWC"."""
    return "NCHW" if len(shape) == 4 and shape[1] == 3 and shape[3] != 3 else "NHWC"


def _real_range(spec: TensorSpec) -> tuple[float, float]:
    info = np.iinfo(np.dtype(spec.dtype))
    return spec.scale * (info.min - spec.zero_point), spec.scale * (info.max - spec.zero_point)


def takes_quantized_pixels(spec: TensorSpec) -> bool:
    """True when the integer input's real values are pixel values (edgeopt's f3)."""
    lo, hi = _real_range(spec)
    return spec.quantized and abs(lo) <= 8.0 and 200.0 <= hi <= 300.0


def encode_pixels(pixels: np.ndarray, spec: TensorSpec, transform: PixelTransform = PIXELS) -> np.ndarray:
    """Turn uint8 pixels (N, H, W, 3) into what the model's input tensor takes (see module doc)."""
    if transform.channel_order == "bgr":
        pixels = pixels[..., ::-1]
    if spec.dtype in ("float32", "float16"):
        x = pixels.astype(np.float32)
        if not transform.is_identity:
            x = x * np.asarray(transform.scale, np.float32) + np.asarray(transform.offset, np.float32)
        x = x.astype(spec.dtype)
    elif spec.dtype not in ("uint8", "int8"):
        raise ValueError(f"input dtype {spec.dtype} is not supported")
    elif takes_quantized_pixels(spec):
        if spec.dtype == "uint8" and spec.scale == 1.0 and spec.zero_point == 0:
            x = np.ascontiguousarray(pixels)  # the identity: the device's bytes go in as they are
        else:
            info = np.iinfo(np.dtype(spec.dtype))
            q = np.round(pixels.astype(np.float32) / spec.scale + spec.zero_point)
            x = np.clip(q, info.min, info.max).astype(spec.dtype)
    elif spec.dtype == "uint8":
        x = pixels.astype(np.uint8)
    else:
        x = (pixels.astype(np.int16) - 128).astype(np.int8)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if spec.layout == "NCHW" else x


def decode_output(raw: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """The output tensor as float32 values (dequantized when integer)."""
    if spec.quantized:
        return (spec.scale * (raw.astype(np.float32) - spec.zero_point)).astype(np.float32)
    return raw.astype(np.float32)


def to_probabilities(values: np.ndarray) -> np.ndarray:
    """Outputs that are already probabilities are returned as the model gave them (dequantized,
    not renormalised: a device's threshold must mean the same as edgeopt's); logits go through
    a softmax.

    A quantized softmax (uint8, scale 1/256) sums to about 1, not exactly: rounding over 1001
    classes can move the sum by several percent, so the test for "already probabilities" is loose.
    """
    rows_sum = values.sum(axis=1, keepdims=True)
    if np.all(values >= -1e-3) and np.all(values <= 1 + 1e-3) and np.all(np.abs(rows_sum - 1) < 0.5):
        return np.clip(values, 0, None).astype(np.float32)
    shifted = values - values.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def feed_instructions(spec: TensorSpec) -> str:
    """What a device must feed this input, in one sentence."""
    h, w = spec.image_size
    if spec.dtype in ("float32", "float16"):
        return (
            f"{spec.dtype} {spec.layout} tensor of RGB pixels {h}x{w}, values 0..255 as floats (edgeopt "
            "models scale them inside; a foreign float model may expect another range: see --input-range "
            "and --input-mean/--input-std)"
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
