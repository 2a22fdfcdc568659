"""Nearest-neighbour search over L2-normalised embeddings that stays near-linear in the data.

Used by the reference index (memorization) and by the semantic duplicate check. Two regimes:

- up to `exact_max` vectors: `faiss.IndexFlatIP`, exact, nothing to train. A query costs
  O(N·d), which is cheap at this size and never misses a neighbour;
- above: `faiss.IndexIVFFlat`, a k-means coarse quantizer of `nlist ≈ 2·sqrt(N)` lists
  trained on a sample (40 vectors per list, at least 100,000), full-precision vectors in the
  lists. Building costs O(N·nlist·d) = O(N^1.5·d) in theory, but the assignment is one BLAS
  matrix product, so up to millions of vectors it grows close to linearly in practice; a
  query scans `nprobe` lists, O((nlist + nprobe·N/nlist)·d) = O(sqrt(N)·d).

`nprobe` is tuned when the index is built, on the data itself: leave-one-out queries (a sample
of the indexed vectors asking for their nearest *other* vector, exact answer by brute force)
and the smallest power of two whose recall@1 reaches `target_recall`. So clustered data (real
CLIP embeddings) gets a small nprobe and fast queries, and data without neighbour structure
(uniform on the sphere, the worst case) gets a large one instead of silently losing recall —
and when that large one would scan over a quarter of the lists, exact search instead, which
then costs no more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class IndexParams:
    """How the index is chosen and tuned (defaults measured with `synthcat bench index`)."""

    exact_max: int = 20_000       # at or below: exact flat search
    lists_per_sqrt: float = 2.0   # nlist = lists_per_sqrt * sqrt(N)
    train_per_list: int = 40      # k-means sample: this many vectors per list (faiss warns < 39) ...
    train_min: int = 100_000      # ... but at least this many (or all): at 100k vectors, 40 per
                                  # list split clusters across lists and needed nprobe 32, all 100k 4
    kmeans_iterations: int = 10   # below faiss's 25: training is much of the build, and the
                                  # nprobe tuning checks the recall whatever the lists' quality
    target_recall: float = 0.97   # leave-one-out recall@1 the tuned nprobe must reach (it reads
                                  # ~1.5 points above held-out recall: 0.969 gave 0.954 at 100k)
    tune_queries: int = 1000
    max_nprobe: int = 512
    seed: int = 0


@dataclass(frozen=True)
class BuiltIndex:
    """A faiss index and how it was made (kind, nlist, nprobe, tuning recall)."""

    index: object
    kind: str                 # "flat" | "ivf" (flat with nlist/nprobe set: IVF tuned, then refused)
    nlist: int | None = None
    nprobe: int | None = None
    tuning_recall: float | None = None

    def describe(self) -> dict:
        return {"kind": self.kind, "nlist": self.nlist, "nprobe": self.nprobe, "tuning_recall": self.tuning_recall,
                "vectors": int(self.index.ntotal)}

    def search(self, queries: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows), each queries x k; rows are -1 where fewer than k vectors were found."""
        return self.index.search(_as_f32(queries), k)

    def range_search(self, queries: np.ndarray, min_score: float) -> list[dict[int, float]]:
        """For every query, {row: score} of the indexed vectors with score >= min_score."""
        # faiss keeps scores strictly above the radius: nudge it down to include equality, then drop
        # what the nudge (or float32 rounding of the threshold) let in below min_score
        radius = float(np.nextafter(np.float32(min_score), np.float32(-1)))
        lims, scores, ids = self.index.range_search(_as_f32(queries), radius)
        return [{int(j): float(s) for j, s in zip(ids[lims[i]:lims[i + 1]], scores[lims[i]:lims[i + 1]])
                 if float(s) >= min_score}
                for i in range(len(lims) - 1)]


