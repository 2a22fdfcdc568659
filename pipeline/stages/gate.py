"""Gate: a global step over a run's scored rows; splits them into accepted and rejected.

First version: the alignment threshold on `clip_score` and exact duplicates by
`image_sha256`. Each rejected row keeps its image and lists every reason it failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import ACCEPTED, GATE_FIELDS, OUTPUT_SCHEMA, REJECTED, conform

# Plan order decides which copy of a duplicate is kept: the first one a reader would expect.
KEEP_ORDER = [("sku", "ascending"), ("market", "ascending"), ("kind", "ascending"),
              ("variant", "ascending"), ("format", "ascending"), ("item_id", "ascending")]


@dataclass(frozen=True)
class GateResult:
    accepted: pa.Table
    rejected: pa.Table

    def reasons(self) -> dict[str, int]:
        """Rejected rows per reason kind (the text before the first ':')."""
        counts: dict[str, int] = {}
        for reasons in self.rejected.column("gate_reasons").to_pylist():
            for reason in reasons:
                key = reason.split(":", 1)[0]
                counts[key] = counts.get(key, 0) + 1
        return counts


def apply_gates(table: pa.Table, *, min_clip_score: float, exact_duplicates: bool,
                created_at: datetime) -> GateResult:
    """Gate every row of `table` (scored and encoded rows, any order) into OUTPUT_SCHEMA tables.

    Duplicates: rows sharing `image_sha256` form a group named after the kept row's
    `item_id` (the first in plan order, `KEEP_ORDER`); every member carries `dup_group`
    and `dup_reason = "exact"`, and the others are rejected.
    """
    table = table.sort_by(KEEP_ORDER)
    n = table.num_rows
    ids = table.column("item_id").to_pylist()
    scores = table.column("clip_score").to_pylist()
    hashes = table.column("image_sha256").to_pylist()

    reasons: list[list[str]] = [[] for _ in range(n)]
    for row, score in enumerate(scores):
        if score is None or score < min_clip_score:
            reasons[row].append(f"clip_score: {score:.4f} < {min_clip_score:.4f}"
                                if score is not None else "clip_score: missing")

    dup_group: list[str | None] = [None] * n
    dup_reason: list[str | None] = [None] * n
    if exact_duplicates:
        first_with: dict[str, int] = {}
        for row, digest in enumerate(hashes):
            first_with.setdefault(digest, row)
        group_size: dict[str, int] = {}
        for digest in hashes:
            group_size[digest] = group_size.get(digest, 0) + 1
        for row, digest in enumerate(hashes):
            if group_size[digest] < 2:
                continue
            keeper = first_with[digest]
            dup_group[row], dup_reason[row] = ids[keeper], "exact"
            if row != keeper:
                reasons[row].append(f"duplicate: exact copy of {ids[keeper]}")

    status = [REJECTED if r else ACCEPTED for r in reasons]
    values = {"dup_group": dup_group, "dup_reason": dup_reason, "gate_status": status,
              "gate_reasons": reasons, "created_at": [created_at] * n}
    gated = table
    for f in GATE_FIELDS:
        gated = gated.append_column(f, pa.array(values[f.name], type=f.type))
    gated = conform(gated, OUTPUT_SCHEMA)
    is_accepted = pc.equal(gated.column("gate_status"), ACCEPTED)
    return GateResult(gated.filter(is_accepted), gated.filter(pc.invert(is_accepted)))
