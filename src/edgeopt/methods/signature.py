"""A SignatureDef in every .tflite edgeopt writes: "serving_default", input "pixels", output "scores".

TensorFlow's converter writes none when it is given a concrete function (the route that freezes the
weights reliably: methods.litert), and without one `Interpreter.get_signature_runner()` fails and
AI Edge Quantizer refuses to calibrate ("model has 0 Signatures"). The signature only names the
subgraph's existing input and output tensors: no op or weight changes, so every answer stays the same.
"""

from __future__ import annotations

from pathlib import Path

SIGNATURE_KEY = "serving_default"
INPUT_NAME = "pixels"
OUTPUT_NAME = "scores"


def add_signature(path: Path) -> bool:
    """Give the .tflite file at `path` a serving_default signature naming its one input and one
    output, unless it already has a signature. True when the file was rewritten; a file that is no
    flatbuffer is left as it is, for the check that opens it to name it (runtimes.litert)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    try:
        model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    except Exception:  # noqa: BLE001 -- the flatbuffer reader raises struct.error, IndexError, ... on garbage
        return False
    if model.signatureDefs or not model.subgraphs:
        return False
    graph = model.subgraphs[0]
    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY
    signature.subgraphIndex = 0
    signature.inputs = [_tensor_map(schema, INPUT_NAME if len(graph.inputs) == 1 else f"{INPUT_NAME}_{i}", int(t))
                        for i, t in enumerate(graph.inputs)]
    signature.outputs = [_tensor_map(schema, OUTPUT_NAME if len(graph.outputs) == 1 else f"{OUTPUT_NAME}_{i}", int(t))
                         for i, t in enumerate(graph.outputs)]
    model.signatureDefs = [signature]
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    return True


def _tensor_map(schema: object, name: str, index: int) -> object:
    entry = schema.TensorMapT()  # type: ignore[attr-defined]
    entry.name = name
    entry.tensorIndex = index
    return entry

