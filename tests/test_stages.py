"""Contract tests per stage, with the real tiny models: schema, empty input, determinism, batching."""

from __future__ import annotations

import hashlib
import io
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from conftest import EXAMPLE_CATALOG, EXAMPLE_JOB
from pipeline.config import JobConfig, load_job_config
from pipeline.executor import make_batches, run_stages
from pipeline.ingest import read_manifest
from pipeline.models.presets import resolve_model, resolve_scorer, weights_sha256
from pipeline.plan import format_size, generation_batches, generation_group, plan_items
from pipeline.schema import ENCODE_FIELDS, GENERATION_FIELDS, ITEM_SCHEMA, OUTPUT_SCHEMA, PRODUCT_SCHEMA, SCORE_FIELDS
from pipeline.stages.encode import EncodeStage
from pipeline.stages.gate import GateSettings, apply_gates
from pipeline.stages.generate import GenerateStage
from pipeline.stages.score import ScoreStage

PRODUCTS = pa.Table.from_pylist([
    {"line": 2, "sku": "MUG-1", "title": "Red mug", "category": "mug",
     "attributes": '{"color": "red", "capacity_ml": 350}', "markets": ["en-US", "de-DE"]},
    {"line": 3, "sku": "SNK-1", "title": "Blue sneaker", "category": "sneaker", "attributes": "{}", "markets": []},
], schema=PRODUCT_SCHEMA)


@pytest.fixture(scope="module")
def items() -> pa.Table:
    return plan_items(PRODUCTS, JobConfig(variants=2, markets=("ja-JP",), shard_size=3),
                      run_id="run-1", run_date="2026-11-26", width=64, height=64)


@pytest.fixture(scope="module")
def generate(models_dir) -> GenerateStage:
    model = resolve_model("tiny", models_dir)
    stage = GenerateStage(model.path, model.name, weights_sha256(model.path), model.pipeline_class,
                          steps=4, guidance_scale=7.5)
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def score(models_dir) -> ScoreStage:
    stage = ScoreStage(resolve_scorer("tiny", models_dir).path, "tiny")
    stage.setup()
    return stage


@pytest.fixture(scope="module")
def generated(items, generate) -> pa.Table:
    return generate(items)


def test_plan_expands_markets_kinds_variants_and_shards(items):
    assert items.schema == ITEM_SCHEMA
    # MUG-1 overrides markets (2 x 2 variants); SNK-1 takes the job's ja-JP (1 x 2 variants)
    assert items.num_rows == 6
    assert items.column("market").to_pylist() == ["en-US"] * 2 + ["de-DE"] * 2 + ["ja-JP"] * 2
    assert items.column("shard_id").to_pylist() == ["shard-00000"] * 3 + ["shard-00001"] * 3
    assert len(set(items.column("item_id").to_pylist())) == 6
    assert len(set(items.column("seed").to_pylist())) == 6
    prompt = items.column("prompt")[0].as_py()
    assert prompt.startswith("Red mug, mug, red, product photo") and "United States" in prompt
    assert "350" not in prompt


def test_plan_is_deterministic_and_ids_depend_on_run_date(items):
    again = plan_items(PRODUCTS, JobConfig(variants=2, markets=("ja-JP",), shard_size=3),
                       run_id="run-other", run_date="2026-11-26", width=64, height=64)
    assert again.column("item_id").to_pylist() == items.column("item_id").to_pylist()
    assert again.column("seed").to_pylist() == items.column("seed").to_pylist()
    later = plan_items(PRODUCTS, JobConfig(variants=2, markets=("ja-JP",)),
                       run_id="run-1", run_date="2026-11-27", width=64, height=64)
    assert set(later.column("item_id").to_pylist()).isdisjoint(items.column("item_id").to_pylist())


