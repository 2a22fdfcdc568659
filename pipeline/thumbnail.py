"""The run report's thumbnails: each image shrunk to the size the report shows it, as PNG.

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
    """`image` (PIL) shrunk to fit `side` x `side` (never enlarged), as PNG bytes."""
    small = image.convert("RGB") if image.mode != "RGB" else image.copy()
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
