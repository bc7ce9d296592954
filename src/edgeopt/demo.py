"""`edgeopt demo`: generate the SYNTHETIC bottles-and-cans set, train, optimize.

Sized to finish in under 5 minutes on a 2-core CPU without any download: a MobileNetV2
(alpha 0.35) trained from scratch at a small input size. Each stage writes its own folder
whole (data/, model/, optimized/), so an interrupted demo leaves only complete stages.
"""

from __future__ import annotations

from pathlib import Path

from edgeopt.config import MeasureConfig, OptimizeConfig, TrainConfig
from edgeopt.data.synthetic import generate_synthetic
from edgeopt.outputs import check_output, mark_output, staged_output
from edgeopt.pipeline import optimize
from edgeopt.progress import NullProgress, Progress
from edgeopt.results import Results
from edgeopt.train import train

DEMO_IMAGES_PER_CLASS = 600
DEMO_IMAGE_SIZE = 48
DEMO_TRAIN = TrainConfig(
    image_size=DEMO_IMAGE_SIZE,
    alpha=0.35,
    weights="none",  # no download; the demo trains the whole net
    epochs_head=20,
    epochs_finetune=0,
    batch_size=32,
    lr_min=3e-4,
    lr_max=3e-3,
    patience=6,
    augment=False,  # the generator already varies pose, colour, light and noise
    bn_momentum=0.9,
    label_smoothing=0.0,  # measured on transfer learning only; the demo trains from scratch on generated images
    seed=0,
)


def run_demo(out: Path, threads: int = 1, force: bool = False, progress: Progress | None = None) -> Results:
    progress = progress or NullProgress()
    out = Path(out)
    check_output(out, force)
    # With --force an old demo is replaced stage by stage, each only once its new one is whole.
    out.mkdir(parents=True, exist_ok=True)
    mark_output(out, "demo", outputs=("data", "model", "optimized"))
    data = out / "data"
    with staged_output(data, force=True, command="demo") as staging:
        progress.start("generating SYNTHETIC images", 1)
        generate_synthetic(staging, per_class=DEMO_IMAGES_PER_CLASS, size=64, seed=0)
        progress.finish(f"generated {5 * DEMO_IMAGES_PER_CLASS} SYNTHETIC images in {data}")
    train(data, out / "model", DEMO_TRAIN, force=True, progress=progress)
    config = OptimizeConfig(measure=MeasureConfig(threads=threads))
    return optimize(out / "model", out / "optimized", config, force=True, progress=progress)
