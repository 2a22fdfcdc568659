"""Palette check: how far an image's dominant colours fall from a brand palette (CIEDE2000).

Dominant colours are Pillow's median-cut quantisation of the image (deterministic, no
random k-means start), each weighted by its share of pixels. The distance is the
pixel-weighted mean, over the dominant colours, of the CIEDE2000 difference to the
nearest palette colour: 0 when the image only uses palette colours; about 2 is a just
noticeable difference; 20-30 is "another colour family".
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.campaign.colour import ciede2000, hex_to_rgb, srgb_to_lab

DOMINANT_COLOURS = 6
_SAMPLE_SIDE = 96  # quantise a small copy: dominant colours do not need every pixel


def dominant_colours(image: Image.Image, k: int = DOMINANT_COLOURS) -> tuple[np.ndarray, np.ndarray]:
    """Up to `k` dominant colours (uint8 RGB rows) and their pixel shares (summing to 1)."""
    small = image.convert("RGB")
    small.thumbnail((_SAMPLE_SIDE, _SAMPLE_SIDE), Image.Resampling.BOX)
    quantised = small.quantize(colors=k, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    palette = np.asarray(quantised.getpalette()[: 3 * k], np.uint8).reshape(-1, 3)
    counts = np.bincount(np.asarray(quantised).ravel(), minlength=len(palette))[: len(palette)]
    used = counts > 0
    return palette[used], counts[used] / counts.sum()


def palette_distance(image: Image.Image, palette: list[str] | tuple[str, ...]) -> float:
    """Pixel-weighted mean CIEDE2000 from the image's dominant colours to the nearest palette colour."""
    if not palette:
        raise ValueError("the brand palette is empty")
    colours, shares = dominant_colours(image)
    brand = srgb_to_lab(np.array([hex_to_rgb(c) for c in palette], np.float64))
    distances = ciede2000(srgb_to_lab(colours.astype(np.float64))[:, None, :], brand[None, :, :])
    return float((distances.min(axis=1) * shares).sum())
