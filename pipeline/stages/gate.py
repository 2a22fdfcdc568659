"""Gate: a global step over a run's scored rows; splits them into accepted and rejected.

Gates, each recording its evidence in the row: sanity (black or blank images), alignment
(`clip_score` threshold), memorization (copy descriptor and tiled pixel L2 against a reference
index of training or protected images, the in-generation CFG gap; see `memorization_gate`)
and duplicates (exact, perceptual, semantic; within the run and against
the published history, see `dedupe`). A rejected row keeps its image and lists
every reason it failed in `gate_reasons`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.campaign.gates import campaign_reasons
from pipeline.schema import ACCEPTED, GATE_FIELDS, GATED_SCHEMA, OUTPUT_SCHEMA, REJECTED, conform
from pipeline.stages.dedupe import find_duplicates
from pipeline.vector_index import embedding_rows
from pipeline.stages.memorization_gate import memorization_evidence

# Plan order decides which copy of a duplicate is kept: the first one a reader would expect.
KEEP_ORDER = [("sku", "ascending"), ("market", "ascending"), ("kind", "ascending"),
              ("variant", "ascending"), ("format", "ascending"), ("item_id", "ascending")]


@dataclass(frozen=True)
class GateSettings:
    min_clip_score: float = -1.0
    exact_duplicates: bool = True
    max_phash_distance: int | None = 10
    min_semantic_cosine: float | None = None
    min_pixel_mean: float = 8.0
    min_pixel_std: float = 2.0
    max_ref_similarity: float | None = None   # memorization: reject at or above this cosine
    max_ref_tile_l2: float | None = None      # memorization: reject at or below this tiled pixel L2
    max_mem_cfg_gap: float | None = None      # memorization: reject above this in-generation CFG gap
    max_palette_distance: float | None = None  # campaign: CIEDE2000 to the brand palette (None: not gated)
    max_product_diff: float = 0.0              # campaign: share of product-photo pixels allowed to change



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


def _missing(value: float | None) -> bool:
    """None or NaN: a NaN compares False with every threshold, so it would pass them all."""
    return value is None or math.isnan(value)


def _sanity(mean: float | None, std: float | None, settings: GateSettings) -> str | None:
    if _missing(mean) or _missing(std):
        return "sanity: no pixel statistics"
    if mean < settings.min_pixel_mean:
        return f"sanity: black image (mean {mean:.1f} < {settings.min_pixel_mean:g})"
    if std < settings.min_pixel_std:
        return f"sanity: blank image (std {std:.2f} < {settings.min_pixel_std:g})"
    return None


def apply_gates(table: pa.Table, settings: GateSettings, *, created_at: datetime,
                history: pa.Table | None = None, reference=None) -> GateResult:
    """Gate every row of `table` (scored and encoded rows, any order) into OUTPUT_SCHEMA tables,
    or GATED_SCHEMA ones when its rows come without their images (`image_nbytes` instead).

    `history`: published rows (item_id, image_sha256, image_phash, clip_embedding) the run
    must not duplicate; they are only compared against, never changed. `reference`: a
    `ReferenceIndex` of training / protected images (memorization evidence and gate).
    """
    table = table.sort_by(KEEP_ORDER)
    n = table.num_rows
    ids = table.column("item_id").to_pylist()
    reasons: list[list[str]] = [[] for _ in range(n)]

    # 1. Sanity and alignment, row by row
    rows = zip(table.column("pixel_mean").to_pylist(), table.column("pixel_std").to_pylist(),
               table.column("clip_score").to_pylist())
    for row, (mean, std, score) in enumerate(rows):
        problem = _sanity(mean, std, settings)
        if problem:
            reasons[row].append(problem)
        if _missing(score) or score < settings.min_clip_score:
            reasons[row].append(f"clip_score: {score:.4f} < {settings.min_clip_score:.4f}"
                                if not _missing(score) else "clip_score: missing")
    # campaign rows: copy drawn and legible, product photo intact, colours on brand
    for row, extra in enumerate(campaign_reasons(table, settings.max_palette_distance, settings.max_product_diff)):
        reasons[row] += extra

    # 2. Memorization: copy descriptor and tiled pixel L2 against the reference index, CFG gap
    embeddings, has_embedding = embedding_rows(table.column("clip_embedding"))
    for row, present in enumerate(has_embedding):
        if not present:  # nothing to compare: neither the copy nor the duplicate checks could clear it
            reasons[row].append("clip_embedding: missing")
    memorized = memorization_evidence(
        table, embeddings, reference, max_ref_similarity=settings.max_ref_similarity,
        max_ref_tile_l2=settings.max_ref_tile_l2, max_mem_cfg_gap=settings.max_mem_cfg_gap, present=has_embedding)
    ref_ids, ref_scores = memorized.ref_nearest_id, memorized.ref_similarity
    for row, extra in enumerate(memorized.reasons):
        reasons[row] += extra

    # 3. Duplicates: published history first (always kept), then the run in keep order
    past = history if history is not None else table.slice(0, 0)
    both = pa.concat_tables([past.select(["item_id", "image_sha256", "image_phash", "clip_embedding"]),
                             table.select(["item_id", "image_sha256", "image_phash", "clip_embedding"])])
    both_embeddings, both_have = embedding_rows(both.column("clip_embedding"))
    duplicates = find_duplicates(
        both.column("item_id").to_pylist(), both.column("image_sha256").to_pylist(),
        both.column("image_phash").to_pylist(), both_embeddings, history=past.num_rows,
        exact=settings.exact_duplicates, max_phash_distance=settings.max_phash_distance,
        min_semantic_cosine=settings.min_semantic_cosine,
        keepable=[True] * past.num_rows + [not r for r in reasons], has_embedding=both_have)
    dup_group: list[str | None] = [None] * n
    dup_reason: list[str | None] = [None] * n
    dup_similarity: list[float | None] = [None] * n
    position = {item: row for row, item in enumerate(ids)}
    for row, dup in enumerate(duplicates):
        if dup is None:
            continue
        dup_group[row], dup_reason[row], dup_similarity[row] = dup.kept_id, dup.reason, dup.similarity
        reasons[row].append(f"duplicate: {dup.reason} copy of {dup.kept_id}")
        keeper = position.get(dup.kept_id)
        if keeper is not None and dup_group[keeper] is None:  # the kept member names its group too
            dup_group[keeper], dup_reason[keeper] = dup.kept_id, dup.reason

    # 4. Status and output
    status = [REJECTED if r else ACCEPTED for r in reasons]
    values = {"dup_group": dup_group, "dup_reason": dup_reason, "dup_similarity": dup_similarity,
              "ref_nearest_id": ref_ids, "ref_similarity": ref_scores, "ref_tile_l2": memorized.ref_tile_l2,
              "gate_status": status, "gate_reasons": reasons, "created_at": [created_at] * n}
    gated = table
    for f in GATE_FIELDS:
        gated = gated.append_column(f, pa.array(values[f.name], type=f.type))
    # rows read without their images (ShardStore.read_all) stay without: publish fetches them
    gated = conform(gated, OUTPUT_SCHEMA if "image" in table.column_names else GATED_SCHEMA)
    is_accepted = pc.equal(gated.column("gate_status"), ACCEPTED)
    return GateResult(gated.filter(is_accepted), gated.filter(pc.invert(is_accepted)))