def embedding_rows(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray | None, list[bool]]:
    """A list<float> column of embeddings as (rows x dim, zeros where a row has none; None when no
    row has one), and per row whether it has one: null, empty, of another length than the first
    (another scorer's) or holding a NaN is none. Read from Arrow's buffer, never as Python floats
    (a run and its published history: 2 KB of floats a row at 512 dimensions)."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(column)
    lengths = pc.fill_null(pc.list_value_length(column), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = column.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)  # nulls hold no values
    starts, nonempty = np.cumsum(lengths) - lengths, np.flatnonzero(lengths > 0)
    usable = np.zeros(n, dtype=bool)  # non-empty and free of NaN; the rows' values lie back to back
    if len(nonempty):
        usable[nonempty] = ~np.logical_or.reduceat(np.isnan(flat), starts[nonempty])
    if not usable.any():
        return None, [False] * n
    dim = int(lengths[np.argmax(usable)])  # the first usable row's, as the rows were read before
    ok = lengths == dim
    if ok.all():
        vectors = flat.reshape(n, dim).copy()
    else:
        vectors = np.zeros((n, dim), dtype=np.float32)
        for row in np.flatnonzero(ok):
            vectors[row] = flat[starts[row]:starts[row] + dim]
    broken = np.isnan(vectors).any(axis=1)
    vectors[broken] = 0
    return vectors, (ok & ~broken).tolist()


def _as_f32(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def n_lists(n: int, params: IndexParams) -> int:
    """sqrt-ish list count, and never more lists than the training sample can fill."""
    return max(1, min(int(round(params.lists_per_sqrt * np.sqrt(n))), n // params.train_per_list))


def build_index(vectors: np.ndarray, params: IndexParams = IndexParams()) -> BuiltIndex:
    """An inner-product index over `vectors` (rows L2-normalised): exact when small, IVF above."""
    import faiss

    vectors = _as_f32(vectors)
    n, dim = vectors.shape
    if n <= params.exact_max:
        index = faiss.IndexFlatIP(dim)
        index.add(vectors)
        return BuiltIndex(index, "flat")
    nlist = n_lists(n, params)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = params.kmeans_iterations
    index.cp.seed = params.seed
    rng = np.random.default_rng(params.seed)
    sample = rng.choice(n, size=min(n, max(nlist * params.train_per_list, params.train_min)), replace=False)
    index.cp.max_points_per_centroid = -(-len(sample) // nlist)  # train on all of it: no subsampling
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    nprobe, recall = tune_nprobe(index, vectors, params)
    if nprobe > nlist // 4:
        # Scanning over a quarter of the lists plus the coarse step costs about what exact
        # search does (uniform data: measured slower), so take the exact answer instead.
        flat = faiss.IndexFlatIP(dim)
        flat.add(vectors)
        return BuiltIndex(flat, "flat", nlist, nprobe, recall)
    index.nprobe = nprobe
    return BuiltIndex(index, "ivf", nlist, nprobe, recall)


def recall_at_1(found_ids: np.ndarray, found_scores: np.ndarray, exact_ids: np.ndarray,
                exact_scores: np.ndarray) -> float:
    """Share of queries whose top hit is the exact top hit (an exact tie in score counts as a hit)."""
    hits = (found_ids == exact_ids) | (found_scores >= exact_scores - 1e-6)
    return float(hits.mean())


def tune_nprobe(index, vectors: np.ndarray, params: IndexParams) -> tuple[int, float]:
    """Smallest power-of-two nprobe whose leave-one-out recall@1 reaches the target."""
    import faiss

    rng = np.random.default_rng(params.seed + 1)
    rows = np.sort(rng.choice(len(vectors), size=min(len(vectors), params.tune_queries), replace=False))
    queries = vectors[rows]
    exact_scores, exact_ids = faiss.knn(queries, vectors, 2, faiss.METRIC_INNER_PRODUCT)
    exact_ids, exact_scores = _drop_self(rows, exact_ids, exact_scores)
    nprobe, recall = 1, 0.0
    while True:
        index.nprobe = nprobe
        scores, ids = index.search(queries, 2)
        ids, scores = _drop_self(rows, ids, scores)
        recall = recall_at_1(ids, scores, exact_ids, exact_scores)
        if recall >= params.target_recall or nprobe >= min(params.max_nprobe, index.nlist):
            return nprobe, recall
        nprobe *= 2


def _drop_self(rows: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From k=2 answers, the best hit that is not the query's own row."""
    first_is_self = ids[:, 0] == rows
    pick = np.where(first_is_self, 1, 0)
    take = np.arange(len(rows))
    return ids[take, pick], scores[take, pick]
