"""A team's model fed what it was trained on: the input contract reaches calibration as well as
measurement, and the baseline check refuses a model fed wrongly without refusing a good one."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.config import MeasureConfig, OptimizeConfig
from tests.own_models import save_uint8_savedmodel, save_without_rescaling

# Every variant on every image (no race), so that their answers can be compared image by image.
EVERY_IMAGE = OptimizeConfig(representative_samples=40, measure=MeasureConfig(
    threads=1, rounds=2, invocations=5, warmup=2, train_images=0, race=False))


@pytest.mark.slow
def test_int8_is_calibrated_on_the_pixels_the_model_is_fed(team_model, synthetic_dir, tmp_path):
    """A model that does not rescale pixels itself, fed -1..1 (--input-range): f2's activation
    ranges must be those of -1..1, not of raw 0..255 pixels, or int8 answers at random."""
    from edgeopt.pipeline import optimize

    model, _ = team_model
    unscaled = save_without_rescaling(model, tmp_path / "unscaled.keras")
    config = EVERY_IMAGE.model_copy(update={"methods": ("f0_float32", "f2_int8", "f3_int8_uint8io"),
                                            "input_range": (-1.0, 1.0)})
    results = optimize(unscaled, tmp_path / "out", config, data_dir=synthetic_dir)
    base = np.asarray(results.baseline.predictions.test)
    for name in ("f2_int8", "f3_int8_uint8io"):
        answers = np.asarray(results.variant(name).predictions.test)
        assert len(answers) == len(base) and np.mean(answers == base) >= 0.95, name


@pytest.mark.slow
def test_a_savedmodel_that_takes_bytes_gets_int8_variants_calibrated_on_bytes(team_model, synthetic_dir, tmp_path,
                                                                               capsys):
    from edgeopt.cli import main
    from edgeopt.pipeline import optimize

    model, _ = team_model
    saved = save_uint8_savedmodel(model, tmp_path / "bytes_savedmodel")
    config = EVERY_IMAGE.model_copy(update={"methods": ("f0_float32", "f2_int8", "f3_int8_uint8io")})
    results = optimize(saved, tmp_path / "out", config, data_dir=synthetic_dir)
    base = np.asarray(results.baseline.predictions.test)
    assert [v.name for v in results.variants] == ["f0_float32", "f2_int8", "f3_int8_uint8io"]
    assert np.mean(np.asarray(results.variant("f2_int8").predictions.test) == base) >= 0.95
    assert "camera bytes as they are" in results.baseline.input.feed
    code = main(["optimize", str(saved), "--data", str(synthetic_dir), "--out", str(tmp_path / "ranged"),
                 "--input-range", "-1,1", "--methods", "f0_float32"])
    err = capsys.readouterr().err
    assert code == 2 and "takes uint8 input" in err and "drop --input-range" in err


def _copy_some(source, dest, per_class: int):
    import shutil

    for cls in sorted(p for p in source.iterdir() if p.is_dir()):
        for image in sorted(cls.iterdir())[:per_class]:
            (dest / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, dest / cls.name / f"copy_{image.name}")  # another name, the same photo
    return dest


def test_photos_that_are_also_test_photos_are_never_calibrated_on(team_model, synthetic_dir, tmp_path, capsys):
    from edgeopt.cli import main
    from edgeopt.errors import ConfigError
    from edgeopt.sources.base import SourceOptions
    from edgeopt.sources.registry import load_source

    _, paths = team_model
    holdout = _copy_some(synthetic_dir, tmp_path / "holdout", 4)  # a copy of some of --data, as teams make them
    source = load_source(paths["tflite"], SourceOptions(data_dir=synthetic_dir, test_dir=holdout))
    assert len(source.split.test) == 20 and len(source.split.train) == len(list(synthetic_dir.rglob("*.jpg"))) - 20
    assert any("20 of the" in n and "also in --test-data" in n for n in source.notes)
    source = load_source(paths["tflite"], SourceOptions(test_dir=holdout, calibration_dir=synthetic_dir))
    assert len(source.calibration[1]) == len(list(synthetic_dir.rglob("*.jpg"))) - 20
    with pytest.raises(ConfigError, match="every photo in --calibration-data"):
        load_source(paths["tflite"], SourceOptions(test_dir=holdout, calibration_dir=holdout))
    code = main(["optimize", str(paths["tflite"]), "--data", str(synthetic_dir), "--test-data", str(synthetic_dir),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "every photo in --data is also in --test-data" in capsys.readouterr().err


def test_the_report_says_f3_cannot_carry_a_per_channel_normalisation(team_model, synthetic_dir):
    from edgeopt.pixels import PixelTransform
    from edgeopt.sources.base import SourceOptions
    from edgeopt.sources.registry import load_source

    _, paths = team_model
    imagenet = PixelTransform.from_mean_std((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    for transform, said in ((imagenet, True), (PixelTransform.from_range(-1, 1), False)):
        source = load_source(paths["tflite"], SourceOptions(data_dir=synthetic_dir, transform=transform))
        assert any("one input scale for all three channels" in n for n in source.notes) == said
