"""The memorization gate: is a generated image a copy of a training or protected image?

Three signals, each recorded in the row whether or not it is gated:

a. **copy descriptor** — cosine between the image's scorer embedding and its nearest image in
   the reference index (`ref_nearest_id`, `ref_similarity`). Somepalli et al. (CVPR 2023)
   call a generation a replication at SSCD-descriptor similarity > 0.5; our descriptor is the
   run's CLIP image embedding, whose cosines run much higher for unrelated images, so each
   scorer preset carries its own calibrated threshold (`ScorerPreset.max_ref_similarity`).
b. **pixel copy check** — the tiled L2 distance (Carlini et al. 2023, `copy_detection`) to
   the `CANDIDATES` nearest references by descriptor; the smallest is `ref_tile_l2`. It catches
   near-verbatim copies whatever the descriptor thinks of them.
c. **in-generation signal** — `mem_cfg_gap` (Wen et al., ICLR 2024), measured by the generate
   stage; its threshold is calibrated per model preset to 1% false positives on ordinary
   prompts (`ModelPreset.max_mem_cfg_gap`, `synthcat eval memorization`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

CANDIDATES = 5  # references checked in pixels per image: the descriptor's top 5
CHUNK_ROWS = 1024  # images compared in pixels per pass: at most 5,120 decoded references held, 250 MB


@dataclass(frozen=True)
class MemorizationEvidence:
    ref_nearest_id: list[str | None]
    ref_similarity: list[float | None]
    ref_tile_l2: list[float | None]
    reasons: list[list[str]]


def _comparison_images(table: pa.Table) -> list[bytes | None]:
    """Per row, the encoded image the pixel check compares: the 64 px copy the encode stage made
    (`copy_thumbnail`, the same pixels `comparison_pixels` gives), else the image itself."""
    small = (table.column("copy_thumbnail").to_pylist() if "copy_thumbnail" in table.column_names
             else [None] * table.num_rows)
    if all(small) or "image" not in table.column_names:  # the full images: only for rows without one
        return small
    images = table.column("image").to_pylist()
    return [s or (image["bytes"] if image else None) for s, image in zip(small, images)]


def _pixel_copy_distance(images: list[bytes | None], rows: np.ndarray, reference) -> tuple[list, list]:
    """Per image (encoded bytes): (smallest tiled L2 to its candidate references, that reference's row),
    `CHUNK_ROWS` images at a time: only their candidates' decoded pixels are held (48 KB each)."""
    distances: list[float | None] = []
    closest: list[int | None] = []
    for start in range(0, len(images), CHUNK_ROWS):
        chunk = _pixel_copy_chunk(images[start:start + CHUNK_ROWS], rows[start:start + CHUNK_ROWS], reference)
        distances += chunk[0]
        closest += chunk[1]
    return distances, closest


def _pixel_copy_chunk(images: list[bytes | None], rows: np.ndarray, reference) -> tuple[list, list]:
    from pipeline.copy_detection import comparison_pixels, tiled_l2

    thumbs = reference.thumbnails(rows.ravel())
    decoded = {r: comparison_pixels(b) for r, b in thumbs.items() if b}
    distances: list[float | None] = []
    closest: list[int | None] = []
    for image, candidates in zip(images, rows):
        usable = [r for r in candidates if r in decoded]
        if not image or not usable:
            distances.append(None)
            closest.append(None)
            continue
        d = tiled_l2(comparison_pixels(image)[None], np.stack([decoded[r] for r in usable]))
        best = int(np.argmin(d))
        distances.append(float(d[best]))
        closest.append(int(usable[best]))
    return distances, closest


def memorization_evidence(table: pa.Table, embeddings: np.ndarray | None, reference, *,
                          max_ref_similarity: float | None, max_ref_tile_l2: float | None,
                          max_mem_cfg_gap: float | None, present: list[bool] | None = None) -> MemorizationEvidence:
    """The three signals for every row of `table` (in its order) and the reasons they fail.

    `reference`: a loaded `ReferenceIndex` or None (then a. and b. stay null). `present`: per row,
    whether its embedding was measured (None: all were); a row without one is not searched (its
    a. and b. stay null: nothing was measured to compare). A threshold of None records the signal
    without gating on it; a gap that is NaN cannot clear c. and fails it.
    """
    n = table.num_rows
    ids: list[str | None] = [None] * n
    similarity: list[float | None] = [None] * n
    tile_l2: list[float | None] = [None] * n
    reasons: list[list[str]] = [[] for _ in range(n)]
    searched = np.flatnonzero(np.ones(n, bool) if present is None else np.asarray(present, bool))
    if reference is not None and embeddings is not None and len(searched):
        rows, scores = reference.neighbours(embeddings[searched], CANDIDATES)
        images = _comparison_images(table)
        distances, closest = _pixel_copy_distance([images[row] for row in searched], rows, reference)
        for k, row in enumerate(searched.tolist()):
            if rows[k, 0] >= 0:
                ids[row], similarity[row] = reference.ids[rows[k, 0]], float(scores[k, 0])
            tile_l2[row] = distances[k]
            if max_ref_similarity is not None and similarity[row] is not None \
                    and similarity[row] >= max_ref_similarity:
                reasons[row].append(f"memorization: cosine {similarity[row]:.3f} >= {max_ref_similarity:g} "
                                    f"to reference {ids[row][:12]}")
            if max_ref_tile_l2 is not None and tile_l2[row] is not None and tile_l2[row] <= max_ref_tile_l2:
                reasons[row].append(f"memorization: near-verbatim copy of reference "
                                    f"{reference.ids[closest[k]][:12]} (tiled L2 {tile_l2[row]:.3f} "
                                    f"<= {max_ref_tile_l2:g})")
    if max_mem_cfg_gap is not None and "mem_cfg_gap" in table.column_names:
        for row, gap in enumerate(table.column("mem_cfg_gap").to_pylist()):
            if gap is not None and math.isnan(gap):  # NaN compares False with the threshold: it would pass
                reasons[row].append("memorization: cfg gap not measurable (NaN)")
            elif gap is not None and gap > max_mem_cfg_gap:
                reasons[row].append(f"memorization: cfg gap {gap:.2f} > {max_mem_cfg_gap:g} "
                                    "(in-generation signal)")
    return MemorizationEvidence(ids, similarity, tile_l2, reasons)