def test_the_plan_puts_the_rows_of_each_generation_group_together(models_dir, monkeypatch):
    """Rows that share a pipeline call (guidance, brand adapter, size) and the product-photo rows
    (a second, inpainting pass) sit together, in catalog order within their group; ids and seeds
    do not change, and far fewer batches hold a few photo rows each."""
    config = load_job_config(EXAMPLE_JOB).model_copy(update={"formats": ("1:1", "4:5"), "variants": 2})
    config = config.model_copy(update={"images": config.images.model_copy(
        update={"roots": (*config.images.roots, str(EXAMPLE_CATALOG.parent))})})
    products = read_manifest(EXAMPLE_CATALOG, config).products

    def plan():
        return plan_items(products, config, run_id="r", run_date="2026-11-26", width=64, height=64,
                          models_dir=models_dir)

    grouped = plan()
    monkeypatch.setattr("pipeline.plan.in_generation_groups", lambda rows: rows)
    natural = plan()
    rows = grouped.to_pylist()
    groups = [generation_group(row) for row in rows]
    # every kind of call is there: both sizes, a brand adapter and none, training's guidance, photos
    assert {(g[4], g[5]) for g in groups} == {(64, 64), (56, 72)}
    assert {g[1] is None for g in groups} == {g[0] is None for g in groups} == {g[6] for g in groups} == {True, False}
    runs = [g for k, g in enumerate(groups) if k == 0 or g != groups[k - 1]]
    assert len(runs) == len(set(groups)) >= 6  # each group in one run of rows
    by_id = {row["item_id"]: row for row in natural.to_pylist()}
    assert len(by_id) == len(rows) and all(by_id[r["item_id"]]["seed"] == r["seed"] for r in rows)
    for group in set(groups):  # catalog order within a group
        assert [r["item_id"] for r in rows if generation_group(r) == group] == \
            [i for i, r in by_id.items() if generation_group(r) == group]
    shards = grouped.column("shard_id").to_pylist()
    assert shards == sorted(shards) and len(set(shards)) == -(-len(rows) // config.shard_size)

    def photo_batches(plan):
        return sum(any(b.column("product_image").to_pylist()) for b in make_batches(plan, 16))

    photo_rows = sum(g[6] for g in groups)
    assert photo_batches(grouped) <= photo_rows // 16 + 2 * len({g for g in groups if g[6]})
    assert photo_batches(grouped) < photo_batches(natural) / 2


def test_generation_batches_never_span_a_shard_or_a_generation_group(models_dir):
    """The generate stage's batches: each within one shard and one generation group (product
    photo or not included), rows in plan order, and full but for a tail per group and shard, so a
    photo group's inpainting passes hold as many rows as the generation call."""
    config = load_job_config(EXAMPLE_JOB).model_copy(update={"formats": ("1:1", "4:5"), "variants": 2,
                                                             "shard_size": 64})
    config = config.model_copy(update={"images": config.images.model_copy(
        update={"roots": (*config.images.roots, str(EXAMPLE_CATALOG.parent))})})
    plan = plan_items(read_manifest(EXAMPLE_CATALOG, config).products, config, run_id="r",
                      run_date="2026-11-26", width=64, height=64, models_dir=models_dir)
    batches = generation_batches(plan, 12)
    assert pa.concat_tables(batches).column("item_id").to_pylist() == plan.column("item_id").to_pylist()
    keys = [[(r["shard_id"], generation_group(r)) for r in b.to_pylist()] for b in batches]
    assert all(len(set(k)) == 1 for k in keys)
    tails = [k[0] for k in keys if len(k) < 12]
    assert len(tails) == len(set(tails))  # one short batch at most per group within a shard
    # cut by shard alone, some batch holds photo rows and others: its inpainting pass is partial
    assert any(0 < sum(bool(p) for p in b.column("product_image").to_pylist()) < b.num_rows
               for b in make_batches(plan, 12))


@pytest.mark.parametrize("fmt, aspect", [("1:1", 1.0), ("4:5", 0.8), ("9:16", 0.5625), ("1.91:1", 1.91)])
def test_format_sizes_are_multiples_of_8_near_the_aspect(fmt, aspect):
    width, height = format_size(fmt, 512, 512)
    assert width % 8 == 0 and height % 8 == 0
    assert abs(width / height - aspect) / aspect < 0.03
    assert abs(width * height - 512 * 512) / (512 * 512) < 0.05


def test_generate_adds_pixels_and_lineage_without_mutating_input(items, generated):
    assert generated.num_rows == items.num_rows
    assert generated.schema.names == ITEM_SCHEMA.names + [f.name for f in GENERATION_FIELDS]
    assert items.schema == ITEM_SCHEMA  # input untouched
    raw = generated.column("pixels")[0].as_py()
    assert len(raw) == 64 * 64 * 3
    assert set(generated.column("model_sha256").to_pylist()) == {weights_sha256(resolve_model_path(generated))}
    assert generated.column("scheduler")[0].as_py() == "DPMSolverMultistepScheduler"


def resolve_model_path(generated):
    from pipeline.models.presets import DEFAULT_MODELS_DIR

    return DEFAULT_MODELS_DIR / generated.column("model_id")[0].as_py() / "diffusion"


def _pixels(table: pa.Table) -> np.ndarray:
    return np.stack([np.frombuffer(b, np.uint8) for b in table.column("pixels").to_pylist()]).astype(int)


def test_generate_is_deterministic_and_independent_of_batching(items, generate, generated):
    # the same batch again: bit-identical
    assert generate(items).column("pixels").to_pylist() == generated.column("pixels").to_pylist()
    # other batch compositions: each image depends on its own seed only (the last float bit of
    # batched kernels may move a rare pixel by one level, hence shard-aligned batches in runs)
    split = pa.concat_tables([generate(items.slice(0, 2)), generate(items.slice(2))])
    difference = np.abs(_pixels(split) - _pixels(generated))
    assert difference.max() <= 2 and difference.mean() < 0.01
    # a different seed gives a different image
    pixels = generated.column("pixels").to_pylist()
    assert len(set(pixels)) == len(pixels)


def test_generate_empty_input(items, generate):
    out = generate(items.slice(0, 0))
    assert out.num_rows == 0 and "pixels" in out.column_names


def test_score_is_a_cosine_and_keeps_normalised_embeddings(generated, score):
    scored = score(generated)
    assert scored.schema.names[-3:] == [f.name for f in SCORE_FIELDS]
    scores = np.array(scored.column("clip_score").to_pylist())
    assert np.all((scores >= -1) & (scores <= 1))
    embeddings = np.array(scored.column("clip_embedding").to_pylist())
    assert np.allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-4)
    split = pa.concat_tables([score(generated.slice(0, 1)), score(generated.slice(1))])
    assert np.allclose(split.column("clip_score").to_pylist(), scores, atol=1e-5)
    # pixels read in place from Arrow's buffers: a column of sliced chunks (as Ray hands them over)
    chunked = pa.concat_tables([generated.slice(1), generated.slice(0, 1)])
    assert chunked.column("pixels").num_chunks == 2
    rescored = score(chunked).column("clip_score").to_pylist()
    assert np.allclose(rescored, np.r_[scores[1:], scores[:1]], atol=1e-5)
    assert score(generated.slice(0, 0)).num_rows == 0


