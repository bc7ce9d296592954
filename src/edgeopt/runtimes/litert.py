"""LiteRT (TensorFlow Lite) runtime: ai_edge_litert's interpreter with XNNPACK on."""

from __future__ import annotations

import re
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import BackendUnavailableError, ConfigError, ModelError
from edgeopt.pixels import PIXELS, PixelTransform, TensorSpec, decode_output, encode_pixels, to_probabilities
from edgeopt.quiet import captured_output
from edgeopt.runtimes.base import GraphSummary, UnsupportedOpError, importable
from edgeopt.runtimes.health import unusable

# Images per invoke when evaluating accuracy (latency is always measured at batch 1).
EVAL_BATCH = 16


def _spec(detail: dict[str, Any]) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    signature = detail.get("shape_signature", detail["shape"])
    return TensorSpec(
        name=str(detail["name"]),
        shape=tuple(int(d) for d in signature),
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero_point),
    )


# The interpreter packages that run .tflite files, preferred first: LiteRT, then the older
# tflite-runtime that many device images ship (same API).
INTERPRETERS = (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime"))


def _installed() -> tuple[str, str]:
    """(module, distribution) of the interpreter package that runs .tflite files here, without
    importing it (a broken one fails there: see runtimes.health)."""
    for module, dist in INTERPRETERS:
        if importable(module):
            return module, dist
    raise ModelError("no TFLite interpreter is installed; pip install 'edgeopt[litert]' (or [tflite-runtime])")


def _interpreter_module() -> tuple[Any, str]:
    import importlib

    module, dist = _installed()
    try:
        return importlib.import_module(f"{module}.interpreter"), dist
    except (ImportError, SystemError) as exc:
        raise _broken(dist, exc) from None


def _broken(dist: str, exc: BaseException) -> BackendUnavailableError:
    return unusable(f"{dist} {metadata.version(dist)}", exc, "litert")


# "Didn't find op for builtin opcode 'FULLY_CONNECTED' version '12'" (older runtimes)
_MISSING_OP = re.compile(r"Didn't find op for (?:builtin opcode|custom opcode) '([^']+)' version '(\d+)'")


def _interpreter(path: Path, threads: int, delegates: bool = True) -> Any:
    module, dist = _interpreter_module()
    Interpreter, OpResolverType = module.Interpreter, module.OpResolverType  # noqa: N806

    if not path.is_file():
        raise ModelError(f"{path} does not exist; pass a .tflite file")
    resolver = OpResolverType.AUTO if delegates else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with captured_output():  # the C++ layer prints its errors itself; ours are one line
        try:
            return Interpreter(
                model_path=str(path), num_threads=threads, experimental_op_resolver_type=resolver
            )
        except (ImportError, SystemError) as exc:  # built for another numpy, say
            raise _broken(dist, exc) from None
        except (ValueError, RuntimeError) as exc:
            missing = _MISSING_OP.search(str(exc))
            if missing:
                raise UnsupportedOpError(
                    f"{path} needs op {missing.group(1)} version {missing.group(2)}, which "
                    f"{dist} {metadata.version(dist)} does not have; use a newer runtime or another variant"
                ) from None
            raise ModelError(f"{path} is not a valid .tflite model ({exc}); pass a TFLite flatbuffer") from None


class LiteRTSession:
    def __init__(self, path: Path, threads: int, transform: PixelTransform) -> None:
        self.path = path
        self._interp = _interpreter(path, threads)
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self.input = _spec(self._in)
        self.output = _spec(self._out)
        if len(self.input.shape) != 4 or self.input.shape[-1] != 3:
            raise ModelError(
                f"{path} takes input of shape {self.input.shape}; edgeopt runs image classifiers "
                "with one NHWC RGB input"
            )
        self._transform = transform
        self._batch = 0
        self._resizable = self.input.shape[0] == -1
        self._set_batch(1)

    def _set_batch(self, n: int) -> None:
        if n == self._batch:
            return
        if n != 1 or self._batch != 0:
            self._interp.resize_tensor_input(self._in["index"], [n, *self._in["shape"][1:]])
        with captured_output():  # "Created TensorFlow Lite XNNPACK delegate" on stderr
            self._interp.allocate_tensors()
        self._batch = n

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        step = EVAL_BATCH if self._resizable and len(pixels) > 1 else 1
        outputs = []
        for start in range(0, len(pixels), step):
            # encoded a chunk at a time: a thousand images in float32 are 600 MB
            chunk = encode_pixels(pixels[start : start + step], self.input, self._transform)
            real = len(chunk)
            if real < step:  # pad the last chunk instead of reallocating for it
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], step - real, axis=0)])
            self._set_batch(step)
            self._interp.set_tensor(self._in["index"], chunk)
            self._interp.invoke()
            outputs.append(self._interp.get_tensor(self._out["index"])[:real].copy())
        values = decode_output(np.concatenate(outputs).reshape(len(pixels), -1), self.output)
        return to_probabilities(values)


