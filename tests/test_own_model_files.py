"""The model files teams bring as their tools write them: an .onnx with its weights beside it, a
fixed batch size, a .tflite quantized inside, several signatures, a free image size; and the
conversion run only when it is needed, with no network."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.cli import main
from edgeopt.config import MeasureConfig, OptimizeConfig
from tests.conftest import CORAL, needs
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


def _converted(model, mode: str, pixels: np.ndarray) -> bytes:
    """The team's Keras model through TensorFlow's converter, quantized inside with float input and output."""
    from edgeopt._tf import import_tensorflow
    from edgeopt.quiet import captured_output

    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        converter.representative_dataset = lambda: ([p[None].astype(np.float32)] for p in pixels)
    with captured_output():
        return bytes(converter.convert())


@pytest.fixture(scope="module")
def quantized_inside(team_model, synthetic_dir, tmp_path_factory):
    from edgeopt.data.imagefolder import decode_images, scan_image_folder

    model, _ = team_model
    folder = scan_image_folder(synthetic_dir)
    pixels = decode_images(folder.root, folder.items[::10], (48, 48)).pixels
    out = tmp_path_factory.mktemp("quantized_inside")
    paths = {}
    for mode in ("dynamic_range", "float16", "int8"):
        paths[mode] = out / f"{mode}.tflite"
        paths[mode].write_bytes(_converted(model, mode, pixels))
    return paths


@pytest.mark.parametrize(("mode", "how"), [("dynamic_range", "int8 weights (dynamic range or weight-only)"),
                                           ("float16", "float16 weights"),
                                           ("int8", "int8 weights and activations inside a float input and output")])
def test_a_tflite_with_float_input_but_quantized_inside_is_seen_as_quantized(quantized_inside, mode, how):
    from edgeopt.sources.tflite import read_facts

    facts = read_facts(quantized_inside[mode])
    assert facts.inputs[0].dtype == "float32" and facts.quantized and facts.quantized_how == how


def test_a_quantized_tflite_is_measured_as_given_with_test_photos_only(quantized_inside, synthetic_dir, tmp_path):
    """No calibration photos needed for a file nothing is built from (was: refused for lack of them)."""
    from edgeopt.pipeline import optimize

    results = optimize(quantized_inside["int8"], tmp_path / "out", QUICK, test_data=synthetic_dir)
    assert [v.name for v in results.variants] == ["as_given"]
    assert any("already quantized: int8 weights and activations" in n and "measured as given" in n
               for n in results.notes)
    assert results.representative_samples == 0


def test_a_tflite_with_several_signatures_is_refused_naming_them(team_model, synthetic_dir, tmp_path, capsys):
    from edgeopt._tf import import_tensorflow
    from edgeopt.quiet import captured_output

    tf = import_tensorflow()
    model, _ = team_model

    class Two(tf.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        @tf.function(input_signature=[tf.TensorSpec([1, 48, 48, 3], tf.float32)])
        def classify(self, x):
            return {"probs": self.inner(x)}

        @tf.function(input_signature=[tf.TensorSpec([1, 48, 48, 3], tf.float32)])
        def brightness(self, x):
            return {"mean": tf.reduce_mean(x, axis=[1, 2])}

    module = Two(model)
    with captured_output():
        tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"a_brightness": module.brightness,
                                                                      "serving_default": module.classify})
        converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"),
                                                             signature_keys=["a_brightness", "serving_default"])
        (tmp_path / "two.tflite").write_bytes(converter.convert())
    code = main(["optimize", str(tmp_path / "two.tflite"), "--data", str(synthetic_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "2 signatures (a_brightness, serving_default)" in err and "signature_keys" in err


def test_a_model_of_free_image_size_is_refused_saying_how_to_fix_it(synthetic_dir, tmp_path, capsys):
    from edgeopt._tf import import_keras

    keras = import_keras()
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Dense(5, activation="softmax")(keras.layers.GlobalAveragePooling2D()(inputs))
    keras.Model(inputs, outputs).save(tmp_path / "any_size.keras")
    code = main(["optimize", str(tmp_path / "any_size.keras"), "--data", str(synthetic_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "takes images of any size" in err and "keras.Input((H, W, 3))" in err


def test_a_labels_file_naming_a_photo_folder_twice_is_refused_naming_the_lines(team_model, synthetic_dir, tmp_path,
                                                                                capsys):
    _, paths = team_model
    classes = sorted(p.name for p in synthetic_dir.iterdir() if p.is_dir())
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join([classes[0], classes[1], classes[1], classes[3], classes[4]]) + "\n")
    code = main(["optimize", str(paths["tflite"]), "--data", str(synthetic_dir), "--out", str(tmp_path / "out"),
                 "--labels", str(labels)])
    err = capsys.readouterr().err
    assert code == 2 and f"names {classes[1]} on lines 2, 3" in err and f"'{classes[1]} (2)'" in err


@needs(CORAL)
def test_imagenets_own_labels_file_with_crane_twice_is_accepted_with_a_note(tmp_path):
    """The labels file the Coral models come with names two outputs 'crane' (the bird, the machine);
    measured on test photos alone, as an already-quantized model needs no calibration photos."""
    import shutil

    from edgeopt.pipeline import optimize
    from edgeopt.sources.base import read_labels_file

    names, duplicates = read_labels_file(CORAL / "imagenet_labels.txt")
    assert duplicates == {"crane": [136, 519]} and names[135] == "crane" and names[518] == "crane (2)"
    for cls in ("Egyptian cat", "tabby, tabby cat"):
        (tmp_path / "cats" / cls).mkdir(parents=True)
        shutil.copyfile(CORAL / "cat.bmp", tmp_path / "cats" / cls / "cat.bmp")
    results = optimize(CORAL / "mobilenet_v1_0.25_128_quant.tflite", tmp_path / "out", QUICK,
                       test_data=tmp_path / "cats", labels=CORAL / "imagenet_labels.txt")
    assert [v.name for v in results.variants] == ["as_given"]
    assert any("names crane on lines 136, 519" in n for n in results.notes)


def test_a_keras_file_whose_config_inflates_to_gigabytes_is_refused(team_model, synthetic_dir, tmp_path, capsys):
    """A zip bomb: a .keras of about a megabyte whose config.json inflates past the cap (Keras reads it whole)."""
    import zipfile

    _, paths = team_model
    bomb = tmp_path / "bomb.keras"
    with zipfile.ZipFile(paths["keras"]) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == "config.json":
                data = data + b" " * (65 * 2**20)  # still valid JSON
            out.writestr(info.filename, data)
    assert bomb.stat().st_size < 2**20
    code = main(["optimize", str(bomb), "--data", str(synthetic_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "config.json inflates to 65 MiB" in err and not (tmp_path / "out").exists()


def test_a_variant_its_runtime_cannot_open_is_left_out_and_no_message_names_the_staging_folder(
        team_model, synthetic_dir, tmp_path, monkeypatch):
    from dataclasses import replace

    from edgeopt.errors import ModelError
    from edgeopt.methods.registry import METHODS
    from edgeopt.pipeline import optimize

    def broken(ctx, out):
        out.write_bytes(b"\x08\x07 not a graph")

    _, paths = team_model
    config = QUICK.model_copy(update={"methods": ("ort_fp32", "ort_int8_dynamic"), "build_processes": 1})
    monkeypatch.setitem(METHODS, "ort_int8_dynamic", replace(METHODS["ort_int8_dynamic"], build=broken))
    results = optimize(paths["onnx"], tmp_path / "one", config, data_dir=synthetic_dir)
    assert [v.name for v in results.variants] == ["ort_fp32"]
    note = next(n for n in results.notes if n.startswith("Not measured: ort_int8_dynamic"))
    assert f"built from {paths['onnx']}" in note and "variants/ort_int8_dynamic.onnx" in note and ".partial" not in note
    monkeypatch.setitem(METHODS, "ort_fp32", replace(METHODS["ort_fp32"], build=broken))
    with pytest.raises(ModelError) as refused:
        optimize(paths["onnx"], tmp_path / "two", config, data_dir=synthetic_dir)
    assert str(refused.value).startswith("ort_fp32, built from") and ".partial" not in str(refused.value)
