"""Layout of a campaign creative: the canvas, its safe area, where the copy and the product go.

Safe areas keep copy clear of what each channel draws on top of an image (insets as a
fraction of the canvas: left, top, right, bottom): feeds (1:1, 4:5) and link previews
(1.91:1) keep a 6% / 5% margin; stories and reels (9:16) also lose the top 14% (profile
bar) and bottom 20% (reply box, captions). Copy takes a band across the top of the safe
area (the product stands below it), or the bottom band when the top one meets a
logo-free zone; on 1.91:1 it takes a column on the reading side (left for left-to-right
scripts, right for Arabic). Logo-free zones (brand profile, fractions of the canvas) are
kept clear of copy and of the product: the logo goes there later.
"""

from __future__ import annotations

from dataclasses import dataclass

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)

SAFE_INSETS = {"1:1": (0.06, 0.06, 0.06, 0.06), "4:5": (0.06, 0.06, 0.06, 0.06),
               "9:16": (0.06, 0.14, 0.06, 0.20), "1.91:1": (0.05, 0.05, 0.05, 0.05)}
COPY_SHARE = {"1:1": 0.34, "4:5": 0.30, "9:16": 0.28, "1.91:1": 0.44}  # of the safe area's height / width
GAP = 0.02  # between copy and product, fraction of the canvas' short side


@dataclass(frozen=True)
class Layout:
    """Pixel boxes on the canvas: the safe area, the copy's (text) area and the product's area."""

    width: int
    height: int
    safe: Box
    text: Box
    product: Box


def canvas_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """The published size of a generated `width` x `height` image: scaled so its long side is
    `long_side` (never smaller than generated), keeping the aspect to the pixel."""
    scale = max(1.0, long_side / max(width, height))
    return round(width * scale), round(height * scale)


def area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def intersects(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def largest_free_box(region: Box, blocked: list[Box]) -> Box:
    """The largest box inside `region` that overlaps none of `blocked` (cut at their edges)."""
    hits = [b for b in blocked if intersects(region, b)]
    if not hits:
        return region
    b = hits[0]
    x0, y0, x1, y1 = region
    parts = [(x0, y0, b[0], y1), (b[2], y0, x1, y1), (x0, y0, x1, b[1]), (x0, b[3], x1, y1)]
    best = max((largest_free_box(p, hits[1:]) for p in parts if area(p) > 0), key=area, default=(x0, y0, x0, y0))
    return best


def zone_boxes(zones, width: int, height: int) -> list[Box]:
    """Logo-free zones given as canvas fractions (x0, y0, x1, y1) in pixels, rounded outward."""
    import math

    return [(math.floor(z[0] * width), math.floor(z[1] * height), math.ceil(z[2] * width), math.ceil(z[3] * height))
            for z in zones]


def plan_layout(width: int, height: int, fmt: str, direction: str, zones=()) -> Layout:
    """Where the copy and the product go on a `width` x `height` canvas of channel format `fmt`."""
    left, top, right, bottom = SAFE_INSETS[fmt]
    safe = (round(width * left), round(height * top), round(width * (1 - right)), round(height * (1 - bottom)))
    sx0, sy0, sx1, sy1 = safe
    gap = round(GAP * min(width, height))
    blocked = zone_boxes(zones, width, height)
    if fmt == "1.91:1":
        cut = round((sx1 - sx0) * COPY_SHARE[fmt])
        start = (sx0, sy0, sx0 + cut, sy1)       # the reading side
        end = (sx1 - cut, sy0, sx1, sy1)
        first, second = (end, start) if direction == "rtl" else (start, end)
        rest = {first: (first[2] + gap, sy0, sx1, sy1) if first == start else (sx0, sy0, first[0] - gap, sy1),
                second: (second[2] + gap, sy0, sx1, sy1) if second == start else (sx0, sy0, second[0] - gap, sy1)}
    else:
        cut = round((sy1 - sy0) * COPY_SHARE[fmt])
        first, second = (sx0, sy0, sx1, sy0 + cut), (sx0, sy1 - cut, sx1, sy1)  # top band, then bottom band
        rest = {first: (sx0, first[3] + gap, sx1, sy1), second: (sx0, sy0, sx1, second[1] - gap)}
    copy_box = first if not any(intersects(first, z) for z in blocked) else (
        second if not any(intersects(second, z) for z in blocked) else None)
    if copy_box is None:  # both bands meet a zone: the largest clear part of the first one
        copy_box = largest_free_box(first, blocked)
        product = largest_free_box(rest[first], blocked)
    else:
        product = largest_free_box(rest[copy_box], blocked)
    return Layout(width, height, safe, copy_box, product)


def place_product(layout: Layout, product_w: int, product_h: int) -> tuple[Box, float]:
    """Where a product photo of `product_w` x `product_h` (its alpha bounding box) goes, and the
    scale it is drawn at: centred, standing on the bottom of the product area, never enlarged
    (enlarging would invent pixels the product photo does not have)."""
    x0, y0, x1, y1 = layout.product
    scale = min(1.0, (x1 - x0) / product_w, (y1 - y0) / product_h)
    w, h = max(1, round(product_w * scale)), max(1, round(product_h * scale))
    left = x0 + ((x1 - x0) - w) // 2
    return (left, y1 - h, left + w, y1), scale
