"""`synthcat bench index`: build and query time and recall of the embedding index, by size.

The index under test is the one the gates use (`pipeline.vector_index.build_index`, the same
defaults). For each size N: build it over N reference embeddings, answer `queries` top-1
queries, and compare with exact search (brute force, `faiss.knn`) on the first
`exact_queries` of them for recall@1. Then report how build and query time grow with N.

Data: synthetic, because the figure must not depend on a model or a download.
- `clustered` (default): a mixture of `centres` Gaussian clusters on the unit sphere with
  uneven cluster sizes and spreads, L2-normalised. Real CLIP image embeddings are like this:
  products, scenes and styles form clusters, so a query has a neighbourhood to find.
- `uniform`: uniform on the sphere. In 512 dimensions every vector is nearly orthogonal to
  every other one, there is no neighbour structure, and every approximate index degrades to
  scanning a large part of the data: the worst case, reported for honesty, not as the target.
"""

from __future__ import annotations

import os
import time

import numpy as np

from pipeline.vector_index import IndexParams, build_index, recall_at_1

CHUNK = 100_000  # generate in chunks: no float64 temporaries of the whole set


class Mixture:
    """A fixed mixture of clusters on the unit sphere; samples are L2-normalised float32 rows.

    A sample is a centre (chosen with uneven, log-normal popularity) plus isotropic Gaussian
    noise of norm 0.5-1.0, normalised: cosine to its centre 0.7-0.9, to another cluster's
    members about 0, and a query's nearest neighbour at cosine ~0.7 (median, 1M points) —
    loose neighbourhoods, like CLIP embeddings of varied product photos.
    """

    def __init__(self, dim: int, centres: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.centres = rng.standard_normal((centres, dim), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        weights = rng.lognormal(0.0, 1.0, centres)   # some clusters are much more popular
        self.weights = weights / weights.sum()

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, CHUNK):
            m = min(CHUNK, n - start)
            which = rng.choice(len(self.weights), size=m, p=self.weights)
            spread = rng.uniform(0.5, 1.0, (m, 1)).astype(np.float32) / np.sqrt(self.dim)
            block = self.centres[which] + spread * rng.standard_normal((m, self.dim), dtype=np.float32)
            out[start:start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
        return out


def uniform_sphere(n: int, dim: int, rng: np.random.Generator) -> np.ndarray:
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        block = rng.standard_normal((min(CHUNK, n - start), dim), dtype=np.float32)
        out[start:start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def measure(size: int, *, data: str = "clustered", dim: int = 512, queries: int = 100_000,
            exact_queries: int = 1000, centres: int = 4096, seed: int = 0,
            params: IndexParams = IndexParams()) -> dict:
    """Build, query and recall figures of the index over `size` synthetic embeddings."""
    import faiss

    rng = np.random.default_rng(seed + size)
    tick = time.perf_counter()
    if data == "clustered":
        mixture = Mixture(dim, centres, seed)
        base, query = mixture.sample(size, rng), mixture.sample(queries, rng)
    elif data == "uniform":
        base, query = uniform_sphere(size, dim, rng), uniform_sphere(queries, dim, rng)
    else:
        raise ValueError(f"unknown data {data!r}; use clustered or uniform")
    generate_s = time.perf_counter() - tick

    tick, cpu = time.perf_counter(), time.process_time()
    built = build_index(base, params)
    build_s, build_cpu_s = time.perf_counter() - tick, time.process_time() - cpu
    tick, cpu = time.perf_counter(), time.process_time()
    scores, ids = built.search(query, 1)
    query_s, query_cpu_s = time.perf_counter() - tick, time.process_time() - cpu

    subset = min(exact_queries, queries)
    tick = time.perf_counter()
    exact_scores, exact_ids = faiss.knn(query[:subset], base, 1, faiss.METRIC_INNER_PRODUCT)
    exact_s = time.perf_counter() - tick
    recall = recall_at_1(ids[:subset, 0], scores[:subset, 0], exact_ids[:, 0], exact_scores[:, 0])
    nn_cosine = np.percentile(exact_scores[:, 0], [10, 50, 90]).round(3).tolist()
    return {"size": size, "data": data, "dim": dim, "queries": queries, **built.describe(),
            "build_s": build_s, "query_s": query_s, "queries_per_s": queries / query_s,
            # CPU seconds of this process: on a shared machine, wall time / (CPU time / threads)
            # shows how much of the wall time went to waiting for a core
            "build_cpu_s": build_cpu_s, "query_cpu_s": query_cpu_s,
            "recall_at_1": recall, "recall_queries": subset, "nn_cosine_p10_p50_p90": nn_cosine,
            "exact_s_for_recall_queries": exact_s, "generate_s": generate_s}


def run_index_bench(sizes: list[int], *, data: str = "clustered", dim: int = 512, queries: int = 100_000,
                    exact_queries: int = 1000, centres: int = 4096) -> dict:
    """`measure` for every size, plus how build and query time grow between consecutive sizes."""
    import faiss

    results = [measure(n, data=data, dim=dim, queries=queries, exact_queries=exact_queries, centres=centres)
               for n in sorted(sizes)]
    growth = [{"from": a["size"], "to": b["size"], "size_ratio": b["size"] / a["size"],
               "build_ratio": b["build_s"] / a["build_s"], "query_ratio": b["query_s"] / a["query_s"]}
              for a, b in zip(results, results[1:])]
    return {"benchmark": "index", "data": data, "centres": centres if data == "clustered" else None,
            "faiss": faiss.__version__, "threads": faiss.omp_get_max_threads(), "cpus": os.cpu_count(),
            "params": IndexParams().__dict__, "results": results, "growth": growth}
