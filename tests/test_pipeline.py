"""optimize end to end on the tiny model: files, figures, choice, and that nothing is lost."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from edgeopt.errors import ConfigError, DataError, ModelError, OutputExistsError
from edgeopt.methods import litert as litert_methods
from edgeopt.methods.base import sha256_of
from edgeopt.objective import Candidate, Objective, select
from edgeopt.pipeline import optimize
from tests.conftest import TINY_OPTIMIZE

REQUIRED_VARIANT_KEYS = {
    "name", "file", "size_bytes", "latency_ms_median", "latency_ms_p90", "test_accuracy", "train_accuracy", "L",
}


def test_results_json_has_every_figure_and_the_files_exist(tiny_optimized):
    out, results = tiny_optimized
    stored = json.loads((out / "results.json").read_text())
    assert stored["baseline"] == "f0_float32"
    assert {"baseline", "selected", "objective", "variants", "machine"} <= set(stored)
    assert [v["name"] for v in stored["variants"]][:5] == [
        "f0_float32", "f1_dynamic_range", "f2_int8", "f3_int8_uint8io", "f4_float16",
    ]
    for v in stored["variants"]:
        assert REQUIRED_VARIANT_KEYS <= set(v)
        assert (out / v["file"]).stat().st_size == v["size_bytes"]
        assert 0.0 <= v["test_accuracy"] <= 1.0 and 0.0 <= v["train_accuracy"] <= 1.0
        assert v["latency_ms_p90"] >= min(v["latency_round_medians_ms"])
        assert set(v["test_per_class"]) == set(stored["model"]["classes"])
    split = json.loads((Path(stored["model"]["source"]) / "split.json").read_text())
    assert stored["data"]["test_images"] == len(split["test"])  # exactly the held-out images
    assert stored["data"]["train_images"] == len(split["train"]) + len(split["validation"])
    assert stored["data"]["synthetic"] is True
    assert "libraries" in stored["machine"] and stored["measure"]["threads"] == 1


def test_L_and_the_choice_follow_from_the_stored_figures(tiny_optimized):
    _, results = tiny_optimized
    cands = [Candidate(v["name"], v["size_bytes"], v["latency_ms_median"], v["test_accuracy"]) for v in results["variants"]]
    recomputed = select(cands, "f0_float32", Objective())
    assert recomputed.selected == results["selected"]
    for v in results["variants"]:
        assert v["L"] == pytest.approx(recomputed.score_of(v["name"]).L)
        assert v["L_paper"] == pytest.approx(select(cands, "f0_float32", Objective(form="paper")).score_of(v["name"]).L)


def test_selected_model_and_labels_are_delivered(tiny_optimized):
    out, results = tiny_optimized
    chosen = next(v for v in results["variants"] if v["name"] == results["selected"])
    assert sha256_of(out / "selected.tflite") == chosen["sha256"]
    assert json.loads((out / "labels.json").read_text())["classes"] == results["model"]["classes"]


def test_report_has_the_studys_table_reasons_graph_changes_and_plot(tiny_optimized):
    out, results = tiny_optimized
    report = (out / "report.md").read_text()
    assert "| variant | test acc % | train acc % | ms/image |" in report
    assert f"Selected: **{results['selected']}**" in report
    assert "SYNTHETIC" in report
    assert "## Why the winner won" in report and "lowest L" in report
    assert "input float32 -> uint8" in report  # what f3 changed against f0
    assert "DEQUANTIZE" in report
    assert (out / "size_latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


TWO_METHODS = TINY_OPTIMIZE.replaced(methods=("f0_float32", "f4_float16"))


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
    (tmp_path / "opt2" / "stale.txt").write_text("from an older run")
    optimize(tiny_model, tmp_path / "opt2", TWO_METHODS, force=True)
    assert not (tmp_path / "opt2" / "stale.txt").exists() and (tmp_path / "opt2" / "results.json").is_file()


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
    assert results["data"]["test_images"] > 0


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
