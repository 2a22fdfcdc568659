"""Duplicate detection: exact bytes, perceptual hash, CLIP-embedding similarity.

Rule: candidates are visited in keep order (already-published rows first, then the run in
plan order). A candidate that matches a row *kept* before it is a duplicate of that row;
otherwise it is kept. So the first image of every group survives, and an image is never
rejected because of another rejected one. Matches are found in bulk (faiss range search over
the embeddings, vectorised XOR/popcount over the hashes) and resolved in one greedy pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Duplicate:
    kept_id: str        # item_id of the kept row the candidate duplicates
    reason: str         # exact | perceptual | semantic
    similarity: float   # Hamming distance (perceptual), cosine (semantic), 1.0 (exact)


def _phash_ints(hexes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def _popcount(values: np.ndarray) -> np.ndarray:
    return np.unpackbits(values.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def _semantic_neighbours(embeddings: np.ndarray, min_cosine: float) -> list[dict[int, float]]:
    """For every row, the rows whose cosine is >= min_cosine (faiss exact inner-product search)."""
    import faiss

    vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    # range_search keeps similarities strictly above the radius: nudge it to include equality
    lims, scores, ids = index.range_search(vectors, float(np.nextafter(np.float32(min_cosine), -1)))
    return [{int(j): float(s) for j, s in zip(ids[lims[i]:lims[i + 1]], scores[lims[i]:lims[i + 1]])}
            for i in range(len(vectors))]


def find_duplicates(ids: list[str], sha256: list[str], phash: list[str], embeddings: np.ndarray | None,
                    *, history: int, exact: bool, max_phash_distance: int | None,
                    min_semantic_cosine: float | None) -> list[Duplicate | None]:
    """For every row after the first `history` ones: None (kept) or the Duplicate it is.

    The first `history` rows are the published history: always kept, never reported.
    `embeddings` (rows x dim, L2-normalised) may be None when the semantic check is off.
    """
    n = len(ids)
    hashes = _phash_ints(phash) if max_phash_distance is not None and n else None
    semantic = (_semantic_neighbours(embeddings, min_semantic_cosine)
                if min_semantic_cosine is not None and embeddings is not None and n else None)
    kept = np.zeros(n, dtype=bool)
    first_kept_with_sha: dict[str, int] = {}
    result: list[Duplicate | None] = [None] * n
    for row in range(n):
        match = None
        if exact and sha256[row] in first_kept_with_sha:
            match = Duplicate(ids[first_kept_with_sha[sha256[row]]], "exact", 1.0)
        if match is None and hashes is not None and row:
            distances = _popcount(hashes[:row] ^ hashes[row])
            candidates = np.flatnonzero(kept[:row] & (distances <= max_phash_distance))
            if candidates.size:
                best = candidates[np.argmin(distances[candidates])]
                match = Duplicate(ids[best], "perceptual", float(distances[best]))
        if match is None and semantic is not None:
            earlier = [(j, s) for j, s in semantic[row].items() if j < row and kept[j]]
            if earlier:
                best, score = max(earlier, key=lambda pair: pair[1])
                match = Duplicate(ids[best], "semantic", score)
        if match is None or row < history:
            kept[row] = True
            first_kept_with_sha.setdefault(sha256[row], row)
        else:
            result[row] = match
    return result[history:] if history else result
