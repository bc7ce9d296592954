"""Graph inspection: what a model file holds, what a device must feed it, and what a
transformation changed against the baseline (the study showed this as pictures).
"""

from __future__ import annotations

from pathlib import Path

from edgeopt.config import to_jsonable
from edgeopt.contract import PixelContract
from edgeopt.errors import ModelError
from edgeopt.pixels import PIXELS, TensorSpec, feed_instructions
from edgeopt.results import Graph, InputContract, Tensor, WeightBytes
from edgeopt.runtimes.base import GraphSummary
from edgeopt.runtimes.registry import runtime_for


def describe_model(path: Path) -> GraphSummary:
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path} is a folder; pass a model file (.tflite or .onnx), e.g. {path}/selected.tflite")
    if not path.is_file():
        raise ModelError(f"{path} does not exist; pass a model file (.tflite or .onnx)")
    return runtime_for(path).describe(path)


def _io_line(kind: str, spec_name: str, shape: tuple[int, ...], dtype: str, scale: float, zp: int) -> str:
    quant = f", scale {scale:.6g}, zero point {zp}" if scale else ""
    return f"{kind} {spec_name}: {dtype} {list(shape)}{quant}"


def render_summary(summary: GraphSummary) -> list[str]:
    """The lines `edgeopt inspect` prints."""
    lines = [f"{summary.path} ({summary.format}, {summary.size_bytes:,} bytes = {summary.size_bytes / 1024:.0f} KB)"]
    for spec in summary.inputs:
        lines.append(_io_line("input", spec.name, spec.shape, spec.dtype, spec.scale, spec.zero_point))
    for spec in summary.outputs:
        lines.append(_io_line("output", spec.name, spec.shape, spec.dtype, spec.scale, spec.zero_point))
    if summary.inputs and len(summary.inputs[0].shape) == 4:
        lines.append(f"device feeds: {feed_instructions(summary.inputs[0])}")
    if summary.format == "tflite":
        for key, names in summary.signatures.items():
            lines.append(f"signature {key}: inputs {', '.join(names['inputs'])} -> outputs {', '.join(names['outputs'])}")
        if not summary.signatures:
            lines.append("signature: none (get_signature_runner() and AI Edge Quantizer need one)")
    if not summary.op_counts and not summary.weight_dtypes:  # not known here (the notes say why)
        lines.extend(summary.notes)
        return lines
    total = sum(summary.op_counts.values())
    lines.append(
        f"ops: {total} in all; quantize {summary.quantize_ops}, dequantize {summary.dequantize_ops}"
        + (f", hybrid (float compute on int8 weights) {summary.hybrid_ops}" if summary.hybrid_ops else "")
    )
    if summary.op_versions:
        lines.append("  op                           count  versions (an older runtime may lack a newer version)")
    for op, n in summary.op_counts.items():
        versions = summary.op_versions.get(op)
        lines.append(f"  {op:<28} {n:>5}" + (f"  v{', v'.join(map(str, versions))}" if versions else ""))
    for key, versions in summary.op_versions.items():
        if key.startswith("opset:"):
            lines.append(f"  {key:<28}        {', '.join(map(str, versions))}")
    lines.append("weights stored as:")
    for dtype, (count, nbytes) in summary.weight_dtypes.items():
        lines.append(f"  {dtype:<10} {count:>5} tensors {nbytes / 1024:>10.0f} KB")
    lines.extend(summary.notes)
    return lines


def describe_change(variant: GraphSummary, baseline: GraphSummary) -> str:
    """One sentence: what the transformation did to the graph, against the baseline."""
    parts = []
    vin, bin_ = variant.inputs[0], baseline.inputs[0]
    if vin.dtype != bin_.dtype:
        parts.append(f"input {bin_.dtype} -> {vin.dtype} (scale {vin.scale:.4g}, zero point {vin.zero_point})")
    vout, bout = variant.outputs[0], baseline.outputs[0]
    if vout.dtype != bout.dtype:
        parts.append(f"output {bout.dtype} -> {vout.dtype}")
    dq = variant.quantize_ops - baseline.quantize_ops
    ddq = variant.dequantize_ops - baseline.dequantize_ops
    if dq:
        parts.append(f"{dq:+d} QUANTIZE")
    if ddq:
        parts.append(f"{ddq:+d} DEQUANTIZE")
    if variant.hybrid_ops:
        parts.append(f"{variant.hybrid_ops} hybrid ops (float activations x int8 weights)")
    weights = ", ".join(
        f"{dtype} {nbytes / 1024:.0f} KB" for dtype, (_, nbytes) in variant.weight_dtypes.items()
    )
    base_weights = ", ".join(
        f"{dtype} {nbytes / 1024:.0f} KB" for dtype, (_, nbytes) in baseline.weight_dtypes.items()
    )
    if weights != base_weights:
        parts.append(f"weights {base_weights} -> {weights}")
    new_ops = sorted(set(variant.op_counts) - set(baseline.op_counts))
    if new_ops:
        parts.append("new op types: " + ", ".join(new_ops))
    return "; ".join(parts) if parts else "graph unchanged"


def _tensor(spec: TensorSpec) -> Tensor:
    return Tensor(**to_jsonable(spec))


def graph_record(summary: GraphSummary) -> Graph:
    """The graph facts a results file keeps."""
    return Graph(
        input=_tensor(summary.inputs[0]), output=_tensor(summary.outputs[0]), op_counts=summary.op_counts,
        op_versions=summary.op_versions, quantize_ops=summary.quantize_ops, dequantize_ops=summary.dequantize_ops,
        hybrid_ops=summary.hybrid_ops,
        weight_dtypes={k: WeightBytes(tensors=c, bytes=b) for k, (c, b) in summary.weight_dtypes.items()},
    )


def input_contract(spec: TensorSpec, contract: PixelContract) -> InputContract:
    """What a device feeds: the tensor, the pixel normalisation a float input expects, the channel
    order and the resize, in words too."""
    transform = contract.transform
    feed = feed_instructions(spec)
    if transform.scale != PIXELS.scale or transform.offset != PIXELS.offset:
        feed += (f"; float input normalised per channel as pixel * {list(transform.scale)} + {list(transform.offset)}"
                 " (the --input-range / --input-mean/--input-std given to optimize)")
    if transform.channel_order == "bgr":
        feed += "; channels in BGR order"
    if contract.resize == "center-crop":
        feed += "; the image's centre cropped to the input's aspect ratio before resizing"
    return InputContract(tensor=_tensor(spec), pixel_scale=list(transform.scale), pixel_offset=list(transform.offset),
                         feed=feed, channel_order=transform.channel_order, resize=contract.resize)
