"""The run report's thumbnails: each image shrunk to the size the report shows it.

A shrunk image is a JPEG (quality 90, no chroma subsampling: coloured copy keeps its edges), about
a quarter of the PNG's bytes and half its encode time; the report inlines up to 1,000 of them,
so a page of 512 px creatives would otherwise pass 100 MB. An image already small enough
(a 64 px training image) stays a PNG of its exact pixels: the report scales it up, pixelated.

The encode stage makes them while the pixels are in memory (streaming, beside generation);
the report only inlines them. Made one by one at publish time they cost a decode, a resize
and an encode per image in the driver, after the last image was generated (bench/README.md).
"""

from __future__ import annotations

import io

THUMB = 160  # px, the side of an ordinary card's image; a creative with copy is shown at twice that


def thumbnail_side(has_copy: bool) -> int:
    """The side the report shows an image at: creatives with copy big enough to read it."""
    return 2 * THUMB if has_copy else THUMB


def report_thumbnail(image, side: int) -> bytes:
    """`image` (PIL) shrunk to fit `side` x `side` (never enlarged): JPEG bytes, or PNG if not shrunk."""
    small = image.convert("RGB") if image.mode != "RGB" else image.copy()
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    if small.size == image.size:
        small.save(buffer, format="PNG", compress_level=1)
    else:
        small.save(buffer, format="JPEG", quality=90, subsampling=0)
    return buffer.getvalue()


def thumbnail_mime(data: bytes) -> str:
    """The media type of a thumbnail's bytes (a run staged before JPEG thumbnails has PNGs)."""
    return "image/jpeg" if data[:3] == b"\xff\xd8\xff" else "image/png"
