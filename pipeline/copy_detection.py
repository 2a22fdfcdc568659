"""Near-verbatim copies in pixel space: the tiled L2 distance of Carlini et al. (2023).

Carlini et al. ("Extracting Training Data from Diffusion Models", USENIX Security 2023) call a
generation a copy of a training image when their pixel distance is small, using the
normalised L2, sqrt(mean((a - b)^2)) over pixels in [0, 1], computed *per tile* — the image is
split into a 4 x 4 grid and the distance is the maximum over tiles — so a copy must match
everywhere: a shared flat background cannot make two different products look alike, and
one changed region is enough to clear an image.

Our variant, documented: both images are first resized to 64 x 64 (the tiny preset's native
size; 16 x 16 px tiles), so the check costs the same for every preset and the reference
index stores a 64 px thumbnail per image instead of the full picture. Downsampling only
removes detail, so near-verbatim copies stay near; the price is that two images that agree
at 64 px but differ in fine detail also count as near.
"""

from __future__ import annotations

import io

import numpy as np

COMPARE_SIZE = 64
GRID = 4


def comparison_pixels(image) -> np.ndarray:
    """A PIL image, encoded image bytes, or an HWC uint8 array as 64 x 64 RGB float32 in [0, 1]."""
    from PIL import Image

    if isinstance(image, (bytes, bytearray)):
        image = Image.open(io.BytesIO(image))
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    if image.size != (COMPARE_SIZE, COMPARE_SIZE):
        image = image.resize((COMPARE_SIZE, COMPARE_SIZE), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


def thumbnail_png(image) -> bytes:
    """The 64 x 64 comparison image as PNG bytes (what a reference index stores per image)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((comparison_pixels(image) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def tiled_l2(a: np.ndarray, b: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Max over a grid x grid tiling of the per-tile RMS pixel distance.

    `a` and `b` are (..., H, W, C) float arrays in [0, 1] that broadcast against each other
    (e.g. one generated image against k candidate references); returns the leading shape.
    """
    diff = np.square(np.asarray(a, np.float32) - np.asarray(b, np.float32))
    *lead, h, w, c = diff.shape
    if h % grid or w % grid:
        raise ValueError(f"a {h}x{w} image does not split into a {grid}x{grid} grid")
    tiles = diff.reshape(*lead, grid, h // grid, grid, w // grid, c)
    per_tile = np.sqrt(tiles.mean(axis=(-4, -2, -1)))   # (..., grid, grid)
    return per_tile.reshape(*lead, grid * grid).max(axis=-1)

# Default gate: a near-verbatim copy at or below this tiled L2. Carlini et al. flag extraction at
# normalised L2 < 0.15 on full-size images; on our 64 px grid we measured (tiny preset, 20 steps):
# the 120 ordinary generations closest to 2,005 training images stay >= 0.133 (2 of 120 under
# 0.15), while JPEG-75 re-encodes of the five planted hero images score 0.067-0.097. 0.12 sits
# between; a one-pixel shift of hard-edged art already scores ~0.2 (pixel-aligned copies only).
# Rechecked against the reference runs use by default, the whole tiny training set (16,005
# images): it keeps 1% false positives on ordinary prompts. Round 1 weights: none of the 200
# calibration prompts of `synthcat eval memorization` at or below it (min 0.126, p1 0.148); the
# round 2 weights, whose generations sat closer to their renders: p1 0.123 (the gate was 0.12);
# the text-round weights sit closer still: p1 0.0888 (gate 0.088). The image round's scorer finds
# the nearest references (whose tiles are compared) differently: p1 0.0869, so the gate is now
# 0.086 (rounded down). JPEG-75 hero copies above it are still caught by their descriptor cosine.
DEFAULT_MAX_TILE_L2 = 0.086
