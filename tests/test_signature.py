"""Every .tflite edgeopt writes carries a SignatureDef that other tools use (issue 31, item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.cli import main
from edgeopt.graph import describe_model
from edgeopt.runtimes.registry import get_runtime


def _pixels(n=8, size=48):
    return np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_every_tflite_variant_has_a_serving_signature(tiny_optimized):
    out, results = tiny_optimized
    tflite = [v for v in results.variants if v.file.endswith(".tflite")]
    assert len(tflite) >= 5
    for v in tflite:
        assert describe_model(out / v.file).signatures == {"serving_default": {"inputs": ["pixels"], "outputs": ["scores"]}}


def test_the_signature_runner_answers_as_the_interpreter_does(tiny_optimized):
    from ai_edge_litert.interpreter import Interpreter

    out, results = tiny_optimized
    path = out / results.variant("f0_float32").file
    runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
    pixels = _pixels()
    signed = np.concatenate([runner(pixels=p[None].astype(np.float32))["scores"] for p in pixels])
    np.testing.assert_allclose(signed, get_runtime("litert").open(path).predict(pixels), atol=1e-6)


def test_inspect_shows_the_signature(tiny_optimized, capsys):
    out, results = tiny_optimized
    assert main(["inspect", str(out / results.variant("f3_int8_uint8io").file)]) == 0
    assert "signature serving_default: inputs pixels -> outputs scores" in capsys.readouterr().out


def test_ai_edge_quantizer_quantizes_an_edgeopt_float_file(tiny_optimized, tmp_path):
    """AEQ calibrates only through a signature: without one it refuses ("model has 0 Signatures")."""
    pytest.importorskip("ai_edge_quantizer")
    from ai_edge_quantizer import quantizer, recipe

    out, results = tiny_optimized
    path = out / results.variant("f0_float32").file
    making = quantizer.Quantizer(str(path), recipe.static_wi8_ai8())
    calibration = making.calibrate({"serving_default": [{"pixels": p[None].astype(np.float32)} for p in _pixels(16)]})
    quantized = tmp_path / "aeq_int8.tflite"
    quantized.write_bytes(bytes(making.quantize(calibration, enable_progress_report=False).quantized_model))
    graph = describe_model(quantized)
    assert graph.inputs[0].dtype == "int8" and "int8" in graph.weight_dtypes
    probs = get_runtime("litert").open(quantized).predict(_pixels())
    reference = get_runtime("litert").open(path).predict(_pixels())
    assert np.mean(probs.argmax(1) == reference.argmax(1)) >= 0.75  # a working quantizer keeps most answers
