"""ONNX Runtime (CPU execution provider), the optional second backend: a device runs its variants
with onnxruntime alone (pip install 'edgeopt[ort]'); building them, and the op counts of `inspect`,
need the onnx package too (pip install 'edgeopt[onnx]')."""

from __future__ import annotations

import re
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import ConfigError, ModelError
from edgeopt.pixels import PIXELS, PixelTransform, TensorSpec, decode_output, encode_pixels, image_layout, to_probabilities
from edgeopt.runtimes.base import GraphSummary, UnsupportedOpError, importable
from edgeopt.runtimes.health import unusable
from edgeopt.runtimes.litert import EVAL_BATCH

# The onnx release the [onnx] extra pins, for a device that wants `inspect`'s graph details.
ONNX_VERSION = "1.23.2"
_ONNX_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8", "tensor(int8)": "int8"}


def _spec(node: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in node.shape)
    dtype = _ONNX_TYPES.get(node.type)
    if dtype is None:
        raise ModelError(f"input/output {node.name} has type {node.type}; edgeopt runs float or 8-bit image models")
    return TensorSpec(name=node.name, shape=shape, dtype=dtype, layout=image_layout(shape))


# "Could not find an implementation for ConvInteger(10) node with name 'Conv__339_quant'"
_MISSING_KERNEL = re.compile(r"Could not find an implementation for (\w+)\((\d+)\)")


def _package() -> str:
    return f"onnxruntime {metadata.version('onnxruntime')}"


def _session(path: Path, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except (ImportError, SystemError) as exc:  # built for another numpy, say
        raise unusable(_package(), exc, "ort") from None

    if not path.is_file():
        raise ModelError(f"{path} does not exist; pass an .onnx file")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        missing = _MISSING_KERNEL.search(str(exc))
        if missing:
            raise UnsupportedOpError(
                f"{path} needs op {missing.group(1)}, which {_package()} does not implement for the CPU "
                f"(opset {missing.group(2)}); use a newer runtime or another variant"
            ) from None
        raise ModelError(f"{path} is not a valid ONNX model ({type(exc).__name__}); pass an .onnx file") from None


class OrtSession:
    def __init__(self, path: Path, threads: int, transform: PixelTransform) -> None:
        self._session = _session(path, threads)
        self.input = _spec(self._session.get_inputs()[0])
        self.output = _spec(self._session.get_outputs()[0])
        if len(self.input.shape) != 4:
            raise ModelError(f"{path} takes input of shape {self.input.shape}; edgeopt runs image classifiers")
        self._transform = transform
        # DynamicQuantizeLinear takes one scale for its whole input tensor: in a batch, each image's
        # answer would depend on the images beside it, and a device classifies one at a time.
        # (An op type is stored as plain bytes in the file; a device has onnxruntime without onnx.)
        self._batched = self.input.shape[0] == -1 and b"DynamicQuantizeLinear" not in path.read_bytes()

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        step = EVAL_BATCH if self._batched else 1
        outputs = [  # encoded a chunk at a time: a thousand images in float32 are 600 MB
            self._session.run([self.output.name],
                              {self.input.name: encode_pixels(pixels[i : i + step], self.input, self._transform)})[0]
            for i in range(0, len(pixels), step)
        ]
        values = decode_output(np.concatenate(outputs).reshape(len(pixels), -1), self.output)
        return to_probabilities(values)


class OnnxRuntime:
    name: str = "onnxruntime"
    suffixes: tuple[str, ...] = (".onnx",)

    def available(self) -> bool:
        return importable("onnxruntime")

    def version(self) -> str:
        return _package()

    def open(self, path: Path, threads: int = 1, transform: PixelTransform = PIXELS) -> OrtSession:
        if threads < 1:
            raise ConfigError(f"--threads {threads} must be >= 1")
        return OrtSession(path, threads, transform)

    def describe(self, path: Path) -> GraphSummary:
        """The graph as stored: op histogram, I/O, initializer dtypes; QDQ scales of the input.
        Without the onnx package (a device's install), only what onnxruntime tells: I/O."""
        if not path.is_file():
            raise ModelError(f"{path} does not exist; pass an .onnx file")
        try:
            import onnx
            from onnx import helper, numpy_helper
        except ImportError:
            session = _session(path, 1)
            return GraphSummary(
                path=path, format="onnx", size_bytes=path.stat().st_size,
                inputs=tuple(_spec(i) for i in session.get_inputs()), outputs=tuple(_spec(o) for o in session.get_outputs()),
                op_counts={}, weight_dtypes={},
                notes=(f"op counts, weight dtypes and opsets need the onnx package, not installed here "
                       f"(pip install onnx=={ONNX_VERSION})",),
            )
        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise ModelError(f"{path} is not a valid ONNX model ({type(exc).__name__}); pass an .onnx file") from None
        graph = model.graph
        initializers = {init.name: init for init in graph.initializer}
        weights: Counter[str] = Counter()
        weight_bytes: Counter[str] = Counter()
        for init in graph.initializer:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(init.data_type))
            weights[dtype.name] += 1
            weight_bytes[dtype.name] += int(np.prod(init.dims)) * dtype.itemsize
        session = _session(path, 1)
        inputs = tuple(_spec(i) for i in session.get_inputs())
        # a QDQ model keeps float I/O; the first QuantizeLinear on the input shows its scale
        first_q = next((n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == inputs[0].name), None)
        if first_q is not None and first_q.input[1] in initializers:
            scale = float(numpy_helper.to_array(initializers[first_q.input[1]]).ravel()[0])
            zp = int(numpy_helper.to_array(initializers[first_q.input[2]]).ravel()[0]) if len(first_q.input) > 2 else 0
            notes: tuple[str, ...] = (f"input quantized inside the graph: scale {scale:.6g}, zero point {zp}",)
        else:
            notes = ()
        return GraphSummary(
            op_versions={f"opset:{o.domain or 'ai.onnx'}": [int(o.version)] for o in model.opset_import},
            path=path,
            format="onnx",
            size_bytes=path.stat().st_size,
            inputs=inputs,
            outputs=tuple(_spec(o) for o in session.get_outputs()),
            op_counts=dict(Counter(n.op_type for n in graph.node).most_common()),
            weight_dtypes={k: (weights[k], weight_bytes[k]) for k in sorted(weights)},
            notes=notes,
        )
