"""A folder written by `edgeopt train`: model.keras with its labels and its own split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edgeopt.contract import PixelContract, contract_from_dict
from edgeopt.data.split import SPLIT_FILE, load_split
from edgeopt.data.synthetic import is_synthetic
from edgeopt.errors import ConfigError, DataError, ModelError
from edgeopt.sources.base import Source, SourceOptions

LABELS_FILE = "labels.json"
MODEL_FILE = "model.keras"
log = logging.getLogger(__name__)


def is_train_folder(path: Path) -> bool:
    return path.is_dir() and (path / MODEL_FILE).is_file()


def load_train_folder(path: Path, options: SourceOptions) -> Source:
    """The model, its classes and its own split (the images training never saw)."""
    for name in (MODEL_FILE, LABELS_FILE, SPLIT_FILE):
        if not (path / name).is_file():
            raise ModelError(f"{path / name} is missing; pass the folder written by 'edgeopt train'")
    if options.test_dir is not None or options.calibration_dir is not None or options.labels_file is not None:
        raise ConfigError(f"{path} is a folder written by 'edgeopt train', which knows its labels and its own split; "
                          "--test-data, --calibration-data and --labels are for models made elsewhere")
    try:
        labels = json.loads((path / LABELS_FILE).read_text())
        classes, size = tuple(labels["classes"]), int(labels["image_size"])
        recorded = contract_from_dict(labels.get("input"))
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{path / LABELS_FILE} is not a valid labels file ({exc}); re-run 'edgeopt train'") from None
    split = load_split(path / SPLIT_FILE)
    if tuple(split.classes) != classes:
        raise ModelError(
            f"{path} has {len(classes)} classes in labels.json but {len(split.classes)} in split.json; "
            "re-run 'edgeopt train'"
        )
    data_dir = options.data_dir
    root = Path(data_dir) if data_dir else Path(split.data_root)
    if not root.is_dir():
        raise DataError(f"the model's data folder {root} is gone; pass it with --data DIR")
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    lacking = [c for c in classes if c not in folders]
    if lacking:
        raise DataError(
            f"{root} has no class folder(s) {', '.join(lacking)} of this model ({', '.join(classes)}); "
            "pass the data folder the model was trained on with --data"
        )
    extra = sorted(folders - set(classes))
    if extra:
        log.warning("%s has class folder(s) the model does not know (%s); they are not used", root, ", ".join(extra))
    # edgeopt's own models rescale pixels themselves; flags given anyway are taken as given (and the
    # baseline's check against chance catches a wrong one).
    given = options.transform is not None and options.transform != recorded.transform
    contract = PixelContract(options.transform or recorded.transform, options.resize or recorded.resize,
                             "edgeopt's Rescaling layer 'to_unit_range' (pixel / 127.5 - 1)", given)
    return Source(path, "train", classes, (size, size), split, root,
                  bool(labels.get("synthetic_data", False)) or is_synthetic(root), contract=contract,
                  labels_note="the model's labels.json (the sorted class folder names it was trained on)")
