"""Product photos for background replacement: the cut-out is the photo's own alpha channel.

Paths arrive resolved and checked by ingest (`pipeline.references`: under the image roots).
The plan records each photo's sha256; every later reader checks it again, so a photo that
changed (or was swapped through a symlink) after planning fails loudly instead of giving a
different product. No segmentation model: a photo without transparency is refused, since
guessing the product's outline would need downloaded weights.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.campaign.layout import Box

MIN_OPAQUE_SHARE = 0.01  # a cut-out whose product covers less than 1% of the photo is empty
# The largest creative is 4096 px on its long side and a product is never enlarged, so no photo needs
# more pixels than 4096 x 4096: larger ones (decompression bombs among them) are refused before decoding
MAX_PHOTO_PIXELS = 4096 * 4096


class PhotoError(ValueError):
    """A product photo that cannot be used as a cut-out (the message says why)."""


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def check_cutout(path: str | Path) -> tuple[str, tuple[int, int]]:
    """Validate a local product photo; return its sha256 and the size of its product (alpha bbox)."""
    try:
        with Image.open(path) as im:  # reads the header only
            if im.width * im.height > MAX_PHOTO_PIXELS:
                raise PhotoError(f"the product photo is {im.width}x{im.height} px, over {MAX_PHOTO_PIXELS:,} "
                                 "pixels (4096x4096, the largest canvas): scale it down")
            im.load()
            rgba = im.convert("RGBA") if "A" in im.getbands() or "transparency" in im.info else None
    except PhotoError:
        raise
    except Exception as exc:  # Pillow's decoders also raise ValueError, SyntaxError, struct.error ...
        raise PhotoError(f"cannot read the product photo ({type(exc).__name__}: {exc})") from None
    if rgba is None:
        raise PhotoError("the product photo has no alpha channel: background replacement needs a "
                         "cut-out (PNG or WebP with transparency around the product)")
    alpha = np.asarray(rgba.getchannel("A"))
    if (alpha == 255).mean() < MIN_OPAQUE_SHARE:
        raise PhotoError("the product photo is (almost) fully transparent: no product to keep")
    if alpha.min() == 255:  # an alpha channel that cuts nothing out: a photo saved as RGBA, background and all
        raise PhotoError("the product photo's alpha channel is fully opaque: background replacement needs a "
                         "cut-out, transparent (or soft-edged, for a box-shaped product) around the product")
    bbox = rgba.getchannel("A").getbbox()
    return file_sha256(path), (bbox[2] - bbox[0], bbox[3] - bbox[1])


@lru_cache(maxsize=16)  # up to 16 x 64 MB at the largest size a photo may have
def load_cutout(path: str, sha256: str) -> Image.Image:
    """The product cut-out cropped to its alpha bounding box; the file must still have `sha256`."""
    data = Path(path).read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise PhotoError(f"{path}: the product photo changed since the run was planned (sha256 differs)")
    import io

    with Image.open(io.BytesIO(data)) as im:
        rgba = im.convert("RGBA")
    return rgba.crop(rgba.getchannel("A").getbbox())


def placed_cutout(path: str, sha256: str, box: Box) -> Image.Image:
    """The cut-out at the size of its product box (LANCZOS when it had to shrink): the exact
    pixels the creative must show, and what the integrity check compares against."""
    cutout = load_cutout(path, sha256)
    size = (box[2] - box[0], box[3] - box[1])
    return cutout if cutout.size == size else cutout.resize(size, Image.Resampling.LANCZOS)


def paste_product(canvas: Image.Image, placed: Image.Image, box: Box) -> Image.Image:
    """`canvas` (RGB) with the product drawn over it; fully opaque product pixels are copied
    byte for byte, the soft edge is alpha-blended with the new background."""
    out = canvas.convert("RGB").copy()
    out.paste(placed.convert("RGB"), box[:2], placed.getchannel("A"))
    return out


def product_diff(image: Image.Image, placed: Image.Image, box: Box) -> float:
    """Share of the product's fully opaque pixels whose colour differs (any channel) in `image`."""
    opaque = np.asarray(placed.getchannel("A")) == 255
    if not opaque.any():
        return 1.0
    shown = np.asarray(image.convert("RGB").crop(box), np.int16)
    source = np.asarray(placed.convert("RGB"), np.int16)
    changed = (shown != source).any(axis=-1) & opaque
    return float(changed.sum() / opaque.sum())
