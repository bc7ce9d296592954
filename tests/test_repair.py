"""Accuracy-guarded variants: the search, and that each runtime's lever really changes the graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.data.imagefolder import decode_images
from edgeopt.data.split import load_split
from edgeopt.errors import ConfigError
from edgeopt.graph import describe_model
from edgeopt.methods import litert as litert_methods
from edgeopt.methods import onnx as onnx_methods
from edgeopt.methods import repair
from edgeopt.methods.base import BuildContext, sha256_of
from edgeopt.pixels import PIXELS
from tests.conftest import TINY_SIZE

LABELS = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])


def fake_models(monkeypatch, predictions_by_k: dict[int, list[int]], reference: list[int]) -> list[str]:
    """Models are files holding k; the held-out predictions of each k are given, image i's at
    pixel value i (see held). Returns the files opened on the held-out images, in order; the
    images each was asked about are in `fake_models.asked`."""
    runs: list[str] = []
    fake_models.asked = {}

    def runner(path, backend, threads=2, transform=None):
        text = Path(path).read_text()
        runs.append(text)
        answers = np.array(reference if text == "float" else predictions_by_k[int(text)])

        def top1(pixels):
            images = pixels[:, 0, 0, 0].astype(int)
            fake_models.asked.setdefault(text, []).extend(images.tolist())
            return answers[images]
        return top1

    monkeypatch.setattr(repair, "top1_runner", runner)
    return runs


def held(labels, answers=None):
    """Held-out images whose pixels hold their index, for the fake models."""
    return repair.HeldOut("litert", np.arange(len(labels)).reshape(-1, 1, 1, 1).repeat(3, axis=3).astype(np.uint8),
                          np.asarray(labels), PIXELS, answers=answers)


def run_search(tmp_path, target, answers=None, built=None, sibling_built=True, labels=LABELS, confidence=0.95,
               unguarded=None):
    """The search over 40 ranked ops; returns its record and the k it built, in order (into
    `built` too, which a search that raises still fills)."""
    (tmp_path / "float").write_text("float")
    built = [] if built is None else built

    def build(names, path):
        built.append(len(names))
        Path(path).write_text(str(len(names)))

    record = repair.search([f"op{i}" for i in range(40)], build, tmp_path / "float", held(labels, answers), target,
                           tmp_path / "out.tflite", "test sensitivity", sibling_built=sibling_built,
                           confidence=confidence, unguarded=unguarded)
    return record, built


def test_search_finds_the_fewest_float_ops_within_the_target(tmp_path, monkeypatch):
    # float gets 8/10 right; k=0 changes 3 answers (all for the worse), k=1 changes 2, k>=2 none
    right = LABELS.tolist()
    wrong = [(x + 1) % 3 for x in right]
    reference = right[:8] + wrong[8:]
    by_k = {0: wrong[:3] + right[3:8] + wrong[8:], 1: wrong[:2] + right[2:8] + wrong[8:], 2: reference, 4: reference,
            8: reference}
    fake_models(monkeypatch, by_k, reference)
    record, built = run_search(tmp_path, target=5.0)
    # 8 = a quarter of the 40 ranked ops, the most it may keep in float: it meets the target, so the
    # search bisects k = 0, 1, 2, 4, 8 and never builds k = 4
    assert built == [0, 8, 2, 1]
    assert record["spared"] == ["op0", "op1"] and record["changed_before_pct"] == pytest.approx(30.0)
    assert record["changed_after_pct"] == pytest.approx(0.0) and record["loss_before_pp"] == pytest.approx(30.0)
    assert [s["changed_pct"] for s in record["steps"]] == pytest.approx([30.0, 20.0, 0.0, 0.0])
    assert (tmp_path / "out.tflite").read_text() == "2"
    assert not list(tmp_path.glob(".out-k*"))  # the candidates it did not keep are gone


@pytest.mark.parametrize(("first", "builds"), [(1, [0, 8, 2, 1]), (2, [0, 8, 2, 1]), (4, [0, 8, 2, 4]), (8, [0, 8, 2, 4])])
def test_the_bisection_finds_the_first_k_within_the_target(tmp_path, monkeypatch, first, builds):
    right = LABELS.tolist()
    wrong = [(x + 1) % 3 for x in right]
    fake_models(monkeypatch, {k: (right if k >= first else wrong[:3] + right[3:]) for k in (0, 1, 2, 4, 8)}, right)
    record, built = run_search(tmp_path, target=5.0)
    assert built == builds and len(record["spared"]) == first and (tmp_path / "out.tflite").read_text() == str(first)
    assert not list(tmp_path.glob(".out-k*"))


def test_a_search_that_fails_leaves_no_candidate_behind(tmp_path, monkeypatch):
    right = LABELS.tolist()
    fake_models(monkeypatch, {0: [(x + 1) % 3 for x in right], 8: right}, right)
    (tmp_path / "float").write_text("float")

    def build(names, path):
        Path(path).write_text(str(len(names)))
        if len(names) == 2:  # a converter that fails (or a Ctrl-C) half way through the third candidate
            raise RuntimeError("converter failed")

    with pytest.raises(RuntimeError, match="converter failed"):
        repair.search([f"op{i}" for i in range(40)], build, tmp_path / "float", held(LABELS), 5.0,
                      tmp_path / "out.tflite", "test sensitivity")
    assert not list(tmp_path.glob(".out-k*")) and not (tmp_path / "out.tflite").exists()


def test_the_check_and_the_search_run_each_distinct_file_on_the_held_out_images_once(tmp_path, monkeypatch):
    # a pass over 1,000 held-out images is most of a guarded build's time: the float model is asked
    # by the check and the search, and the k = 0 candidate has the sibling's bytes
    right = LABELS.tolist()
    wrong = [(x + 1) % 3 for x in right]
    by_k = {0: wrong[:3] + right[3:], 1: wrong[:1] + right[1:], 2: right, 8: right}
    runs = fake_models(monkeypatch, by_k, right)
    (tmp_path / "sibling").write_text("0")
    (tmp_path / "float").write_text("float")
    answers: dict = {}
    repair.check_needed(tmp_path / "sibling", tmp_path / "float", held(LABELS, answers), 5.0, "sibling")
    record, built = run_search(tmp_path, target=5.0, answers=answers)
    assert built == [0, 8, 2, 1] and record["spared"] == ["op0", "op1"]
    assert [s["changed_pct"] for s in record["steps"]] == pytest.approx([30.0, 10.0, 0.0, 0.0])
    assert sorted(runs) == ["0", "1", "2", "8", "float"]
    # without the shared answers, the same check and search run the float model and k = 0 twice
    runs.clear()
    repair.check_needed(tmp_path / "sibling", tmp_path / "float", held(LABELS), 5.0, "sibling")
    run_search(tmp_path, target=5.0)
    assert sorted(runs) == ["0", "0", "1", "2", "8", "float", "float"]


def test_the_k_0_candidate_is_the_unguarded_sibling_copied_not_built_again(tmp_path, monkeypatch):
    right = LABELS.tolist()
    fake_models(monkeypatch, {0: right}, right)
    (tmp_path / "sibling").write_text("0")
    record, built = run_search(tmp_path, target=5.0, unguarded=tmp_path / "sibling")
    assert built == [] and record["spared"] == [] and (tmp_path / "out.tflite").read_text() == "0"
    assert (tmp_path / "sibling").read_text() == "0"  # the sibling itself is left as it was


def test_changed_answers_count_even_when_they_cancel_out_in_accuracy(tmp_path, monkeypatch):
    # k=0 gets 2 right answers wrong and 2 wrong answers right: no loss, but 40% changed
    right = LABELS.tolist()
    wrong = [(x + 1) % 3 for x in right]
    reference = right[:8] + wrong[8:]
    by_k = {0: wrong[:2] + right[2:8] + right[8:], 1: reference, 2: reference, 8: reference}
    fake_models(monkeypatch, by_k, reference)
    record, built = run_search(tmp_path, target=5.0)
    assert record["steps"][0]["loss_pp"] == pytest.approx(0.0) and record["steps"][0]["changed_pct"] == pytest.approx(40.0)
    assert built == [0, 8, 2, 1] and record["spared"] == ["op0"]


FORTY = np.arange(40) % 3


def _missing_the_target(monkeypatch, changed_at_0, changed_at_8, labels=FORTY):
    """Of 40 held-out images, k = 0 and k = 8 (the most the search tries of 40 ops) change the
    float model's answer on the images given; with a target of 5% (2 images) both miss it."""
    def answers(changed):
        return [(y + 1) % 3 if i in changed else y for i, y in enumerate(labels.tolist())]

    fake_models(monkeypatch, {0: answers(changed_at_0), 8: answers(changed_at_8)}, labels.tolist())


