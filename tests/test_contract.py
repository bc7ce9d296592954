"""The input contract: flags, channel order, resize, and old files without the new keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edgeopt.contract import PixelContract, check_baseline, contract_from_dict
from edgeopt.errors import ModelError
from edgeopt.images import load_pixels
from edgeopt.pixels import PixelTransform, TensorSpec, encode_pixels
from edgeopt.results import InputContract, Tensor

FLOAT = TensorSpec("pixels", (-1, 4, 4, 3), "float32")


def test_bgr_reverses_the_channels_whatever_the_input_type():
    pixels = np.zeros((1, 4, 4, 3), np.uint8)
    pixels[..., 0] = 200  # red
    bgr = PixelTransform.from_options(None, None, None, "bgr")
    assert encode_pixels(pixels, FLOAT, bgr)[0, 0, 0].tolist() == [0, 0, 200]
    raw = TensorSpec("pixels", (-1, 4, 4, 3), "uint8", scale=1.0, zero_point=0)
    assert encode_pixels(pixels, raw, bgr)[0, 0, 0].tolist() == [0, 0, 200]
    with pytest.raises(ValueError, match="rgb, bgr"):
        PixelTransform.from_options(None, None, None, "grb")


def test_center_crop_keeps_the_middle_and_squash_keeps_everything(tmp_path):
    wide = np.zeros((10, 30, 3), np.uint8)
    wide[:, :10] = 255  # a white left third
    Image.fromarray(wide).save(tmp_path / "wide.png")
    squashed = load_pixels(tmp_path / "wide.png", (10, 10))
    cropped = load_pixels(tmp_path / "wide.png", (10, 10), "center-crop")
    assert squashed[:, 0].mean() > 200 and cropped.max() == 0  # the crop is the black middle third


def test_old_files_without_the_new_keys_read_as_rgb_squash():
    old = {"pixels": "RGB 0..255", "pixel_scale": [1, 1, 1], "pixel_offset": [0, 0, 0], "note": "x"}
    contract = contract_from_dict(old)
    assert contract.transform == PixelTransform() and contract.resize == "squash"
    assert contract_from_dict(None) == PixelContract()


def test_results_write_the_new_keys_only_when_not_the_default():
    tensor = Tensor(name="pixels", shape=[-1, 4, 4, 3], dtype="float32")
    plain = json.loads(InputContract(tensor=tensor).model_dump_json())
    assert "channel_order" not in plain and "resize" not in plain  # an older edgeopt still reads it
    bgr = InputContract(tensor=tensor, channel_order="bgr", resize="center-crop")
    assert InputContract.model_validate_json(bgr.model_dump_json()) == bgr
    assert contract_from_dict(json.loads(bgr.model_dump_json())).transform.channel_order == "bgr"


def _answers(right: dict[int, tuple[int, int]], wrong_as: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, labels): for each class, (images right, images wrong, answered as `wrong_as` or the next class)."""
    predicted, labels = [], []
    for c, (good, bad) in right.items():
        labels += [c] * (good + bad)
        predicted += [c] * good + [wrong_as if wrong_as != c else c + 1] * bad
    return np.asarray(predicted), np.asarray(labels)


FIVE = ("cardboard", "glass", "metal", "paper", "plastic")


def test_the_baseline_under_twice_chance_is_refused_with_the_settings_to_check():
    check_baseline(*_answers({c: (9, 11) for c in range(5)}), FIVE, PixelContract(), "sorted folders")  # 45% >= 40%
    with pytest.raises(ModelError) as refused:
        check_baseline(*_answers({c: (4, 16) for c in range(5)}), FIVE, PixelContract(), "the sorted class folder names",
                       "f0_float32")
    text = str(refused.value)
    assert text.startswith("f0_float32 gets 20.0% of 100 test images right")
    for hint in ("under the 40%", "--input-range", "--channel-order (fed RGB)", "class order (the sorted class folder names)"):
        assert hint in text
    assert len(text) < 400 and "float32 baseline" not in text


def test_a_good_binary_classifier_passes_and_a_coin_toss_does_not():
    two = ("clean", "dirty")
    check_baseline(*_answers({0: (485, 15), 1: (485, 15)}), two, PixelContract(), "folders")  # 97%: was refused
    with pytest.raises(ModelError, match="under the 67% asked of a model with 2 outputs"):
        check_baseline(*_answers({0: (260, 240), 1: (250, 250)}), two, PixelContract(), "folders")


