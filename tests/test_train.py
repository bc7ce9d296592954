"""Training: the files it leaves, the model's input contract, the schedule, weight loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from edgeopt.config import TrainConfig
from edgeopt.errors import ModelError
from edgeopt.train import build_model, load_keras_model, triangular_lr
from tests.conftest import BACKBONE, TINY_SIZE, needs


def test_train_writes_model_labels_split_history(tiny_model, synthetic_dir):
    for name in ("model.keras", "labels.json", "split.json", "history.json", "train_config.json"):
        assert (tiny_model / name).is_file(), name
    labels = json.loads((tiny_model / "labels.json").read_text())
    assert labels["classes"] == sorted(p.name for p in synthetic_dir.iterdir() if p.is_dir())
    assert labels["synthetic_data"] is True and labels["image_size"] == TINY_SIZE[0]
    history = json.loads((tiny_model / "history.json").read_text())
    assert history["epochs_run"] >= 1 and "train" in history["phases"]
    assert not list(tiny_model.parent.glob(".*partial*"))


def test_saved_model_takes_pixels_and_returns_probabilities(tiny_model):
    model = load_keras_model(tiny_model)
    pixels = np.random.default_rng(0).integers(0, 256, (4, *TINY_SIZE, 3)).astype(np.float32)
    probs = model.predict(pixels, verbose=0)
    assert probs.shape == (4, 5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # augmentation is not part of the exported model: inference is deterministic
    np.testing.assert_allclose(model.predict(pixels, verbose=0), probs)
    assert "augment" not in [layer.name for layer in model.layers]


def test_triangular_schedule_rises_and_falls_linearly():
    values = [float(triangular_lr(s, 1e-4, 1e-3, 10)) for s in (0, 5, 10, 15, 20, 30)]
    assert values == pytest.approx([1e-4, 5.5e-4, 1e-3, 5.5e-4, 1e-4, 1e-3], rel=1e-5)


def test_unusable_weights_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        build_model(TrainConfig(image_size=32, alpha=0.35, weights=str(tmp_path / "none.h5")), 5)
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not hdf5")
    with pytest.raises(ModelError, match="does not fit"):
        build_model(TrainConfig(image_size=32, alpha=0.35, weights=str(junk)), 5)


def test_imagenet_download_failure_says_how_to_work_offline(monkeypatch):
    import keras

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    monkeypatch.setattr("keras.src.applications.mobilenet_v2.file_utils.get_file", offline)
    with pytest.raises(ModelError, match="--weights PATH"):
        build_model(TrainConfig(image_size=96, alpha=0.35, weights="imagenet"), 5)


@needs(BACKBONE)
def test_local_imagenet_backbone_loads_into_the_model():
    def conv1(weights):
        _, backbone = build_model(TrainConfig(image_size=96, alpha=1.0, weights=weights), 5)
        return backbone.get_layer("Conv1").get_weights()[0]

    first, second, random = conv1(str(BACKBONE)), conv1(str(BACKBONE)), conv1("none")
    assert first.shape == (3, 3, 3, 32)
    np.testing.assert_array_equal(first, second)  # the file's filters, not a fresh random init
    assert not np.allclose(first, random)


@pytest.mark.parametrize("bad", [dict(image_size=8), dict(alpha=0), dict(epochs_head=0), dict(lr_min=1, lr_max=0.1),
                                 dict(label_smoothing=1.0), dict(label_smoothing=-0.1), dict(finetune_lr_scale=0),
                                 dict(finetune_lr_scale=1.5)])
def test_bad_train_settings_are_refused(bad):
    with pytest.raises(ValidationError):
        TrainConfig(**bad)


def test_label_smoothing_keeps_the_model_from_certainty(tiny_model, synthetic_dir, tmp_path):
    """Smoothing e = 0.3 over 5 classes trains toward 0.76 on the true class: far fewer near-certain
    answers than the same training gives without it, and the model still learns."""
    from edgeopt.data.imagefolder import decode_images, scan_image_folder
    from edgeopt.data.split import load_split
    from edgeopt.train import train
    from tests.conftest import TINY_TRAIN

    smoothed = train(synthetic_dir, tmp_path / "smoothed", TINY_TRAIN.replaced(label_smoothing=0.3)).folder
    split = load_split(tiny_model / "split.json")
    images = decode_images(scan_image_folder(synthetic_dir).root, split.train, TINY_SIZE)

    def answers(folder):
        return load_keras_model(folder).predict(images.pixels.astype(np.float32), verbose=0)

    plain, soft = answers(tiny_model), answers(smoothed)

    def near_certain(answers):
        return np.mean(answers.max(1) > 0.97)

    assert near_certain(plain) >= 0.05  # without smoothing (more than 10% of them on the CPU it was written on)
    assert near_certain(soft) <= near_certain(plain) / 3  # with it, under 1% there
    assert np.mean(soft.argmax(1) == images.labels) > 0.5  # five classes: chance is 0.2
