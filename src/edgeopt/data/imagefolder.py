"""ImageFolder layout: ROOT/<class>/<image>. Scan it, and decode images to model-sized pixels.

Images are decoded once per command into one uint8 array (N, H, W, 3) of RGB pixels 0..255:
that is what a camera gives a device, and what every edgeopt model takes as input.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeopt.errors import DataError
from edgeopt.images import IMAGE_KINDS, IMAGE_SUFFIXES, ImageError, load_pixels
from edgeopt.machine import usable_cores

log = logging.getLogger(__name__)

_LAYOUT_HINT = f"expected <folder>/<class>/*.jpg ({IMAGE_KINDS})"


@dataclass(frozen=True)
class ImageFolder:
    """The files of an ImageFolder tree, classes sorted by name."""

    root: Path
    classes: tuple[str, ...]
    # (path relative to root, class index), sorted by path.
    items: tuple[tuple[str, int], ...]

    def count_per_class(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for _, label in self.items:
            counts[self.classes[label]] += 1
        return counts


@dataclass(frozen=True)
class DecodedImages:
    """Pixels of the images that decoded, with their labels and the ones that did not."""

    pixels: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int64 (N,)
    paths: tuple[str, ...]  # relative paths of the N decoded images
    skipped: tuple[tuple[str, str], ...]  # (relative path, reason) of images that failed


def scan_image_folder(root: Path | str) -> ImageFolder:
    """List the classes and images of an ImageFolder tree; refuse an empty class or folder."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {root} does not exist; {_LAYOUT_HINT}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"found no class folders in {root}; {_LAYOUT_HINT}")
    items: list[tuple[str, int]] = []
    empty: list[str] = []
    nested: list[str] = []
    other: list[str] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(f for f in class_dir.iterdir() if f.is_file() and _is_image_name(f))
        other += sorted(f.relative_to(root).as_posix() for f in class_dir.iterdir()
                        if f.is_file() and not f.name.startswith(".") and not _is_image_name(f))
        nested += [
            f.relative_to(root).as_posix() for sub in class_dir.iterdir() if sub.is_dir() and not sub.name.startswith(".")
            for f in sub.rglob("*") if f.is_file() and _is_image_name(f)
        ]
        if not files:
            empty.append(class_dir.name)
        items.extend((f.relative_to(root).as_posix(), label) for f in files)
    if nested:
        log.warning(
            "ignored %d image(s) in subfolders of class folders in %s, e.g. %s; a class's images go "
            "directly in <folder>/<class>/", len(nested), root, nested[0],
        )
    if other:
        log.warning(
            "ignored %d file(s) in class folders of %s that are not images edgeopt reads (%s), e.g. %s; "
            "convert them to one of those kinds to use them", len(other), root, IMAGE_KINDS, other[0],
        )
    if empty:
        raise DataError(
            f"class folder(s) {', '.join(empty)} in {root} hold no images; add images "
            f"({IMAGE_KINDS}) or remove the folder(s)"
        )
    if len(class_dirs) < 2:
        raise DataError(
            f"found only one class folder ({class_dirs[0].name}) in {root}; a classifier needs "
            f"at least two; {_LAYOUT_HINT}"
        )
    return ImageFolder(root=root, classes=tuple(d.name for d in class_dirs), items=tuple(items))


# Decoded image sets kept in the cache, in bytes; the oldest go first.
CACHE_LIMIT_BYTES = 4 * 1024**3


def cache_dir() -> Path:
    """Where decoded images are kept between runs: $EDGEOPT_CACHE, else the user's cache folder."""
    base = os.environ.get("EDGEOPT_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "edgeopt")
    return Path(base) / "decoded"


def _cache_key(root: Path, items: Sequence[tuple[str, int]], size: tuple[int, int], resize: str = "squash") -> str | None:
    """A key that changes when any file, its label, the folder, the size or the resize changes."""
    import hashlib
    import json

    listing = []
    for path, label in items:
        try:
            stat = (root / path).stat()
        except OSError:
            return None
        listing.append((path, int(label), stat.st_size, stat.st_mtime_ns))
    text = json.dumps([str(root.resolve()), list(size), listing] + ([resize] if resize != "squash" else []))
    return hashlib.sha256(text.encode()).hexdigest()


def decode_images_cached(root: Path, items: Sequence[tuple[str, int]], size: tuple[int, int], strict: bool = False,
                         resize: str = "squash") -> DecodedImages:
    """decode_images, reusing an earlier decode of exactly these files at this size (a second
    optimize on the same data does not decode again)."""
    import json

    key = _cache_key(Path(root), items, size, resize)
    folder = cache_dir()
    path = folder / f"{key}.npz" if key else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as stored:
                meta = json.loads(str(stored["meta"]))
                if not (strict and meta["skipped"]):
                    with contextlib.suppress(OSError):  # a cache shared read-only is still read
                        os.utime(path)  # recently used: evicted last
                    return DecodedImages(stored["pixels"], stored["labels"], tuple(meta["paths"]),
                                         tuple(tuple(s) for s in meta["skipped"]))  # type: ignore[misc]
        except (OSError, ValueError, KeyError):
            with contextlib.suppress(OSError):  # unreadable: decoded again below
                path.unlink(missing_ok=True)
    decoded = decode_images(root, items, size, strict, resize)
    if path is not None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{key}.{os.getpid()}.npz"
            meta = json.dumps({"paths": list(decoded.paths), "skipped": [list(s) for s in decoded.skipped]})
            np.savez(tmp, pixels=decoded.pixels, labels=decoded.labels, meta=np.array(meta))
            os.replace(tmp, path)
            _evict(folder)
        except OSError:
            pass  # a cache that cannot be written is no cache, not an error
    return decoded


def _evict(folder: Path) -> None:
    files = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for file in files:
        total += file.stat().st_size
        if total > CACHE_LIMIT_BYTES:
            file.unlink(missing_ok=True)


def decode_images(
    root: Path,
    items: Sequence[tuple[str, int]],
    size: tuple[int, int],
    strict: bool = False,
    resize: str = "squash",
) -> DecodedImages:
    """Decode the listed images in parallel (images.load_pixels: `resize`). Unreadable ones are
    skipped and counted.

    With strict=True the first unreadable image is an error instead.
    """
    def one(item: tuple[str, int]) -> np.ndarray | str:
        try:
            return load_pixels(root / item[0], size, resize)
        except ImageError as exc:
            return str(exc)

    workers = min(8, usable_cores())
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, items))
    pixels, labels, paths, skipped = [], [], [], []
    for (rel, label), result in zip(items, results, strict=True):
        if isinstance(result, str):
            if strict:
                raise DataError(f"{result}; remove or replace it, or drop --strict to skip unreadable images")
            skipped.append((rel, result))
            continue
        pixels.append(result)
        labels.append(label)
        paths.append(rel)
    if skipped:
        log.warning(
            "skipped %d unreadable image(s) in %s, e.g. %s (%s); use --strict to stop on them",
            len(skipped), root, skipped[0][0], skipped[0][1],
        )
    height, width = size
    stacked = np.stack(pixels) if pixels else np.zeros((0, height, width, 3), np.uint8)
    return DecodedImages(
        pixels=stacked,
        labels=np.asarray(labels, dtype=np.int64),
        paths=tuple(paths),
        skipped=tuple(skipped),
    )


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