def test_when_even_the_most_float_ops_miss_the_target_the_search_ends_there(tmp_path, monkeypatch):
    # the k between 0 and the largest are never built; the largest changed significantly fewer
    # answers (12 against 4, the same 4 among the 12: 8 mended, none newly changed): kept
    _missing_the_target(monkeypatch, changed_at_0=range(12), changed_at_8=range(4))
    record, built = run_search(tmp_path, target=5.0, labels=FORTY)
    assert built == [0, 8]
    assert len(record["spared"]) == 8 and (tmp_path / "out.tflite").read_text() == "8"
    assert record["changed_after_pct"] == pytest.approx(10.0)
    assert [s["spared"] for s in record["steps"]] == [0, 8] and "none reached the target" in record["note"]
    assert "significantly fewer than none (8 answers mended, 0 newly changed: +" in record["note"]
    assert not list(tmp_path.glob(".out-k*"))


@pytest.mark.parametrize(("changed_at_8", "still_changes"), [
    # run on k = 0's 12 changed images first, the pass stops there when the other 28 could not make
    # it a repair (the verdict is the full pass's: see the test after the next)
    pytest.param(range(12), "at least 30.00%", id="as many"),
    pytest.param(range(14), "at least 30.00%", id="more"),
    pytest.param(range(9), "at least 22.50%", id="3 fewer of 40"),
    # as few as in the test above, but on other images: 12 mended, 4 newly changed
    pytest.param(range(30, 34), "10.00%", id="4 of 40 on other images"),
])
def test_no_guarded_variant_when_the_most_float_ops_change_not_significantly_fewer_answers(tmp_path, monkeypatch,
                                                                                          changed_at_8, still_changes):
    # the "repair" would be k = 0, the unguarded sibling again, or a slower copy whose gain is noise
    _missing_the_target(monkeypatch, range(12), changed_at_8)
    built: list[int] = []
    with pytest.raises(repair.RepairNotFound,
                       match=rf"still changes {still_changes} of 40 .* against 30.00% with none.*not significantly "
                             "fewer.*no repair found"):
        run_search(tmp_path, target=5.0, built=built, labels=FORTY)
    assert built == [0, 8]
    assert not (tmp_path / "out.tflite").exists() and not list(tmp_path.glob(".out-k*"))