@pytest.mark.parametrize("large", [False, True])
def test_embedding_columns_come_from_the_matrix_buffer_row_by_row(large):
    from pipeline.stages._columns import list_column

    type = pa.large_list(pa.float32()) if large else pa.list_(pa.float32())
    matrix = np.random.default_rng(0).random((6, 5), dtype=np.float32)
    for m in (matrix, matrix.T, matrix[::2]):  # contiguous, transposed, strided
        column = list_column(m, type)
        assert column.type == type and column.to_pylist() == [row.tolist() for row in m]
    assert len(list_column(np.zeros((0, 0), np.float32), type)) == 0


@pytest.mark.parametrize("large", [False, True])
def test_pixel_columns_move_between_numpy_and_arrow_without_a_copy_per_row(large):
    from pipeline.stages._columns import binary_column, binary_views

    rng = np.random.default_rng(0)
    rows = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(4, 4, 3), (2, 6, 3), (4, 4, 3), (1, 1, 3)]]
    kind = pa.large_binary() if large else pa.binary()
    column = binary_column(rows, kind)
    column.validate(full=True)
    assert column.equals(pa.array([row.tobytes() for row in rows], kind))  # what a copy per row gave
    chunked = pa.chunked_array([column.slice(1, 2), column.slice(0, 1), column.slice(3)])
    views = binary_views(chunked)
    assert [v.tobytes() for v in views] == [rows[k].tobytes() for k in (1, 2, 0, 3)]
    data = column.buffers()[2]
    assert all(data.address <= v.ctypes.data < data.address + data.size for v in views)  # Arrow's own bytes
    assert binary_column([], kind).equals(pa.array([], kind)) and binary_views(pa.array([], kind)) == []
    # a batch's images in order (the generator's decoded array, its padding copies cut) are used in place
    batch = rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8)
    in_place = binary_column(list(batch[:4]), kind)
    assert in_place.buffers()[2].address == batch.ctypes.data and in_place.buffers()[2].size == batch[:4].nbytes
    assert [v.tobytes() for v in binary_views(in_place)] == [image.tobytes() for image in batch[:4]]
    shuffled = binary_column([batch[2], batch[0]], kind)  # out of order: copied, in the rows' order
    assert [v.tobytes() for v in binary_views(shuffled)] == [batch[2].tobytes(), batch[0].tobytes()]


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_encode_is_lossless_and_hashes_the_bytes(generated, fmt):
    encoded = EncodeStage(fmt)(generated)
    assert "pixels" not in encoded.column_names
    assert encoded.schema.names[-len(ENCODE_FIELDS) - 3:] == [f.name for f in ENCODE_FIELDS] + [
        "thumbnail", "copy_thumbnail", "image_nbytes"]
    image = encoded.column("image")[0].as_py()
    assert encoded.column("image_nbytes").to_pylist()[:1] == [len(image["bytes"])]
    assert image["path"].endswith(f".{fmt}")
    assert hashlib.sha256(image["bytes"]).hexdigest() == encoded.column("image_sha256")[0].as_py()
    decoded = Image.open(io.BytesIO(image["bytes"])).convert("RGB")
    assert decoded.tobytes() == generated.column("pixels")[0].as_py()


