"""optimize end to end on the tiny model: files, figures, choice, and that nothing is lost."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from edgeopt.choose import decide
from edgeopt.errors import ConfigError, DataError, ModelError, OutputExistsError
from edgeopt.methods import litert as litert_methods
from edgeopt.methods.base import sha256_of
from edgeopt.objective import Objective
from edgeopt.pipeline import optimize
from edgeopt.results import load_results
from edgeopt.stats import paired_difference
from tests.conftest import TINY_OPTIMIZE, build_workers


def test_results_json_has_every_figure_and_the_files_exist(tiny_optimized):
    out, results = tiny_optimized
    stored = load_results(out)
    assert stored == results
    assert stored.baseline.name == "f0_float32" and stored.kind == "optimize"
    assert [v.name for v in stored.variants][:5] == [
        "f0_float32", "f1_dynamic_range", "f2_int8", "f3_int8_uint8io", "f4_float16",
    ]
    test_count = len(stored.data.test_items)
    for v in stored.variants:
        assert (out / v.file).stat().st_size == v.size_bytes
        assert 0 < v.transfer_bytes < v.size_bytes  # zstd: what a delivery sends
        if v.stopped_early:  # too slow to win (ORT dynamic on this tiny model): timed, not evaluated
            assert v.stopped_early.startswith("hopeless from a short latency pass") and v.test is None
            assert v.score is None and any(r.startswith(f"{v.name} was not eligible: hopeless") for r in stored.choice.reasons)
            continue
        assert 0.0 <= v.test.accuracy <= 1.0 and 0.0 <= v.train.accuracy <= 1.0
        assert v.latency.p90_ms >= min(v.latency.round_medians_ms)
        assert set(v.test.per_class) == set(stored.model.classes)
        # every test image's prediction is kept, so paired statistics can be redone later
        assert len(v.predictions.test) == len(v.predictions.test_confidence) == test_count
        assert v.graph.op_versions and v.input.tensor.shape[1:3] == [48, 48]
    split = json.loads((Path(stored.model.source) / "split.json").read_text())
    assert [list(item) for item in stored.data.test_items] == split["test"]  # exactly the held-out images
    assert stored.data.train_images == 240 and stored.data.train_total == len(split["train"]) + len(split["validation"])
    assert stored.data.synthetic is True
    assert "libraries" in stored.machine and stored.measure["threads"] == 1


def test_paired_figures_and_the_choice_follow_from_the_stored_predictions(tiny_optimized):
    _, results = tiny_optimized
    labels = np.array([label for _, label in results.data.test_items])
    base_right = np.array(results.baseline.predictions.test) == labels
    for v in results.variants[1:]:
        if v.predictions is None:
            continue
        right = np.array(v.predictions.test) == labels
        assert v.test.accuracy == pytest.approx(right.mean())
        expected = paired_difference(base_right, right, results.choice.objective["confidence"])
        assert (v.paired.baseline_only, v.paired.variant_only) == (expected.baseline_only, expected.variant_only)
        assert (v.paired.low, v.paired.high) == pytest.approx((expected.low, expected.high))
    redone = decide(results.model_copy(update={"choice": None}), Objective(), None)
    assert redone.choice == results.choice
    assert results.selected.score.eligible and results.selected.backend == "litert"


TWO_METHODS = TWO_METHODS = TINY_OPTIMIZE.replaced(methods=("f0_float32", "f4_float16"))


def test_existing_output_is_refused_and_force_replaces_only_what_edgeopt_wrote(tiny_model, tmp_path):
    out = tmp_path / "opt"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--force"):
        optimize(tiny_model, out, TWO_METHODS)
    with pytest.raises(OutputExistsError, match="not written by edgeopt"):
        optimize(tiny_model, out, TWO_METHODS, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    optimize(tiny_model, tmp_path / "opt2", TWO_METHODS)
    (tmp_path / "opt2" / "notes.txt").write_text("added by the user after the run")
    (tmp_path / "opt2" / "data" / "cans").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match=r"holds 2 file\(s\) edgeopt did not write there \(data/, notes.txt\)"):
        optimize(tiny_model, tmp_path / "opt2", TWO_METHODS, force=True)
    assert (tmp_path / "opt2" / "notes.txt").is_file() and (tmp_path / "opt2" / "data" / "cans").is_dir()
    (tmp_path / "opt2" / "notes.txt").unlink()
    (tmp_path / "opt2" / "data" / "cans").rmdir()
    (tmp_path / "opt2" / "data").rmdir()
    (tmp_path / "opt2" / "report.md").write_text("edited")  # edgeopt's own file: replaced
    optimize(tiny_model, tmp_path / "opt2", TWO_METHODS, force=True)
    assert "edited" not in (tmp_path / "opt2" / "report.md").read_text() and (tmp_path / "opt2" / "results.json").is_file()


def test_force_never_replaces_the_model_being_read_or_a_folder_holding_it(tiny_model, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(tiny_model, runs / "m")
    (runs / "m" / ".edgeopt-output").write_text("{}")  # edgeopt wrote it: --force alone would allow it
    before = sha256_of(runs / "m" / "model.keras")
    for out in (runs / "m", runs, tmp_path):
        with pytest.raises(ConfigError, match="which this command reads"):
            optimize(runs / "m", out, TWO_METHODS, force=True)
    assert sha256_of(runs / "m" / "model.keras") == before and sorted(p.name for p in runs.iterdir()) == ["m"]


def test_outputs_are_as_readable_as_any_file_the_user_makes(tiny_model, tmp_path):
    out = tmp_path / "opt"
    optimize(tiny_model, out, TWO_METHODS)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask


def test_interruption_leaves_no_output_and_no_partial_files(tiny_model, tmp_path, monkeypatch):
    out = tmp_path / "opt"
    real = litert_methods._convert

    def interrupted(ctx, path, mode):
        if mode == "float16":
            raise KeyboardInterrupt
        return real(ctx, path, mode)

    monkeypatch.setattr(litert_methods, "_convert", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optimize(tiny_model, out, TINY_OPTIMIZE)
    assert list(tmp_path.iterdir()) == []
    # nor a process building ONNX Runtime's variants (methods.build) that would go on writing there
    assert build_workers(os.getpid()) == []


def test_an_error_about_a_variant_names_it_under_the_out_the_user_gave(tiny_model, tmp_path, monkeypatch):
    real = litert_methods._convert

    def broken(ctx, path, mode):
        if mode != "float16":
            return real(ctx, path, mode)
        path.write_bytes(b"not a flatbuffer")  # a converter that wrote garbage

    monkeypatch.setattr(litert_methods, "_convert", broken)
    out = tmp_path / "opt"
    with pytest.raises(ModelError) as err:
        optimize(tiny_model, out, TWO_METHODS)
    assert str(err.value).startswith(f"{out / 'variants' / 'f4_float16.tflite'} is not a valid .tflite model")
    assert ".partial" not in str(err.value) and list(tmp_path.iterdir()) == []


def test_model_folder_problems_are_clear_errors(tiny_model, tmp_path):
    with pytest.raises(ModelError, match="written by 'edgeopt train'"):
        optimize(tmp_path / "nothing", tmp_path / "o", TINY_OPTIMIZE)
    broken = tmp_path / "m"
    shutil.copytree(tiny_model, broken)
    (broken / "split.json").unlink()
    with pytest.raises(ModelError, match="split.json is missing"):
        optimize(broken, tmp_path / "o", TINY_OPTIMIZE)
    assert not (tmp_path / "o").exists()


def _edited_copy(tiny_model, tmp_path, edit):
    """A copy of the model folder whose split.json and labels.json went through `edit`."""
    m = tmp_path / "m"
    shutil.copytree(tiny_model, m)
    split = json.loads((m / "split.json").read_text())
    labels = json.loads((m / "labels.json").read_text())
    edit(split, labels)
    (m / "split.json").write_text(json.dumps(split))
    (m / "labels.json").write_text(json.dumps(labels))
    return m


def test_a_model_whose_class_count_differs_from_the_data_is_refused(tiny_model, tmp_path):
    def four_classes(split, labels):
        for doc in (split, labels):
            doc["classes"] = doc["classes"][:4]
        split["test"] = [item for item in split["test"] if item[1] < 4]

    m = _edited_copy(tiny_model, tmp_path, four_classes)
    config = TINY_OPTIMIZE.__class__(methods=("f0_float32",), measure=TINY_OPTIMIZE.measure)
    with pytest.raises(ModelError, match="outputs 5 classes but the data have 4"):
        optimize(m, tmp_path / "o", config)
    assert not (tmp_path / "o").exists()


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if optimize decodes an image or builds a variant."""
    from edgeopt import pipeline

    def work(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    for name in ("decode_images_cached", "build_variants"):
        monkeypatch.setattr(pipeline, name, work)


def test_a_class_count_that_differs_from_the_data_is_refused_before_any_work(tiny_model, tmp_path, no_work):
    def four_classes(split, labels):
        for doc in (split, labels):
            doc["classes"] = doc["classes"][:4]
        split["test"] = [item for item in split["test"] if item[1] < 4]

    m = _edited_copy(tiny_model, tmp_path, four_classes)
    with pytest.raises(ModelError, match=rf"{m / 'model.keras'} outputs 5 classes but the data have 4"):
        optimize(m, tmp_path / "o", TINY_OPTIMIZE)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("target, fragment", [
    (("foo",), "unknown runtime 'foo'; use one of: litert, onnxruntime"),
    (("onnxruntime",), "--target onnxruntime: none of the methods to build runs on onnxruntime (they run on litert)"),
])
def test_a_target_nothing_builds_for_is_refused_before_any_work(tiny_model, tmp_path, no_work, target, fragment):
    from pydantic import ValidationError

    with pytest.raises((ConfigError, ValidationError), match=re.escape(fragment)):
        optimize(tiny_model, tmp_path / "o", TINY_OPTIMIZE.replaced(target=target, backends=("litert",)))
    assert not (tmp_path / "o").exists()


def test_moved_data_is_reported_with_the_fix(tiny_model, tmp_path):
    def data_gone(split, labels):
        split["data_root"] = str(tmp_path / "gone")
        split["data_root_relative"] = "../gone"

    m = _edited_copy(tiny_model, tmp_path, data_gone)
    with pytest.raises(DataError, match="--data DIR"):
        optimize(m, tmp_path / "o", TINY_OPTIMIZE)


def _data_copy(tiny_model, tmp_path):
    split = json.loads((tiny_model / "split.json").read_text())
    copy = tmp_path / "data"
    shutil.copytree(split["data_root"], copy)
    return copy


def test_data_with_more_classes_than_the_model_is_said_and_used_for_its_classes(tiny_model, tmp_path, caplog):
    data = _data_copy(tiny_model, tmp_path)
    shutil.copytree(data / "carton", data / "zz_extra")
    results = optimize(tiny_model, tmp_path / "o", TWO_METHODS.replaced(methods=("f0_float32",)), data_dir=data)
    assert "class folder(s) the model does not know (zz_extra)" in caplog.text
    assert len(results.data.test_items) > 0


def test_data_that_is_another_dataset_is_refused_with_why(tiny_model, tmp_path):
    data = _data_copy(tiny_model, tmp_path)
    test_items = json.loads((tiny_model / "split.json").read_text())["test"]
    victim = data / test_items[0][0]
    victim.write_bytes(victim.read_bytes() + b"\x00" * 100)  # another image under the same name
    with pytest.raises(DataError, match="1 of a different size"):
        optimize(tiny_model, tmp_path / "o", TWO_METHODS, data_dir=data)
    shutil.rmtree(data / "carton")
    with pytest.raises(DataError, match="has no class folder.* carton"):
        optimize(tiny_model, tmp_path / "o", TWO_METHODS, data_dir=data)
    assert not (tmp_path / "o").exists()


def test_every_recorded_answer_is_the_answer_of_the_variants_file(tiny_optimized):
    # whether computed during the evaluation or ahead, while the build waited for its worker
    from edgeopt.data.imagefolder import decode_images
    from edgeopt.runtimes.registry import get_runtime

    out, results = tiny_optimized
    size = (results.model.image_size, results.model.image_size)
    test = decode_images(Path(results.data.root), [tuple(i) for i in results.data.test_items], size)
    for v in results.variants:
        if v.predictions is None:
            continue
        probs = get_runtime(v.backend).open(out / v.file).predict(test.pixels)[:len(v.predictions.test)]
        assert probs.argmax(axis=1).tolist() == v.predictions.test, v.name
        np.testing.assert_allclose(probs.max(axis=1), v.predictions.test_confidence, atol=1e-4, err_msg=v.name)