class LiteRTRuntime:
    name: str = "litert"
    suffixes: tuple[str, ...] = (".tflite",)

    def available(self) -> bool:
        return any(importable(module) for module, _ in INTERPRETERS)

    def version(self) -> str:
        _, dist = _installed()
        return f"{dist} {metadata.version(dist)}"

    def open(self, path: Path, threads: int = 1, transform: PixelTransform = PIXELS) -> LiteRTSession:
        if threads < 1:
            raise ConfigError(f"--threads {threads} must be >= 1")
        return LiteRTSession(path, threads, transform)

    def describe(self, path: Path) -> GraphSummary:
        """The graph as stored, without delegates: ops, I/O and the dtypes the weights are in."""
        interp = _interpreter(path, 1, delegates=False)
        ops = interp._get_ops_details()  # the only graph listing ai_edge_litert offers
        tensors = {t["index"]: t for t in interp.get_tensor_details()}
        produced = {int(o) for op in ops for o in op["outputs"]}
        graph_inputs = {d["index"] for d in interp.get_input_details()}
        consumed = {int(i) for op in ops for i in op["inputs"] if int(i) >= 0}
        weights: Counter[str] = Counter()
        weight_bytes: Counter[str] = Counter()
        for idx in consumed - produced - graph_inputs:
            t = tensors.get(idx)
            if t is None:
                continue
            dtype = np.dtype(t["dtype"])
            weights[dtype.name] += 1
            weight_bytes[dtype.name] += int(np.prod(t["shape"])) * dtype.itemsize
        hybrid = 0
        for op in ops:
            operand = {np.dtype(t).name for t in op.get("operand_types", [])}
            result = {np.dtype(t).name for t in op.get("result_types", [])}
            if op["op_name"] not in ("DEQUANTIZE", "QUANTIZE") and "float32" in result and operand & {"int8", "uint8"}:
                hybrid += 1
        return GraphSummary(
            op_versions=tflite_op_versions(path),
            path=path,
            format="tflite",
            size_bytes=path.stat().st_size,
            inputs=tuple(_spec(d) for d in interp.get_input_details()),
            outputs=tuple(_spec(d) for d in interp.get_output_details()),
            op_counts=dict(Counter(op["op_name"] for op in ops).most_common()),
            weight_dtypes={k: (weights[k], weight_bytes[k]) for k in sorted(weights)},
            hybrid_ops=hybrid,
            signatures=_signatures(interp),
        )


def _signatures(interp: Any) -> dict[str, dict[str, list[str]]]:
    """The SignatureDefs the interpreter reports (an old runtime may not know them: none)."""
    try:
        found = interp.get_signature_list()
    except (AttributeError, ValueError, RuntimeError):
        return {}
    return {str(k): {"inputs": list(v.get("inputs", [])), "outputs": list(v.get("outputs", []))} for k, v in found.items()}


def tflite_op_versions(path: Path) -> dict[str, list[int]]:
    """Each builtin op's versions in a .tflite file, read from its flatbuffer's operator codes
    (the interpreter does not report them). Empty when the schema module is not installed."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:
        try:
            from tflite_runtime import schema_py_generated as schema  # type: ignore[import-not-found,no-redef]
        except ImportError:
            return {}
    names = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    model = schema.Model.GetRootAs(path.read_bytes(), 0)
    versions: dict[str, set[int]] = {}
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # builtin_code is the field since schema 3a; older files keep it in deprecated_builtin_code
        op = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = code.CustomCode().decode() if code.CustomCode() else names.get(op, str(op))
        versions.setdefault(name, set()).add(code.Version())
    return {k: sorted(v) for k, v in sorted(versions.items())}
