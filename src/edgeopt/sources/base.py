"""What optimize starts from: a model, what it is fed, what its outputs mean, and its photos.

A loader (edgeopt.sources.registry) reads the model file's own facts (ModelFacts); the rest --
labels, the input contract, the test and calibration images -- comes from the user's options
(SourceOptions) and is resolved here once, the same way for every kind of model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.contract import PixelContract
from edgeopt.data.imagefolder import ImageFolder, scan_image_folder
from edgeopt.data.split import Split, build_split
from edgeopt.data.synthetic import is_synthetic
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.pixels import PixelTransform, TensorSpec


@dataclass(frozen=True)
class SourceOptions:
    """What the user said about the model and its photos (optimize's flags); None: not said."""

    # The image folder (DIR/<class>/*.jpg): for a foreign model, where edgeopt draws its split.
    data_dir: Path | None = None
    # The team's own held-out photos, used whole for test and never for calibration.
    test_dir: Path | None = None
    # Photos for calibration only (else the train part of the split).
    calibration_dir: Path | None = None
    # Output index -> class: one name a line, or a JSON list (or labels.json).
    labels_file: Path | None = None
    # Keras custom layers: "module:attr" (a class, or a dict of name -> class).
    custom_objects: tuple[str, ...] = ()
    # The pixel values a float input takes (--input-range, --input-mean/--input-std, --channel-order)
    # when given, and how images are fitted (--resize); None: not given.
    transform: PixelTransform | None = None
    resize: str | None = None
    # The seed of the split edgeopt draws.
    seed: int = 0


@dataclass(frozen=True)
class ModelFacts:
    """What a loader reads from the model file itself."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # What the model does to its input itself (e.g. "Mul by 0.00784 then AddV2 of -1 on the input"); "".
    rescales: str = ""
    # True when its last op is a softmax, False when it outputs something else (logits), None: unknown.
    probabilities: bool | None = None
    # An integer input (an already-quantized .tflite): measured as given.
    quantized: bool = False


@dataclass(frozen=True)
class Source:
    """The model optimize starts from, and the images it is measured on."""

    path: Path
    # The loader: "train" (a folder written by `edgeopt train`), "keras", "h5", "savedmodel", "tflite", "onnx".
    kind: str
    classes: tuple[str, ...]
    image_size: tuple[int, int]
    split: Split
    data_root: Path
    synthetic: bool
    notes: tuple[str, ...] = ()
    # Where the test split came from, for the report.
    split_note: str = "the model's own split"
    # How camera images become the model's input.
    contract: PixelContract = field(default_factory=PixelContract)
    # Where the class order came from, for the report and the refusal message.
    labels_note: str = "the model's labels.json"
    # --test-data: the folder split.test is relative to (None: data_root).
    test_root: Path | None = None
    # --calibration-data: the folder and its images (None: the train part of the split).
    calibration: tuple[Path, tuple[tuple[str, int], ...]] | None = None
    # An already-quantized .tflite: only the given file is measured.
    quantized: bool = False
    custom_objects: tuple[str, ...] = ()
    # The model's input as its file declares it (None for a train folder).
    model_input: TensorSpec | None = None

    @property
    def results_kind(self) -> str:
        """The kind results.json names (a train folder is a Keras model)."""
        return "keras" if self.kind == "train" else self.kind


def read_labels_file(path: Path) -> tuple[str, ...]:
    """Class names in output order: one a line, a JSON list, or edgeopt's labels.json."""
    if not path.is_file():
        raise ConfigError(f"labels file {path} does not exist; pass --labels FILE with one class name a line")
    text = path.read_text(errors="replace")
    names: list[str]
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
            names = [str(c) for c in (data["classes"] if isinstance(data, dict) else data)]
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path} is not a JSON list of class names ({exc}); write one name a line instead") from None
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"{path} names {len(names)} classes ({len(set(names))} distinct); a classifier's labels "
                          "file names each of its classes once, in output order")
    return tuple(names)


