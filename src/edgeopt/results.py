"""The one typed, versioned results schema, and the only place that knows its JSON layout.

Written by `optimize` (the build machine's measurements) and by `device bench` (a device's),
read by `choose`, the report, `publish` and the benchmarks. Per-image predictions are kept, so
paired statistics can be recomputed after the fact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer

from edgeopt.errors import ModelError
from edgeopt.objective import GuardWord

SCHEMA: Literal["edgeopt.results/2"] = "edgeopt.results/2"
RESULTS_FILE = "results.json"


class Record(BaseModel):
    """A frozen part of a results file; unknown keys are an error (the schema is versioned)."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Tensor(Record):
    name: str
    shape: list[int]  # -1 for a free dimension
    dtype: str  # float32, float16, uint8, int8
    scale: float = 0.0  # quantization; 0 when not quantized
    zero_point: int = 0
    layout: str = "NHWC"


class InputContract(Record):
    """What a device feeds the model: the input tensor, and the per-channel affine map from
    camera pixels 0..255 to the values a float input expects (x = pixel * scale + offset; the
    identity for every model edgeopt makes, which scale inside)."""

    tensor: Tensor
    pixel_scale: list[float] = Field(default_factory=lambda: [1.0, 1.0, 1.0])
    pixel_offset: list[float] = Field(default_factory=lambda: [0.0, 0.0, 0.0])
    # One sentence for a person: what to feed.
    feed: str = ""
    # The channel order the model takes ("rgb" or "bgr") and how an image is fitted to its input
    # ("squash" or "center-crop"): edgeopt.contract. Written only when not the default, so that a
    # device on an older edgeopt still reads the results of a model fed as edgeopt's own are.
    channel_order: str = "rgb"
    resize: str = "squash"

    @model_serializer(mode="wrap")
    def _leave_out_defaults(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key, default in (("channel_order", "rgb"), ("resize", "squash")):
                if data.get(key) == default:
                    del data[key]
        return data


class WeightBytes(Record):
    tensors: int
    bytes: int


class Graph(Record):
    input: Tensor
    output: Tensor
    op_counts: dict[str, int]
    # Each operator's versions in the file (TFLite opcodes have versions an older runtime may
    # not know; ONNX: the opset of each domain under "opset:<domain>").
    op_versions: dict[str, list[int]] = Field(default_factory=dict)
    quantize_ops: int = 0
    dequantize_ops: int = 0
    hybrid_ops: int = 0
    weight_dtypes: dict[str, WeightBytes] = Field(default_factory=dict)


class Accuracy(Record):
    accuracy: float  # fraction 0..1
    count: int
    per_class: dict[str, float | None]
    confusion: list[list[int]]  # confusion[i][j]: images of class i predicted as class j


class PairedClass(Record):
    """Paired accuracy difference (variant - baseline, fractions) with its exact interval."""

    n: int
    baseline_only: int  # images the baseline gets right and the variant wrong
    variant_only: int
    difference: float
    low: float
    high: float
    p_value: float

    @property
    def discordant(self) -> int:
        return self.baseline_only + self.variant_only


class Paired(PairedClass):
    confidence: float
    per_class: dict[str, PairedClass] = Field(default_factory=dict)


class Fidelity(Record):
    """Answers that differ from the baseline's (float32's), which needs no labels: on the test images,
    and on every image evaluated (the test images and the train sample), with the exact interval of
    the share changed. A variant cannot lose more accuracy on a set of images than the share of their
    answers it changes. The train images favour the variant (the model was fitted to them, and answers
    there are surer): the test images' share is the one to judge by."""

    changed: int
    images: int
    test_changed: int
    test_images: int
    low: float  # of changed / images, at `confidence`
    high: float
    confidence: float


class Latency(Record):
    median_ms: float
    p90_ms: float
    spread: float  # (slowest - fastest round median) / median
    round_medians_ms: list[float]
    invocations: int
    threads: int
    # Interval of (this variant / the baseline) from the paired rounds, and its coverage.
    ratio_low: float | None = None
    ratio_high: float | None = None
    ratio_coverage: float | None = None


class Predictions(Record):
    """Top-1 class and its probability per image, in the order of Results.data.test_items
    (and of the train sample); fewer than all when evaluation stopped early."""

    test: list[int]
    test_confidence: list[float]
    train: list[int] | None = None


class Verdict(Record):
    """The objective's word on a variant (see edgeopt.objective.Score)."""

    L: float
    L_low: float
    L_high: float
    L_other_form: float
    delta_size: float
    delta_time: float
    delta_metric: float
    metric_loss: float
    metric_loss_low: float
    metric_loss_high: float
    eligible: bool
    excluded_because: str
    pareto: bool
    guard: GuardWord
    # The budgets it breaks, in words (edgeopt.budgets; "" when it fits them or none was set:
    # then left out of the file, which older readers know without it).
    over_budget: str = ""

    @model_serializer(mode="wrap")
    def _leave_out_no_budget(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("over_budget") == "":
            del data["over_budget"]
        return data

    @field_validator("guard", mode="before")
    @classmethod
    def _current_word(cls, word: Any) -> Any:
        # Results written before the guard's two words were renamed read as they would now.
        return {"measurably worse": "worse than allowed", "not clearly worse": "loss unproven"}.get(word, word)


class Repair(Record):
    """What an accuracy-guarded variant kept out of int8, and what that cost."""

    # What was spared 8-bit quantization, most sensitive first: ops left in float (LiteRT) or
    # activations given 16 bits (ONNX Runtime).
    spared: list[str]
    # How their sensitivity was measured, on which images.
    sensitivity: str
    # Held-out answers that differ from the float model's (percent), and the held-out accuracy
    # loss against it (pp), before and after the repair.
    changed_before_pct: float
    changed_after_pct: float
    loss_before_pp: float
    loss_after_pp: float
    # Each step tried: how many kept in float, the changed answers and the loss.
    steps: list[dict[str, float]] = Field(default_factory=list)
    note: str = ""


# What a fine-tuning was fitted to (Training.fitted_to), in words.
FITTED_TO_IN_WORDS = {"labels": "the labels", "distilled": "the float model's answers"}


class Training(Record):
    """What a retraining method (qat_int8, pruned_int8, clustered_int8) did before conversion."""

    epochs: int
    images: int  # the model's train split; never validation or test images
    learning_rate: float
    seconds: float
    train_accuracy_last_epoch: float  # against the labels, with augmentation and dropout on, as fitted
    # What it was fitted to: the labels, or the float model's answers (knowledge distillation).
    # Written only when distilled, so that a results file edgeopt wrote before this field stays
    # the same and one with labels-fitted variants still loads in such an edgeopt.
    fitted_to: Literal["labels", "distilled"] = "labels"
    target_sparsity: float | None = None
    sparsity_reached: float | None = None  # zeros in the pruned kernels before conversion
    clusters: int | None = None
    max_unique_values_per_kernel: int | None = None  # of the clustered kernels, before conversion

    @model_serializer(mode="wrap")
    def _leave_out_labels(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("fitted_to") == "labels":
            del data["fitted_to"]
        return data


class Variant(Record):
    name: str
    paper_label: str = ""
    backend: str  # litert, onnxruntime
    summary: str
    file: str  # relative to the run folder
    sha256: str
    size_bytes: int
    # The file compressed with zstd (methods.base.TRANSFER_LEVEL): the bytes a delivery sends.
    transfer_bytes: int | None = None
    # Building the file, with its sha256 and transfer size (zstd level 19: up to ~2 s of a float32 file's).
    build_seconds: float = 0.0
    # The runtime (name and version) that measured it; loadable False when it could not load it.
    runtime: str = ""
    loadable: bool = True
    load_error: str = ""
    graph: Graph | None = None
    input: InputContract | None = None
    change_vs_baseline: str = ""
    test: Accuracy | None = None
    train: Accuracy | None = None
    paired: Paired | None = None
    latency: Latency | None = None
    predictions: Predictions | None = None
    score: Verdict | None = None
    repair: Repair | None = None
    # A retraining method's fine-tuning (None for every other variant, and then left out of the
    # file, so that a device on an older edgeopt still reads the results of a default run).
    training: Training | None = None
    # Racing: images evaluated, and why evaluation stopped before the whole test split ("" when it did not).
    stopped_early: str = ""
    # Answers that differ from the baseline's (None for the baseline, for a results file written before
    # issue 29, and left out of the file then).
    fidelity: Fidelity | None = None

    @model_serializer(mode="wrap")
    def _leave_out_no_training(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict):
            for key in ("training", "fidelity"):
                if key in data and data[key] is None:
                    del data[key]
        return data


class ModelInfo(Record):
    source: str
    # "keras" is a folder written by `edgeopt train` or a .keras file (edgeopt.sources)
    kind: Literal["keras", "h5", "savedmodel", "tflite", "onnx", "release"]
    classes: list[str]
    image_size: int


class Data(Record):
    root: str
    synthetic: bool
    # The test images, in the order of every variant's predictions: (path relative to root, class).
    test_items: list[tuple[str, int]]
    # How the train accuracy was measured: the number of train images (all, or a seeded sample).
    train_images: int
    train_total: int
    skipped_images: int = 0
    # Where the split came from: "the model's own split", "drawn by edgeopt (seed N)", a device's samples.
    split_note: str = ""


class Choice(Record):
    objective: dict[str, Any]
    # The runtimes the choice was made for (a variant for another runtime is not eligible).
    target: list[str]
    baseline: str
    selected: str
    reasons: list[str]
    ranking: list[str]
    tie: list[str] = Field(default_factory=list)
    tie_broken_by: str = ""
    guard_rule: str = ""
    other_form_selected: str = ""


class Trial(Record):
    """One candidate a search trained (edgeopt.search): its shape, how far it got and its
    validation figures (train split only; never the test photos)."""

    # The candidate's name, the prefix of its variants' names (r160_a1.0 -> r160_a1.0.f3_int8_uint8io).
    name: str
    resolution: int
    alpha: float
    keep: float  # share of the expanded channels kept
    init: str  # "teacher" or "backbone"
    # "completed" (every epoch), "stopped" (by successive halving), "cut" (by the time budget), "failed".
    status: Literal["completed", "stopped", "cut", "failed"]
    epochs: int
    # The last epoch's validation figures (fractions; loss: cross-entropy to the labels).
    val_accuracy: float | None = None
    val_loss: float | None = None
    val_agreement: float | None = None  # share of validation images on which it answers as the teacher
    history: list[dict[str, float]] = Field(default_factory=list)
    seconds: float = 0.0
    parameters: int = 0
    # Where it ran (the Ray node's IP address and id), and why it stopped or failed.
    node_ip: str = ""
    node_id: str = ""
    note: str = ""


class Search(Record):
    """What `edgeopt search` tried: every trial, how they were scheduled and what bounded the choice."""

    teacher: str  # the teacher's float variant (the baseline)
    validation: str  # where the validation images came from
    scheduler: str
    trials: list[Trial]
    ray: str = ""  # Ray's version and the cluster (nodes, CPUs)
    seconds: dict[str, float] = Field(default_factory=dict)


class Results(Record):
    schema_version: Literal["edgeopt.results/2"] = Field(SCHEMA, alias="schema")
    # "optimize" on the build machine; "device-bench" measured on a device.
    kind: Literal["optimize", "device-bench"]
    created: str
    edgeopt_version: str
    model: ModelInfo
    data: Data
    # What measured it: CPU, cores, memory, int8 dot-product flags, runtimes and versions.
    machine: dict[str, Any]
    measure: dict[str, Any]
    representative_samples: int = 0
    variants: list[Variant]
    choice: Choice | None = None
    notes: list[str] = Field(default_factory=list)
    diagnostics: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    # device-bench: the optimize run (results sha256) its variants came from.
    source_results_sha256: str = ""
    # A search's trials (None for optimize, and then left out of the file, so that a device on an
    # older edgeopt still reads an optimize run's results).
    search: Search | None = None

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    @model_serializer(mode="wrap")
    def _leave_out_no_search(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("search", 0) is None:
            del data["search"]
        return data

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(name)

    @property
    def baseline(self) -> Variant:
        return self.variant(self.choice.baseline if self.choice else self.variants[0].name)

    @property
    def selected(self) -> Variant:
        if self.choice is None:
            raise ValueError("these results hold no choice")
        return self.variant(self.choice.selected)

    def to_json(self) -> str:
        return self.model_dump_json(indent=1, by_alias=True)


def run_folder(path: Path) -> Path:
    """The optimize run folder a user named: the folder itself, or the folder of its results.json."""
    path = Path(path)
    if path.is_file() and path.name == RESULTS_FILE:
        return path.parent
    if not path.is_dir():
        raise ModelError(f"{path} is not an optimize run folder; pass the folder 'edgeopt optimize' wrote (it holds {RESULTS_FILE})")
    return path


def load_results(path: Path) -> Results:
    """Read a results file written by optimize or device bench; a clear error otherwise."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_FILE
    if not path.is_file():
        raise ModelError(f"{path} is missing; pass a folder written by 'edgeopt optimize' or a device results file")
    text = path.read_text()
    try:
        return Results.model_validate_json(text)
    except ValidationError as exc:
        if '"schema": "edgeopt.results/2"' not in text and '"schema":"edgeopt.results/2"' not in text:
            raise ModelError(
                f"{path} was written by an older edgeopt (no {SCHEMA} schema); re-run 'edgeopt optimize'"
            ) from None
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ModelError(f"{path} is not a valid results file ({where}: {first['msg']}); re-run the command that wrote it") from None


def write_results(results: Results, folder: Path) -> Path:
    path = Path(folder) / RESULTS_FILE
    path.write_text(results.to_json())
    return path