def test_the_largest_k_stops_once_no_other_answer_could_make_it_a_repair(tmp_path, monkeypatch):
    # k = 0 changes images 0-11 of 40; k = 8 mends 0-7 (significant so far: kept if nothing else
    # changed) but newly changes 20 and 21, which no answer after them can make significant again
    monkeypatch.setattr(repair, "LOOK_EVERY", 4)
    _missing_the_target(monkeypatch, range(12), [8, 9, 10, 11, 20, 21])
    with pytest.raises(repair.RepairNotFound,
                       match=r"still changes at least 15.00% .*8 answers mended, at least 2 newly changed: at most "
                             r"[-+][0-9.]+ pp .* low end .*stopped after 24 images, the 12 that k = 0 changes and 12 "
                             r"more, .*other 16") as raised:
        run_search(tmp_path, target=5.0, labels=FORTY)
    assert fake_models.asked["8"] == list(range(24))  # k = 0's changed images, then blocks of 4 up to image 23
    assert sorted(fake_models.asked["0"]) == list(range(40))  # k = 0 and the float model: every image
    # the full pass says the same: 6 of 40 changed, 8 mended against 2 newly changed is not significant
    monkeypatch.setattr(repair, "LOOK_EVERY", 1000)
    _missing_the_target(monkeypatch, range(12), [8, 9, 10, 11, 20, 21])
    with pytest.raises(repair.RepairNotFound, match=r"still changes 15.00% .*8 answers mended, 2 newly changed: -"):
        run_search(tmp_path, target=5.0, labels=FORTY)
    assert "at least" in str(raised.value)


