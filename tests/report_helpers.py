"""Results built in code for the report's tests: a few variants with chosen sizes, latencies and
per-image answers on real (tiny) photos, scored and chosen by edgeopt's own chooser."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from edgeopt.choose import decide
from edgeopt.objective import Objective
from edgeopt.results import Accuracy, Data, Latency, ModelInfo, Predictions, Results, Variant

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
