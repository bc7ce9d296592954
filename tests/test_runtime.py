"""Feeding pixels to any model, reading probabilities, inspecting and classifying foreign files."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.classify import classify
from edgeopt.errors import ModelError
from edgeopt.graph import describe_model, render_summary
from edgeopt.pixels import PixelTransform, TensorSpec, encode_pixels, feed_instructions, to_probabilities
from edgeopt.runtimes.registry import runtime_for
from tests.conftest import CORAL, needs

PIXELS = np.array([[[[0, 128, 255]]]], dtype=np.uint8)


def test_edgeopt_uint8_input_is_fed_pixels_unchanged():
    spec = TensorSpec("in", (1, 1, 1, 3), "uint8", scale=1.0, zero_point=0)
    assert encode_pixels(PIXELS, spec).tolist() == PIXELS.tolist()
    assert "raw camera bytes" in feed_instructions(spec) and "no conversion" in feed_instructions(spec)


def test_pixel_range_input_with_other_scale_is_quantized():
    spec = TensorSpec("in", (1, 1, 1, 3), "uint8", scale=254 / 255, zero_point=0)
    assert encode_pixels(PIXELS, spec).ravel().tolist() == [0, 129, 255]


def test_normalising_quantization_gets_raw_bytes():
    # Coral-style: real = (q - 128) / 128, i.e. the quantization does the [-1, 1] scaling
    spec = TensorSpec("in", (1, 1, 1, 3), "uint8", scale=1 / 128, zero_point=128)
    assert encode_pixels(PIXELS, spec).ravel().tolist() == [0, 128, 255]
    int8 = TensorSpec("in", (1, 1, 1, 3), "int8", scale=1 / 128, zero_point=0)
    assert encode_pixels(PIXELS, int8).ravel().tolist() == [-128, 0, 127]


def test_float_input_gets_pixel_values_or_the_range_asked_for():
    spec = TensorSpec("in", (1, 1, 1, 3), "float32")
    assert encode_pixels(PIXELS, spec).ravel().tolist() == [0.0, 128.0, 255.0]
    assert encode_pixels(PIXELS, spec, PixelTransform.from_range(-1, 1)).ravel() == pytest.approx(
        [-1.0, 0.00392, 1.0], abs=1e-4
    )
    imagenet = PixelTransform.from_mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = [(0 / 255 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (255 / 255 - 0.406) / 0.225]
    assert encode_pixels(PIXELS, spec, imagenet).ravel() == pytest.approx(expected, abs=1e-5)


def test_nchw_inputs_get_channels_first():
    spec = TensorSpec("in", (1, 3, 1, 1), "float32", layout="NCHW")
    assert spec.image_size == (1, 1)
    assert encode_pixels(PIXELS, spec).shape == (1, 3, 1, 1)


def test_probabilities_are_kept_as_the_model_gave_them_and_logits_get_a_softmax():
    quantized = np.full((1, 1001), 1 / 256, dtype=np.float32)  # sums to 3.9: not probabilities
    assert to_probabilities(quantized).sum() == pytest.approx(1.0)
    near = np.array([[0.6, 0.3, 0.05]], dtype=np.float32)  # a rounded softmax summing to 0.95
    # what the model output, not renormalised: a threshold tuned on edgeopt means the same on a device
    assert to_probabilities(near).tolist() == near.tolist()
    logits = np.array([[2.0, -1.0, 0.5]], dtype=np.float32)
    assert to_probabilities(logits).sum() == pytest.approx(1.0)
    assert to_probabilities(logits).argmax() == 0


def test_a_file_that_is_not_a_model_is_refused(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelError, match="not a model edgeopt can run"):
        runtime_for(text)
    fake = tmp_path / "broken.tflite"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelError, match="not a valid .tflite"):
        describe_model(fake)


@needs(CORAL)
@pytest.mark.parametrize("model", ["mobilenet_v2_1.0_224_quant.tflite", "mobilenet_v1_0.25_128_quant.tflite"])
def test_coral_models_classify_the_cat(model):
    [pred] = classify(CORAL / model, [CORAL / "cat.bmp"], CORAL / "imagenet_labels.txt", top_k=3)
    label, prob = pred.top[0]
    assert "cat" in label
    assert 0.1 < prob <= 1.0  # far above uniform (1/1001): the uint8 softmax is read right


@needs(CORAL)
def test_inspect_reads_a_foreign_quantized_model():
    summary = describe_model(CORAL / "mobilenet_v2_1.0_224_quant.tflite")
    assert summary.inputs[0].dtype == "uint8" and summary.inputs[0].zero_point == 128
    assert summary.op_counts["CONV_2D"] > 30
    assert "uint8" in summary.weight_dtypes
    text = "\n".join(render_summary(summary))
    assert "raw camera bytes" in text and "scale 0.0078125, zero point 128" in text