def test_a_pass_that_stops_early_decides_as_the_full_pass(tmp_path, monkeypatch):
    # 300 random searches on 60 held-out images: the same variant kept, or no repair found, whether
    # the largest k's pass may stop (a look after every image) or must run every image
    rng = np.random.default_rng(7)
    labels = (np.arange(60) % 3).tolist()
    until_settled = repair._answers_until_settled
    monkeypatch.setattr(repair, "LOOK_EVERY", 1)
    stopped = 0
    for trial in range(300):
        changed_0 = set(rng.choice(60, int(rng.integers(1, 20)), replace=False).tolist())
        mended = {i for i in changed_0 if rng.random() < rng.random()}
        newly = set(rng.choice(60, int(rng.integers(0, 6)), replace=False).tolist()) - changed_0
        k0 = [(y + 1) % 3 if i in changed_0 else y for i, y in enumerate(labels)]
        k8 = [(y + 1) % 3 if i in (changed_0 - mended) | newly else y for i, y in enumerate(labels)]
        target = float(rng.choice([0.0, 3.4, 5.0, 10.0]))
        outcomes = []
        for may_stop in (True, False):
            monkeypatch.setattr(repair, "_answers_until_settled", until_settled if may_stop else (
                lambda path, held, first, settled: until_settled(path, held, first, lambda answers: False)))
            fake_models(monkeypatch, {0: k0, 1: k0, 2: k8, 4: k8, 8: k8}, labels)
            folder = tmp_path / f"{trial}-{may_stop}"
            folder.mkdir()
            try:
                outcomes.append(run_search(folder, target, labels=np.array(labels)))
            except repair.RepairNotFound as exc:
                outcomes.append("not found")
                stopped += may_stop and "stopped after" in str(exc)
        assert outcomes[0] == outcomes[1], (trial, sorted(changed_0), sorted(mended), sorted(newly), target)
    assert stopped > 50  # the early stop is what is being compared


def test_the_repair_is_tested_at_the_confidence_asked_for(tmp_path, monkeypatch):
    # 8 mended and none newly changed of 40 is significant at 95%, not at 99.9%
    _missing_the_target(monkeypatch, changed_at_0=range(12), changed_at_8=range(4))
    with pytest.raises(repair.RepairNotFound, match=r"not significantly fewer \(8 answers mended.* of the 99.9% interval"):
        run_search(tmp_path, target=5.0, labels=FORTY, confidence=0.999)


def test_without_its_sibling_in_the_run_the_search_keeps_k_0_rather_than_no_int8_model(tmp_path, monkeypatch):
    # --methods f0_float32,f2_int8_guarded: k = 0 is the run's only int8 model of its runtime
    _missing_the_target(monkeypatch, range(12), range(9))
    record, built = run_search(tmp_path, target=5.0, sibling_built=False, labels=FORTY)
    assert built == [0, 8] and record["spared"] == [] and (tmp_path / "out.tflite").read_text() == "0"
    assert "k = 0 is kept" in record["note"]
    assert not list(tmp_path.glob(".out-k*"))


@pytest.mark.parametrize("build", [litert_methods.build_int8_guarded, onnx_methods.build_int8_guarded],
                         ids=["litert", "onnxruntime"])
def test_a_guarded_method_needs_held_out_images(tmp_path, build):
    ctx = BuildContext(source=tmp_path, representative=np.zeros((1, 2, 2, 3), np.uint8), work_dir=tmp_path / "work")
    with pytest.raises(ConfigError, match="needs held-out images"):
        build(ctx, tmp_path / "out")


@pytest.fixture(scope="module")
def guarded_context(tiny_model, tmp_path_factory):
    split = load_split(tiny_model / "split.json")
    root = Path(split.data_root)
    holdout = decode_images(root, split.validation, TINY_SIZE)
    work = tmp_path_factory.mktemp("guarded")
    return BuildContext(
        source=tiny_model, representative=decode_images(root, split.train[:20], TINY_SIZE).pixels, work_dir=work / "work",
        holdout=holdout.pixels, holdout_labels=holdout.labels, repair_confidence=0.99,
    ), work


