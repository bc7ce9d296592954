"""ONNX Runtime variants: float32, static int8 (QDQ), dynamic int8, float16.

All start from one float32 ONNX model: the .onnx file given to optimize, or the Keras model
exported with Keras's own ONNX export. onnx/onnxruntime are imported inside the builders, so
edgeopt works without the [onnx] extra.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import BackendUnavailableError, ConfigError, ModelError
from edgeopt.methods import repair
from edgeopt.methods.base import BuildContext, Method
from edgeopt.pixels import TensorSpec, encode_pixels, image_layout
from edgeopt.quiet import captured_output

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
# Held-out images run to rank the nodes of a guarded variant.
SENSITIVITY_IMAGES = 64


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        raise BackendUnavailableError(
            "the ONNX Runtime methods need the onnx extra: pip install 'edgeopt[onnx]'"
        ) from None


def export_keras_to_onnx(model_dir: Path, out: Path, log_path: Path | None = None) -> Path:
    """Export a train folder's model.keras to a float32 ONNX file with a free batch size."""
    from edgeopt._tf import import_tensorflow
    from edgeopt.train import load_keras_model

    _require_onnx()
    tf = import_tensorflow()
    model = load_keras_model(model_dir)
    signature = [tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="pixels")]
    out.parent.mkdir(parents=True, exist_ok=True)
    with captured_output(log_path):
        model.export(str(out), format="onnx", input_signature=signature, verbose=False)
    return out


def export_function_to_onnx(kind: str, source: Path, out: Path, custom_objects: tuple[str, ...] = (),
                            log_path: Path | None = None) -> Path:
    """Export a .keras, .h5 or SavedModel source's inference function (edgeopt.sources.tensorflow)
    to a float32 ONNX file with a free batch size, as Keras's own ONNX export does (tf2onnx)."""
    from edgeopt._tf import import_tensorflow
    from edgeopt.sources.tensorflow import inference_function

    _require_onnx()
    tf = import_tensorflow()  # first: it quiets TensorFlow's logging before tf2onnx imports it
    import tf2onnx
    _, concrete = inference_function(kind, source, custom_objects)
    spec = concrete.structured_input_signature[0][0]
    signature = [tf.TensorSpec([None, *spec.shape[1:]], spec.dtype, name="pixels")]
    out.parent.mkdir(parents=True, exist_ok=True)
    with captured_output(log_path):
        tf2onnx.convert.from_function(tf.function(lambda pixels: concrete(pixels)), input_signature=signature, opset=17,
                                      output_path=str(out))
    return out


def _float_onnx(ctx: BuildContext) -> Path:
    """The float32 ONNX model every ORT method starts from (exported once per run)."""

    def make() -> Path:
        if ctx.source_kind == "onnx" or ctx.source.suffix.lower() == ".onnx":
            return ctx.source
        if ctx.work_dir is None:
            raise ModelError("an ONNX export needs a work folder")
        if ctx.source_kind == "train":
            return export_keras_to_onnx(ctx.source, ctx.work_dir / "exported.onnx", ctx.log_path)
        return export_function_to_onnx(ctx.source_kind, ctx.source, ctx.work_dir / "exported.onnx", ctx.custom_objects,
                                       ctx.log_path)

    return ctx.cached("onnx_float", make)


def _preprocessed(ctx: BuildContext) -> Path:
    """The float model after quant_pre_process (shape inference, graph optimisation): without it
    static QDQ models run about 2x slower."""

    def make() -> Path:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        src = _float_onnx(ctx)
        work = ctx.work_dir or src.parent
        work.mkdir(parents=True, exist_ok=True)
        out = work / "preprocessed.onnx"
        with captured_output(ctx.log_path):
            quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
        return out

    return ctx.cached("onnx_preprocessed", make)


def _input_name_and_layout(path: Path) -> tuple[str, bool]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    return inp.name, image_layout(inp.shape) == "NCHW"


def build_fp32(ctx: BuildContext, out: Path) -> None:
    _require_onnx()
    shutil.copyfile(_float_onnx(ctx), out)


