"""Stratified train/test split, saved as split.json beside the model.

optimize reads the same file, so it measures on exactly the test images training never saw.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.data.imagefolder import ImageFolder
from edgeopt.errors import DataError

SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class Split:
    """Which images are for training, which for validation (early stopping), which for test."""

    data_root: str
    classes: tuple[str, ...]
    seed: int
    test_fraction: float
    # Each a tuple of (path relative to data_root, class index).
    train: tuple[tuple[str, int], ...]
    validation: tuple[tuple[str, int], ...]
    test: tuple[tuple[str, int], ...]
    # Size in bytes of every listed file when the split was made (empty for splits written
    # before edgeopt recorded them): tells whether --data holds the same images.
    sizes: dict[str, int] = field(default_factory=dict, compare=False)

    @property
    def train_all(self) -> tuple[tuple[str, int], ...]:
        """The whole train split (train + validation): the study's "train" accuracy."""
        return self.train + self.validation


def build_split(
    folder: ImageFolder, test_fraction: float = 0.2, val_fraction: float = 0.1, seed: int = 0
) -> Split:
    """Split every class separately: test_fraction for test, then val_fraction of the rest."""
    if not 0 < test_fraction < 1:
        raise DataError(f"test fraction {test_fraction} is outside (0, 1); use e.g. 0.2")
    rng = random.Random(seed)
    train, val, test = [], [], []
    for label, name in enumerate(folder.classes):
        members = [item for item in folder.items if item[1] == label]
        if len(members) < 3:
            raise DataError(
                f"class {name!r} has {len(members)} image(s); each class needs at least 3 "
                "(one each for train, validation and test)"
            )
        rng.shuffle(members)
        n_test = max(1, round(len(members) * test_fraction))
        rest = members[n_test:]
        n_val = max(1, round(len(rest) * val_fraction)) if val_fraction > 0 else 0
        test += members[:n_test]
        val += rest[:n_val]
        train += rest[n_val:]
    return Split(
        data_root=str(folder.root.resolve()),
        classes=folder.classes,
        seed=seed,
        test_fraction=test_fraction,
        train=tuple(sorted(train)),
        validation=tuple(sorted(val)),
        test=tuple(sorted(test)),
        sizes={path: (folder.root / path).stat().st_size for path, _ in folder.items},
    )


def save_split(split: Split, path: Path) -> None:
    """Write the split; the data folder is kept absolute and relative to the split file, so a
    model folder moved together with its data (e.g. a whole runs/ tree) still finds it."""
    payload = {
        "data_root": split.data_root,
        "data_root_relative": os.path.relpath(split.data_root, path.parent.resolve()),
        "classes": list(split.classes),
        "seed": split.seed,
        "test_fraction": split.test_fraction,
        "train": [list(i) for i in split.train],
        "validation": [list(i) for i in split.validation],
        "test": [list(i) for i in split.test],
        "sizes": split.sizes,
    }
    path.write_text(json.dumps(payload, indent=1))


def load_split(path: Path) -> Split:
    try:
        raw = json.loads(path.read_text())
        root = raw["data_root"]
        relative = raw.get("data_root_relative")
        if relative is not None and not Path(root).is_dir() and (path.parent / relative).is_dir():
            root = str((path.parent / relative).resolve())
        return Split(
            data_root=root,
            classes=tuple(raw["classes"]),
            seed=int(raw["seed"]),
            test_fraction=float(raw["test_fraction"]),
            train=tuple((p, int(c)) for p, c in raw["train"]),
            validation=tuple((p, int(c)) for p, c in raw["validation"]),
            test=tuple((p, int(c)) for p, c in raw["test"]),
            sizes={str(p): int(n) for p, n in raw.get("sizes", {}).items()},
        )
    except FileNotFoundError:
        raise DataError(
            f"{path} is missing; optimize needs the model folder written by 'edgeopt train'"
        ) from None
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(f"{path} is not a valid split file ({exc}); re-run 'edgeopt train'") from None


def check_data_matches(split: Split, root: Path, items: tuple[tuple[str, int], ...]) -> None:
    """Refuse a data folder that does not hold the images the split was made from: a --data
    that points at another dataset would otherwise be measured silently, or fail image by image."""
    missing = [p for p, _ in items if not (root / p).is_file()]
    changed = [p for p, _ in items if p in split.sizes and p not in missing and (root / p).stat().st_size != split.sizes[p]]
    if missing or changed:
        example = (missing or changed)[0]
        what = f"{len(missing)} missing" if missing else ""
        what += (", " if what else "") + (f"{len(changed)} of a different size" if changed else "")
        raise DataError(
            f"{root} does not hold the images this model's split was made from: of its {len(items)} test images "
            f"{what} (e.g. {example}); pass the data folder the model was trained on with --data"
        )
