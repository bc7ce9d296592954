"""TensorFlow models a team brings: a Keras 3 .keras file, a legacy .h5 (Keras 2 / tf-keras), a
SavedModel folder with a serving signature. Each becomes one inference function of pixels, the
one TensorFlow's converter and the ONNX export take (methods.litert, methods.onnx).

The facts optimize needs (inputs, outputs, what the model does to its input, softmax or logits) are
read from that function's frozen graph: the same walk for the three kinds, through nested models.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import ConfigError, ModelError
from edgeopt.pixels import TensorSpec, image_layout
from edgeopt.sources.base import ModelFacts

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
# The name the inference function gives its input (the converter's and the ONNX export's).
INPUT_NAME = "pixels"
# Ops that pass their input on unchanged, looked through when finding what the model does to its input.
PASS_THROUGH = {"Identity", "Cast", "IdentityN", "StopGradient", "Snapshot", "EnsureShape"}
RESCALING_OPS = {"Mul", "Sub", "RealDiv", "Div", "AddV2", "Add", "BiasAdd", "Maximum", "Minimum", "Sqrt", "Rsqrt"}


def is_keras_file(path: Path) -> bool:
    """A Keras 3 archive: a zip holding config.json and the weights."""
    if not path.is_file() or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
    return "config.json" in names and bool(names & {"model.weights.h5", "metadata.json"})


def is_h5_file(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(8) == HDF5_SIGNATURE


def is_saved_model(path: Path) -> bool:
    return path.is_dir() and ((path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file())


def custom_objects_of(specs: tuple[str, ...]) -> dict[str, Any]:
    """--custom-objects module:attr, each a class (or function) or a dict of them, by name."""
    found: dict[str, Any] = {}
    for spec in specs:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ConfigError(f"--custom-objects {spec!r} must read module:attr, e.g. my_layers:ClipLayer")
        try:
            value = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"--custom-objects {spec}: {exc}; put the module on PYTHONPATH") from None
        found.update(value if isinstance(value, dict) else {attr: value})
    return found


# What Keras says when a file names a class it cannot find.
_UNKNOWN_CLASS = (
    re.compile(r"Could not locate (?:class|function) '([^']+)'"),
    re.compile(r"Unknown (?:layer|object|class|activation|function)[^:]*: '?([A-Za-z_][\w.]*)'?"),
    re.compile(r"'([A-Za-z_]\w*)' is not a known"),
)


def load_keras(path: Path, custom_objects: tuple[str, ...] = ()) -> Any:
    """A .keras or .h5 model for inference: Keras 3 first; an .h5 that only tf-keras reads, with
    tf-keras when it is installed."""
    from edgeopt._tf import import_keras
    from edgeopt.quiet import captured_output

    keras = import_keras()
    objects = custom_objects_of(custom_objects)
    try:
        with captured_output():
            return keras.models.load_model(path, compile=False, custom_objects=objects or None)
    except Exception as exc:  # Keras raises many kinds for a file it cannot read
        error = exc
    if is_h5_file(path) and importlib.util.find_spec("tf_keras") is not None:
        try:
            import tf_keras

            with captured_output():
                return tf_keras.models.load_model(path, compile=False, custom_objects=objects or None)
        except Exception:
            pass  # Keras 3's error is the one to show
    raise _load_error(path, error) from None


def _load_error(path: Path, exc: Exception) -> ModelError:
    text = str(exc)
    for pattern in _UNKNOWN_CLASS:
        match = pattern.search(text)
        if match:
            return ModelError(
                f"{path} uses the custom layer or function {match.group(1)}, which Keras cannot rebuild without its "
                f"code; pass --custom-objects module:attr (a module on PYTHONPATH that defines {match.group(1)}), "
                "or export the model as a SavedModel (model.export(DIR)) and pass that folder"
            )
    if "safe_mode" in text or "Lambda" in text:
        return ModelError(f"{path} holds a Lambda layer, whose Python code Keras does not load from a file; export the "
                          "model as a SavedModel (model.export(DIR)) and pass that folder")
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return ModelError(f"{path} cannot be loaded as a Keras model ({type(exc).__name__}: {first[:300]}); "
                      "pass an intact .keras / .h5 file or a SavedModel folder")


def _signature(path: Path) -> tuple[Any, Any]:
    """The SavedModel (kept alive) and its serving signature."""
    from edgeopt._tf import import_tensorflow
    from edgeopt.quiet import captured_output

    tf = import_tensorflow()
    try:
        with captured_output():
            loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelError(f"{path} cannot be loaded as a TensorFlow SavedModel ({type(exc).__name__}: {first[:300]}); "
                         "pass an intact SavedModel folder") from None
    signatures = dict(getattr(loaded, "signatures", {}) or {})
    if "serving_default" not in signatures:
        raise ModelError(f"{path} has no serving_default signature (it has: {', '.join(signatures) or 'none'}); "
                         "export it with model.export(DIR) or tf.saved_model.save(model, DIR, signatures=...)")
    return loaded, signatures["serving_default"]


def _specs(structure: Any) -> list[tuple[str, Any]]:
    """(name, TensorSpec) of a signature's inputs or outputs, sorted by name."""
    if isinstance(structure, dict):
        return sorted(structure.items())
    flat = structure if isinstance(structure, (list, tuple)) else [structure]
    return [(getattr(s, "name", None) or f"output_{i}", s) for i, s in enumerate(flat)]


