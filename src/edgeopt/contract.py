"""The input contract: how a camera image becomes the tensor a model was trained on.

What users most often get silently wrong. A model file says its input's shape, layout and dtype
(edgeopt.pixels reads them from the tensor); it does not say the rest, which is recorded here once
and travels with the model -- results.json (each variant's `input`), labels.json (its `input`
section) and a release's signed metadata -- so that classify, device bench, the sorting loop and
the agent feed every variant the pixels optimize measured it on:
- the pixel values: camera pixels 0..255 mapped per channel, x = pixel * scale + offset
  (`--input-range`, `--input-mean/--input-std`; the identity when the model rescales them itself);
- the channel order (`--channel-order rgb|bgr`);
- how an image of another aspect ratio is fitted (`--resize squash|center-crop`).

Every reader accepts the older files without the last two keys (rgb, squash: what edgeopt did then).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edgeopt.errors import ModelError
from edgeopt.images import RESIZES
from edgeopt.pixels import CHANNEL_ORDERS, PIXELS, PixelTransform

__all__ = ["CHANNEL_ORDERS", "RESIZES", "PixelContract", "check_baseline", "contract_from_dict"]


@dataclass(frozen=True)
class PixelContract:
    """What a device does to a camera image before the model sees it."""

    # Pixel values (and channel order) as the model's float input takes them.
    transform: PixelTransform = PIXELS
    # "squash" or "center-crop" (images.RESIZES).
    resize: str = "squash"
    # What edgeopt found the model doing to its input itself (a Rescaling layer, a Mul/Sub on the
    # input), in words; "" when it found nothing. For the report and the refusal message only.
    model_rescales: str = ""
    # True when the pixel values were given (--input-range, --input-mean/--input-std), False when
    # edgeopt fed 0..255 because nothing was given.
    given: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The keys labels.json's `input` section and a results file's `input` record share."""
        out: dict[str, Any] = {"pixel_scale": list(self.transform.scale), "pixel_offset": list(self.transform.offset)}
        if self.transform.channel_order != "rgb":
            out["channel_order"] = self.transform.channel_order
        if self.resize != "squash":
            out["resize"] = self.resize
        return out

    def describe_values(self) -> str:
        """The pixel values the model is fed, in words."""
        t = self.transform
        if t.scale == PIXELS.scale and t.offset == PIXELS.offset:
            return "pixel values 0..255 as they are"
        if len(set(t.scale)) == 1 and len(set(t.offset)) == 1:
            low, high = t.offset[0], t.offset[0] + 255 * t.scale[0]
            return f"pixel values mapped linearly onto [{low:.4g}, {high:.4g}]"
        return f"pixel values normalised per channel as pixel * {_round(t.scale)} + {_round(t.offset)}"

    def describe(self) -> str:
        """One sentence for a person: what the model is fed."""
        t = self.transform
        values = self.describe_values()
        order = "BGR" if t.channel_order == "bgr" else "RGB"
        fit = "its centre cropped to the model's aspect ratio, then resized" if self.resize == "center-crop" else \
            "resized whole to the model's input size (squashed)"
        source = "as given" if self.given else "the default: nothing was given"
        return f"{order} {values} ({source}); each image {fit}"


def _round(values: tuple[float, ...]) -> list[float]:
    return [round(v, 6) for v in values]


def contract_from_dict(data: Mapping[str, Any] | None) -> PixelContract:
    """A contract from labels.json's `input` section, a results file's `input` record (as a dict)
    or a release's signed `input`; the keys it lacks take edgeopt's defaults (older files)."""
    data = data or {}
    scale, offset = data.get("pixel_scale"), data.get("pixel_offset")
    order = str(data.get("channel_order") or "rgb")
    resize = str(data.get("resize") or "squash")
    if order not in CHANNEL_ORDERS or resize not in RESIZES:
        raise ModelError(f"the recorded input contract names channel order {order!r} and resize {resize!r}; "
                         f"this edgeopt knows {', '.join(CHANNEL_ORDERS)} and {', '.join(RESIZES)}: update edgeopt")
    if scale and offset:
        transform = PixelTransform((float(scale[0]), float(scale[1]), float(scale[2])),
                                   (float(offset[0]), float(offset[1]), float(offset[2])), order)
    else:
        transform = replace(PIXELS, channel_order=order)
    return PixelContract(transform, resize)


# The baseline check (check_baseline). Balanced accuracy -- the mean over the classes present of the
# share of each class's images answered right -- is what a model that ignores its input cannot
# raise by answering the commonest class. It must reach twice chance (1/k for k outputs), or a third
# of the way from chance to perfect when that is lower (k = 2: 67%, k = 3: 56%, k >= 4: 2/k).
DOMINANT_SHARE = 0.9  # a model answering one class this often ...
DOMINANT_EXCESS = 0.25  # ... for this much more of the images than that class holds is refused,
DOMINANT_EVIDENCE = 10  # when at least this many test images are of other classes (fewer tell little)


