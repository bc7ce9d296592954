"""Every kind of model optimize accepts, in one literal dict: kind -> Loader, detected from the
file's content (a zip of config.json, an HDF5 signature, a TFLite identifier, a protobuf that
parses as ONNX), never from its name alone."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgeopt.errors import ModelError
from edgeopt.sources import onnx as onnx_source
from edgeopt.sources import tensorflow as tf_source
from edgeopt.sources import tflite as tflite_source
from edgeopt.sources.base import ModelFacts, Source, SourceOptions, foreign_source
from edgeopt.sources.train_folder import is_train_folder, load_train_folder


@dataclass(frozen=True)
class Loader:
    kind: str
    # What a user passes, in words (the refusal of anything else lists them all).
    accepts: str
    # The suffixes such a file usually has (a hint when the content says otherwise).
    suffixes: tuple[str, ...]
    detect: Callable[[Path], bool]
    # Reads the file's own facts (None for the train folder, which knows its own).
    read_facts: Callable[[Path, SourceOptions], ModelFacts] | None = None


LOADERS: dict[str, Loader] = {
    "train": Loader("train", "a folder written by 'edgeopt train'", (), is_train_folder),
    "savedmodel": Loader("savedmodel", "a TensorFlow SavedModel folder (with a serving_default signature)", (),
                         tf_source.is_saved_model, lambda p, o: tf_source.read_facts("savedmodel", p, o.custom_objects)),
    "keras": Loader("keras", "a Keras 3 .keras file", (".keras",), tf_source.is_keras_file,
                    lambda p, o: tf_source.read_facts("keras", p, o.custom_objects)),
    "h5": Loader("h5", "a legacy Keras .h5 file (Keras 2 / tf-keras)", (".h5", ".hdf5"), tf_source.is_h5_file,
                 lambda p, o: tf_source.read_facts("h5", p, o.custom_objects)),
    "tflite": Loader("tflite", "a .tflite file (float, or already quantized: measured as given)", (".tflite",),
                     tflite_source.is_tflite_file, lambda p, o: tflite_source.read_facts(p)),
    "onnx": Loader("onnx", "an .onnx file (e.g. a PyTorch model exported with torch.onnx.export)", (".onnx",),
                   onnx_source.is_onnx_file, lambda p, o: onnx_source.read_facts(p)),
}


def list_loaders() -> list[str]:
    return list(LOADERS)


def accepted() -> str:
    """Every kind of model optimize accepts, in words."""
    return "; ".join(loader.accepts for loader in LOADERS.values())


def detect_kind(path: Path) -> str:
    """The loader whose content check the path passes; a one-line refusal naming every accepted kind."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path} does not exist; pass one of: {accepted()}")
    for kind, loader in LOADERS.items():
        if loader.detect(path):
            return kind
    hint = ""
    for loader in LOADERS.values():
        if path.suffix.lower() in loader.suffixes:
            hint = f" (its name ends in {path.suffix}, but its content is not {loader.accepts}: truncated, or another kind of file?)"
    what = "folder" if path.is_dir() else "file"
    raise ModelError(f"{path} is not a model {what} edgeopt can read{hint}; pass one of: {accepted()}")


def load_source(path: Path, options: SourceOptions) -> Source:
    """The model at `path`, detected by content, with its labels, contract and images resolved."""
    path = Path(path)
    kind = detect_kind(path)
    if kind == "train":
        return load_train_folder(path, options)
    loader = LOADERS[kind]
    assert loader.read_facts is not None
    return foreign_source(path, kind, loader.read_facts(path, options), options)
