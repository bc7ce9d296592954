"""A procedural "bottles and cans" set for the demo: SYNTHETIC images, no download.

Five classes of containers a sorting machine meets, each drawn from simple shapes with varied
pose, size, colour, lighting, background and sensor noise. Image i of class c is drawn from a
random generator seeded by (seed, c, i), so the set is the same on every machine. Every image
and the folder's README say that the data are synthetic.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SYNTHETIC_CLASSES = ("aluminium_can", "carton", "glass_bottle", "pet_bottle", "tin_can")
MARKER_FILE = "SYNTHETIC.json"

Rgba = tuple[int, int, int, int]


def _rgb(rng: np.random.Generator, base: tuple[int, int, int], jitter: int, alpha: int = 255) -> Rgba:
    r, g, b = (int(np.clip(v + rng.integers(-jitter, jitter + 1), 0, 255)) for v in base)
    return (r, g, b, alpha)


def _bottle(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, pet: bool) -> None:
    """A bottle standing in a box of side s: body, shoulder, neck; glass or PET details."""
    cx = s // 2
    body_w = int(s * rng.uniform(0.24, 0.32))
    body_top, body_bot = int(s * rng.uniform(0.38, 0.44)), int(s * 0.9)
    neck_w = int(body_w * (0.42 if pet else rng.uniform(0.28, 0.36)))
    neck_top = int(s * (0.16 if pet else rng.uniform(0.06, 0.12)))
    if pet:
        colour = _rgb(rng, (170, 205, 225), 25, alpha=150)  # clear, blueish plastic
    else:
        colour = [
            _rgb(rng, (40, 110, 45), 20, 230),  # green glass
            _rgb(rng, (110, 60, 20), 20, 230),  # brown glass
            _rgb(rng, (30, 50, 140), 20, 230),  # cobalt glass (clear glass would pass for PET at 48 px)
        ][int(rng.integers(0, 3))]
    left, right = cx - body_w // 2, cx + body_w // 2
    draw.rounded_rectangle([left, body_top, right, body_bot], radius=body_w // 5, fill=colour)
    draw.polygon(
        [(left, body_top + 2), (cx - neck_w // 2, body_top - s * 0.12),
         (cx + neck_w // 2, body_top - s * 0.12), (right, body_top + 2)],
        fill=colour,
    )
    draw.rectangle([cx - neck_w // 2, neck_top, cx + neck_w // 2, body_top - s * 0.11], fill=colour)
    # a specular highlight along the body
    draw.rectangle([left + body_w // 6, body_top + 4, left + body_w // 6 + max(2, body_w // 10), body_bot - 6],
                   fill=(255, 255, 255, 150))
    if pet:
        cap = _rgb(rng, [(200, 30, 30), (30, 60, 200), (240, 240, 240)][int(rng.integers(0, 3))], 20)
        draw.rectangle([cx - neck_w // 2 - 2, neck_top - s * 0.05, cx + neck_w // 2 + 2, neck_top], fill=cap)
        for k in range(4):  # moulded ribs
            y = body_top + (body_bot - body_top) * (0.55 + 0.1 * k)
            draw.line([left, y, right, y], fill=(90, 120, 140, 200), width=max(1, s // 64))
        label = _rgb(rng, (int(rng.integers(0, 255)), int(rng.integers(0, 255)), int(rng.integers(0, 255))), 0)
        draw.rectangle([left, body_top + (body_bot - body_top) * 0.15, right,
                        body_top + (body_bot - body_top) * 0.4], fill=label)
    else:
        draw.rectangle([cx - neck_w // 2 - 1, neck_top - 2, cx + neck_w // 2 + 1, neck_top + 3],
                       fill=(60, 60, 60, 255))


def _can(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int, tin: bool) -> None:
    """A cylinder seen from the side: a slim bright aluminium can or a squat ribbed tin can."""
    cx = s // 2
    width = int(s * (rng.uniform(0.42, 0.52) if tin else rng.uniform(0.28, 0.34)))
    top, bottom = int(s * (0.3 if tin else 0.18)), int(s * 0.82)
    left, right = cx - width // 2, cx + width // 2
    lid = max(3, width // 5)
    metal = _rgb(rng, (175, 175, 180) if tin else (205, 208, 215), 15)
    draw.rectangle([left, top, right, bottom], fill=metal)
    draw.ellipse([left, bottom - lid // 2, right, bottom + lid // 2], fill=metal)
    if tin:
        label = _rgb(rng, (int(rng.integers(60, 255)), int(rng.integers(60, 255)), int(rng.integers(0, 120))), 30)
        draw.rectangle([left, top + (bottom - top) * 0.18, right, bottom - (bottom - top) * 0.12], fill=label)
        draw.rectangle([left + width * 0.3, top + (bottom - top) * 0.35, right - width * 0.3,
                        top + (bottom - top) * 0.6], fill=(245, 245, 235, 255))
        for k in range(3):  # rolled ridges above and below the label
            for y in (top + 3 + k * 3, bottom - 3 - k * 3):
                draw.line([left, y, right, y], fill=(110, 110, 115, 255), width=1)
    else:
        brand = _rgb(rng, [(200, 20, 30), (20, 60, 190), (20, 150, 60), (20, 20, 20)][int(rng.integers(0, 4))], 20)
        draw.rectangle([left, top + (bottom - top) * 0.2, right, bottom - (bottom - top) * 0.2], fill=brand)
        draw.polygon([(left, top + (bottom - top) * 0.45), (right, top + (bottom - top) * 0.3),
                      (right, top + (bottom - top) * 0.4), (left, top + (bottom - top) * 0.55)],
                     fill=(235, 235, 240, 255))
        draw.rectangle([cx - width // 2 + width // 8, top, cx - width // 2 + width // 8 + max(2, width // 8), bottom],
                       fill=(255, 255, 255, 140))
    draw.ellipse([left, top - lid // 2, right, top + lid // 2], fill=(150, 150, 155, 255),
                 outline=(100, 100, 105, 255))


def _carton(draw: ImageDraw.ImageDraw, rng: np.random.Generator, s: int) -> None:
    """A gable-top drink carton: box, roof, sealed fin, printed panel, spout."""
    cx = s // 2
    width = int(s * rng.uniform(0.32, 0.42))
    top, bottom = int(s * 0.34), int(s * 0.88)
    left, right = cx - width // 2, cx + width // 2
    paper = _rgb(rng, [(240, 240, 235), (245, 220, 90), (120, 170, 230)][int(rng.integers(0, 3))], 12)
    draw.rectangle([left, top, right, bottom], fill=paper, outline=(90, 90, 90, 255))
    draw.polygon([(left, top), (cx, int(s * 0.18)), (right, top)], fill=paper, outline=(90, 90, 90, 255))
    draw.rectangle([cx - width // 2, int(s * 0.14), cx + width // 2, int(s * 0.19)], fill=paper)
    panel = _rgb(rng, (int(rng.integers(0, 255)), int(rng.integers(0, 255)), int(rng.integers(0, 255))), 0)
    draw.rectangle([left + 3, top + (bottom - top) * 0.3, right - 3, bottom - (bottom - top) * 0.15], fill=panel)
    r = max(2, width // 9)
    draw.ellipse([cx - r, top - r * 3, cx + r, top - r], fill=(250, 250, 250, 255), outline=(60, 60, 60, 255))


_DRAWERS: dict[str, Callable[[ImageDraw.ImageDraw, np.random.Generator, int], None]] = {
    "aluminium_can": lambda d, r, s: _can(d, r, s, tin=False),
    "carton": _carton,
    "glass_bottle": lambda d, r, s: _bottle(d, r, s, pet=False),
    "pet_bottle": lambda d, r, s: _bottle(d, r, s, pet=True),
    "tin_can": lambda d, r, s: _can(d, r, s, tin=True),
}


def render_image(class_name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one object of `class_name` on a varied background, lit and noisy."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    # background: a belt or tray colour with a gradient and a few faint blotches
    base = rng.uniform(40, 220, size=3)
    tilt = rng.uniform(-40, 40, size=3)
    bg = base[None, None, :] + tilt[None, None, :] * ys[..., None]
    canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB").convert("RGBA")
    blotches = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(0, 5))):
        x, y, r = rng.uniform(0, size, 2).tolist() + [rng.uniform(size * 0.05, size * 0.2)]
        shade = tuple(int(v) for v in np.clip(base + rng.uniform(-35, 35, 3), 0, 255))
        blotches.ellipse([x - r, y - r, x + r, y + r], fill=(*shade, 255))
    # the object on its own layer, then scaled, rotated and moved
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    _DRAWERS[class_name](ImageDraw.Draw(layer), rng, size)
    scale = rng.uniform(0.85, 1.15)
    scaled = layer.resize((max(8, int(size * scale)),) * 2, Image.Resampling.BILINEAR)
    angle = rng.uniform(-25, 25) if rng.random() < 0.9 else rng.choice([-90.0, 90.0]) + rng.uniform(-10, 10)
    rotated = scaled.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    shift = rng.uniform(-0.1, 0.1, 2) * size
    pos = (int((size - rotated.width) / 2 + shift[0]), int((size - rotated.height) / 2 + shift[1]))
    canvas.paste(rotated, pos, rotated)  # the mask keeps the layer's transparency; clips at edges
    img = canvas.convert("RGB")
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0)))
    # lighting: a brightness ramp in a random direction, then sensor noise
    pixels = np.asarray(img, dtype=np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(theta) * (xs - 0.5) + np.sin(theta) * (ys - 0.5))[..., None]
    pixels = pixels * (rng.uniform(0.75, 1.2) + rng.uniform(0.0, 0.5) * ramp)
    pixels += rng.normal(0, rng.uniform(2, 9), pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def generate_synthetic(out: Path, per_class: int = 100, size: int = 128, seed: int = 0) -> Path:
    """Write `per_class` JPEGs of each class to out/<class>/ and a SYNTHETIC.json marker."""
    out.mkdir(parents=True, exist_ok=True)
    for label, name in enumerate(SYNTHETIC_CLASSES):
        class_dir = out / name
        class_dir.mkdir(exist_ok=True)
        for i in range(per_class):
            rng = np.random.default_rng([seed, label, i])
            render_image(name, size, rng).save(class_dir / f"synthetic_{i:04d}.jpg", quality=90)
    (out / MARKER_FILE).write_text(json.dumps({
        "synthetic": True,
        "generator": "edgeopt.data.synthetic",
        "classes": list(SYNTHETIC_CLASSES),
        "per_class": per_class,
        "size": size,
        "seed": seed,
        "note": "SYNTHETIC images drawn by edgeopt for its demo; not photographs.",
    }, indent=1))
    return out


def is_synthetic(folder: Path) -> bool:
    """True when the folder was written by generate_synthetic."""
    return (Path(folder) / MARKER_FILE).is_file()
