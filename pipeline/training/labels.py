"""Where the product is: `bbox` and `mask` of a composited product photo (the row contract).

Any stage that pastes a product photo (an RGBA cut-out) into a generated image -- background
replacement for campaign or training rows -- knows exactly which pixels are the product and
records them with `region_columns` (or `with_region` on a whole batch):

- `bbox`: COCO `[x, y, width, height]` in pixels of the published `image`, from the top-left
  corner, tight around the product pixels (float32, as COCO writes them).
- `mask`: a PNG (mode "L", 0 = background, 255 = product) of the image's size.

Both columns are present on every row and null where the region is unknown (a purely
generated image). Readers decode `mask` with `decode_mask`, or `PIL.Image.open(BytesIO(b))`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from pipeline.schema import REGION_FIELDS


def product_mask(alpha: np.ndarray, threshold: int = 128) -> np.ndarray:
    """Boolean product mask from an alpha channel (0-255) of the composited cut-out."""
    alpha = np.asarray(alpha)
    if alpha.ndim != 2:
        raise ValueError(f"alpha must be a 2-D array, got shape {alpha.shape}")
    return alpha >= threshold


def bbox_of(mask: np.ndarray) -> list[float] | None:
    """COCO `[x, y, width, height]` of the True pixels; None for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    x, y = float(cols[0]), float(rows[0])
    return [x, y, float(cols[-1] + 1) - x, float(rows[-1] + 1) - y]


def encode_mask(mask: np.ndarray) -> bytes:
    """PNG bytes (mode "L", 0/255) of a boolean mask."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_mask(png: bytes) -> np.ndarray:
    """The boolean mask stored in a row's `mask` column."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image.convert("L")) >= 128


def region_columns(mask: np.ndarray | None) -> tuple[list[float] | None, bytes | None]:
    """(`bbox`, `mask`) values of one row: both None when the region is unknown or empty."""
    if mask is None:
        return None, None
    box = bbox_of(mask)
    return (None, None) if box is None else (box, encode_mask(mask))


def with_region(batch: pa.Table, masks: Sequence[np.ndarray | None]) -> pa.Table:
    """A copy of `batch` with `bbox` and `mask` set from one mask (or None) per row.

    Rows whose mask is None keep the values they had (null unless set before).
    """
    if len(masks) != batch.num_rows:
        raise ValueError(f"{len(masks)} masks for {batch.num_rows} rows")
    bbox_field, mask_field = REGION_FIELDS
    old_boxes = (batch.column("bbox").to_pylist() if "bbox" in batch.column_names else [None] * batch.num_rows)
    old_masks = (batch.column("mask").to_pylist() if "mask" in batch.column_names else [None] * batch.num_rows)
    boxes, pngs = [], []
    for mask, box, png in zip(masks, old_boxes, old_masks):
        new_box, new_png = region_columns(mask)
        boxes.append(box if mask is None else new_box)
        pngs.append(png if mask is None else new_png)
    out = batch
    for field, values in ((bbox_field, boxes), (mask_field, pngs)):
        array = pa.array(values, type=field.type)
        out = (out.set_column(out.column_names.index(field.name), field, array)
               if field.name in out.column_names else out.append_column(field, array))
    return out