def resolve_contract(options: SourceOptions, facts: ModelFacts) -> tuple[PixelContract, list[str]]:
    """The input contract from the options and what the model file says, with notes for the report."""
    notes = []
    given = options.transform is not None and (
        options.transform.scale != PixelTransform().scale or options.transform.offset != PixelTransform().offset)
    contract = PixelContract(options.transform or PixelTransform(), options.resize or "squash", facts.rescales, given)
    spec = facts.inputs[0]
    if facts.quantized:
        if given:
            raise ConfigError("this model has an integer input, whose quantization is its own pixel normalisation; "
                              "drop --input-range/--input-mean/--input-std")
        notes.append(f"The model takes {spec.dtype} input: its input quantization (scale {spec.scale:.6g}, zero point "
                     f"{spec.zero_point}) is its own pixel normalisation, so camera bytes are fed as they are.")
    elif facts.rescales and given:
        notes.append(f"The model rescales pixels itself ({facts.rescales}), and the pixel values were given too: "
                     "it is fed them mapped as given, then rescales them again.")
    elif facts.rescales:
        notes.append(f"The model rescales pixels itself ({facts.rescales}): it is fed pixel values 0..255.")
    elif not given:
        notes.append("No rescaling of the input was found in the model and none was given: it is fed pixel values "
                     "0..255. If it was trained on another range, pass --input-range (e.g. -1,1 or 0,1) or "
                     "--input-mean/--input-std; the float32 baseline's accuracy is checked against chance.")
    notes.append(f"Input: {spec.dtype} {spec.layout} {list(spec.shape)}; fed {contract.describe()}.")
    if facts.probabilities is False:
        notes.append("The model outputs logits (its last op is not a softmax): the confidences shown are their softmax.")
    return contract, notes


def check_one_input_output(path: Path, facts: ModelFacts) -> None:
    if len(facts.inputs) != 1 or len(facts.outputs) != 1:
        raise ModelError(
            f"{path} has {len(facts.inputs)} input(s) ({', '.join(s.name for s in facts.inputs)}) and "
            f"{len(facts.outputs)} output(s) ({', '.join(s.name for s in facts.outputs)}); edgeopt optimizes image "
            "classifiers with one image input and one output of class scores: export that part of the model alone"
        )
    spec = facts.inputs[0]
    channels = spec.shape[1] if spec.layout == "NCHW" else spec.shape[-1] if spec.shape else 0
    if len(spec.shape) != 4 or channels != 3 or min(spec.image_size) < 1:
        raise ModelError(f"{path} takes input {spec.name} of shape {list(spec.shape)}; edgeopt runs image classifiers "
                         "with one RGB image input of a fixed size (N, H, W, 3) or (N, 3, H, W)")


def output_classes(spec: TensorSpec) -> int:
    size = 1
    for d in spec.shape[1:]:
        size *= max(d, 1)
    return size


