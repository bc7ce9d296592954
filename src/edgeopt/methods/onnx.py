"""ONNX Runtime variants: float32, static int8 (QDQ), dynamic int8, float16.

All start from one float32 ONNX model: the .onnx file given to optimize, or the Keras model
exported with Keras's own ONNX export. onnx/onnxruntime are imported inside the builders, so
edgeopt works without the [onnx] extra.
"""

from __future__ import annotations

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


def _float_onnx(ctx: BuildContext) -> Path:
    """The float32 ONNX model every ORT method starts from (exported once per run)."""

    def make() -> Path:
        if ctx.source.suffix.lower() == ".onnx":
            return ctx.source
        if ctx.work_dir is None:
            raise ModelError("an ONNX export needs a work folder")
        return export_keras_to_onnx(ctx.source, ctx.work_dir / "exported.onnx", ctx.log_path)

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


def _quantize_static(ctx: BuildContext, out: Path, nodes_to_exclude: Sequence[str] = ()) -> None:
    _require_onnx()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if ctx.calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"unknown calibration {ctx.calibration_method!r}; use one of: {', '.join(CALIBRATION_METHODS)}"
        )
    src = _preprocessed(ctx)
    reader = _pixel_reader(src, ctx.representative, ctx)
    with captured_output(ctx.log_path):
        quantize_static(
            str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=True,
            reduce_range=ctx.reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod[ctx.calibration_method], nodes_to_exclude=list(nodes_to_exclude),
        )


def build_int8_static(ctx: BuildContext, out: Path) -> None:
    _quantize_static(ctx, out)


def _ranked_nodes(ctx: BuildContext, qdq_model: Path) -> tuple[list[str], int]:
    """The float model's nodes, most sensitive to quantization first: the lower signal-to-noise
    ratio of their own output activation's and weight's quantization (qdq_loss_debug), on
    held-out images."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    assert ctx.holdout is not None and ctx.work_dir is not None
    sample = ctx.holdout[:SENSITIVITY_IMAGES]
    augmented = ctx.work_dir / "qdq-augmented.onnx"
    with captured_output(ctx.log_path):
        modify_model_output_intermediate_tensors(str(qdq_model), str(augmented))
        activations = collect_activations(str(augmented), _pixel_reader(qdq_model, sample, ctx))
        activation_snr = {k: compute_signal_to_quantization_noice_ratio(v["pre_qdq"], v["post_qdq"])
                          for k, v in create_activation_matching(activations).items()}
        weight_snr = {k: compute_signal_to_quantization_noice_ratio(v["float"], v["dequantized"])
                      for k, v in create_weight_matching(str(_preprocessed(ctx)), str(qdq_model)).items()
                      if np.ndim(v["float"]) > 0}
    graph = onnx.load(str(_preprocessed(ctx))).graph
    scored = []
    for node in graph.node:
        snrs = [activation_snr[o] for o in node.output if o in activation_snr]
        snrs += [weight_snr[i] for i in node.input if i in weight_snr]
        if snrs and node.name:
            scored.append((min(snrs), node.name))
    return [name for _, name in sorted(scored)], len(sample)


def build_int8_guarded(ctx: BuildContext, out: Path) -> dict[str, Any]:
    """ort_int8_static with the nodes whose quantization hurts most left in float (nodes_to_exclude)."""
    assert ctx.work_dir is not None
    first = ctx.work_dir / "qdq-full.onnx"
    _quantize_static(ctx, first)
    ranked, images = _ranked_nodes(ctx, first)
    return repair.search(
        ranked, lambda names, path: _quantize_static(ctx, path, names), "onnxruntime", _float_onnx(ctx),
        ctx.holdout, ctx.holdout_labels, ctx.repair_target_pp, out,
        sensitivity=(f"Sensitivity: the signal-to-quantization-noise ratio of each node's output activation and "
                     f"weights (ONNX Runtime's qdq_loss_debug) on {images} held-out images."),
    )


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
        summary="ONNX Runtime static int8: QDQ, per-channel int8 weights, uint8 activations calibrated on a "
        "representative dataset, after quant_pre_process",
        build=build_int8_static, calibrated=True,
    ),
    "ort_int8_guarded": Method(
        name="ort_int8_guarded", backend="onnxruntime", source="onnx", suffix=".onnx",
        summary="ort_int8_static repaired: the nodes whose quantization hurts most (ranked on held-out images) "
        "stay in float until the held-out loss is within the target",
        build=build_int8_guarded, calibrated=True, guarded=True,
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