def inference_function(kind: str, path: Path, custom_objects: tuple[str, ...] = ()) -> tuple[Any, Any]:
    """(what keeps the model alive, a concrete function pixels -> scores with a free batch size)."""
    from edgeopt._tf import import_tensorflow

    tf = import_tensorflow()
    if kind in ("keras", "h5", "train"):
        from edgeopt.methods.litert import concrete_function_of

        model = load_keras(path / "model.keras" if kind == "train" else path, custom_objects)
        _check_keras_io(path, model)
        return model, concrete_function_of(model)
    loaded, signature = _signature(path)
    inputs = _specs(signature.structured_input_signature[1])
    outputs = _specs(signature.structured_outputs)
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"{path}'s serving_default signature has {len(inputs)} input(s) ({', '.join(n for n, _ in inputs)}) and "
            f"{len(outputs)} output(s) ({', '.join(n for n, _ in outputs)}); edgeopt optimizes image classifiers with "
            "one image input and one output of class scores"
        )
    (in_name, in_spec), (out_name, _) = inputs[0], outputs[0]

    def call(pixels: Any) -> Any:
        result = signature(**{in_name: pixels})
        return result[out_name] if isinstance(result, dict) else result

    shape = list(in_spec.shape)
    fn = tf.function(call)
    try:  # a free batch size lets evaluation batch; a signature fixed at batch 1 keeps it
        concrete = fn.get_concrete_function(tf.TensorSpec([None, *shape[1:]], in_spec.dtype, name=INPUT_NAME))
    except (ValueError, TypeError):
        concrete = fn.get_concrete_function(tf.TensorSpec(shape, in_spec.dtype, name=INPUT_NAME))
    return (loaded, signature), concrete


def _check_keras_io(path: Path, model: Any) -> None:
    inputs, outputs = list(model.inputs or []), list(model.outputs or [])
    if len(inputs) != 1 or len(outputs) != 1:
        names = ", ".join(_layer_name(t) for t in inputs)
        out_names = ", ".join(_layer_name(t) for t in outputs)
        raise ModelError(f"{path} has {len(inputs)} input(s) ({names}) and {len(outputs)} output(s) ({out_names}); "
                         "edgeopt optimizes image classifiers with one image input and one output of class scores")


def _layer_name(tensor: Any) -> str:
    """The name of the layer that makes a Keras tensor (its own name is a counter)."""
    history = getattr(tensor, "_keras_history", None)
    operation = getattr(history, "operation", None) or getattr(history, "layer", None)
    return str(getattr(operation, "name", None) or getattr(tensor, "name", "?"))


