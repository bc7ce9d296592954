"""Tiny fixtures built in code: synthetic images, a tiny trained MobileNetV2, one optimize run.

The trained model and the optimize run are session-scoped: training and converting take
seconds each, and every test that needs them reads them without modifying them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgeopt.config import MeasureConfig, OptimizeConfig, TrainConfig
from edgeopt.data.synthetic import generate_synthetic
from tests.browser_helpers import artifacts, chromium, open_page  # noqa: F401 (fixtures: a real browser for pages)
from tests.fleet_helpers import db_url, postgres_server, postgres_url  # noqa: F401 (the fleet database fixtures)

SHARED = Path(__file__).resolve().parents[2] / "shared"
TRASHNET = SHARED / "data" / "trashnet5"
CORAL = SHARED / "models" / "coral"
BACKBONE = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.weights.h5"

# Trained enough to mean something (int8 agreement tests need real logit margins), still seconds.
SYNTHETIC_PER_CLASS = 60
TINY_TRAIN = TrainConfig(
    image_size=48, alpha=0.35, weights="none", epochs_head=28, epochs_finetune=0, batch_size=16,
    lr_min=3e-4, lr_max=3e-3, bn_momentum=0.9, augment=False, patience=28, seed=0, label_smoothing=0.0,
)
TINY_SIZE = (TINY_TRAIN.image_size, TINY_TRAIN.image_size)
TINY_OPTIMIZE = OptimizeConfig(
    representative_samples=20,
    measure=MeasureConfig(threads=1, rounds=2, invocations=5, warmup=2),
)


def write_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (40, 30), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(path)
    return path


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("data") / "synthetic", per_class=SYNTHETIC_PER_CLASS, size=48, seed=3)


@pytest.fixture(scope="session")
def tiny_model(synthetic_dir, tmp_path_factory) -> Path:
    from edgeopt.train import train

    out = tmp_path_factory.mktemp("model") / "m1"
    train(synthetic_dir, out, TINY_TRAIN)
    return out


@pytest.fixture(scope="session")
def tiny_optimized(tiny_model, tmp_path_factory) -> tuple[Path, dict]:
    from edgeopt.pipeline import optimize

    out = tmp_path_factory.mktemp("opt") / "m1-opt"
    results = optimize(tiny_model, out, TINY_OPTIMIZE)
    return out, results


def build_workers(pid: int) -> list[int]:
    """The live build workers (methods.build) that process `pid` started (Linux: reads /proc)."""
    found = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:  # the process has ended
        return []
    for path in [task / "children" for task in tasks]:
        for child in _read(path).split():  # a zombie's cmdline is empty
            if "run_build_worker" in _read(Path(f"/proc/{child}/cmdline")):
                found.append(int(child))
    return found


def _read(path: Path) -> str:
    """A /proc file, or "" when its thread or process ended while this looked."""
    try:
        return path.read_bytes().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is absent (shared data only on the dev/CI machine)")
