"""Product integrity (campaign rows with a product photo): does the creative show the real product?

Runs on the final pixels (after the copy is drawn), so anything that touched the product --
inpainting, resizing, copy or a plate drawn over it -- shows. `product_diff` is the share of
the photo's fully opaque pixels (at its planned box and size) whose colour differs in any
channel; the soft alpha edge is blended with the new background by design and not counted.
The gate rejects a row above `gates.max_product_diff` (default 0: every pixel exact).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from PIL import Image

from pipeline.config import StageResources
from pipeline.schema import CAMPAIGN_FIELDS
from pipeline.stages._columns import column_lists, put_columns


@dataclass
class IntegrityStage:
    """Adds `product_diff` to rows with a product photo (null elsewhere)."""

    resources: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=16))
    name: str = "integrity"
    stateless = True  # CPU only: plain Ray tasks, no actor

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipeline.campaign.photo import placed_cutout, product_diff

        col = column_lists(batch, ("pixels", "width", "height", "product_image", "product_image_sha256", "product_box"))
        diffs: list[float | None] = [None] * batch.num_rows
        for row in range(batch.num_rows):
            if not col["product_image"][row]:
                continue
            box = tuple(col["product_box"][row])
            image = Image.frombytes("RGB", (col["width"][row], col["height"][row]), col["pixels"][row])
            diffs[row] = product_diff(image, placed_cutout(col["product_image"][row],
                                                           col["product_image_sha256"][row], box), box)
        return put_columns(batch, {"product_diff": diffs}, CAMPAIGN_FIELDS)