def test_encode_stores_the_report_thumbnail_of_the_same_pixels(generated):
    """The report's thumbnail is made from the encoded pixels, at the side the report shows the
    image: never enlarged (a 64 px image stays 64 px), a 512 px creative with copy at 320 px."""
    from pipeline.thumbnail import thumbnail_side

    encoded = EncodeStage()(generated)
    for raw, data, width, height in zip(generated.column("pixels").to_pylist(), encoded.column("thumbnail").to_pylist(),
                                        generated.column("width").to_pylist(), generated.column("height").to_pylist()):
        assert Image.open(io.BytesIO(data)).convert("RGB").tobytes() == raw  # 64 px: the image itself
    big = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    row = generated.slice(0, 1)
    row = row.set_column(row.schema.get_field_index("pixels"), "pixels", pa.array([big.tobytes()], pa.binary()))
    for name, value in (("width", 512), ("height", 512)):
        row = row.set_column(row.schema.get_field_index(name), name, pa.array([value], pa.int32()))
    plain = EncodeStage()(row).column("thumbnail")[0].as_py()
    creative = EncodeStage()(row.append_column("overlay_text", pa.array(["Sale"]))).column("thumbnail")[0].as_py()
    assert Image.open(io.BytesIO(plain)).size == (thumbnail_side(False),) * 2 == (160, 160)
    assert Image.open(io.BytesIO(creative)).size == (thumbnail_side(True),) * 2 == (320, 320)
    assert Image.open(io.BytesIO(plain)).format == Image.open(io.BytesIO(creative)).format == "JPEG"  # shrunk


def test_png_compress_level_changes_bytes_not_pixels(generated):
    fast, small = (EncodeStage("png", png_compress_level=level)(generated) for level in (1, 9))
    for a, b, raw in zip(fast.column("image").to_pylist(), small.column("image").to_pylist(),
                         generated.column("pixels").to_pylist()):
        assert len(b["bytes"]) <= len(a["bytes"])
        for data in (a["bytes"], b["bytes"]):
            assert Image.open(io.BytesIO(data)).convert("RGB").tobytes() == raw
    assert fast.column("image_phash").to_pylist() == small.column("image_phash").to_pylist()


