"""The candidates a search trains, and the settings of the search.

A candidate is a smaller network for the teacher's job: MobileNetV2 computing at a lower input
resolution, and/or with fewer channels inside each block (structured pruning of the teacher's
expanded channels), and/or of another width multiplier when a backbone of that width is given.
Every candidate's file takes the teacher's input (the same size, the same pixel contract) and
resizes inside, so it is a drop-in replacement: the device's camera pipeline, labels.json and
every command that reads a run stay as they are. No TensorFlow here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, Strict, model_validator

from edgeopt.config import OptimizeConfig
from edgeopt.errors import ConfigError
from edgeopt.settings import Settings

Ints = Annotated[tuple[int, ...], Strict(False)]
Floats = Annotated[tuple[float, ...], Strict(False)]

# The study's five variants of each candidate (the teacher gets optimize's default set).
CANDIDATE_METHODS = ("f0_float32", "f1_dynamic_range", "f2_int8", "f3_int8_uint8io", "f4_float16")


def alpha_text(alpha: float) -> str:
    """1.0 -> "1.0", 0.35 -> "0.35": the width multiplier as a name shows it."""
    text = f"{alpha:g}"
    return text if "." in text else f"{text}.0"


@dataclass(frozen=True)
class Candidate:
    """One network a trial trains by distillation from the teacher."""

    # The side, in pixels, the network computes at (the file resizes the teacher's input to it).
    resolution: int
    # MobileNetV2 width multiplier; the teacher's own unless a backbone of another is given.
    alpha: float = 1.0
    # Share of each block's expanded channels (and of the last 1x1 conv's) kept, the most useful
    # first, ranked on train images; 1.0 keeps them all.
    keep: float = 1.0
    # Where its weights start: "teacher" (the teacher's own, pruned to `keep`) or "backbone" (a
    # MobileNetV2 no-top weights file of this alpha, with a new head).
    init: Literal["teacher", "backbone"] = "teacher"

    @property
    def name(self) -> str:
        """e.g. r160_a1.0, r128_a1.0_k0.5: a variant of it is named r160_a1.0.f3_int8_uint8io."""
        return f"r{self.resolution}_a{alpha_text(self.alpha)}" + (f"_k{self.keep:g}" if self.keep != 1.0 else "")

    def to_dict(self) -> dict[str, Any]:
        return {"resolution": self.resolution, "alpha": self.alpha, "keep": self.keep, "init": self.init}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Candidate:
        return cls(int(raw["resolution"]), float(raw["alpha"]), float(raw["keep"]), raw["init"])

    def relative_work(self, teacher_resolution: int, teacher_alpha: float = 1.0) -> float:
        """Roughly its multiply-adds over the teacher's: pixels, and channels squared where both
        ends shrink (alpha), or once where one end does (keep)."""
        return (self.resolution / teacher_resolution) ** 2 * (self.alpha / teacher_alpha) ** 2 * self.keep


class DistillConfig(Settings):
    """How a candidate is trained from the teacher's answers on the train split."""

    # Epochs a candidate trains at most (successive halving stops poor ones earlier).
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(32, ge=1)
    # Adam's learning rate for a candidate started from the teacher's weights (all of them are
    # fitted except BatchNorm's, which stays in inference mode as the teacher was trained); a
    # candidate started from a backbone trains its new head alone for its first epoch at
    # `head_learning_rate`, then everything at `learning_rate`. Cosine decay to a tenth over `epochs`.
    learning_rate: float = Field(2e-4, gt=0)
    head_learning_rate: float = Field(1e-3, gt=0)
    # Softening of the teacher's and the student's answers (Hinton et al. 2015); the soft term is
    # scaled by temperature^2 so its gradients keep their size.
    temperature: float = Field(2.0, gt=0)
    # Weight of the labels (cross-entropy with `label_smoothing`) against the teacher's answers.
    label_weight: float = Field(0.3, ge=0, le=1)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # Validation images carved from the train split when the teacher's split has none (a share
    # of each class); the teacher's test photos are never seen.
    val_fraction: float = Field(0.1, gt=0, lt=1)
    # Train images the channel ranking (keep < 1) runs the teacher on.
    ranking_images: int = Field(64, ge=1)
    seed: int = 0


