"""Campaign gates: copy drawn and legible, product photo intact, colours on brand.

Evidence is measured by the campaign stages and stored in the row; this only compares it
with the job's limits (`gates.max_product_diff`, `gates.max_palette_distance`) and the WCAG
ratio, and says why a row fails. Rows of other kinds, and tables without campaign columns,
get no reasons.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.campaign.overlay import MIN_CONTRAST
from pipeline.stages._columns import column_lists

_COLUMNS = ("kind", "headline", "overlay_text", "overlay_contrast", "product_image", "product_diff",
            "palette_distance")


def campaign_reasons(table: pa.Table, max_palette_distance: float | None, max_product_diff: float) -> list[list[str]]:
    """One list of reasons per row of `table` (empty when the row passes or is not a campaign row)."""
    reasons: list[list[str]] = [[] for _ in range(table.num_rows)]
    if any(name not in table.column_names for name in _COLUMNS):
        return reasons
    col = column_lists(table, _COLUMNS)
    for row, out in enumerate(reasons):
        if col["kind"][row] != "campaign":
            continue
        if col["headline"][row] is None:
            pass  # no copy was planned (a row from before campaign planning): nothing to check
        elif col["overlay_text"][row] is None:
            out.append("overlay: no copy drawn (it does not fit the copy area even at the smallest size, "
                       "or no packaged font has one of its characters)")
        elif col["overlay_contrast"][row] is None or col["overlay_contrast"][row] < MIN_CONTRAST:
            out.append(f"overlay: contrast {col['overlay_contrast'][row]} < {MIN_CONTRAST} (WCAG AA)")
        diff = col["product_diff"][row]
        if col["product_image"][row] and (diff is None or diff > max_product_diff):
            shown = "not measured" if diff is None else f"{diff * 100:.2f}% of its opaque pixels changed"
            out.append(f"product: the product photo is not intact ({shown}; limit {max_product_diff * 100:g}%)")
        distance = col["palette_distance"][row]
        if max_palette_distance is not None and distance is not None and distance > max_palette_distance:
            out.append(f"palette: CIEDE2000 {distance:.1f} from the brand palette > {max_palette_distance:g}")
    return reasons