def _pixel_reader(model: Path, pixels: np.ndarray, ctx: BuildContext) -> Any:
    """Calibration or debug images as ONNX Runtime's CalibrationDataReader gives them."""
    from onnxruntime.quantization import CalibrationDataReader

    name, nchw = _input_name_and_layout(model)
    spec = TensorSpec(name, (-1, 3, 0, 0) if nchw else (-1, 0, 0, 3), "float32", layout="NCHW" if nchw else "NHWC")

    class Pixels(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = (
                {name: encode_pixels(p[None], spec, ctx.pixel_transform)} for p in pixels
            )

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    return Pixels()


# Ops that only move data: the value feeding a conv through them is their input's value.
LAYOUT_OPS = {"Transpose", "Reshape", "Pad", "Identity", "Squeeze", "Unsqueeze", "Flatten"}


def _non_negative(tensor: str, producers: dict[str, Any], initializers: dict[str, Any]) -> bool:
    """True when `tensor` comes from a Relu or a Clip with min >= 0 (through layout-only ops)."""
    from onnx import numpy_helper

    node = producers.get(tensor)
    while node is not None and node.op_type in LAYOUT_OPS:
        node = producers.get(node.input[0])
    if node is None:
        return False
    if node.op_type == "Relu":
        return True
    if node.op_type != "Clip":
        return False
    low = None
    if len(node.input) > 1 and node.input[1] in initializers:
        low = float(numpy_helper.to_array(initializers[node.input[1]]))
    for attribute in node.attribute:
        if attribute.name == "min":
            low = attribute.f
    return low is not None and low >= 0


def saturating_conv_weights(model: Any) -> list[str]:
    """Weights of the convs whose int8 sums can saturate on x86 without VNNI: group-1 convs fed by
    an activation that can be negative.

    ONNX Runtime's AVX2 u8s8 conv kernel adds pairs of uint8 x int8 products in 16 bits
    (VPMADDUBSW), clamped at 32767. A uint8 activation whose real range includes negatives has its
    zero point mid-range, so even small values are large bytes and pairs overflow; measured on the
    reference model: 3.8% of the stem's pairs, 19% of the last 1x1 conv's outputs off. Full 8-bit
    weights there cost 5.2 pp; 7-bit weights everywhere (the old fix) cost 6.7 pp of precision. With
    7-bit weights (|w| <= 64) every pair sum is at most 2*255*64 = 32640, so only these convs need
    them; depthwise convs (an int32 kernel) and convs fed by ReLU6 keep 8 bits. A VNNI CPU computes
    exactly either way, so the same file serves every device.
    """
    initializers = {i.name: i for i in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    weights = []
    for node in model.graph.node:
        if node.op_type != "Conv" or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        if next((a.i for a in node.attribute if a.name == "group"), 1) != 1:
            continue
        if not _non_negative(node.input[0], producers, initializers):
            weights.append(node.input[1])
    return weights


def _quantize_static(ctx: BuildContext, out: Path, activations_16bit: Sequence[str] = ()) -> dict[str, Any]:
    """Static QDQ int8 (see saturating_conv_weights for the weights' bits); `activations_16bit`
    are quantized to 16 bits instead of 8 (a guarded variant's repair)."""
    _require_onnx()
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if ctx.calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"unknown calibration {ctx.calibration_method!r}; use one of: {', '.join(CALIBRATION_METHODS)}"
        )
    src = _preprocessed(ctx)
    seven_bit: list[str] = [] if ctx.reduce_range is not None else saturating_conv_weights(onnx.load(str(src)))
    overrides: dict[str, list[dict[str, Any]]] = {w: [{"axis": 0, "reduce_range": True}] for w in seven_bit}
    overrides.update({t: [{"quant_type": QuantType.QUInt16}] for t in activations_16bit})
    reader = _pixel_reader(src, ctx.representative, ctx)
    # ranges are computed once per run and reused by every static build (guarded ones build several)
    cache = (ctx.work_dir or src.parent) / f"calibration-{ctx.calibration_method}.json"
    _drop_if_cut_short(cache)
    with captured_output(ctx.log_path):
        quantize_static(
            str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=bool(ctx.reduce_range), activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[ctx.calibration_method],
            extra_options={"TensorQuantOverrides": overrides} if overrides else None,
            calibration_cache_path=str(cache),
        )
    return {"seven_bit_weights": len(seven_bit)}


def _drop_if_cut_short(cache: Path) -> None:
    """Remove a calibration cache that does not read whole, so that it is computed again: a build
    worker that died while ONNX Runtime wrote it (methods.build then builds its methods here) leaves
    it cut short, and ONNX Runtime would fail on it rather than calibrate."""
    try:
        json.loads(cache.read_bytes())
    except FileNotFoundError:
        pass
    except (OSError, ValueError):
        cache.unlink(missing_ok=True)


def build_int8_static(ctx: BuildContext, out: Path) -> dict[str, Any]:
    return _quantize_static(ctx, out)


def _ranked_activations(ctx: BuildContext, qdq_model: Path) -> tuple[list[str], int]:
    """The activations whose 8-bit quantization is noisiest first (lowest signal-to-quantization-noise
    ratio, ONNX Runtime's qdq_loss_debug), on held-out images."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    assert ctx.holdout is not None and ctx.work_dir is not None
    sample = ctx.holdout[:SENSITIVITY_IMAGES]
    augmented = ctx.work_dir / "qdq-augmented.onnx"
    with captured_output(ctx.log_path):
        modify_model_output_intermediate_tensors(str(qdq_model), str(augmented))
        activations = collect_activations(str(augmented), _pixel_reader(qdq_model, sample, ctx))
        snr = {name: compute_signal_to_quantization_noice_ratio(match["pre_qdq"], match["post_qdq"])
               for name, match in create_activation_matching(activations).items()
               if match.get("pre_qdq") is not None and match.get("post_qdq") is not None}
    augmented.unlink(missing_ok=True)
    return [name for name, _ in sorted(snr.items(), key=lambda item: item[1])], len(sample)


def build_int8_guarded(ctx: BuildContext, out: Path) -> dict[str, Any]:
    """ort_int8_static with the noisiest activations quantized to 16 bits instead of 8.

    (Leaving a Conv out of quantization with nodes_to_exclude does not keep it float in ONNX Runtime
    1.32: a Conv between a DequantizeLinear and a QuantizeLinear is re-quantized at load, per tensor.)
    """
    assert ctx.work_dir is not None
    held = repair.held_out(ctx, "onnxruntime")
    if "ort_int8_static" in ctx.built:
        repair.check_needed(ctx.built["ort_int8_static"], _float_onnx(ctx), held, ctx.repair_target_pp,
                            "ort_int8_static")
        first = ctx.built["ort_int8_static"]  # the search's k = 0: the same call would build the same file again
    else:
        first = ctx.work_dir / "qdq-full.onnx"
        _quantize_static(ctx, first)
    ranked, images = _ranked_activations(ctx, first)
    record = repair.search(
        ranked, lambda names, path: _quantize_static(ctx, path, names), _float_onnx(ctx), held, ctx.repair_target_pp,
        out, sensitivity=(f"Sensitivity: the signal-to-quantization-noise ratio of each activation (ONNX Runtime's "
                          f"qdq_loss_debug) on {images} held-out images; the repair quantizes the noisiest to 16 bits."),
        sibling_built="ort_int8_static" in ctx.built, confidence=ctx.repair_confidence, unguarded=first,
    )
    return record


def build_int8_dynamic(ctx: BuildContext, out: Path) -> None:
    _require_onnx()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with captured_output(ctx.log_path):
        quantize_dynamic(str(_preprocessed(ctx)), str(out), weight_type=QuantType.QInt8)


def build_fp16(ctx: BuildContext, out: Path) -> None:
    _require_onnx()
    import onnx
    from onnxconverter_common import float16

    model: Any = onnx.load(str(_float_onnx(ctx)))
    with captured_output(ctx.log_path):
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    onnx.save(half, str(out))


ONNX_METHODS = {
    "ort_fp32": Method(
        name="ort_fp32", backend="onnxruntime", source="onnx", suffix=".onnx",
        summary="ONNX Runtime, float32 (the model exported to ONNX, unchanged)", build=build_fp32,
    ),
    "ort_int8_static": Method(
        name="ort_int8_static", backend="onnxruntime", source="onnx", suffix=".onnx",
        summary="ONNX Runtime static int8: QDQ, per-channel int8 weights (7-bit on convs fed by signed activations, "
        "which saturate AVX2 kernels otherwise), uint8 activations calibrated on a representative dataset",
        build=build_int8_static, calibrated=True,
    ),
    "ort_int8_guarded": Method(
        name="ort_int8_guarded", backend="onnxruntime", source="onnx", suffix=".onnx",
        summary="ort_int8_static repaired: the activations whose quantization is noisiest (ranked on held-out "
        "images) get 16 bits until it changes few of the float model's held-out answers (built only when needed and "
        "a repair is found)",
        build=build_int8_guarded, calibrated=True, guarded=True, repairs="ort_int8_static",
    ),
    "ort_int8_dynamic": Method(
        name="ort_int8_dynamic", backend="onnxruntime", source="onnx", suffix=".onnx",
        summary="ONNX Runtime dynamic int8: int8 weights, activations quantized at run time (ConvInteger)",
        build=build_int8_dynamic,
    ),
    "ort_fp16": Method(
        name="ort_fp16", backend="onnxruntime", source="onnx", suffix=".onnx",
        summary="ONNX Runtime float16 weights and compute, float32 I/O (Casts at the edges)",
        build=build_fp16,
    ),
}
