"""run_search(): the one place that calls the search's stages in order.

teacher (loaded as optimize loads it) -> its answers on the train split (once, cached) -> the
candidates (space) -> trials on Ray Tune (runner; each distilled, distill) -> every completed
candidate's variants built, measured, judged and chosen with the teacher's own by optimize
itself (one run, one results file) -> the search's trials added to that results file and report.

OUT is the run (results.json, report.md, variants/, selected.*, labels.json, as optimize writes
them) plus OUT/search/, the search's state: run again on the same OUT, it resumes (ledger).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.choose import decide
from edgeopt.config import OptimizeConfig
from edgeopt.data.imagefolder import decode_images_cached
from edgeopt.errors import ConfigError, DataError, ModelError, OutputExistsError
from edgeopt.methods.registry import get_method
from edgeopt.outputs import MARKER, check_output, check_reads, foreign_files, mark_output
from edgeopt.pixels import PixelTransform
from edgeopt.progress import NullProgress, Progress
from edgeopt.report import write_report
from edgeopt.results import RESULTS_FILE, Results, Search, Trial, load_results
from edgeopt.runtimes.registry import list_runtimes
from edgeopt.search.distill import MODEL_FILE, TrialData, search_split
from edgeopt.search.ledger import STATE_DIR, Ledger, check_fingerprint, state_dir, student_dir, write_fingerprint
from edgeopt.search.methods import candidate_method
from edgeopt.search.space import CANDIDATE_METHODS, Candidate, SearchConfig, candidates, check_resolutions
from edgeopt.sources.base import Source

ANSWERS_FILE = "teacher_answers.npz"
# Where the final optimize run is staged inside OUT before its files join the search's state.
RUN_DIR = ".run"
# A foreign (ONNX) teacher's candidates are built for its runtime.
ORT_CANDIDATE_METHODS = ("ort_fp32", "ort_int8_static", "ort_fp16")
# The teachers Keras loads (edgeopt.sources kinds): their weights can start a candidate, when the
# network is edgeopt's MobileNetV2 classifier.
KERAS_KINDS = ("train", "keras", "h5")
# The teachers TensorFlow converts: they get the study's f0..f4, as the candidates do.
TENSORFLOW_KINDS = (*KERAS_KINDS, "savedmodel")


def load_teacher(model: Path, config: SearchConfig, data_dir: Path | None = None, test_data: Path | None = None,
                 labels: Path | None = None) -> Source:
    """The teacher as optimize loads it (edgeopt.sources, detected from its content): its split,
    classes, input contract."""
    from edgeopt.pipeline import load_model_source

    return load_model_source(Path(model), config.optimize, data_dir, test_data, labels=labels)


def _sha256(path: Path) -> str:
    """A model file's sha256; of a folder (a train folder, a SavedModel), of every file in it."""
    from edgeopt.methods.base import sha256_of

    if not path.is_dir():
        return sha256_of(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return hashlib.sha256("".join(f"{p.relative_to(path)}:{sha256_of(p)}\n" for p in files).encode()).hexdigest()


def _fingerprint(source: Source, config: SearchConfig, train: tuple, val: tuple) -> dict[str, Any]:
    items = hashlib.sha256(json.dumps([list(train), list(val)]).encode()).hexdigest()
    return {"teacher_sha256": _sha256(Path(source.path)), "data_root": str(Path(source.data_root).resolve()),
            "train_validation_items_sha256": items, "distill": config.distill.to_jsonable(),
            "input": source.contract.to_dict()}


def _prepare_output(out: Path, force: bool, reads: tuple[Path, ...], fingerprint: dict[str, Any]) -> bool:
    """Create OUT, or resume the search it holds (True). --force starts over in a folder edgeopt
    wrote. A file the user put in OUT is never removed: the search refuses, naming it."""
    check_reads(out, reads)
    if _is_search_output(out):
        _refuse_user_files(out)
        if not force and state_dir(out).is_dir():
            return check_fingerprint(out, fingerprint)  # refuses a search of something else
        if not force:
            raise OutputExistsError(f"{out} already exists; choose another --out or pass --force to replace it")
        shutil.rmtree(out)
    elif out.exists() or out.is_symlink():
        check_output(out, force, reads)  # refuses, saying how; or replaces an output edgeopt wrote, with --force
        shutil.rmtree(out)
    out.mkdir(parents=True)
    write_fingerprint(out, fingerprint)
    _mark(out)
    return False


def _is_search_output(out: Path) -> bool:
    try:
        return out.is_dir() and json.loads((out / MARKER).read_text()).get("command") == "search"
    except (OSError, ValueError, AttributeError):
        return False


def _mark(out: Path) -> None:
    """OUT's marker lists every file in it (outputs.MARKER), so that --force of any command may
    replace it; the state folder, which trials write to while it runs, is the search's own."""
    mark_output(out, "search", [p.relative_to(out).as_posix() for p in out.rglob("*") if p.name != MARKER])


def _refuse_user_files(out: Path) -> None:
    """What the marker does not list, outside the search's own state and its run being staged, is the user's."""
    theirs = [f for f in foreign_files(out) if f.split("/")[0] != STATE_DIR and not f.startswith((RUN_DIR, f".{RUN_DIR}."))]
    if theirs:
        raise OutputExistsError(f"{out} holds {len(theirs)} file(s) edgeopt did not write there ({', '.join(theirs[:3])}"
                                f"{' and more' if len(theirs) > 3 else ''}); move them out of it, or choose another --out")


def _keras_teacher(source: Source) -> Any:
    from edgeopt.sources.tensorflow import load_keras

    path = Path(source.path)
    return load_keras(path / MODEL_FILE if source.kind == "train" else path, source.custom_objects)


def _teacher_predict(source: Source, threads: int = 2) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 pixels -> the teacher's probabilities, fed as its input contract says."""
    from edgeopt.pixels import TensorSpec, encode_pixels, to_probabilities

    transform = source.contract.transform
    spec = source.model_input or TensorSpec("pixels", (-1, *source.image_size, 3), "float32")
    if source.kind in KERAS_KINDS:
        keras_model = _keras_teacher(source)
        return lambda pixels: to_probabilities(np.asarray(
            keras_model.predict(encode_pixels(pixels, spec, transform), batch_size=32, verbose=0), np.float32))
    if source.kind == "savedmodel":
        from edgeopt.sources.tensorflow import inference_function

        _keep, function = inference_function("savedmodel", Path(source.path), source.custom_objects)

        def predict(pixels: np.ndarray) -> np.ndarray:
            chunks = [np.asarray(function(encode_pixels(pixels[i:i + 32], spec, transform)), np.float32)
                      for i in range(0, len(pixels), 32)]
            return to_probabilities(np.concatenate(chunks) if chunks else np.zeros((0, len(source.classes)), np.float32))

        predict.keep = _keep  # type: ignore[attr-defined]  # the SavedModel lives as long as its function
        return predict
    from edgeopt.runtimes.registry import get_runtime

    session = get_runtime("onnxruntime" if source.kind == "onnx" else "litert").open(Path(source.path), threads, transform)
    return session.predict


def _answers(out: Path, predict: Callable[[np.ndarray], np.ndarray], train: np.ndarray, val: np.ndarray,
             progress: Progress) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The teacher's probabilities on each train image, its mirror image, and each validation image:
    computed once per search (OUT/search/teacher_answers.npz), then read."""
    path = state_dir(out) / ANSWERS_FILE
    if path.is_file():
        with np.load(path) as saved:
            if saved["train"].shape[0] == len(train) and saved["val"].shape[0] == len(val):
                return saved["train"], saved["mirrored"], saved["val"]
    progress.start("the teacher's answers on the train split (once per search)", 3)
    answers = []
    for pixels in (train, np.ascontiguousarray(train[:, :, ::-1]), val):
        answers.append(predict(pixels).astype(np.float32))
        progress.advance(1)
    progress.finish(f"the teacher answered {len(train)} train images (and their mirror images) and {len(val)} validation images")
    tmp = path.with_name(f".{ANSWERS_FILE}.tmp.npz")
    np.savez(tmp, train=answers[0], mirrored=answers[1], val=answers[2])
    os.replace(tmp, path)
    return answers[0], answers[1], answers[2]


def _starting_points(source: Source, config: SearchConfig, train_pixels: np.ndarray) -> tuple[
        float | None, dict[str, dict[str, list[np.ndarray]]], dict[str, np.ndarray] | None]:
    """The teacher's width (None: not a MobileNetV2 edgeopt can start from), the starting weights
    by init and, when a candidate prunes, the teacher's channels ranked on train images."""
    from edgeopt.search.student import backbone_weights, rank_channels, trunk_alpha, weights_of

    weights: dict[str, dict[str, list[np.ndarray]]] = {}
    alpha, ranking = None, None
    if source.kind in KERAS_KINDS:
        teacher = _keras_teacher(source)
        alpha = trunk_alpha(teacher)
        if alpha is not None:
            weights["teacher"] = weights_of(teacher)
            if any(k < 1 for k in config.keeps):
                sample = np.random.default_rng(config.distill.seed).permutation(len(train_pixels))[:config.distill.ranking_images]
                ranking = rank_channels(teacher, train_pixels[np.sort(sample)])
    for alpha_key, path in config.backbones.items():
        if not Path(path).is_file():
            raise ConfigError(f"--backbone {alpha_key}={path}: no such file; pass a Keras MobileNetV2 no-top weights file")
        weights[f"backbone:{float(alpha_key):g}"] = backbone_weights(Path(path), float(alpha_key))
    return alpha, weights, ranking


def _preflight(source: Source, opt_config: OptimizeConfig, config: SearchConfig) -> None:
    """What optimize would refuse at the end of the search, refused before the first trial: a
    target no method builds for, a teacher whose output does not match the classes of its data."""
    from edgeopt import preflight
    from edgeopt.pipeline import resolve_methods
    from edgeopt.sources.onnx2tf import find_converter

    preflight.check_classes(Path(source.path), source.kind, source.classes, Path(source.data_root))
    converted = source.kind == "onnx" and find_converter() is not None
    methods, _ = resolve_methods(opt_config, source, converted=converted)
    preflight.check_target(opt_config.target, [*methods, *(get_method(n) for n in _candidate_methods(config, source))])


def _candidate_methods(config: SearchConfig, source: Source) -> list[str]:
    names = list(config.candidate_methods)
    if source.kind == "onnx" and names == list(CANDIDATE_METHODS):
        names = list(ORT_CANDIDATE_METHODS)
    installed = set(list_runtimes(installed_only=True))
    return [n for n in names if get_method(n).backend in installed]


def describe(candidate: Candidate, teacher_size: int) -> str:
    parts = [f"MobileNetV2 alpha {candidate.alpha:g} computing at {candidate.resolution} px"
             + (f" (the file resizes its {teacher_size}-px input inside)" if candidate.resolution != teacher_size else "")]
    if candidate.keep < 1:
        parts.append(f"{candidate.keep:.0%} of each block's expanded channels kept")
    parts.append("distilled from the teacher" + (" (started from its weights)" if candidate.init == "teacher" else
                                                  " (started from a backbone file)"))
    return ", ".join(parts)


def _publish(staging: Path, out: Path) -> None:
    """Move a finished optimize run into OUT beside OUT/search (the run's old files go first:
    _refuse_user_files checked that OUT holds no one else's), then list them in OUT's marker."""
    for entry in out.iterdir():
        if entry.name not in (STATE_DIR, MARKER, staging.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
    for entry in staging.iterdir():
        if entry.name != MARKER:
            os.replace(entry, out / entry.name)
    shutil.rmtree(staging, ignore_errors=True)
    _mark(out)


def _search_record(source: Source, space: list[Candidate], trials: dict[str, Trial], config: SearchConfig, validation: str,
                   ray: str, seconds: dict[str, float], baseline: str) -> Search:
    d = config.distill
    scheduler = (f"ASHA on the validation loss: every candidate trains {config.grace_epochs} epoch(s), then at each rung only "
                 f"the best 1/{config.reduction_factor} go on, up to {d.epochs} epochs; distillation at temperature "
                 f"{d.temperature:g} with label weight {d.label_weight:g}, Adam {d.learning_rate:g} (cosine decay), batch {d.batch_size}")
    return Search(teacher=baseline, validation=validation, scheduler=scheduler, ray=ray, seconds=seconds,
                  trials=[trials[c.name] for c in space if c.name in trials])


def run_search(model: Path, out: Path, config: SearchConfig, data_dir: Path | None = None, force: bool = False,
               progress: Progress | None = None, now: Callable[[], float] = time.monotonic, test_data: Path | None = None,
               labels: Path | None = None) -> Results:
    """Train the candidates, then build, measure and choose among them and the teacher's own
    variants; write the run to `out` (module doc). Returns the results as written. `data_dir`,
    `test_data` and `labels` are optimize's (a foreign teacher's images and class order)."""
    from edgeopt.pipeline import optimize

    progress = progress or NullProgress()
    started = now()
    deadline = started + config.time_budget_s if config.time_budget_s else None
    out = Path(out)
    source = load_teacher(model, config, data_dir, test_data, labels)
    size = source.image_size[0]
    if source.image_size[0] != source.image_size[1]:
        raise ModelError(f"{model} takes {source.image_size[1]}x{source.image_size[0]} images; search needs a square input")
    check_resolutions(config, size)  # before any work, as optimize checks its settings (edgeopt.preflight)
    opt_config = config.optimize.replaced(
        methods=config.optimize.methods or (CANDIDATE_METHODS if source.kind in TENSORFLOW_KINDS else None))
    _preflight(source, opt_config, config)
    train_items, val_items, validation = search_split(source.split, config.distill.val_fraction, config.distill.seed)
    reads = tuple(Path(p) for p in (source.path, source.data_root, source.test_root) if p is not None)
    resumed = _prepare_output(out, force, reads, _fingerprint(source, config, train_items, val_items))
    root = Path(source.data_root)
    resize = source.contract.resize
    train = decode_images_cached(root, train_items, (size, size), resize=resize)
    val = decode_images_cached(root, val_items, (size, size), resize=resize)
    if len(train.labels) == 0 or len(val.labels) == 0:
        raise DataError(f"no readable train or validation images in {root}; check the files")
    transform: PixelTransform = source.contract.transform
    teacher_train, teacher_mirrored, teacher_val = _answers(out, _teacher_predict(source), train.pixels, val.pixels, progress)
    alpha, weights, ranking = _starting_points(source, config, train.pixels)
    space = candidates(config, size, alpha)
    ledger = Ledger(out)
    done = ledger.done()
    pending = [c for c in space if c.name not in done]
    ray_info = "no trial to run: every candidate was trained by an earlier run" if resumed and not pending else ""
    reserve = config.final_seconds_per_candidate * (len(space) + 1)
    t = now()
    if pending:
        from edgeopt.search.runner import Payload, run_trials

        if resumed:
            progress.finish(f"resuming the search in {out}: {len(space) - len(pending)} of {len(space)} candidates already trained")
        data = TrialData(train.pixels, train.labels, teacher_train, teacher_mirrored, val.pixels, val.labels, teacher_val,
                         source.classes, transform)
        _, ray_info = run_trials(pending, Payload(data, weights, ranking, config), out, ledger, progress,
                                 None if deadline is None else deadline - reserve, now)
    trials_s = now() - t
    trials = {name: trial for name, trial in ledger.trials().items() if name in {c.name for c in space}}
    built = [c for c in space if trials.get(c.name) is not None and trials[c.name].status == "completed"
             and (student_dir(out, c) / MODEL_FILE).is_file()]
    t = now()
    if not pending and _measured_already(out, opt_config, trials):
        progress.finish("every candidate was trained and measured by an earlier run: choosing again from its measurements")
        return rechoose(out, config)
    more = [candidate_method(m, c.name, student_dir(out, c), describe(c, size)) for c in built for m in _candidate_methods(config, source)]
    staging = out / RUN_DIR
    if staging.exists():
        shutil.rmtree(staging)
    results = optimize(Path(model), staging, opt_config, force=True, data_dir=data_dir, progress=progress, test_data=test_data,
                       labels=labels, more_methods=more)
    seconds = {"trials_this_run_s": trials_s, "final_s": now() - t, "total_this_run_s": now() - started,
               "trials_all_runs_s": sum(tr.seconds for tr in trials.values())}
    notes = [
        f"Search: {len(space)} candidate(s); {len(built)} trained to the end and built here, the others stopped by successive "
        "halving, cut by the time budget or failed (see the search section). A candidate computing at fewer pixels resizes "
        f"the teacher's {size}-px input inside its file, so every variant takes the same input as the teacher.",
        f"Every candidate was distilled from the teacher's answers on its train split; validation: {validation}. The test "
        "photos were used only here, to measure and choose, as optimize does.",
    ]
    results = results.model_copy(update={
        "search": _search_record(source, space, trials, config, validation, ray_info, seconds, results.variants[0].name),
        "notes": [*results.notes, *notes]})
    write_report(results, staging)
    _publish(staging, out)
    return results


def _measured_already(out: Path, opt_config: Any, trials: dict[str, Trial]) -> bool:
    """Whether OUT holds the final run of these very trials, measured with these settings (the
    objective and the target may differ: choosing again needs no new measurement)."""
    try:
        results = load_results(out / RESULTS_FILE)
        stored = json.loads((out / "optimize_config.json").read_text())
    except (OSError, ValueError, ModelError):
        return False
    wanted = opt_config.to_jsonable()
    same = {k: v for k, v in stored.items() if k not in ("objective", "target")} == {
        k: v for k, v in wanted.items() if k not in ("objective", "target")}
    return same and results.search is not None and [t.model_dump() for t in results.search.trials] == [
        trials[t.name].model_dump() for t in results.search.trials if t.name in trials] and len(results.search.trials) == len(trials)


def rechoose(out: Path, config: SearchConfig) -> Results:
    """A finished search chosen again with another objective, budgets or target, from its measurements."""
    results = load_results(out / RESULTS_FILE)
    results = decide(results.model_copy(update={"choice": None}), config.optimize.objective, config.optimize.target)
    selected = results.selected
    for old in out.glob("selected.*"):  # the one chosen before may be of another format
        old.unlink()
    shutil.copyfile(out / selected.file, out / f"selected{Path(selected.file).suffix}")
    write_report(results, out)
    _mark(out)
    return results
