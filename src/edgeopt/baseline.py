"""Checks optimize makes before it trusts a model and its variants: that the baseline answers like
a model fed what it was trained on (contract.check_baseline), checked on the source itself before
a slow conversion where it can be; and that every variant built can be opened by its runtime.

A variant's file lives in optimize's staging folder until the run ends: no message here names that
folder (it is gone by the time the user reads it), only the variant and the model it came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeopt.contract import check_baseline
from edgeopt.data.imagefolder import DecodedImages
from edgeopt.errors import ModelError
from edgeopt.invoke import predict_top1
from edgeopt.pixels import PixelTransform
from edgeopt.runtimes.base import Runtime, Session
from edgeopt.sources.base import Source


class UnopenableVariant(ModelError):
    """A variant edgeopt built that its runtime cannot open."""


def open_variant(runtime: Runtime, name: str, path: Path, threads: int, transform: PixelTransform,
                 source: Path) -> Session:
    """runtime.open, or UnopenableVariant naming the variant and the model it was built from."""
    try:
        return runtime.open(path, threads, transform)
    except Exception as exc:  # a runtime fails in its own ways on a file it cannot run
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0].replace(str(path), f"variants/{path.name}")
        raise UnopenableVariant(f"{name}, built from {source}, cannot be opened by {runtime.version()} "
                                f"({type(exc).__name__}: {text[:300]})") from None


def usable_variants(names: list[str], paths: dict[str, Path], runtimes: dict[str, Runtime],
                    transform: PixelTransform, source: Path) -> tuple[list[str], list[str]]:
    """(the variants their runtime opens, a note for each one it does not): a converter that writes
    a file its own runtime cannot prepare costs that variant, not the run."""
    usable, notes = [], []
    for name in names:
        try:
            open_variant(runtimes[name], name, paths[name], 1, transform, source)
        except UnopenableVariant as exc:
            notes.append(f"Not measured: {exc}.")
            continue
        usable.append(name)
    return usable, notes


def check_answers(session: Session, name: str, test: DecodedImages, source: Source,
                  integer_input: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`session`'s top-1 answers and confidences on the test images, refused (exit 2, saying what to
    check) when implausible for a model fed what it was trained on."""
    predicted, confidence = predict_top1(session, test.pixels, source.classes)
    check_baseline(predicted, test.labels, source.classes, source.contract, source.labels_note, name,
                   integer_input=integer_input)
    return predicted, confidence


def check_onnx_source(runtime: Runtime, test: DecodedImages, source: Source, threads: int) -> None:
    """The .onnx model itself, run by ONNX Runtime, checked before onnx2tf converts it: a model fed
    wrongly is refused in seconds, not after minutes of conversion, and a conversion fault is not
    reported as the user's."""
    session = open_variant(runtime, "the .onnx model", source.path, threads, source.contract.transform, source.path)
    check_answers(session, f"{source.path.name} (run by ONNX Runtime)", test, source)
