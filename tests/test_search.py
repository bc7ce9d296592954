"""edgeopt.search without Ray: the space, the ledger, the split, the student network, its output folder
(the budgets: test_budgets.py)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgeopt.data.split import Split
from edgeopt.errors import ConfigError, OutputExistsError
from edgeopt.search.distill import search_split, soften
from edgeopt.search.ledger import Ledger, check_fingerprint, state_dir, trial_record, write_fingerprint
from edgeopt.search.space import Candidate, SearchConfig, candidates


def test_the_space_is_every_resolution_and_share_kept_cheapest_first_without_the_teachers_own_shape():
    space = candidates(SearchConfig(resolutions=(224, 96, 160), keeps=(1.0, 0.5)), 224, 1.0)
    names = [c.name for c in space]
    assert "r224_a1.0" not in names  # the teacher itself
    assert set(names) == {"r96_a1.0", "r96_a1.0_k0.5", "r160_a1.0", "r160_a1.0_k0.5", "r224_a1.0_k0.5"}
    work = [c.relative_work(224, 1.0) for c in space]
    assert work == sorted(work)


def test_a_resolution_above_the_teachers_input_is_refused_with_its_fix():
    with pytest.raises(ConfigError, match="above the teacher's input side 160.*drop them"):
        candidates(SearchConfig(resolutions=(128, 224)), 160, 1.0)


def test_a_teacher_edgeopt_cannot_start_from_needs_a_backbone():
    with pytest.raises(ConfigError, match="--backbone ALPHA=PATH"):
        candidates(SearchConfig(), 224, None)
    space = candidates(SearchConfig(resolutions=(96,), backbones={"0.5": "w.h5"}), 224, None)
    assert [(c.name, c.init) for c in space] == [("r96_a0.5", "backbone")]


def test_search_settings_are_checked_where_they_are_made():
    with pytest.raises(ValueError, match="grace_epochs 3 is more than distill.epochs 2"):
        SearchConfig(grace_epochs=3, distill={"epochs": 2})
    with pytest.raises(ValueError, match="keeps"):
        SearchConfig(keeps=(0.0,))


def test_variant_names_show_candidate_and_method():
    assert Candidate(160, 1.0).name == "r160_a1.0"
    assert Candidate(128, 0.35, 0.5).name == "r128_a0.35_k0.5"
    assert Candidate.from_dict(Candidate(128, 0.35, 0.5).to_dict()) == Candidate(128, 0.35, 0.5)


def _split(validation: bool) -> Split:
    train = tuple((f"c{c}/{i}.jpg", c) for c in range(3) for i in range(20))
    test = tuple((f"c{c}/t{i}.jpg", c) for c in range(3) for i in range(5))
    val = tuple((f"c{c}/v{i}.jpg", c) for c in range(3) for i in range(2)) if validation else ()
    return Split("/data", ("a", "b", "c"), 0, 0.2, train, val, test)


def test_validation_is_the_teachers_own_or_carved_from_its_train_split_never_test():
    train, val, note = search_split(_split(True), 0.1, 0)
    assert val == _split(True).validation and "teacher's validation" in note
    train, val, note = search_split(_split(False), 0.1, 0)
    test = set(_split(False).test)
    assert len(val) == 6 and {c for _, c in val} == {0, 1, 2}  # 10% of each class
    assert not (set(train) | set(val)) & test and not set(train) & set(val)
    assert set(train) | set(val) == set(_split(False).train)


def test_softening_keeps_a_distribution_and_temperature_one_is_the_identity():
    p = np.array([[0.7, 0.2, 0.1], [0.98, 0.01, 0.01]], np.float32)
    np.testing.assert_allclose(soften(p, 1.0), p, rtol=1e-5)
    soft = soften(p, 4.0)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(soft.max(axis=1) < p.max(axis=1))  # flatter, same order
    assert np.all(soft.argmax(axis=1) == p.argmax(axis=1))


def test_the_ledger_keeps_finished_trials_and_skips_a_line_cut_by_a_kill(tmp_path):
    state_dir(tmp_path).mkdir()
    ledger = Ledger(tmp_path)
    history = [{"epoch": 1, "val_loss": 0.9, "val_accuracy": 0.6, "seconds": 3.0},
               {"epoch": 2, "val_loss": 0.7, "val_accuracy": 0.7, "seconds": 6.0}]
    ledger.record(trial_record(Candidate(96, 1.0), "completed", history, 2, "10.0.0.1", "n1"))
    ledger.record(trial_record(Candidate(128, 1.0), "cut", history[:1], 2, note="cut by the time budget"))
    with open(ledger.path, "a") as f:
        f.write('{"name": "r160_a1.0", "resolution": 1')  # killed mid-line
    trials = ledger.trials()
    assert set(trials) == {"r96_a1.0", "r128_a1.0"}
    assert set(ledger.done()) == {"r96_a1.0"}  # a cut trial is trained again
    done = ledger.done()["r96_a1.0"]
    assert (done.epochs, done.val_accuracy, done.node_ip) == (2, 0.7, "10.0.0.1")
    stopped = trial_record(Candidate(96, 1.0), "stopped", history[:1], 4)
    assert stopped.note == "stopped after 1 of 4 epochs"


def test_a_search_of_another_teacher_is_not_resumed(tmp_path):
    assert check_fingerprint(tmp_path, {"teacher_sha256": "a"}) is False
    write_fingerprint(tmp_path, {"teacher_sha256": "a", "distill": {"epochs": 6}})
    assert check_fingerprint(tmp_path, {"teacher_sha256": "a", "distill": {"epochs": 6}}) is True
    with pytest.raises(OutputExistsError, match=r"differs in: distill.*--force to start it over"):
        check_fingerprint(tmp_path, {"teacher_sha256": "a", "distill": {"epochs": 8}})


@pytest.mark.slow
def test_the_student_at_the_teachers_shape_is_the_teacher_and_a_pruned_one_is_a_drop_in(tiny_model, synthetic_dir):
    from edgeopt.pixels import PIXELS
    from edgeopt.search.student import build_student, kept_channels, rank_channels, trunk_alpha, weights_of
    from edgeopt.train import load_keras_model

    teacher = load_keras_model(tiny_model)
    alpha = trunk_alpha(teacher)
    assert alpha == 0.35
    pixels = np.random.default_rng(0).integers(0, 256, (6, 48, 48, 3)).astype(np.uint8)
    same = build_student(Candidate(48, alpha), 48, 5, weights_of(teacher), {}, PIXELS)
    np.testing.assert_allclose(same.predict(pixels.astype(np.float32), verbose=0),
                               teacher.predict(pixels.astype(np.float32), verbose=0), atol=1e-6)
    ranking = rank_channels(teacher, pixels)
    kept = kept_channels(ranking, 0.5)
    small = build_student(Candidate(32, alpha, 0.5), 48, 5, weights_of(teacher), kept, PIXELS)
    assert small.input_shape == teacher.input_shape  # the teacher's input: a drop-in
    assert small.count_params() < 0.6 * teacher.count_params()
    full = weights_of(teacher)["block_5_expand"][0].shape[-1]
    assert small.get_layer("block_5_expand").get_weights()[0].shape[-1] == len(kept["block_5_expand"]) == full // 2


def test_edgeopt_help_and_search_help_load_neither_ray_nor_tensorflow():
    code = ("import sys; from edgeopt.cli import main; main(['--help']); main(['search', '--help']); "
            "print('MODULES', 'ray' in sys.modules, 'tensorflow' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "MODULES False False" in run.stdout, run.stderr
    assert "--max-latency-ms" in run.stdout and "--ray-address" in run.stdout


def test_a_resolution_above_the_teachers_is_one_line_and_exit_2_before_any_work(tiny_model, tmp_path):
    from edgeopt.cli import main

    assert main(["search", str(tiny_model), "--out", str(tmp_path / "s"), "--resolutions", "32,64"]) == 2
    assert not (tmp_path / "s").exists()


def test_a_search_output_keeps_its_users_files_and_force_starts_it_over(tmp_path):
    from edgeopt.outputs import MARKER, check_output
    from edgeopt.search.study import _mark, _prepare_output

    out = tmp_path / "s"
    fingerprint = {"teacher_sha256": "a"}
    assert _prepare_output(out, False, (), fingerprint) is False
    (state_dir(out) / "students" / "r96_a1.0").mkdir(parents=True)  # what trials write while it runs
    (state_dir(out) / "students" / "r96_a1.0" / ".model.keras.tmp-7.keras").write_text("cut by a kill")
    assert _prepare_output(out, False, (), fingerprint) is True  # resumed
    (out / "notes.txt").write_text("mine")
    for force in (False, True):
        with pytest.raises(OutputExistsError, match=r"holds 1 file\(s\) edgeopt did not write there \(notes.txt\)"):
            _prepare_output(out, force, (), fingerprint)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    assert _prepare_output(out, True, (), fingerprint) is False  # --force: started over
    assert not (state_dir(out) / "students").exists() and (out / MARKER).is_file()
    (out / "results.json").write_text("{}")  # a finished run's files, listed in the marker when published
    _mark(out)
    check_output(out, force=True)  # so any command's --force may replace it
    with pytest.raises(ConfigError, match="which this command reads"):
        _prepare_output(out, False, (out / "teacher",), fingerprint)


def test_a_target_no_variant_runs_on_is_refused_before_the_first_trial(tiny_model, tmp_path):
    from edgeopt.cli import main

    assert main(["search", str(tiny_model), "--out", str(tmp_path / "s"), "--resolutions", "32",
                 "--target", "onnxruntime"]) == 2
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_a_bgr_teachers_student_takes_bgr_and_its_backbone_still_sees_rgb(tiny_model):
    """A teacher trained on OpenCV's BGR: the student takes what the teacher takes (channels
    reversed, then the affine map), and a backbone's RGB filters are turned to match."""
    from edgeopt.pixels import PIXELS, PixelTransform
    from edgeopt.search.distill import _fed
    from edgeopt.search.student import build_student, weights_of
    from edgeopt.train import load_keras_model

    weights = weights_of(load_keras_model(tiny_model))  # as a backbone file of alpha 0.35 would give them
    bgr = PixelTransform((2 / 255,) * 3, (-1.0,) * 3, "bgr")
    pixels = np.random.default_rng(1).integers(0, 256, (4, 48, 48, 3)).astype(np.uint8)
    fed = _fed(pixels, bgr)
    np.testing.assert_allclose(fed, pixels[..., ::-1].astype(np.float32) * (2 / 255) - 1.0, atol=1e-6)
    rgb_student = build_student(Candidate(48, 0.35, 1.0, "backbone"), 48, 5, weights, {}, PIXELS)
    bgr_student = build_student(Candidate(48, 0.35, 1.0, "backbone"), 48, 5, weights, {}, bgr)
    np.testing.assert_allclose(bgr_student.predict(fed, verbose=0), rgb_student.predict(pixels.astype(np.float32), verbose=0),
                               atol=1e-5)
