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

    def describe(self) -> str:
        """One sentence for a person: what the model is fed."""
        t = self.transform
        if t.scale == PIXELS.scale and t.offset == PIXELS.offset:
            values = "pixel values 0..255 as they are"
        elif len(set(t.scale)) == 1 and len(set(t.offset)) == 1:
            low, high = t.offset[0], t.offset[0] + 255 * t.scale[0]
            values = f"pixel values mapped linearly onto [{low:.4g}, {high:.4g}]"
        else:
            values = f"pixel values normalised per channel as pixel * {_round(t.scale)} + {_round(t.offset)}"
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


def check_baseline(accuracy: float, images: int, classes: int, contract: PixelContract, labels_note: str) -> None:
    """Refuse a model that scores under twice chance on the test images: it is being fed wrongly
    (pixel range, channel order) or its outputs are read in the wrong class order, and optimizing
    it would only rank broken variants. The message says which settings to check."""
    chance = 1.0 / classes
    if accuracy >= 2 * chance:
        return
    hints = [f"it was fed {contract.describe()}"]
    if contract.model_rescales:
        hints.append(f"the model rescales pixels itself ({contract.model_rescales})" + (
            ", yet --input-range/--input-mean/--input-std was given: drop it" if contract.given else ""))
    else:
        hints.append("no rescaling was found in the model: give the range it was trained on "
                     "(--input-range -1,1 or 0,1, or --input-mean/--input-std)")
    raise ModelError(
        f"the float32 baseline gets {100 * accuracy:.1f}% of {images} test images right, under twice chance "
        f"({200 * chance:.0f}% for {classes} classes): the model is not being fed what it was trained on, or its "
        f"outputs are read in the wrong class order. Check the pixel range, the channel order (--channel-order "
        f"rgb|bgr) and the labels order ({labels_note}; --labels FILE gives output index -> class). "
        + "; ".join(hints)
    )