def _lever(monkeypatch, build, ctx, out):
    """Run a guarded build but capture its ranked ops and its builder instead of searching."""
    captured = {}

    def capture(ranked, builder, *args, **kwargs):
        captured.update(ranked=list(ranked), build=builder, confidence=kwargs["confidence"])
        builder([], out)
        return {}

    monkeypatch.setattr(repair, "search", capture)
    build(ctx, out)
    assert captured["confidence"] == ctx.repair_confidence == 0.99  # the run's, not the default
    return captured["ranked"], captured["build"]


def test_litert_keeps_the_chosen_layers_in_float(guarded_context, monkeypatch):
    ctx, work = guarded_context
    ranked, build = _lever(monkeypatch, litert_methods.build_int8_guarded, ctx, work / "k0.tflite")
    assert len(ranked) > 20 and len(set(ranked)) == len(ranked)
    # no op spared is f2_int8, the sibling the search copies as its k = 0 instead of building it
    assert (work / "k0.tflite").read_bytes() == litert_methods._quantized(ctx)
    build(ranked[:6], work / "k6.tflite")
    all_int8, six_float = describe_model(work / "k0.tflite"), describe_model(work / "k6.tflite")
    assert six_float.weight_dtypes["float32"][1] > all_int8.weight_dtypes.get("float32", (0, 0))[1]
    assert six_float.dequantize_ops > all_int8.dequantize_ops  # int8 -> float where a float layer begins


def test_onnxruntime_gives_the_chosen_activations_16_bits(guarded_context, monkeypatch):
    ctx, work = guarded_context
    ranked, build = _lever(monkeypatch, onnx_methods.build_int8_guarded, ctx, work / "k0.onnx")
    assert len(ranked) > 20
    # no activation spared is the model it ranked on (built as ort_int8_static is), which the search copies as its
    # k = 0 instead of building it again
    assert sha256_of(work / "k0.onnx") == sha256_of(ctx.work_dir / "qdq-full.onnx")
    build(ranked[:6], work / "k6.onnx")
    import onnx

    def sixteen_bit_zero_points(path):
        model = onnx.load(str(path))
        return sum(i.data_type in (onnx.TensorProto.UINT16, onnx.TensorProto.INT16) for i in model.graph.initializer)

    assert sixteen_bit_zero_points(work / "k0.onnx") == 0 and sixteen_bit_zero_points(work / "k6.onnx") >= 6


def test_a_guarded_variant_is_built_only_when_its_sibling_needs_repair(tiny_model, tmp_path):
    from edgeopt.pipeline import optimize
    from tests.conftest import TINY_OPTIMIZE

    methods = ("f0_float32", "f2_int8", "f2_int8_guarded")
    lenient = optimize(tiny_model, tmp_path / "lenient", TINY_OPTIMIZE.replaced(methods=methods, repair_target_pp=100.0))
    assert [v.name for v in lenient.variants] == ["f0_float32", "f2_int8"]
    assert any(n.startswith("f2_int8_guarded: f2_int8 changes") and "nothing to repair" in n for n in lenient.notes)
    # On the tiny model, 16 ops in float (a quarter of them) change not significantly fewer of its 220 held-out
    # answers than none: the "repair" would be f2_int8 again, or a slower copy of it whose gain is noise, so it is not
    # built and the notes say why
    strict = TINY_OPTIMIZE.replaced(methods=methods, repair_target_pp=0.0)
    unrepaired = optimize(tiny_model, tmp_path / "unrepaired", strict)
    assert [v.name for v in unrepaired.variants] == ["f0_float32", "f2_int8"]
    assert any(n.startswith("f2_int8_guarded: with 16 ops in float") and "not significantly fewer" in n
               and "no repair found" in n for n in unrepaired.notes)
    # without f2_int8 in the run, the search keeps k = 0, the run's only int8 model, and the report shows the search
    alone = optimize(tiny_model, tmp_path / "alone", strict.replaced(methods=("f0_float32", "f2_int8_guarded")))
    repaired = alone.variant("f2_int8_guarded").repair
    assert repaired is not None and [s["spared"] for s in repaired.steps] == [0, 16] and repaired.spared == []
    assert repaired.changed_before_pct > 0 and "k = 0 is kept" in repaired.note
    report = (tmp_path / "alone" / "report.md").read_text()
    assert "## Repairs (accuracy-guarded variants)" in report and "held-out answers changed" in report.lower()
