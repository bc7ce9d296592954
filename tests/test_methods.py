"""Each registered TFLite method: the graph it makes and that it still classifies like f0."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.data.imagefolder import decode_images
from edgeopt.data.split import load_split
from edgeopt.graph import describe_model
from edgeopt.methods.registry import get_method, list_methods
from edgeopt.runtimes.registry import get_runtime
from tests.conftest import TINY_SIZE

LITERT = list_methods("litert")


@pytest.fixture(scope="module")
def test_pixels(tiny_model):
    split = load_split(tiny_model / "split.json")
    decoded = decode_images(Path(split.data_root), split.test, TINY_SIZE)
    return decoded.pixels


def _variant(tiny_optimized, name):
    out, results = tiny_optimized
    return out / results.variant(name).file


def test_registry_holds_the_studys_five_transformations():
    assert LITERT[:5] == ["f0_float32", "f1_dynamic_range", "f2_int8", "f3_int8_uint8io", "f4_float16"]
    assert [get_method(m).paper_label for m in LITERT[:5]] == ["f0", "f1", "f2", "f3", "f4"]


@pytest.mark.parametrize(
    "name, input_dtype, output_dtype, weight_dtype, quantize, dequantize, hybrid",
    [
        ("f0_float32", "float32", "float32", "float32", False, False, False),
        ("f1_dynamic_range", "float32", "float32", "int8", False, False, True),
        ("f2_int8", "float32", "float32", "int8", True, True, False),
        ("f3_int8_uint8io", "uint8", "uint8", "int8", True, False, False),
        ("f4_float16", "float32", "float32", "float16", False, True, False),
    ],
)
def test_each_transformation_changes_the_graph_as_the_study_describes(
    tiny_optimized, name, input_dtype, output_dtype, weight_dtype, quantize, dequantize, hybrid
):
    g = describe_model(_variant(tiny_optimized, name))
    assert g.inputs[0].dtype == input_dtype
    assert g.outputs[0].dtype == output_dtype
    # the bulk of the weight bytes is stored in the expected dtype
    assert max(g.weight_dtypes, key=lambda k: g.weight_dtypes[k][1]) == weight_dtype
    assert (g.quantize_ops > 0) == quantize
    assert (g.dequantize_ops > 0) == dequantize
    assert (g.hybrid_ops > 0) == hybrid
    # the converter pitfall: unfrozen variables instead of weights
    assert not {"VAR_HANDLE", "READ_VARIABLE"} & set(g.op_counts)


def test_f3_takes_raw_camera_bytes(tiny_optimized):
    spec = describe_model(_variant(tiny_optimized, "f3_int8_uint8io")).inputs[0]
    # calibration pixels span 0..255, so the uint8 input is the identity on pixel values
    assert spec.scale == pytest.approx(1.0, rel=0.02) and abs(spec.zero_point) <= 1


def test_float16_halves_and_int8_quarters_the_weights(tiny_optimized):
    _, results = tiny_optimized
    size = {v.name: v.size_bytes for v in results.variants}
    assert size["f4_float16"] < 0.6 * size["f0_float32"]
    assert size["f2_int8"] < 0.4 * size["f0_float32"]


def test_float_variants_match_keras_and_quantized_ones_agree_with_f0(tiny_optimized, tiny_model, test_pixels):
    from edgeopt.train import load_keras_model

    keras_probs = load_keras_model(tiny_model).predict(test_pixels.astype(np.float32), verbose=0)
    runtime = get_runtime("litert")
    probs = {name: runtime.open(_variant(tiny_optimized, name)).predict(test_pixels) for name in LITERT[:5]}
    np.testing.assert_allclose(probs["f0_float32"], keras_probs, atol=1e-4)
    np.testing.assert_allclose(probs["f4_float16"], keras_probs, atol=2e-2)
    top1 = probs["f0_float32"].argmax(1)
    for name in ("f1_dynamic_range", "f2_int8", "f3_int8_uint8io"):
        assert np.isfinite(probs[name]).all()
        assert np.allclose(probs[name].sum(1), 1.0, atol=0.05)
        # a broken quantizer flips most answers; a working one keeps nearly all of them
        assert np.mean(probs[name].argmax(1) == top1) >= 0.85, name
