"""Encode: raw pixels become PNG/WebP bytes in the Hugging Face `Image` struct (CPU only)."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.config import StageResources
from pipeline.schema import ENCODE_FIELDS


@dataclass
class EncodeStage:
    """Compress images off the GPU workers; drops `pixels`, adds `image` and `image_sha256`.

    PNG is lossless and byte-for-byte deterministic; WebP is written lossless too, so
    the published bytes of an item never depend on encoder quality settings.
    """

    image_format: str = "png"
    resources: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=32))
    name: str = "encode"
    stateless = True  # runs as plain CPU tasks, not an actor pool

    def setup(self) -> None:
        """Nothing to load: encoding is stateless."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        from PIL import Image

        images, hashes = [], []
        rows = zip(batch.column("item_id").to_pylist(), batch.column("pixels").to_pylist(),
                   batch.column("width").to_pylist(), batch.column("height").to_pylist())
        for item, raw, width, height in rows:
            buffer = io.BytesIO()
            image = Image.frombytes("RGB", (width, height), raw)
            if self.image_format == "png":
                image.save(buffer, format="PNG", optimize=False)
            else:
                image.save(buffer, format="WEBP", lossless=True, method=4)
            data = buffer.getvalue()
            images.append({"bytes": data, "path": f"{item}.{self.image_format}"})
            hashes.append(hashlib.sha256(data).hexdigest())
        out = batch.drop_columns(["pixels"])
        image_f, sha_f = ENCODE_FIELDS
        out = out.append_column(image_f, pa.array(images, type=image_f.type))
        return out.append_column(sha_f, pa.array(hashes, type=sha_f.type))