def test_chance_counts_the_models_outputs_not_the_classes_in_the_test_photos():
    """A 5-class model measured on photos of two of its classes: 88% right is not 'under twice chance'."""
    check_baseline(*_answers({0: (28, 3), 3: (27, 4)}, wrong_as=1), FIVE, PixelContract(), "folders")
    many = tuple(f"c{i}" for i in range(1001))
    check_baseline(np.asarray([5, 7]), np.asarray([5, 9]), many, PixelContract(), "labels")  # 1 of 2 on a 1001-class model


def test_a_model_answering_one_class_is_refused_even_where_that_class_is_common():
    """Fed garbage, a model answers one class for everything: on test photos that are 61% of that
    class (an imbalanced waste stream) its plain accuracy is 61%, above twice chance."""
    predicted = np.zeros(51, dtype=int)
    labels = np.asarray([0] * 31 + [1, 2, 3, 4] * 5)
    with pytest.raises(ModelError, match="under the 40%"):  # balanced accuracy: 20%
        check_baseline(predicted, labels, FIVE, PixelContract(), "folders")
    two_present = np.asarray([0] * 31 + [3] * 31)  # only two of the five classes photographed
    with pytest.raises(ModelError, match="answers cardboard for 100% of them, which are 50% cardboard"):
        check_baseline(np.zeros(62, dtype=int), two_present, FIVE, PixelContract(), "folders")
    common = np.asarray([0] * 95 + [1] * 5)  # a stream that is 95% cardboard: answering it 96% of the time is fine
    check_baseline(np.asarray([0] * 96 + [1] * 4), common, FIVE, PixelContract(), "folders")


def test_the_refusal_points_at_what_was_given_and_not_at_flags_that_cannot_apply():
    predicted, labels = _answers({c: (2, 18) for c in range(5)})
    mean_std = PixelContract(PixelTransform.from_mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), given=True)
    with pytest.raises(ModelError) as refused:
        check_baseline(predicted, labels, FIVE, mean_std, "folders")
    assert "pixel values given (pixel values normalised per channel" in str(refused.value)
    assert "pass --input-range" not in str(refused.value)
    with pytest.raises(ModelError) as refused:  # an integer-input model: its quantization is its normalisation
        check_baseline(predicted, labels, FIVE, PixelContract(), "folders", "as_given", integer_input=True)
    assert "--input-range" not in str(refused.value) and "float32" not in str(refused.value)


def test_classify_applies_the_recorded_channel_order(tiny_optimized, synthetic_dir, tmp_path):
    from edgeopt.classify import classify

    out, results = tiny_optimized
    model = tmp_path / "m.tflite"
    model.write_bytes((out / results.variant("f0_float32").file).read_bytes())
    labels = json.loads((out / "labels.json").read_text())
    images = sorted(synthetic_dir.glob("*/*.jpg"))[:6]
    rgb = [p.top[0][1] for p in classify(model, images, out / "labels.json")]
    labels["input"]["channel_order"] = "bgr"
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    recorded = [p.top[0][1] for p in classify(model, images)]  # labels.json beside the model
    given = [p.top[0][1] for p in classify(model, images, out / "labels.json",
                                           transform=PixelTransform(channel_order="bgr"))]
    assert recorded == pytest.approx(given) and recorded != pytest.approx(rgb)


def test_the_feed_text_of_a_normalised_float_input_says_one_thing():
    from edgeopt.graph import input_contract

    mean_std = PixelContract(PixelTransform.from_mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), given=True)
    feed = input_contract(TensorSpec("x", (-1, 3, 8, 8), "float32", layout="NCHW"), mean_std).feed
    assert "0..255 as floats" not in feed and "each value pixel * [" in feed
    quantized = TensorSpec("x", (-1, 8, 8, 3), "uint8", scale=0.018, zero_point=114)
    assert "float input" not in input_contract(quantized, mean_std).feed


def test_two_classes_swapped_in_the_labels_are_named():
    """glass and metal swapped: the other classes stay right, so balanced accuracy passes the chance rule."""
    predicted, labels = _answers({0: (25, 6), 1: (20, 11), 2: (22, 9), 3: (25, 6), 4: (21, 10)})
    swapped = predicted.copy()
    swapped[predicted == 1], swapped[predicted == 2] = 2, 1
    check_baseline(predicted, labels, FIVE, PixelContract(), "folders")
    with pytest.raises(ModelError, match="outputs 1 and 2 look swapped: 42 photos of glass and metal are answered as "
                                         "the other, 0 as themselves"):
        check_baseline(swapped, labels, FIVE, PixelContract(), "folders")
    confused = predicted.copy()  # a model that mistakes some metal for glass, as models do: not a swap
    confused[(labels == 2) & (np.arange(len(labels)) % 3 == 0)] = 1
    check_baseline(confused, labels, FIVE, PixelContract(), "folders")
