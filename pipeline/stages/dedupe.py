"""Duplicate detection: exact bytes, perceptual hash, CLIP-embedding similarity.

Rule: candidates are visited in keep order (already-published rows first, then the run in
catalog order: SKU, market, kind, variant, format, not the plan's generation order). A candidate
that matches a row *kept* before it is a duplicate of that row; otherwise it is kept, unless
another gate rejected it. So the first acceptable image of every group survives, and an image is
never rejected because of another rejected one. Matches are found in bulk and resolved in one
greedy pass. Only the run's rows are queried (history rows are always kept), so the cost grows
with history size H and run size R as an index build over H + R plus R queries, never H²:
embeddings through `vector_index` (exact up to 20,000 rows, IVF above), pHashes through a faiss
binary index (exact Hamming range search, popcount over 64 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Duplicate:
    kept_id: str        # item_id of the kept row the candidate duplicates
    reason: str         # exact | perceptual | semantic
    similarity: float   # Hamming distance (perceptual), cosine (semantic), 1.0 (exact)


def _phash_bytes(hexes: list[str]) -> np.ndarray:
    return np.frombuffer(b"".join(bytes.fromhex(h) for h in hexes), dtype=np.uint8).reshape(len(hexes), 8)


def _perceptual_neighbours(phash: list[str], history: int, max_distance: int) -> list[dict[int, float]]:
    """For every row from `history` on, {row: Hamming distance} of the rows within max_distance."""
    import faiss

    codes = _phash_bytes(phash)
    index = faiss.IndexBinaryFlat(64)
    index.add(codes)
    lims, distances, ids = index.range_search(codes[history:], max_distance + 1)  # radius is exclusive
    return [{} for _ in range(history)] + [
        {int(j): float(d) for j, d in zip(ids[lims[i]:lims[i + 1]], distances[lims[i]:lims[i + 1]])}
        for i in range(len(lims) - 1)]


def _semantic_neighbours(embeddings: np.ndarray, history: int, min_cosine: float) -> list[dict[int, float]]:
    """For every row from `history` on, {row: cosine} of the rows with cosine >= min_cosine."""
    from pipeline.vector_index import build_index

    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    return [{} for _ in range(history)] + build_index(vectors).range_search(vectors[history:], min_cosine)


def find_duplicates(ids: list[str], sha256: list[str], phash: list[str], embeddings: np.ndarray | None,
                    *, history: int, exact: bool, max_phash_distance: int | None,
                    min_semantic_cosine: float | None, keepable: list[bool] | None = None,
                    has_embedding: list[bool] | None = None) -> list[Duplicate | None]:
    """For every row after the first `history` ones: None (not a duplicate) or the Duplicate it is.

    The first `history` rows are the published history: always kept, never reported.
    `embeddings` (rows x dim, L2-normalised) may be None when the semantic check is off.
    `keepable`: per row, False where another gate rejected it: such a row is still reported as a
    duplicate of a kept one, but is never kept, so no later row is rejected as its copy.
    `has_embedding`: per row, False where its embedding is missing (zeros in `embeddings`): that
    row takes no part in the semantic check, which still runs for the others.
    """
    n = len(ids)
    keepable = [True] * n if keepable is None else keepable
    has_embedding = [True] * n if has_embedding is None else has_embedding
    perceptual = (_perceptual_neighbours(phash, history, max_phash_distance)
                  if max_phash_distance is not None and n > history else None)
    semantic = (_semantic_neighbours(embeddings, history, min_semantic_cosine)
                if min_semantic_cosine is not None and embeddings is not None and n > history else None)
    kept = np.zeros(n, dtype=bool)
    first_kept_with_sha: dict[str, int] = {}
    result: list[Duplicate | None] = [None] * n
    for row in range(n):
        if row < history:  # published rows are always kept: nothing to look up
            kept[row] = True
            first_kept_with_sha.setdefault(sha256[row], row)
            continue
        match = None
        if exact and sha256[row] in first_kept_with_sha:
            match = Duplicate(ids[first_kept_with_sha[sha256[row]]], "exact", 1.0)
        if match is None and perceptual is not None:
            earlier = [(j, d) for j, d in perceptual[row].items() if j < row and kept[j]]
            if earlier:
                best, distance = min(earlier, key=lambda pair: (pair[1], pair[0]))
                match = Duplicate(ids[best], "perceptual", distance)
        if match is None and semantic is not None and has_embedding[row]:
            earlier = [(j, s) for j, s in semantic[row].items() if j < row and kept[j] and has_embedding[j]]
            if earlier:
                best, score = max(earlier, key=lambda pair: pair[1])
                match = Duplicate(ids[best], "semantic", score)
        if match is not None:
            result[row] = match
        elif keepable[row]:
            kept[row] = True
            first_kept_with_sha.setdefault(sha256[row], row)
    return result[history:] if history else result
