"""The two tiny models a runtime health check runs (runtimes.health): one .tflite and one .onnx,
each adding its input to itself, so that every runtime, however old, has the op in its first
version. They ship as package data beside this module; they are built here without TensorFlow,
and `python -m edgeopt.runtimes.probe_models` writes them again (a test checks that the files
shipped are what this builds).

Building needs flatbuffers and LiteRT's schema module (ai-edge-litert), and the onnx package: the
build machine's install. Reading them needs neither.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROBE_FILES = {"litert": HERE / "probe.tflite", "onnxruntime": HERE / "probe.onnx"}
# An NHWC image of 2x2 RGB pixels, as edgeopt's classifiers take; the model answers twice the input.
PROBE_SHAPE = (1, 2, 2, 3)
PROBE_INPUT = np.arange(12, dtype=np.float32).reshape(PROBE_SHAPE) / 4
PROBE_OUTPUT = 2 * PROBE_INPUT


def build_tflite_probe() -> bytes:
    """A TFLite flatbuffer (schema version 3): output = ADD(input, input), float32, op version 1."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    def tensor(name: str) -> schema.TensorT:
        t = schema.TensorT()
        t.shape, t.type, t.buffer, t.name = list(PROBE_SHAPE), schema.TensorType.FLOAT32, 0, name
        return t

    code = schema.OperatorCodeT()
    code.deprecatedBuiltinCode = code.builtinCode = schema.BuiltinOperator.ADD
    code.version = 1
    add = schema.OperatorT()
    add.opcodeIndex, add.inputs, add.outputs = 0, [0, 0], [1]
    add.builtinOptionsType = schema.BuiltinOptions.AddOptions
    add.builtinOptions = schema.AddOptionsT()
    graph = schema.SubGraphT()
    graph.tensors, graph.inputs, graph.outputs, graph.operators = [tensor("input"), tensor("output")], [0], [1], [add]
    graph.name = "main"
    model = schema.ModelT()
    model.version, model.operatorCodes, model.subgraphs = 3, [code], [graph]
    model.buffers = [schema.BufferT()]  # buffer 0: the empty buffer every tensor without data points to
    model.description = "edgeopt runtime health probe"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def build_onnx_probe() -> bytes:
    """An ONNX model (IR 7, opset 13: onnxruntime 1.8 and later): output = Add(input, input)."""
    from onnx import TensorProto, helper

    shape = list(PROBE_SHAPE)
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "input"], ["output"])], "probe",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="edgeopt")
    model.ir_version = 7
    return bytes(model.SerializeToString(deterministic=True))


BUILDERS = {"litert": build_tflite_probe, "onnxruntime": build_onnx_probe}


def write_probe_models() -> None:
    for runtime, path in PROBE_FILES.items():
        path.write_bytes(BUILDERS[runtime]())
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    write_probe_models()
