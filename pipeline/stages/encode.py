"""Encode: raw pixels become PNG/WebP bytes in the Hugging Face `Image` struct (CPU only).

It also computes what later steps read from pixels, while they are at hand: the perceptual
hash (pHash), the pixel mean and spread (black or blank images) and the 64 px image of the
pixel copy check for the gates, and the run report's thumbnail.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipeline.config import StageResources
from pipeline.copy_detection import thumbnail_png
from pipeline.schema import ENCODE_FIELDS, STAGING_FIELDS
from pipeline.thumbnail import report_thumbnail, thumbnail_side


@dataclass
class EncodeStage:
    """Compress images off the GPU workers; drops `pixels`, adds `image`, `image_sha256`, the
    gates' pixel evidence, the report's `thumbnail`, the copy check's `copy_thumbnail` and the
    image's size (`image_nbytes`), so that the gate step need not read the images.

    PNG is lossless and byte-for-byte deterministic; WebP is written lossless too, so
    the published pixels of an item never depend on encoder settings. `png_compress_level`
    (zlib 0-9) trades CPU for bytes only.
    """

    image_format: str = "png"
    resources: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=32))
    png_compress_level: int = 1
    name: str = "encode"
    stateless = True  # runs as plain CPU tasks, not an actor pool

    def setup(self) -> None:
        """Nothing to load: encoding is stateless."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        import imagehash
        from PIL import Image

        images, hashes, phashes, means, stds, thumbnails, copy_thumbnails = [], [], [], [], [], [], []
        copy = (batch.column("overlay_text").to_pylist() if "overlay_text" in batch.column_names
                else [None] * batch.num_rows)
        rows = zip(batch.column("item_id").to_pylist(), batch.column("pixels").to_pylist(),
                   batch.column("width").to_pylist(), batch.column("height").to_pylist(), copy)
        for item, raw, width, height, text in rows:
            buffer = io.BytesIO()
            image = Image.frombytes("RGB", (width, height), raw)
            if self.image_format == "png":
                image.save(buffer, format="PNG", compress_level=self.png_compress_level)
            else:
                image.save(buffer, format="WEBP", lossless=True, method=4)
            data = buffer.getvalue()
            images.append({"bytes": data, "path": f"{item}.{self.image_format}"})
            hashes.append(hashlib.sha256(data).hexdigest())
            phashes.append(str(imagehash.phash(image)))
            values = np.frombuffer(raw, dtype=np.uint8)
            means.append(float(values.mean()) if values.size else 0.0)
            stds.append(float(values.std()) if values.size else 0.0)
            thumbnails.append(report_thumbnail(image, thumbnail_side(bool(text))))
            copy_thumbnails.append(thumbnail_png(image))
        out = batch.drop_columns(["pixels"])
        columns = {"image": images, "image_sha256": hashes, "image_phash": phashes,
                   "pixel_mean": means, "pixel_std": stds, "thumbnail": thumbnails,
                   "copy_thumbnail": copy_thumbnails, "image_nbytes": [len(i["bytes"]) for i in images]}
        for f in ENCODE_FIELDS + STAGING_FIELDS:
            out = out.append_column(f, pa.array(columns[f.name], type=f.type))
        return out
