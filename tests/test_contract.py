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


def test_the_baseline_under_twice_chance_is_refused_with_the_settings_to_check():
    check_baseline(0.45, 100, 5, PixelContract(), "sorted folders")  # 2 x 20% = 40%: fine
    with pytest.raises(ModelError) as refused:
        check_baseline(0.21, 100, 5, PixelContract(), "the sorted class folder names")
    text = str(refused.value)
    for hint in ("under twice chance", "--input-range", "--channel-order", "labels order", "--labels FILE"):
        assert hint in text


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