def read_facts(kind: str, path: Path, custom_objects: tuple[str, ...] = ()) -> ModelFacts:
    """Inputs, outputs, the model's own rescaling and its last op, from the frozen inference function."""
    from edgeopt._tf import import_tensorflow
    from edgeopt.quiet import captured_output

    import_tensorflow()  # first: it quiets TensorFlow's logging before anything imports it
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    _, concrete = inference_function(kind, path, custom_objects)
    in_spec = concrete.structured_input_signature[0][0]
    out = concrete.structured_outputs
    out_shape = tuple(int(d) if d is not None else -1 for d in out.shape)
    in_shape = tuple(int(d) if d is not None else -1 for d in in_spec.shape)
    with captured_output():
        frozen = convert_variables_to_constants_v2(concrete)
    graph = frozen.graph.as_graph_def()
    return ModelFacts(
        inputs=(TensorSpec(INPUT_NAME, in_shape, in_spec.dtype.name, layout=image_layout(in_shape)),),
        outputs=(TensorSpec("scores", out_shape, out.dtype.name),),
        rescales=_input_rescaling(graph),
        probabilities=_ends_in_softmax(graph),
    )


def _node_map(graph: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    nodes = {n.name: n for n in graph.node}
    consumers: dict[str, list[Any]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i.lstrip("^").split(":")[0], []).append(n)
    return nodes, consumers


def _const(node: Any, nodes: dict[str, Any]) -> np.ndarray | None:
    """A constant's value, looking through Identity/Cast; None when the node is not one."""
    for _ in range(4):
        if node is None or node.op not in PASS_THROUGH or not node.input:
            break
        node = nodes.get(node.input[0].lstrip("^").split(":")[0])
    if node is None or node.op != "Const":
        return None
    from tensorflow import make_ndarray

    return make_ndarray(node.attr["value"].tensor)


def _input_rescaling(graph: Any) -> str:
    """What the graph does to its input before anything else, when that is arithmetic with constants
    (a Keras Rescaling or Normalization layer, a Mul/Sub/Div): in words; "" when it is not."""
    nodes, consumers = _node_map(graph)
    placeholders = [n for n in graph.node if n.op == "Placeholder"]
    if not placeholders:
        return ""
    frontier: list[str] = [placeholders[0].name]
    steps: list[str] = []
    seen: set[str] = set()
    while frontier and len(steps) < 4:
        name = frontier.pop(0)
        for node in consumers.get(name, []):
            if node.name in seen:
                continue
            seen.add(node.name)
            if node.op in PASS_THROUGH:
                frontier.append(node.name)
            elif node.op in RESCALING_OPS:
                constants = [_const(nodes.get(i.split(":")[0]), nodes) for i in node.input if i.split(":")[0] != name]
                values = [c for c in constants if c is not None]
                if not values:
                    continue
                steps.append(f"{node.op} {_short(values[0])} ('{node.name}')")
                frontier.append(node.name)
    return ", then ".join(steps) + " on the input" if steps else ""


def _short(value: np.ndarray) -> str:
    flat = np.asarray(value, dtype=np.float64).ravel()
    if flat.size == 1 or np.allclose(flat, flat[0]):
        return f"{flat[0]:.6g}"
    return "[" + ", ".join(f"{v:.4g}" for v in flat[:3]) + (", ...]" if flat.size > 3 else "]")


def _ends_in_softmax(graph: Any) -> bool | None:
    nodes, _ = _node_map(graph)
    ends = [n for n in graph.node if n.op in ("Identity", "IdentityN") and n.name.startswith("Identity")]
    node = nodes.get(ends[0].name) if ends else None
    for _ in range(8):
        if node is None:
            return None
        if node.op == "Softmax":
            return True
        if node.op not in PASS_THROUGH or not node.input:
            return False
        node = nodes.get(node.input[0].lstrip("^").split(":")[0])
    return None
