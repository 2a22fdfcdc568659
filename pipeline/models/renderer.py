"""Procedural product renderer: the training data of the embedded `tiny` models.

Flat-shaded product silhouettes (8 categories, 11 colours, 4 patterns) on 6 simple scenes,
drawn with Pillow at 2x and downsampled, fully determined by a `RenderSpec` (and so by a
seed). `render_cutout` gives the same product as an RGBA cut-out for catalog photos.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ("mug", "t-shirt", "sneaker", "bottle", "backpack", "lamp", "chair", "watch")
COLOURS = {
    "red": (205, 30, 35), "orange": (245, 130, 20), "yellow": (250, 215, 30), "green": (40, 155, 55),
    "blue": (35, 80, 215), "purple": (125, 45, 170), "pink": (245, 120, 180), "brown": (120, 70, 35),
    "black": (25, 25, 28), "white": (245, 245, 242), "grey": (130, 130, 135),
}
PATTERNS = ("plain", "striped", "dotted", "metallic")
SCENES = ("studio", "beach", "city street", "forest", "snow", "living room")
SCALE = 2  # supersampling factor


@dataclass(frozen=True)
class RenderSpec:
    """Everything that fixes one image; `jitter` seeds the pose, shape and scene details."""

    category: str
    colour: str
    pattern: str = "plain"
    scene: str = "studio"
    jitter: int = 0


def random_spec(rng: random.Random) -> RenderSpec:
    """A uniformly drawn product (plain pattern half of the time, like a catalog)."""
    pattern = "plain" if rng.random() < 0.5 else rng.choice(PATTERNS[1:])
    return RenderSpec(rng.choice(CATEGORIES), rng.choice(list(COLOURS)), pattern,
                      rng.choice(SCENES), rng.randrange(1 << 30))


# ---------------------------------------------------------------- scenes
def _scene(draw: ImageDraw.ImageDraw, scene: str, rng: random.Random, s: int) -> None:
    def r(a, b):
        return rng.uniform(a, b)

    if scene == "studio":
        top, bottom = np.array([215, 215, 220]), np.array([240, 240, 240])
        for y in range(s):
            c = top + (bottom - top) * y / s
            draw.line([(0, y), (s, y)], fill=tuple(int(v) for v in c))
    elif scene == "beach":
        horizon, shore = int(s * r(0.35, 0.45)), int(s * r(0.55, 0.62))
        draw.rectangle([0, 0, s, horizon], fill=(150, 205, 245))
        draw.rectangle([0, horizon, s, shore], fill=(30, 120, 185))
        draw.rectangle([0, shore, s, s], fill=(235, 210, 160))
        cx = r(0.1, 0.9) * s
        draw.ellipse([cx - 7 * SCALE, 6 * SCALE, cx + 7 * SCALE, 20 * SCALE], fill=(255, 240, 150))
    elif scene == "city street":
        draw.rectangle([0, 0, s, s], fill=(185, 200, 215))
        x = -rng.randrange(10, 30)
        while x < s:
            w, h = rng.randrange(22, 46), int(s * r(0.35, 0.7))
            shade = rng.randrange(80, 130)
            draw.rectangle([x, s * 0.72 - h, x + w, s * 0.72], fill=(shade, shade, shade + 8))
            for wy in range(int(s * 0.72 - h) + 6, int(s * 0.72) - 8, 12):
                for wx in range(x + 4, x + w - 6, 10):
                    draw.rectangle([wx, wy, wx + 4, wy + 5], fill=(225, 215, 150))
            x += w + rng.randrange(0, 6)
        draw.rectangle([0, s * 0.72, s, s], fill=(70, 70, 75))
        for lx in range(0, s, 36):
            draw.rectangle([lx, s * 0.86, lx + 18, s * 0.88], fill=(230, 230, 230))
    elif scene == "forest":
        draw.rectangle([0, 0, s, s], fill=(120, 165, 110))
        for _ in range(7):
            tx, tw = r(0, s), r(6, 14)
            draw.rectangle([tx, 0, tx + tw, s * 0.75], fill=(80, 55, 35))
            for _ in range(3):
                fx, fy, fr = tx + r(-20, 20), r(0, s * 0.45), r(14, 26)
                draw.ellipse([fx - fr, fy - fr, fx + fr, fy + fr], fill=(30, rng.randrange(85, 120), 40))
        draw.rectangle([0, s * 0.72, s, s], fill=(75, 100, 45))
    elif scene == "snow":
        draw.rectangle([0, 0, s, s], fill=(200, 215, 235))
        hy = s * r(0.4, 0.5)
        draw.polygon([(0, hy), (s * r(0.2, 0.4), hy - s * 0.2), (s * r(0.6, 0.8), hy + 4), (s, hy - s * 0.1),
                      (s, s), (0, s)], fill=(165, 180, 200))
        draw.rectangle([0, s * 0.6, s, s], fill=(250, 252, 255))
        for _ in range(25):
            fx, fy = r(0, s), r(0, s * 0.6)
            draw.ellipse([fx - 1.5, fy - 1.5, fx + 1.5, fy + 1.5], fill=(255, 255, 255))
    elif scene == "living room":
        wall = (225, 205 + rng.randrange(-10, 10), 170)
        draw.rectangle([0, 0, s, s], fill=wall)
        wx = r(0.05, 0.6) * s
        draw.rectangle([wx, s * 0.12, wx + s * 0.3, s * 0.45], fill=(170, 210, 240), outline=(245, 245, 240), width=4)
        draw.rectangle([0, s * 0.7, s, s], fill=(150, 100, 60))
        for fy in range(int(s * 0.74), s, 12):
            draw.line([(0, fy), (s, fy)], fill=(125, 82, 48), width=2)
    else:
        raise ValueError(f"unknown scene {scene!r}; known: {', '.join(SCENES)}")


# ---------------------------------------------------------------- products
def _product_parts(category: str, rng: random.Random, s: int):
    """Body mask (takes colour + pattern) and accent layers [(mask, rgb)] for one product."""
    body = Image.new("L", (s, s), 0)
    b = ImageDraw.Draw(body)
    accents: list[tuple[Image.Image, tuple[int, int, int]]] = []

    def accent(rgb):
        mask = Image.new("L", (s, s), 0)
        accents.append((mask, rgb))
        return ImageDraw.Draw(mask)

    def r(a, b_):
        return rng.uniform(a, b_) * s

    cx, base = s / 2 + rng.uniform(-0.06, 0.06) * s, s * rng.uniform(0.82, 0.88)
    if category == "mug":
        w, h = r(0.30, 0.38), r(0.32, 0.40)
        top = base - h
        b.rounded_rectangle([cx - w / 2, top, cx + w / 2, base], radius=w * 0.12, fill=255)
        side = 1 if rng.random() < 0.5 else -1
        hx = cx + side * w / 2
        b.ellipse([hx - w * 0.28, top + h * 0.2, hx + w * 0.28, top + h * 0.75], outline=255, width=int(w * 0.11))
        accent((60, 40, 30)).ellipse([cx - w / 2 + 3, top - 4, cx + w / 2 - 3, top + 6], fill=255)
    elif category == "t-shirt":
        w, h = r(0.40, 0.48), r(0.50, 0.58)
        top, sl = base - h, r(0.14, 0.2)
        b.polygon([(cx - w / 2, top + h * 0.05), (cx - w / 2 - sl, top + h * 0.32), (cx - w / 2 - sl * 0.4, top + h * 0.44),
                   (cx - w / 2, top + h * 0.34), (cx - w / 2, base), (cx + w / 2, base), (cx + w / 2, top + h * 0.34),
                   (cx + w / 2 + sl * 0.4, top + h * 0.44), (cx + w / 2 + sl, top + h * 0.32), (cx + w / 2, top + h * 0.05)],
                  fill=255)
        b.ellipse([cx - w * 0.18, top - h * 0.08, cx + w * 0.18, top + h * 0.1], fill=0)
    elif category == "sneaker":
        w, h = r(0.62, 0.72), r(0.24, 0.3)
        x0, top = cx - w / 2, base - h
        flip = rng.random() < 0.5
        pts = [(x0, base - h * 0.2), (x0 + w * 0.05, top + h * 0.15), (x0 + w * 0.35, top), (x0 + w * 0.55, top + h * 0.35),
               (x0 + w * 0.95, top + h * 0.55), (x0 + w, base - h * 0.2)]
        if flip:
            pts = [(2 * cx - x, y) for x, y in pts]
        b.polygon(pts, fill=255)
        accent((240, 240, 235)).rounded_rectangle([x0 - 2, base - h * 0.24, x0 + w + 2, base], radius=5, fill=255)
        lace = accent((245, 245, 245))
        for i in range(3):
            lx = x0 + w * (0.42 + 0.08 * i)
            lx = 2 * cx - lx if flip else lx
            lace.line([(lx, top + h * (0.25 + 0.1 * i)), (lx + 5, top + h * (0.3 + 0.1 * i))], fill=255, width=3)
    elif category == "bottle":
        w, h = r(0.20, 0.26), r(0.62, 0.72)
        top = base - h
        b.rounded_rectangle([cx - w / 2, top + h * 0.28, cx + w / 2, base], radius=w * 0.2, fill=255)
        b.polygon([(cx - w / 2, top + h * 0.32), (cx - w * 0.22, top + h * 0.14), (cx + w * 0.22, top + h * 0.14),
                   (cx + w / 2, top + h * 0.32)], fill=255)
        accent((50, 50, 55)).rectangle([cx - w * 0.24, top, cx + w * 0.24, top + h * 0.14], fill=255)
    elif category == "backpack":
        w, h = r(0.42, 0.5), r(0.52, 0.6)
        top = base - h
        b.rounded_rectangle([cx - w / 2, top, cx + w / 2, base], radius=w * 0.3, fill=255)
        b.ellipse([cx - w * 0.12, top - h * 0.12, cx + w * 0.12, top + h * 0.06], outline=255, width=5)
        trim = accent((40, 40, 40))
        trim.rounded_rectangle([cx - w * 0.32, base - h * 0.42, cx + w * 0.32, base - h * 0.08], radius=8, outline=255, width=3)
        trim.line([(cx - w * 0.32, base - h * 0.3), (cx + w * 0.32, base - h * 0.3)], fill=255, width=3)
    elif category == "lamp":
        w, h = r(0.40, 0.5), r(0.62, 0.72)
        top = base - h
        sh = h * 0.36
        b.polygon([(cx - w * 0.28, top), (cx + w * 0.28, top), (cx + w / 2, top + sh), (cx - w / 2, top + sh)], fill=255)
        b.ellipse([cx - w * 0.34, base - h * 0.08, cx + w * 0.34, base + h * 0.02], fill=255)
        accent((60, 60, 60)).rectangle([cx - 3, top + sh, cx + 3, base - h * 0.05], fill=255)
    elif category == "chair":
        w, h = r(0.42, 0.5), r(0.6, 0.7)
        top = base - h
        seat = top + h * 0.52
        side = 1 if rng.random() < 0.5 else -1
        bx = cx - side * w / 2
        b.rectangle([min(bx, bx + side * w * 0.16), top, max(bx, bx + side * w * 0.16), seat + 4], fill=255)
        b.rectangle([cx - w / 2, seat, cx + w / 2, seat + h * 0.1], fill=255)
        lw = w * 0.1
        for lx in (cx - w / 2, cx + w / 2 - lw):
            b.rectangle([lx, seat, lx + lw, base], fill=255)
    elif category == "watch":
        w, h = r(0.2, 0.26), r(0.66, 0.76)
        top = base - h
        b.rounded_rectangle([cx - w / 2, top, cx + w / 2, base], radius=w * 0.3, fill=255)
        rad = w * 0.95
        cy = top + h / 2
        b.ellipse([cx - rad, cy - rad, cx + rad, cy + rad], fill=255)
        face = accent((240, 238, 225))
        face.ellipse([cx - rad * 0.62, cy - rad * 0.62, cx + rad * 0.62, cy + rad * 0.62], fill=255)
        hands = accent((20, 20, 20))
        hands.line([(cx, cy), (cx, cy - rad * 0.5)], fill=255, width=3)
        hands.line([(cx, cy), (cx + rad * 0.35, cy + rad * 0.1)], fill=255, width=3)
    else:
        raise ValueError(f"unknown category {category!r}; known: {', '.join(CATEGORIES)}")
    return body, accents


def _body_fill(colour: str, pattern: str, rng: random.Random, s: int) -> np.ndarray:
    """An s x s x 3 float image: the product colour with its pattern and a soft side light."""
    base = np.array(COLOURS[colour], dtype=np.float32)
    light = np.clip(base * 0.6 + 110, 0, 255) if colour != "white" else base * 0.82
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    img = np.broadcast_to(base, (s, s, 3)).copy()
    if pattern == "striped":
        period = rng.randrange(10, 16)
        horizontal = rng.random() < 0.6
        band = ((yy if horizontal else xx) % period) < period * 0.4
        img[band] = light
    elif pattern == "dotted":
        period = rng.randrange(11, 16)
        dots = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < (period * 0.22) ** 2
        img[dots] = light
    elif pattern == "metallic":
        sheen = 0.35 * np.sin(xx / s * np.pi * rng.uniform(2.5, 3.5) + rng.uniform(0, 6)) ** 8
        img = img * (0.85 + 0.25 * (xx / s)[..., None]) + 255 * sheen[..., None]
    elif pattern != "plain":
        raise ValueError(f"unknown pattern {pattern!r}; known: {', '.join(PATTERNS)}")
    shade = 0.82 + 0.22 * (xx / s)  # light from the right
    return np.clip(img * shade[..., None], 0, 255)


def _product_layers(spec: RenderSpec, s: int):
    rng = random.Random(f"product:{spec.category}:{spec.jitter}")
    body, accents = _product_parts(spec.category, rng, s)
    fill = _body_fill(spec.colour, spec.pattern, random.Random(f"fill:{spec.jitter}"), s)
    return body, fill, accents


def _composite(canvas: np.ndarray, body, fill, accents) -> np.ndarray:
    alpha = np.asarray(body, dtype=np.float32)[..., None] / 255
    out = canvas * (1 - alpha) + fill * alpha
    for mask, rgb in accents:
        a = np.asarray(mask, dtype=np.float32)[..., None] / 255
        out = out * (1 - a) + np.array(rgb, np.float32) * a
    return out


def render(spec: RenderSpec, size: int = 64) -> Image.Image:
    """The product on its scene, as an RGB image of `size` x `size` px."""
    s = size * SCALE
    bg = Image.new("RGB", (s, s))
    _scene(ImageDraw.Draw(bg), spec.scene, random.Random(f"scene:{spec.scene}:{spec.jitter}"), s)
    canvas = np.asarray(bg, dtype=np.float32)
    body, fill, accents = _product_layers(spec, s)
    # a soft contact shadow grounds the product
    shadow = Image.new("L", (s, s), 0)
    bbox = body.getbbox() or (0, 0, s, s)
    ImageDraw.Draw(shadow).ellipse([bbox[0] - 4, bbox[3] - 5, bbox[2] + 4, bbox[3] + 5], fill=90)
    canvas = canvas * (1 - np.asarray(shadow, np.float32)[..., None] / 255)
    out = _composite(canvas, body, fill, accents)
    image = Image.fromarray(out.round().astype(np.uint8))
    return image.resize((size, size), Image.Resampling.BOX)


def render_mask(spec: RenderSpec, size: int = 64) -> np.ndarray:
    """Boolean product mask (body and accents) at `size` px: the ground-truth product region."""
    s = size * SCALE
    body, _, accents = _product_layers(spec, s)
    m = np.asarray(body, np.float32)
    for mask, _ in accents:
        m = np.maximum(m, np.asarray(mask, np.float32))
    small = Image.fromarray(m.astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    return np.asarray(small) >= 128


def body_mask(spec: RenderSpec, size: int = 64) -> np.ndarray:
    """Boolean mask of the coloured body only (what carries the prompted colour)."""
    s = size * SCALE
    body, _, accents = _product_layers(spec, s)
    m = np.asarray(body, np.float32)
    for mask, _ in accents:
        m = m * (1 - np.asarray(mask, np.float32) / 255)
    small = Image.fromarray(m.astype(np.uint8)).resize((size, size), Image.Resampling.BOX)
    return np.asarray(small) >= 128


def render_cutout(spec: RenderSpec, size: int = 256) -> Image.Image:
    """The product alone as an RGBA cut-out (transparent background), e.g. a catalog photo."""
    s = size * SCALE
    body, fill, accents = _product_layers(spec, s)
    rgb = _composite(np.zeros((s, s, 3), np.float32), body, fill, accents)
    alpha = np.asarray(body, np.float32)
    for mask, _ in accents:
        alpha = np.maximum(alpha, np.asarray(mask, np.float32))
    rgba = np.concatenate([rgb, alpha[..., None]], axis=-1).round().astype(np.uint8)
    return Image.fromarray(rgba, "RGBA").resize((size, size), Image.Resampling.LANCZOS)


def with_jitter(spec: RenderSpec, jitter: int) -> RenderSpec:
    return replace(spec, jitter=jitter)