def baseline_threshold(outputs: int) -> float:
    """The balanced accuracy a baseline with `outputs` classes must reach (see above)."""
    chance = 1.0 / max(2, outputs)
    return min(2 * chance, chance + (1 - chance) / 3)


def why_implausible(predicted: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> str:
    """Why these answers cannot come from a model fed what it was trained on, in words ("" when they
    can): a balanced accuracy under baseline_threshold, or one class answered for most images of
    a test set that holds several (what a model fed garbage does; it beats a plain accuracy check
    when that class is common in the test photos)."""
    predicted, labels = np.asarray(predicted), np.asarray(labels)
    present = np.unique(labels)
    recalls = [float(np.mean(predicted[labels == c] == c)) for c in present]
    balanced, needed = float(np.mean(recalls)), baseline_threshold(len(classes))
    if balanced < needed:
        over = f"balanced over the {len(present)} classes present: {100 * balanced:.1f}%, " if len(present) > 1 else ""
        return f"{over}under the {100 * needed:.0f}% asked of a model with {len(classes)} outputs"
    answered = np.bincount(predicted, minlength=len(classes)) / len(predicted)
    top = int(answered.argmax())
    share = float(np.mean(labels == top))
    others = int(np.sum(labels != top))
    if others >= DOMINANT_EVIDENCE and answered[top] > DOMINANT_SHARE and answered[top] - share > DOMINANT_EXCESS:
        return (f"it answers {classes[top]} for {100 * answered[top]:.0f}% of them, which are {100 * share:.0f}% "
                f"{classes[top]}")
    return _swapped_pair(predicted, labels, classes)


# A swap of two outputs is claimed only on this much evidence: at least SWAP_EVIDENCE photos of the
# pair answered as each other, significantly more than answered right (one-sided binomial test at
# SWAP_P, Bonferroni-corrected for the pairs looked at).
SWAP_EVIDENCE = 10
SWAP_P = 0.01


def _swapped_pair(predicted: np.ndarray, labels: np.ndarray, classes: tuple[str, ...]) -> str:
    """Two outputs that look swapped in the labels, in words ("" when none do): the photos of two
    classes answered as each other far more often than right. A whole labels file one place off
    already fails the balanced accuracy; a single swap leaves the rest right and passes it."""
    k = len(classes)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    right = np.diag(confusion)
    swapped = confusion + confusion.T  # [i, j]: photos of i answered j, plus of j answered i
    straight = right[:, None] + right[None, :]
    gain = np.triu(swapped - straight, 1)
    i, j = np.unravel_index(int(np.argmax(gain)), gain.shape)
    b, a = int(swapped[i, j]), int(straight[i, j])
    if gain[i, j] <= 0 or b < SWAP_EVIDENCE:
        return ""
    from scipy.stats import binomtest

    present = int(np.sum(np.bincount(labels, minlength=k) > 0))
    pairs = max(1, present * (k - 1))
    if binomtest(b, a + b, 0.5, alternative="greater").pvalue >= SWAP_P / pairs:
        return ""
    return (f"outputs {i} and {j} look swapped: {b} photos of {classes[i]} and {classes[j]} are answered as the other, "
            f"{a} as themselves")


def check_baseline(predicted: np.ndarray, labels: np.ndarray, classes: tuple[str, ...], contract: PixelContract,
                   labels_note: str, name: str = "the baseline", integer_input: bool = False) -> None:
    """Refuse a baseline whose test answers are implausible for a model fed what it was trained on
    (why_implausible): it is being fed wrongly (pixel range, channel order) or its outputs are read
    in the wrong class order, and optimizing it would only rank broken variants. The one-sentence
    message says which settings to check, given what was fed."""
    why = why_implausible(predicted, labels, classes)
    if not why:
        return
    accuracy = float(np.mean(np.asarray(predicted) == np.asarray(labels)))
    checks = []
    flags = "--input-range/--input-mean/--input-std"
    if integer_input:
        pass  # its input quantization is its own normalisation: nothing to give
    elif contract.model_rescales and contract.given:
        checks.append(f"the pixel values (the model rescales them itself: drop {flags})")
    elif contract.given:
        checks.append(f"the pixel values given ({contract.describe_values()})")
    elif not contract.model_rescales:
        checks.append("the pixel range (fed 0..255, and the model rescales nothing itself: pass --input-range LOW,HIGH "
                      "or --input-mean/--input-std)")
    checks.append(f"--channel-order (fed {contract.transform.channel_order.upper()})")
    checks.append(f"the class order ({labels_note})")
    raise ModelError(f"{name} gets {100 * accuracy:.1f}% of {len(labels)} test images right ({why}): check "
                     + "; ".join(checks))
