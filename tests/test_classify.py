"""`edgeopt classify`: each file's answer or error, and labels files it cannot use refused in one line
that says how to fix them."""

from __future__ import annotations

import json

import pytest

from tests.conftest import write_image
from tests.test_cli import assert_one_line_error, run


@pytest.fixture
def model(tiny_optimized):
    out, _ = tiny_optimized
    return out / "variants" / "f0_float32.tflite"


@pytest.fixture
def photo(synthetic_dir):
    return sorted((synthetic_dir / "carton").glob("*.jpg"))[0]


def _labels_json(tiny_optimized, tmp_path, **input_fields):
    out, _ = tiny_optimized
    labels = json.loads((out / "labels.json").read_text())
    labels["input"].update(input_fields)
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(labels))
    return path


@pytest.mark.parametrize("content, fragment", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is binary, not text; pass labels.json"),
    (b"\x00\x00\x00\x05can\x00carton", "is binary, not text; pass labels.json"),  # UTF-8 valid, yet binary
    ("caf\u00e9\ncarton\n".encode("latin-1"), "is not UTF-8 text (byte 3); save it as UTF-8"),
])
def test_a_labels_file_that_is_not_text_is_refused_in_one_line(capsys, model, photo, tmp_path, content, fragment):
    labels = tmp_path / "labels.txt"
    labels.write_bytes(content)
    code, out, err = run(capsys, "classify", model, photo, "--labels", labels)
    assert_one_line_error(code, err, fragment)
    assert out == ""


@pytest.mark.parametrize("field, value", [
    ("pixel_scale", ["1", "1", "1"]),
    ("pixel_offset", "0,0,0"),
    ("pixel_scale", [1.0, 1.0]),
    ("pixel_offset", [0.0, 0.0, 0.0, 0.0]),
    ("pixel_scale", [1.0, True, 1.0]),
])
def test_a_labels_json_whose_input_normalisation_is_not_three_numbers_is_refused(capsys, tiny_optimized, model, photo,
                                                                               tmp_path, field, value):
    labels = _labels_json(tiny_optimized, tmp_path, **{field: value})
    code, out, err = run(capsys, "classify", model, photo, "--labels", labels)
    assert_one_line_error(code, err, f"input.{field} must be three numbers, one per RGB channel, not {json.dumps(value)}")
    assert out == ""


def test_a_labels_json_without_classes_is_refused(capsys, model, photo, tmp_path):
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"image_size": 48}))
    code, _, err = run(capsys, "classify", model, photo, "--labels", labels)
    assert_one_line_error(code, err, 'needs "classes", a list of label names')


def test_labels_of_another_model_are_refused_before_any_image_is_read(capsys, model, photo, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("can\ncarton\nglass\n")
    code, out, err = run(capsys, "classify", model, tmp_path / "missing.jpg", photo, "--labels", labels)
    assert_one_line_error(code, err, "outputs 5 classes but the labels have 3")
    assert out == ""


def test_classify_answers_every_readable_file_and_names_each_one_it_cannot_read(capsys, model, synthetic_dir, tmp_path):
    good = sorted((synthetic_dir / "carton").glob("*.jpg"))[:2]
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("a shopping list")
    missing = tmp_path / "gone.png"
    code, out, err = run(capsys, "classify", model, good[0], not_an_image, missing, good[1])
    assert code == 2 and "Traceback" not in err
    answers = out.splitlines()
    assert [line.split(": ")[0] for line in answers] == [str(good[0]), str(good[1])]
    assert all(len(line.split(": ")[1].split(", ")) == 3 for line in answers)  # top 3 labels with their scores
    errors = err.splitlines()
    assert len(errors) == 2 and errors[0].startswith(f"error: {not_an_image} is not a readable image")
    assert errors[1] == f"error: {missing} does not exist"


def test_classify_of_readable_files_exits_0(capsys, model, tmp_path):
    image = write_image(tmp_path / "photo.png", size=(64, 48))
    code, out, err = run(capsys, "classify", model, image, "--top-k", "1")
    assert code == 0 and err == ""
    assert out.startswith(f"{image}: ")
