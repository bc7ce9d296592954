"""Optimizing the model a team already has: every kind detected from its content, the study's
variants from each, the input contract and the labels checked, bad files refused with exit 2."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from edgeopt.cli import main
from edgeopt.config import MeasureConfig, OptimizeConfig
from edgeopt.errors import ConfigError
from edgeopt.sources.registry import detect_kind
from tests.own_models import save_every_kind, train_keras_classifier

STUDY = ["f0_float32", "f1_dynamic_range", "f2_int8", "f3_int8_uint8io", "f4_float16"]
KINDS = ["keras", "h5", "savedmodel", "tflite", "onnx"]
QUICK = OptimizeConfig(representative_samples=20, measure=MeasureConfig(threads=1, rounds=2, invocations=5, warmup=2,
                                                                        train_images=0))
QUICK_FLAGS = ["--representative-samples", "20", "--rounds", "2", "--invocations", "5", "--train-images", "0",
               "--backends", "litert"]


@pytest.fixture(scope="session")
def team_model(synthetic_dir, tmp_path_factory):
    """A Keras classifier trained outside edgeopt, saved in every kind, and its own answers."""
    model, decoded = train_keras_classifier(synthetic_dir)
    paths = save_every_kind(model, tmp_path_factory.mktemp("team"))
    return model, paths


def _keras_top1(model, synthetic_dir, results):
    from edgeopt.data.imagefolder import decode_images

    items = [(p, c) for p, c in results.data.test_items]
    pixels = decode_images(synthetic_dir, items, (48, 48)).pixels
    return model.predict(pixels.astype(np.float32), verbose=0).argmax(1)


def _onnx2tf_ready():
    from edgeopt.sources import onnx2tf

    if onnx2tf.find_converter() is None:
        try:
            onnx2tf.setup()  # cached in the user's cache folder: a download on the first run only
        except ConfigError as exc:
            pytest.skip(f"onnx2tf's environment cannot be created here: {exc}")


def test_every_kind_is_detected_from_its_content_not_its_name(team_model, tmp_path):
    _, paths = team_model
    for kind, path in paths.items():
        assert detect_kind(path) == kind
        if path.is_file():  # renamed: the content still says what it is
            renamed = tmp_path / f"{kind}.model"
            shutil.copyfile(path, renamed)
            assert detect_kind(renamed) == kind


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_gets_the_studys_variants_and_a_baseline_that_answers_as_keras_does(
        team_model, synthetic_dir, tmp_path, kind):
    from edgeopt.pipeline import optimize

    model, paths = team_model
    if kind == "onnx":
        _onnx2tf_ready()
    config = QUICK if kind == "onnx" else QUICK.model_copy(update={"backends": ("litert",)})
    results = optimize(paths[kind], tmp_path / "out", config, data_dir=synthetic_dir)
    names = [v.name for v in results.variants]
    assert names[:5] == STUDY, names
    if kind == "onnx":
        assert {"ort_fp32", "ort_int8_static", "ort_fp16"} <= set(names)
        assert any("onnx2tf" in n for n in results.notes)
    if kind == "tflite":
        assert "weight_only_int8" in names and any("AI Edge Quantizer" in n for n in results.notes)
    assert results.model.kind == kind and results.baseline.name == "f0_float32"
    base = np.asarray(results.baseline.predictions.test)
    assert np.mean(base == _keras_top1(model, synthetic_dir, results)) >= 0.99
    assert any("rescales pixels itself" in n for n in results.notes) or kind == "tflite"  # folded into the conv there
    labels = json.loads((tmp_path / "out" / "labels.json").read_text())
    assert labels["classes"] == sorted(p.name for p in synthetic_dir.iterdir() if p.is_dir())
    assert "sorted class folder names" in labels["labels_from"]
    f3 = results.variant("f3_int8_uint8io")
    assert f3.graph.input.dtype == "uint8" and f3.graph.output.dtype == "uint8"


def test_a_model_fed_the_wrong_range_is_refused_and_nothing_is_written(team_model, synthetic_dir, tmp_path, capsys):
    _, paths = team_model
    out = tmp_path / "out"
    code = main(["optimize", str(paths["keras"]), "--data", str(synthetic_dir), "--out", str(out),
                 "--input-range", "0,1", *QUICK_FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and "under twice chance" in err
    assert "--input-range" in err and "rescales pixels itself" in err and "drop it" in err
    assert not out.exists() and not list(tmp_path.glob(".out*"))


def test_a_labels_file_in_the_wrong_order_is_refused(team_model, synthetic_dir, tmp_path, capsys):
    _, paths = team_model
    classes = sorted(p.name for p in synthetic_dir.iterdir() if p.is_dir())
    wrong = tmp_path / "labels.txt"
    wrong.write_text("\n".join(classes[1:] + classes[:1]) + "\n")  # every class one place off
    code = main(["optimize", str(paths["keras"]), "--data", str(synthetic_dir), "--out", str(tmp_path / "out"),
                 "--labels", str(wrong), *QUICK_FLAGS])
    err = capsys.readouterr().err
    assert code == 2 and "under twice chance" in err and f"from --labels {wrong}" in err
    assert not (tmp_path / "out").exists()


def test_a_labels_file_in_the_right_order_is_used_and_said(team_model, synthetic_dir, tmp_path):
    from edgeopt.sources.base import SourceOptions
    from edgeopt.sources.registry import load_source

    _, paths = team_model
    classes = sorted(p.name for p in synthetic_dir.iterdir() if p.is_dir())
    given = tmp_path / "labels.json"
    given.write_text(json.dumps(classes))
    source = load_source(paths["keras"], SourceOptions(data_dir=synthetic_dir, labels_file=given))
    assert source.classes == tuple(classes) and f"from --labels {given}" in source.labels_note


def test_a_labels_file_of_another_size_is_refused_naming_both_numbers(team_model, synthetic_dir, tmp_path, capsys):
    _, paths = team_model
    short = tmp_path / "labels.txt"
    short.write_text("a\nb\nc\n")
    code = main(["optimize", str(paths["tflite"]), "--data", str(synthetic_dir), "--out", str(tmp_path / "out"),
                 "--labels", str(short)])
    err = capsys.readouterr().err
    assert code == 2 and "outputs 5 class scores but there are 3 classes" in err


@pytest.mark.parametrize("kind", ["keras", "h5", "tflite", "onnx"])
def test_a_truncated_file_of_any_kind_is_refused_with_exit_2(team_model, synthetic_dir, tmp_path, capsys, kind):
    _, paths = team_model
    cut = tmp_path / paths[kind].name
    data = paths[kind].read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    code = main(["optimize", str(cut), "--data", str(synthetic_dir), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert not out.exists()


def test_a_random_file_is_refused_naming_what_is_accepted(synthetic_dir, tmp_path, capsys):
    noise = tmp_path / "model.onnx"
    noise.write_bytes(np.random.default_rng(0).bytes(4096))
    code = main(["optimize", str(noise), "--data", str(synthetic_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "its content is not an .onnx file" in err
    for accepted in ("'edgeopt train'", ".keras", ".h5", "SavedModel", ".tflite", ".onnx"):
        assert accepted in err
    assert not (tmp_path / "out").exists()


def _model_with_custom_layer(path):
    from edgeopt._tf import import_keras

    keras = import_keras()
    from tests.custom_layers import Doubling

    inputs = keras.Input((8, 8, 3))
    x = Doubling()(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    keras.Model(inputs, outputs).save(path)


def test_a_custom_layer_is_named_with_the_way_out(tmp_path, synthetic_dir, capsys):
    from edgeopt.sources.tensorflow import read_facts

    path = tmp_path / "custom.keras"
    _model_with_custom_layer(path)
    code = main(["optimize", str(path), "--data", str(synthetic_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Doubling" in err and "--custom-objects module:attr" in err and "SavedModel" in err
    assert not (tmp_path / "out").exists()
    facts = read_facts("keras", path, ("tests.custom_layers:Doubling",))  # the way out works
    assert facts.inputs[0].shape == (-1, 8, 8, 3) and facts.probabilities is True


def test_a_model_with_two_outputs_is_refused_naming_them(tmp_path, synthetic_dir, capsys):
    from edgeopt._tf import import_keras

    keras = import_keras()
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(5, name="kind")(x), keras.layers.Dense(2, name="dirty")(x)])
    model.save(tmp_path / "two.keras")
    code = main(["optimize", str(tmp_path / "two.keras"), "--data", str(synthetic_dir), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "2 output(s)" in err and "kind" in err and "dirty" in err


def test_a_train_folder_refuses_flags_meant_for_foreign_models(tiny_model, tmp_path):
    from edgeopt.pipeline import optimize

    with pytest.raises(ConfigError, match="knows its labels and its own split"):
        optimize(tiny_model, tmp_path / "o", QUICK, labels=tmp_path / "x.txt")


def test_test_data_is_used_whole_and_never_for_calibration(team_model, synthetic_dir, tmp_path):
    from edgeopt.sources.base import SourceOptions
    from edgeopt.sources.registry import load_source

    _, paths = team_model
    held = tmp_path / "held"
    for cls in (p for p in synthetic_dir.iterdir() if p.is_dir()):
        for image in sorted(cls.glob("*.jpg"))[:4]:
            (held / cls.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(image, held / cls.name / image.name)
    source = load_source(paths["tflite"], SourceOptions(data_dir=synthetic_dir, test_dir=held))
    assert len(source.split.test) == 20 and source.test_root == held
    assert all((held / p).is_file() for p, _ in source.split.test) and source.data_root == synthetic_dir
    assert any("used whole and never for calibration" in n for n in source.notes)
    with pytest.raises(ConfigError, match="never for calibration"):
        load_source(paths["tflite"], SourceOptions(test_dir=held))


def test_an_already_quantized_tflite_is_measured_as_given(team_model, synthetic_dir, tmp_path):
    from edgeopt.graph import describe_model
    from edgeopt.pipeline import optimize

    _, paths = team_model
    first = optimize(paths["tflite"], tmp_path / "first", QUICK.model_copy(update={"methods": ("f0_float32", "f3_int8_uint8io")}),
                     data_dir=synthetic_dir)
    quantized = tmp_path / "team_uint8.tflite"
    shutil.copyfile(tmp_path / "first" / first.variant("f3_int8_uint8io").file, quantized)
    results = optimize(quantized, tmp_path / "second", QUICK, data_dir=synthetic_dir)
    assert [v.name for v in results.variants] == ["as_given"] and results.selected.name == "as_given"
    assert any("already quantized" in n and "measured as given" in n for n in results.notes)
    assert describe_model(tmp_path / "second" / "selected.tflite").inputs[0].dtype == "uint8"


def test_a_failed_onnx_conversion_names_the_op_and_the_ort_variants_still_run(team_model, synthetic_dir, tmp_path,
                                                                              monkeypatch):
    from edgeopt import pipeline
    from edgeopt.sources import onnx2tf

    _, paths = team_model
    monkeypatch.setattr(pipeline, "find_converter", lambda: onnx2tf.Converter(tmp_path / "python", "onnx2tf==test"))
    monkeypatch.setattr(pipeline, "convert_onnx",
                        lambda *a, **k: (None, "onnx2tf cannot convert the op DFT (not implemented in onnx2tf==test)"))
    results = pipeline.optimize(paths["onnx"], tmp_path / "out", QUICK.model_copy(update={"methods": (
        "f0_float32", "f2_int8", "ort_fp32", "ort_int8_static")}), data_dir=synthetic_dir)
    assert [v.name for v in results.variants] == ["ort_fp32", "ort_int8_static"]
    assert any("cannot convert the op DFT" in n and "ONNX Runtime variants were" in n for n in results.notes)


def test_onnx2tf_failures_name_the_op(tmp_path, team_model):
    """The real subprocess path, with a stand-in interpreter that fails as onnx2tf does."""
    from edgeopt.sources.onnx2tf import Converter, convert_onnx

    _, paths = team_model
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '\033[31mERROR:\033[0m DFT OP is not yet implemented.' >&2\nexit 1\n")
    fake.chmod(0o755)
    model, why = convert_onnx(Converter(fake, "onnx2tf==1.29.24"), paths["onnx"], tmp_path / "out", tmp_path / "log")
    assert model is None and why == "onnx2tf cannot convert the op DFT (not implemented in onnx2tf==1.29.24)"
    node = next(n for n in __import__("onnx").load(str(paths["onnx"])).graph.node if n.op_type == "Conv")
    fake.write_text(f"#!/bin/sh\necho 'ERROR: The trace log is below.'\necho 'ERROR: onnx_op_name: {node.name}'\nexit 1\n")
    _, why = convert_onnx(Converter(fake, "onnx2tf==1.29.24"), paths["onnx"], tmp_path / "out", tmp_path / "log")
    assert why == f"onnx2tf could not convert the op Conv (node {node.name})"


def test_without_onnx2tf_the_report_says_the_one_command(team_model, synthetic_dir, tmp_path, monkeypatch):
    from edgeopt.pipeline import optimize

    monkeypatch.setenv("EDGEOPT_ONNX2TF_ENV", str(tmp_path / "none"))
    _, paths = team_model
    results = optimize(paths["onnx"], tmp_path / "out", QUICK.model_copy(update={"methods": ("ort_fp32",)}),
                       data_dir=synthetic_dir)
    assert any("'edgeopt setup onnx2tf'" in n for n in results.notes)
    assert results.variant("ort_fp32").input.tensor.layout == "NCHW"
