"""The model files teams bring as their tools write them: an .onnx with its weights beside it, a
fixed batch size, a .tflite quantized inside, several signatures, a free image size; and the
conversion run only when it is needed, with no network."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.cli import main
from edgeopt.config import MeasureConfig, OptimizeConfig
from tests.own_models import onnx2tf_ready, save_with_external_weights

QUICK = OptimizeConfig(representative_samples=20, measure=MeasureConfig(threads=1, rounds=2, invocations=5, warmup=2,
                                                                        train_images=0))


def _external_data(path) -> list[str]:
    from edgeopt.sources.onnx import external_data_files

    return external_data_files(path)


def test_an_onnx_model_with_its_weights_beside_it_gets_whole_variants(team_model, synthetic_dir, tmp_path):
    from edgeopt.pipeline import optimize

    _, paths = team_model
    model = save_with_external_weights(paths["onnx"], tmp_path / "torch_style.onnx")
    assert _external_data(model) == ["torch_style.onnx.data"]
    results = optimize(model, tmp_path / "out", QUICK.model_copy(update={
        "methods": ("ort_fp32", "ort_int8_static", "ort_fp16"), "backends": ("onnxruntime",)}), data_dir=synthetic_dir)
    assert [v.name for v in results.variants] == ["ort_fp32", "ort_int8_static", "ort_fp16"]
    for variant in results.variants:  # each one file: what a release ships
        assert _external_data(tmp_path / "out" / variant.file) == []
    assert not list((tmp_path / "out").rglob("*.data"))
    assert _external_data(model) == ["torch_style.onnx.data"]  # the user's files untouched


def test_an_onnx_model_whose_weights_file_is_missing_is_refused_naming_it(team_model, synthetic_dir, tmp_path, capsys):
    _, paths = team_model
    model = save_with_external_weights(paths["onnx"], tmp_path / "torch_style.onnx")
    (tmp_path / "torch_style.onnx.data").unlink()
    code = main(["optimize", str(model), "--data", str(synthetic_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "keeps its weights in torch_style.onnx.data" in err and ".partial" not in err


@pytest.mark.slow
def test_onnx2tf_converts_a_fixed_batch_model_with_weights_beside_it_without_the_network(
        team_model, synthetic_dir, tmp_path, monkeypatch):
    """torch.onnx.export without dynamic_axes writes batch 1, for which onnx2tf wants sample images
    it downloads from github.com unless they are in its working folder; every proxy here is closed."""
    from edgeopt.sources.onnx2tf import SAMPLE_FILE, convert_onnx, find_converter

    onnx2tf_ready()
    _, paths = team_model
    model = save_with_external_weights(paths["onnx"], tmp_path / "fixed1.onnx", batch=1)
    for variable in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    pixels = np.random.default_rng(1).integers(0, 256, (7, 48, 48, 3), dtype=np.uint8)
    converted, why = convert_onnx(find_converter(), model, tmp_path / "work" / "onnx2tf", tmp_path / "log",
                                  sample_pixels=pixels)
    assert converted is not None and (converted / "saved_model.pb").is_file(), why
    sample = np.load(tmp_path / "work" / SAMPLE_FILE)
    assert sample.shape == (20, 128, 128, 3) and sample.dtype == np.float32 and 0 <= sample.min() <= sample.max() <= 1


def _no_conversion(monkeypatch, tmp_path):
    """A converter that is there, and a conversion that must not run."""
    from edgeopt import pipeline
    from edgeopt.sources import onnx2tf

    monkeypatch.setattr(pipeline, "find_converter", lambda: onnx2tf.Converter(tmp_path / "python", "onnx2tf==test"))

    def convert(*args, **kwargs):
        raise AssertionError("onnx2tf was run")

    monkeypatch.setattr(pipeline, "convert_onnx", convert)


def test_onnx2tf_is_not_run_when_no_litert_variant_is_asked_for(team_model, synthetic_dir, tmp_path, monkeypatch):
    from edgeopt.pipeline import optimize

    _no_conversion(monkeypatch, tmp_path)
    _, paths = team_model
    for name, update in (("backends", {"backends": ("onnxruntime",)}), ("methods", {"methods": ("ort_fp32",)})):
        results = optimize(paths["onnx"], tmp_path / name, QUICK.model_copy(update=update), data_dir=synthetic_dir)
        assert results.baseline.name == "ort_fp32" and not any("onnx2tf" in n for n in results.notes)


def test_an_onnx_model_fed_wrongly_is_refused_before_the_conversion(team_model, synthetic_dir, tmp_path, monkeypatch,
                                                                     capsys):
    _no_conversion(monkeypatch, tmp_path)
    _, paths = team_model
    code = main(["optimize", str(paths["onnx"]), "--data", str(synthetic_dir), "--out", str(tmp_path / "out"),
                 "--input-range", "0,1", "--methods", "f0_float32,ort_fp32"])
    err = capsys.readouterr().err
    assert code == 2 and "team.onnx (run by ONNX Runtime) gets" in err and "drop --input-range" in err
    assert not (tmp_path / "out").exists()