class SearchConfig(Settings):
    """What `edgeopt search` tries, how it schedules the trials and how it chooses."""

    # Resolutions the candidates compute at (each at most the teacher's input side). With `keeps`, 9
    # candidates whose training costs about 2.3 of the teacher's epochs per epoch of all of them
    # (multiply-adds: 0.10x to 0.51x of MobileNetV2 1.0/224's), sized for 2 hours on 2 cores.
    resolutions: Ints = (96, 128, 160)
    # Shares of the expanded channels kept (structured pruning of the teacher); 1.0: all.
    keeps: Floats = (1.0, 0.75, 0.5)
    # Other width multipliers, each with a MobileNetV2 no-top weights file (alpha -> path).
    backbones: dict[str, str] = Field(default_factory=dict)
    # Also train the teacher's own resolution at full width (a distilled copy of the teacher).
    include_teacher_shape: bool = False
    distill: DistillConfig = Field(default_factory=DistillConfig)
    # Successive halving (ASHA): every candidate trains `grace_epochs`; at each rung only the best
    # 1/reduction_factor (on validation loss) go on.
    grace_epochs: int = Field(2, ge=1)
    reduction_factor: int = Field(2, ge=2)
    # Trials at once, and CPUs each takes (0: every CPU Ray offers, divided among the trials).
    max_concurrent_trials: int = Field(1, ge=1)
    cpus_per_trial: int = Field(0, ge=0)
    # Wall seconds for the whole search, the final build and measurement included (None: no limit).
    time_budget_s: float | None = Field(None, gt=0)
    # Seconds kept for the final build and measurement of each candidate (and the teacher) when a
    # time budget is set: trials still running at the budget minus this are stopped.
    final_seconds_per_candidate: float = Field(90.0, ge=0)
    # A Ray cluster's address ("auto", "ray://host:10001" or "host:6379"); None: a local Ray.
    ray_address: str | None = None
    # Methods built for each candidate (its float32 first); the teacher gets optimize's methods.
    candidate_methods: Annotated[tuple[str, ...], Strict(False)] = CANDIDATE_METHODS
    # Build, measure and choose: optimize's settings (the objective's budgets included).
    optimize: OptimizeConfig = Field(default_factory=OptimizeConfig)

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        if not self.resolutions:
            raise ValueError("no resolutions given; e.g. 96,128,160")
        if any(r < 32 for r in self.resolutions):
            raise ValueError(f"resolutions {list(self.resolutions)}: each must be at least 32 pixels")
        if not self.keeps or any(not 0 < k <= 1 for k in self.keeps):
            raise ValueError(f"keeps {list(self.keeps)}: each must be in (0, 1]")
        for alpha in self.backbones:
            try:
                if float(alpha) <= 0:
                    raise ValueError
            except ValueError:
                raise ValueError(f"backbone width {alpha!r} is not a positive number; e.g. 0.5=path.weights.h5") from None
        if self.grace_epochs > self.distill.epochs:
            raise ValueError(f"grace_epochs {self.grace_epochs} is more than distill.epochs {self.distill.epochs}")
        return self


def check_resolutions(config: SearchConfig, teacher_size: int) -> None:
    too_big = [r for r in config.resolutions if r > teacher_size]
    if too_big:
        raise ConfigError(f"resolutions {too_big} are above the teacher's input side {teacher_size}: a candidate "
                          "resizes the teacher's input down, never up; drop them")


def candidates(config: SearchConfig, teacher_size: int, teacher_alpha: float | None) -> list[Candidate]:
    """The search space: every resolution x keep share at the teacher's width (started from the
    teacher's weights; needs a MobileNetV2 teacher), then every resolution at each other width
    given a backbone. Cheapest first, so that a time budget cuts the expensive ones."""
    check_resolutions(config, teacher_size)
    found: list[Candidate] = []
    if teacher_alpha is not None:
        for r in config.resolutions:
            for keep in config.keeps:
                if r == teacher_size and keep == 1.0 and not config.include_teacher_shape:
                    continue
                found.append(Candidate(r, teacher_alpha, keep, "teacher"))
    for alpha_key in config.backbones:
        alpha = float(alpha_key)
        for r in config.resolutions:
            found.append(Candidate(r, alpha, 1.0, "backbone"))
    if not found:
        raise ConfigError(
            "the search space is empty: the teacher is not a MobileNetV2 edgeopt can start from, and no backbone was "
            "given; pass --backbone ALPHA=PATH (a Keras MobileNetV2 no-top weights file)"
            if teacher_alpha is None else
            "the search space is empty (only the teacher's own shape); add a lower --resolutions or a --keep below 1"
        )
    unique = list(dict.fromkeys(found))
    return sorted(unique, key=lambda c: (c.relative_work(teacher_size, teacher_alpha or c.alpha), c.name))
