"""The embedding index behind the reference index and semantic dedupe: exact when small, IVF above."""

from __future__ import annotations

import json

import faiss
import numpy as np

from pipeline.bench_index import Mixture, uniform_sphere
from pipeline.vector_index import IndexParams, build_index, recall_at_1


def test_ivf_path_keeps_recall_against_exact_search():
    rng = np.random.default_rng(7)
    mixture = Mixture(dim=64, centres=200, seed=7)
    base, queries = mixture.sample(20_000, rng), mixture.sample(1000, rng)
    built = build_index(base, IndexParams(exact_max=5_000))
    assert built.kind == "ivf" and built.index.ntotal == 20_000
    assert 200 <= built.nlist <= 400 and 1 <= built.nprobe < built.nlist  # sqrt-ish lists, few probed
    scores, ids = built.search(queries, 1)
    exact_scores, exact_ids = faiss.knn(queries, base, 1, faiss.METRIC_INNER_PRODUCT)
    assert recall_at_1(ids[:, 0], scores[:, 0], exact_ids[:, 0], exact_scores[:, 0]) >= 0.95
    # range search (the semantic duplicate check) finds a planted near-copy through the IVF lists
    near = base[123] + 0.01 * rng.standard_normal(64).astype(np.float32)
    found = built.range_search((near / np.linalg.norm(near))[None], 0.95)[0]
    assert 123 in found and found[123] >= 0.95


def test_small_index_is_exact_and_tuning_reports_hard_data():
    rng = np.random.default_rng(8)
    base = uniform_sphere(3_000, 32, rng)
    flat = build_index(base)
    assert flat.kind == "flat" and flat.nprobe is None
    scores, ids = flat.search(base[:50], 1)
    assert (ids[:, 0] == np.arange(50)).all() and np.allclose(scores[:, 0], 1.0, atol=1e-5)
    # uniform data has no neighbour structure: tuning must raise nprobe to keep its recall target,
    hard = build_index(base, IndexParams(exact_max=1_000, target_recall=0.8))
    assert hard.kind == "ivf" and hard.nprobe >= 4 and hard.tuning_recall >= 0.8
    # and where that means scanning over a quarter of the lists, exact search is cheaper
    hopeless = build_index(base, IndexParams(exact_max=1_000, target_recall=0.99))
    assert hopeless.kind == "flat" and hopeless.nprobe > hopeless.nlist // 4
    assert (hopeless.search(base[:20], 1)[1][:, 0] == np.arange(20)).all()


def test_bench_index_command_writes_growth(tmp_path):
    from pipeline.cli import main

    target = tmp_path / "index.json"
    assert main(["bench", "index", "--json", str(target), "--sizes", "4000,2000", "--queries", "300",
                 "--dim", "32", "--centres", "50"]) == 0
    record = json.loads(target.read_text())
    assert [r["size"] for r in record["results"]] == [2000, 4000]
    assert all(r["recall_at_1"] == 1.0 and r["kind"] == "flat" for r in record["results"])  # small: exact
    assert record["growth"][0]["size_ratio"] == 2.0 and record["growth"][0]["build_ratio"] > 0


def test_range_search_never_returns_a_score_under_its_threshold():
    from pipeline.vector_index import build_index

    x = float(np.float32(0.95))  # 0.949999988..., just under 0.95
    index = build_index(np.array([[x, np.sqrt(1 - x * x)]], dtype=np.float32))
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    assert index.range_search(query, 0.95) == [{}]
    assert index.range_search(query, x) == [{0: x}]  # equality is in


def test_embedding_rows_reads_every_usable_row_from_arrow():
    import math

    import pyarrow as pa

    from pipeline.vector_index import embedding_rows

    rows = [[math.nan, 1.0, 1.0], [1.0, 2.0], None, [], [3.0, 4.0], [5.0, 6.0, 7.0], [8.0, math.nan]]
    column = pa.chunked_array([pa.array(rows[:3], pa.list_(pa.float32())), pa.array(rows[3:], pa.list_(pa.float32()))])
    vectors, present = embedding_rows(column)
    # the first usable row sets the size (a NaN row does not); null, empty, NaN and other sizes are missing
    assert present == [False, True, False, False, True, False, False]
    assert vectors.tolist() == [[0, 0], [1, 2], [0, 0], [0, 0], [3, 4], [0, 0], [0, 0]]
    assert embedding_rows(pa.array([None, []], pa.list_(pa.float32()))) == (None, [False, False])
