"""Overlay (campaign rows): the headline and price drawn on the image in the market's script.

Copy lines come from the plan (`headline`: greeting and offer; `price_text`); language, text
direction, fonts and line breaking from the market profile; the area from the plan's
`text_box` (pipeline/campaign/layout.py). See pipeline/campaign/overlay.py for fitting and
contrast. A row whose copy does not fit even at the smallest size, or has a character no
packaged font draws, keeps its image without copy and a null `overlay_text`, which the gate
rejects. Other kinds pass through.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa
from PIL import Image

from pipeline.config import StageResources
from pipeline.schema import CAMPAIGN_FIELDS, GENERATION_FIELDS
from pipeline.stages._columns import column_lists, put_columns

_FIELDS = CAMPAIGN_FIELDS + GENERATION_FIELDS


@dataclass
class OverlayStage:
    """Campaign rows: draws the copy; adds overlay_text, overlay_font, overlay_contrast, overlay_box."""

    markets_dir: str | None = None
    resources: StageResources = field(default_factory=lambda: StageResources(num_cpus=0.5, batch_size=16))
    name: str = "overlay"
    stateless = True  # CPU only: plain Ray tasks, no actor

    def setup(self) -> None:
        """Nothing to load: fonts are opened (and cached) on first use."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        from pipeline.campaign.fonts import FontError
        from pipeline.campaign.overlay import Copy, CopyDoesNotFit, draw_copy
        from pipeline.markets import load_profile

        col = column_lists(batch, ("kind", "market", "pixels", "width", "height", "headline", "price_text", "text_box"))
        values = {"pixels": list(col["pixels"])}
        values |= {name: [None] * batch.num_rows for name in ("overlay_text", "overlay_font", "overlay_contrast",
                                                              "overlay_box")}
        for row in range(batch.num_rows):
            if col["kind"][row] != "campaign":
                continue
            profile = load_profile(col["market"][row], self.markets_dir)
            lines = tuple(zip(("greeting", "offer"), col["headline"][row].split("\n", 1)))
            if col["price_text"][row]:
                lines += (("price", col["price_text"][row]),)
            copy = Copy(lines, profile.language, profile.direction, profile.fonts, profile.line_break)
            image = Image.frombytes("RGB", (col["width"][row], col["height"][row]), col["pixels"][row])
            try:
                drawn = draw_copy(image, copy, tuple(col["text_box"][row]))
            except (CopyDoesNotFit, FontError):
                continue  # no copy, null overlay_text: the gate rejects the row
            values["pixels"][row] = drawn.image.tobytes()
            values["overlay_text"][row], values["overlay_font"][row] = drawn.text, drawn.fonts
            values["overlay_contrast"][row], values["overlay_box"][row] = drawn.contrast, list(drawn.box)
        return put_columns(batch, values, _FIELDS)
