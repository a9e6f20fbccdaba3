"""Synthetic pictures of coloured shapes with Japanese names, for training and checking a tiny model."""

from __future__ import annotations

import io
import random

from PIL import Image, ImageDraw

COLOURS = {"赤い": (220, 30, 30), "青い": (30, 60, 220), "緑の": (30, 170, 50)}
SHAPES = ("丸", "四角")
CLASSES = tuple(f"{c}{s}" for c in COLOURS for s in SHAPES)  # 赤い丸, 赤い四角, 青い丸, …


def draw(label: str, size: tuple[int, int], rng: random.Random) -> Image.Image:
    """One picture of `label` at `size` (width, height): a light noisy background, one shape."""
    colour_name = next(c for c in COLOURS if label.startswith(c))
    shape = label[len(colour_name) :]
    w, h = size
    base = rng.randint(200, 250)
    im = Image.new("RGB", size, (base, base, base - rng.randint(0, 20)))
    d = ImageDraw.Draw(im)
    for _ in range(6):  # faint clutter so the model cannot key on an empty background
        x, y = rng.randint(0, w), rng.randint(0, h)
        g = rng.randint(150, 200)
        d.line((x, y, x + rng.randint(-w // 4, w // 4), y + rng.randint(-h // 4, h // 4)), fill=(g, g, g), width=1)
    side = int(min(w, h) * rng.uniform(0.45, 0.75))
    x0 = rng.randint(0, w - side)
    y0 = rng.randint(0, h - side)
    jitter = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in COLOURS[colour_name])
    if shape == "丸":
        d.ellipse((x0, y0, x0 + side, y0 + side), fill=jitter)
    else:
        d.rectangle((x0, y0, x0 + side, y0 + side), fill=jitter)
    return im


def encode(im: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()