def foreign_source(path: Path, kind: str, facts: ModelFacts, options: SourceOptions) -> Source:
    """A model made outside edgeopt: labels from --labels or the class folders, a split drawn by
    edgeopt (or --test-data whole), the contract from the flags and the file."""
    check_one_input_output(path, facts)
    if options.data_dir is None and options.test_dir is None:
        raise ConfigError(f"{path} is a model made outside edgeopt: pass --data DIR with its photos (DIR/<class>/*.jpg)")
    data = scan_image_folder(options.data_dir) if options.data_dir is not None else None
    test = scan_image_folder(options.test_dir) if options.test_dir is not None else None
    if options.labels_file is not None:
        classes = read_labels_file(options.labels_file)
        labels_note = f"from --labels {options.labels_file}"
    else:
        classes = (data or test).classes  # type: ignore[union-attr]
        labels_note = "the sorted class folder names (Keras' image_dataset_from_directory order); --labels FILE sets another"
    outputs = output_classes(facts.outputs[0])
    if outputs != len(classes):
        raise ModelError(
            f"{path} outputs {outputs} class scores but there are {len(classes)} classes ({labels_note}); pass "
            "--labels FILE naming every output in order, or the data the model was trained on"
        )
    for folder in (f for f in (data, test) if f is not None):
        unknown = [c for c in folder.classes if c not in classes]
        if unknown:
            raise DataError(f"{folder.root} has class folder(s) {', '.join(unknown)} that the labels ({labels_note}) "
                            f"do not name; the labels are: {', '.join(classes)}")
    notes: list[str] = [f"Class order (output index -> class): {labels_note}."]
    seed = options.seed
    if test is not None:
        train_folder = _relabelled(data, classes) if data is not None else None
        split = _split_with_test(train_folder, _relabelled(test, classes), classes)
        split_note = f"--test-data {test.root}, used whole"
        notes.append(f"The test images are {test.root}, used whole and never for calibration.")
        test_root: Path | None = test.root
        root = data.root if data is not None else test.root
    else:
        assert data is not None
        drawn = build_split(data, seed=seed, val_fraction=0.0)
        split = _remap_split(drawn, data, classes)
        split_note = f"drawn by edgeopt: 20% of each class, seed {seed}"
        notes.append(f"The test split was drawn by edgeopt (20% of each class of {data.root}, seed {seed}); edgeopt cannot "
                     "know which photos trained this model, so the accuracies may be optimistic if these were among "
                     "them: pass --test-data DIR with held-out photos.")
        test_root, root = None, data.root
    calibration = None
    if options.calibration_dir is not None:
        cal = _relabelled(scan_image_folder(options.calibration_dir), classes, check=False)
        calibration = (cal.root, cal.items)
        notes.append(f"Calibration images: {cal.root} ({len(cal.items)} photos).")
    elif not split.train:
        raise ConfigError("--test-data is used whole for test, never for calibration: pass --data DIR or "
                          "--calibration-data DIR with other photos to calibrate on")
    contract, contract_notes = resolve_contract(options, facts)
    synthetic = is_synthetic(root)
    return Source(path, kind, classes, facts.inputs[0].image_size, split, root, synthetic,
                  tuple(notes + contract_notes), split_note, contract, labels_note, test_root, calibration,
                  facts.quantized, options.custom_objects, facts.inputs[0])


def _relabelled(folder: ImageFolder, classes: tuple[str, ...], check: bool = True) -> ImageFolder:
    """The folder's items with class indices in the model's output order."""
    index = {name: classes.index(name) for name in folder.classes if name in classes}
    missing = [c for c in folder.classes if c not in index]
    if missing and check:
        raise DataError(f"{folder.root} has class folder(s) {', '.join(missing)} the labels do not name")
    items = tuple((p, index[folder.classes[c]]) for p, c in folder.items if folder.classes[c] in index)
    return ImageFolder(folder.root, classes, items)


def _remap_split(split: Split, folder: ImageFolder, classes: tuple[str, ...]) -> Split:
    index = {i: classes.index(name) for i, name in enumerate(folder.classes)}

    def remap(items: tuple[tuple[str, int], ...]) -> tuple[tuple[str, int], ...]:
        return tuple((p, index[c]) for p, c in items)

    return Split(split.data_root, classes, split.seed, split.test_fraction, remap(split.train), remap(split.validation),
                 remap(split.test), split.sizes)


def _split_with_test(train: ImageFolder | None, test: ImageFolder, classes: tuple[str, ...]) -> Split:
    """The train folder whole for train (calibration, train accuracy), the test folder whole for test."""
    sizes = {p: (test.root / p).stat().st_size for p, _ in test.items}
    return Split(str((train or test).root.resolve()), classes, 0, 0.0, train.items if train is not None else (), (),
                 test.items, sizes)

