"""The test photos on which the chosen variant and the baseline answer differently, from the
per-image predictions that results.json keeps, with thumbnails to inline in report.html.

Thumbnails are decoded by edgeopt's one image decoder (edgeopt.images: bounded size, EXIF
orientation, 16-bit and transparent images handled) and squared as the model sees them.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path

from edgeopt.results import Results

# Thumbnails on the page at most: the first of them in the order of disagreements() (the
# page says how many there are in all).
GALLERY_MAX = 48
THUMBNAIL_PX = 128

# What the two answers were, most telling first (disagreements() sorts by it).
KINDS = ("only the baseline right", "only the chosen variant right", "both wrong")


@dataclass(frozen=True)
class Disagreement:
    """One test photo the two variants answered differently."""

    index: int  # in Results.data.test_items
    path: str  # relative to Results.data.root
    true_class: str
    baseline_class: str
    baseline_confidence: float  # the top-1 probability
    chosen_class: str
    chosen_confidence: float

    @property
    def kind(self) -> str:
        if self.baseline_class == self.true_class:
            return KINDS[0]
        if self.chosen_class == self.true_class:
            return KINDS[1]
        return KINDS[2]


def disagreements(results: Results) -> list[Disagreement]:
    """Where the chosen variant's top-1 answer differs from the baseline's, on the images both
    were evaluated on: the losses first (only the baseline right), then the gains, then both wrong;
    in test order within each. Empty when the baseline was chosen or answers were not kept."""
    if results.choice is None or results.choice.selected == results.choice.baseline:
        return []
    base, chosen = results.baseline.predictions, results.selected.predictions
    if base is None or chosen is None:
        return []
    classes = results.model.classes
    found = []
    for i, ((path, label), b, c) in enumerate(zip(results.data.test_items, base.test, chosen.test, strict=False)):
        if b == c:
            continue
        found.append(Disagreement(
            index=i, path=path, true_class=classes[label], baseline_class=classes[b],
            baseline_confidence=base.test_confidence[i], chosen_class=classes[c], chosen_confidence=chosen.test_confidence[i],
        ))
    return sorted(found, key=lambda d: (KINDS.index(d.kind), d.index))


def image_root(results: Results, given: Path | None = None) -> Path:
    """Where the test photos are: the folder given, else the results' data root."""
    return Path(given) if given is not None else Path(results.data.root)


def thumbnail_uri(path: Path, side: int = THUMBNAIL_PX) -> str | None:
    """A JPEG data: URI of the image squared to side x side pixels; None when it cannot be read."""
    from PIL import Image

    from edgeopt.images import ImageError, load_pixels

    try:
        pixels = load_pixels(path, (side, side))
    except ImageError:
        return None
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