def test_gate_rejects_low_scores_and_exact_duplicates(generated, score):
    table = EncodeStage()(score(generated))
    # plant an exact duplicate: the last row gets the first row's image
    images = table.column("image").to_pylist()
    hashes = table.column("image_sha256").to_pylist()
    images[-1], hashes[-1] = images[0], hashes[0]
    table = table.set_column(table.schema.get_field_index("image"), "image",
                             pa.array(images, type=table.schema.field("image").type))
    table = table.set_column(table.schema.get_field_index("image_sha256"), "image_sha256", pa.array(hashes))
    now = datetime(2026, 11, 26, tzinfo=timezone.utc)
    result = apply_gates(table, GateSettings(min_clip_score=-1.0), created_at=now)
    assert result.accepted.schema == OUTPUT_SCHEMA
    assert result.rejected.num_rows == 1
    rejected = result.rejected.to_pylist()[0]
    kept_id = table.column("item_id")[0].as_py()
    assert rejected["item_id"] == table.column("item_id")[-1].as_py()
    assert rejected["gate_reasons"] == [f"duplicate: exact copy of {kept_id}"]
    assert rejected["dup_reason"] == "exact" and rejected["dup_group"] == kept_id
    kept = [r for r in result.accepted.to_pylist() if r["item_id"] == kept_id][0]
    assert kept["dup_group"] == kept_id and kept["dup_reason"] == "exact"
    # a threshold above every score rejects everything, each with its reason
    strict = apply_gates(table, GateSettings(min_clip_score=1.0, exact_duplicates=False, max_phash_distance=None),
                         created_at=now)
    assert strict.accepted.num_rows == 0
    assert all(r[0].startswith("clip_score: ") for r in strict.rejected.column("gate_reasons").to_pylist())
    assert strict.reasons() == {"clip_score": table.num_rows}


def test_ray_and_local_executors_give_the_same_images(items, models_dir, ray_session):
    model = resolve_model("tiny", models_dir)
    scorer = resolve_scorer("tiny", models_dir)

    def stages():
        return [GenerateStage(model.path, "tiny", "x", model.pipeline_class, 4, 7.5),
                ScoreStage(scorer.path, "tiny"), EncodeStage()]

    batches = make_batches(items, 2)
    assert [b.num_rows for b in batches] == [2, 1, 2, 1]  # never across a shard boundary
    local = pa.concat_tables(run_stages(stages(), batches, executor="local"))
    on_ray = pa.concat_tables(run_stages(stages(), batches, executor="ray")).sort_by("item_id")
    local = local.sort_by("item_id")
    assert on_ray.column("image_sha256").to_pylist() == local.column("image_sha256").to_pylist()
    assert np.allclose(on_ray.column("clip_score").to_pylist(), local.column("clip_score").to_pylist(), atol=1e-5)


def test_a_local_ray_started_by_synthcat_runs_its_workers_offline():
    """The local Ray's workers get the offline settings from the driver's environment (not a job
    runtime_env, which would keep them from reusing Ray's idle workers), even when the caller's
    environment had none."""
    import os
    import subprocess
    import sys

    code = ("import os, ray\nfrom pipeline.executor import init_ray\nassert init_ray(num_cpus=1)\n"
            "probe = ray.remote(lambda: [os.environ.get(k) for k in ('HF_HUB_OFFLINE', 'HF_DATASETS_OFFLINE')])\n"
            "print(ray.get(probe.remote()))\nray.shutdown()")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "['1', '1']"


def test_encode_and_gate_accept_empty_input(generated, score):
    empty = EncodeStage()(score(generated.slice(0, 0)))
    assert empty.num_rows == 0 and "image" in empty.column_names
    result = apply_gates(empty, GateSettings(min_clip_score=0.0, min_semantic_cosine=0.95),
                         created_at=datetime(2026, 11, 26, tzinfo=timezone.utc))
    assert result.accepted.num_rows == result.rejected.num_rows == 0
    assert result.accepted.schema == OUTPUT_SCHEMA and result.reasons() == {}


def test_cfg_gap_is_recorded_per_image_under_guidance_only(items, generate, generated, models_dir):
    gaps = np.array(generated.column("mem_cfg_gap").to_pylist(), dtype=float)
    assert np.all(gaps > 0)
    split = pa.concat_tables([generate(items.slice(0, 2)), generate(items.slice(2))])
    assert np.allclose(split.column("mem_cfg_gap").to_pylist(), gaps, rtol=1e-4)
    model = resolve_model("tiny", models_dir)
    unguided = GenerateStage(model.path, model.name, "x", model.pipeline_class, steps=2, guidance_scale=1.0)
    unguided.setup()
    assert unguided(items.slice(0, 2)).column("mem_cfg_gap").to_pylist() == [None, None]
