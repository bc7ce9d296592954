"""Results built in code for the report's tests: a few variants with chosen sizes, latencies and
per-image answers on real (tiny) photos, scored and chosen by edgeopt's own chooser."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edgeopt.choose import decide
from edgeopt.objective import Objective
from edgeopt.results import Accuracy, Data, Latency, ModelInfo, Predictions, Results, Search, Trial, Variant

CLASSES = ("aluminium_can", "carton", "glass_bottle")


def write_photos(root: Path, per_class: int) -> list[tuple[str, int]]:
    """per_class small JPEGs a class under root, each of its own colour; the test items (path, label)."""
    items = []
    for label, name in enumerate(CLASSES):
        for i in range(per_class):
            path = root / name / f"photo_{i:03d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            colour = (40 + 70 * label, (37 * i) % 255, 200 - 60 * label)
            Image.new("RGB", (64, 48), colour).save(path)
            items.append((f"{name}/{path.name}", label))
    return items


def _accuracy(predicted: Sequence[int], labels: Sequence[int]) -> Accuracy:
    truth, guess = np.asarray(labels), np.asarray(predicted)
    confusion = [[int(np.sum((truth == i) & (guess == j))) for j in range(len(CLASSES))] for i in range(len(CLASSES))]
    per_class = {c: float(np.mean(guess[truth == i] == i)) if np.any(truth == i) else None for i, c in enumerate(CLASSES)}
    return Accuracy(accuracy=float(np.mean(truth == guess)), count=len(labels), per_class=per_class, confusion=confusion)


def variant(name: str, size_bytes: int, rounds_ms: Sequence[float], predicted: Sequence[int], labels: Sequence[int],
            backend: str = "litert") -> Variant:
    return Variant(
        name=name, backend=backend, summary=f"{name}, built in a test", file=f"variants/{name}.tflite", sha256="0" * 64,
        size_bytes=size_bytes, runtime=backend,
        latency=Latency(median_ms=float(np.median(rounds_ms)), p90_ms=max(rounds_ms), spread=0.0,
                        round_medians_ms=list(rounds_ms), invocations=10, threads=1),
        test=_accuracy(predicted, labels),
        predictions=Predictions(test=list(predicted), test_confidence=[0.5 + 0.01 * (i % 40) for i in range(len(predicted))]),
    )


def built_results(root: Path, items: list[tuple[str, int]], variants: list[Variant], objective: Objective | None = None,
                  synthetic: bool = False) -> Results:
    """An optimize run's results with these variants (the first is the baseline), decided by choose.decide."""
    results = Results(
        kind="optimize", created="2026-12-04T00:00:00", edgeopt_version="test",
        model=ModelInfo(source="models/test", kind="keras", classes=list(CLASSES), image_size=48),
        data=Data(root=str(root), synthetic=synthetic, test_items=items, train_images=0, train_total=0,
                  split_note="built in a test"),
        machine={"cpu": "test CPU", "cores": 2, "int8_dot_product": [], "python": "3.11", "libraries": {}},
        measure={"threads": 1, "rounds": 5, "invocations": 10, "warmup": 2},
        variants=variants,
    )
    return decide(results, objective or Objective())


def _trial(name: str, status: str, epochs: int, **more: object) -> Trial:
    history = [{"epoch": e, "val_accuracy": 0.6 + 0.1 * e, "val_loss": 1.0 / e} for e in range(1, epochs + 1)]
    return Trial(name=name, resolution=int(name[1:3]), alpha=0.35, keep=0.5 if "_k" in name else 1.0, init="teacher",
                 status=status, epochs=epochs, val_accuracy=history[-1]["val_accuracy"], val_loss=history[-1]["val_loss"],
                 history=history, seconds=12.0, **more)  # type: ignore[arg-type]


def search_results(root: Path) -> Results:
    """A search's run on 300 photos under the default (bounded) guard: the teacher's f0 and f3 (f3
    answers as f0 on every photo), and candidate r32_a0.35's f3, 3x smaller and 3x faster than the
    teacher's, no net loss but 10 photos lost and 10 gained -- its loss could be up to about 3 pp, so
    it is set aside. r24_a0.35_k0.5 was stopped by successive halving before any variant was built."""
    items = write_photos(root, 100)
    labels = [label for _, label in items]
    base = [(t + 1) % len(CLASSES) if i < 30 else t for i, t in enumerate(labels)]  # 90% right
    student = [t if i < 10 else (t + 1) % len(CLASSES) if 30 <= i < 40 else b
               for i, (t, b) in enumerate(zip(labels, base, strict=True))]
    variants = [
        variant("f0_float32", 4_000_000, [10.0, 10.2, 9.9, 10.1, 10.0], base, labels),
        variant("f3_int8_uint8io", 1_000_000, [6.0, 6.1, 5.9, 6.0, 6.05], base, labels),
        variant("r32_a0.35.f3_int8_uint8io", 330_000, [2.0, 2.1, 1.9, 2.0, 2.05], student, labels),
    ]
    search = Search(teacher="f0_float32", validation="10% of each class of the teacher's train split (seed 0)",
                    scheduler="ASHA on the validation loss", ray="Ray 2.60.0, 1 node(s), 2 CPU(s)",
                    trials=[_trial("r32_a0.35", "completed", 3, node_ip="127.0.0.1"),
                            _trial("r24_a0.35_k0.5", "stopped", 1, note="stopped after 1 of 3 epochs")])
    return built_results(root, items, variants).model_copy(update={"search": search})
