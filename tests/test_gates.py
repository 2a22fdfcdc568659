"""Gates on hand-made rows: sanity, perceptual and semantic duplicates, history, the keep rule."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import imagehash
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.consolidate import latest_attempts, plan_retries
from pipeline.identity import seed_for
from pipeline.schema import ITEM_SCHEMA, OUTPUT_SCHEMA, SHARD_SCHEMA, conform
from pipeline.stages.dedupe import find_duplicates
from pipeline.stages.gate import GateSettings, apply_gates

NOW = datetime(2026, 11, 26, tzinfo=timezone.utc)


def _image(pixels: np.ndarray) -> dict:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
    return {"image": {"bytes": data, "path": "x.png"}, "image_sha256": hashlib.sha256(data).hexdigest(),
            "image_phash": str(imagehash.phash(Image.fromarray(pixels))),
            "pixel_mean": float(pixels.mean()), "pixel_std": float(pixels.std())}


def _noise(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def _rows(images: list[np.ndarray], embeddings=None) -> pa.Table:
    rows = []
    for i, pixels in enumerate(images):
        emb = np.zeros(8, np.float32)
        emb[i % 8] = 1.0
        rows.append({"item_id": f"item{i:02d}", "sku": f"SKU{i:02d}", "market": "en-US", "kind": "campaign",
                     "variant": 0, "format": "1:1", "attempt": 0, "clip_score": 0.3,
                     "clip_embedding": (embeddings[i] if embeddings is not None else emb).tolist(),
                     **_image(pixels)})
    return conform(pa.Table.from_pylist(rows), SHARD_SCHEMA)


def test_sanity_catches_black_and_blank_images():
    black = np.zeros((64, 64, 3), np.uint8)
    blank = np.full((64, 64, 3), 200, np.uint8)
    result = apply_gates(_rows([black, blank, _noise(1)]), GateSettings(max_phash_distance=None), created_at=NOW)
    reasons = {r["item_id"]: r["gate_reasons"] for r in result.rejected.to_pylist()}
    assert reasons["item00"][0].startswith("sanity: black image")
    assert reasons["item01"][0].startswith("sanity: blank image")
    assert result.accepted.column("item_id").to_pylist() == ["item02"]
    assert result.accepted.schema == OUTPUT_SCHEMA


def test_perceptual_duplicate_with_different_bytes():
    base = _noise(2)
    touched = base.copy()
    touched[0, 0] = 255 - touched[0, 0]  # other bytes, same picture
    result = apply_gates(_rows([base, touched, _noise(3)]), GateSettings(), created_at=NOW)
    (rejected,) = result.rejected.to_pylist()
    assert rejected["item_id"] == "item01" and rejected["dup_reason"] == "perceptual"
    assert rejected["dup_group"] == "item00" and rejected["dup_similarity"] <= 10
    kept = {r["item_id"]: r for r in result.accepted.to_pylist()}
    assert kept["item00"]["dup_group"] == "item00" and kept["item02"]["dup_group"] is None
    # with the perceptual check off, both pass
    assert apply_gates(_rows([base, touched]), GateSettings(max_phash_distance=None), created_at=NOW).rejected.num_rows == 0


def test_semantic_duplicates_by_embedding_cosine():
    e = np.eye(8, dtype=np.float32)
    near = (e[0] + 0.1 * e[1]) / np.linalg.norm(e[0] + 0.1 * e[1])  # cosine 0.995 with e[0]
    embeddings = np.stack([e[0], near, e[2]])
    table = _rows([_noise(4), _noise(5), _noise(6)], embeddings)
    result = apply_gates(table, GateSettings(min_semantic_cosine=0.95), created_at=NOW)
    (rejected,) = result.rejected.to_pylist()
    assert rejected["item_id"] == "item01" and rejected["dup_reason"] == "semantic"
    assert rejected["dup_similarity"] == pytest.approx(0.995, abs=1e-3)
    assert apply_gates(table, GateSettings(min_semantic_cosine=None), created_at=NOW).rejected.num_rows == 0


def test_history_rows_are_compared_but_never_output():
    history_images, run_images = [_noise(7)], [_noise(7), _noise(8)]
    history = _rows(history_images).select(["item_id", "image_sha256", "image_phash", "clip_embedding"])
    history = history.set_column(0, "item_id", pa.array(["published01"]))
    result = apply_gates(_rows(run_images), GateSettings(), created_at=NOW, history=history)
    (rejected,) = result.rejected.to_pylist()
    assert rejected["dup_group"] == "published01" and rejected["dup_reason"] == "exact"
    assert result.accepted.column("item_id").to_pylist() == ["item01"]


def test_keep_rule_never_rejects_for_a_rejected_row():
    # 0 ~ 1 and 1 ~ 2 but 0 !~ 2: 1 is a duplicate of 0; 2 is kept (its only match was rejected)
    e = np.eye(8, dtype=np.float32)
    v1 = (e[0] + e[1]) / np.sqrt(2)
    embeddings = np.stack([e[0], v1, e[1]])
    duplicates = find_duplicates(["a", "b", "c"], ["1", "2", "3"], ["0" * 16] * 3, embeddings, history=0,
                                 exact=True, max_phash_distance=None, min_semantic_cosine=0.7)
    assert duplicates[0] is None and duplicates[1].kept_id == "a" and duplicates[2] is None


def test_a_row_another_gate_rejected_is_never_kept_so_its_copy_is_kept_instead():
    base = _noise(2)
    touched = base.copy()
    touched[0, 0] = 255 - touched[0, 0]  # the same picture: a perceptual copy
    table = _rows([base, touched])
    table = table.set_column(table.schema.get_field_index("clip_score"), "clip_score",
                             pa.array([0.10, 0.35], pa.float32()))
    result = apply_gates(table, GateSettings(min_clip_score=0.2), created_at=NOW)
    assert result.accepted.column("item_id").to_pylist() == ["item01"]
    (rejected,) = result.rejected.to_pylist()
    assert rejected["item_id"] == "item00" and rejected["gate_reasons"] == ["clip_score: 0.1000 < 0.2000"]
    assert result.accepted.column("dup_group").to_pylist() == [None]  # no group named after a reject


def test_a_missing_embedding_leaves_the_semantic_check_on_for_every_other_row():
    e = np.eye(8, dtype=np.float32)
    table = _rows([_noise(1), _noise(2), _noise(3)], np.stack([e[0], e[0], e[2]]))
    settings = GateSettings(max_phash_distance=None, min_semantic_cosine=0.95)
    # a published file without embeddings (an older layout): compared by hash, not by embedding
    history = pa.table({"item_id": ["old0"], "image_sha256": ["0" * 64], "image_phash": ["0" * 16],
                        "clip_embedding": pa.array([None], pa.list_(pa.float32()))})
    result = apply_gates(table, settings, created_at=NOW, history=history)
    assert result.rejected.column("item_id").to_pylist() == ["item01"]
    # a run row without one is rejected (nothing clears it of being a copy); the others are still compared
    column = table.schema.get_field_index("clip_embedding")
    table = table.set_column(column, "clip_embedding", pa.array([e[0], e[0], None], pa.list_(pa.float32())))
    reasons = {r["item_id"]: r["gate_reasons"] for r in apply_gates(table, settings, created_at=NOW).rejected.to_pylist()}
    assert reasons == {"item01": ["duplicate: semantic copy of item00"], "item02": ["clip_embedding: missing"]}
    # one of another length (a row of another scorer's) or with a NaN is missing too, not a crash
    table = table.set_column(column, "clip_embedding", pa.array([e[0], e[0], e[2][:4]], pa.list_(pa.float32())))
    reasons = {r["item_id"]: r["gate_reasons"] for r in apply_gates(table, settings, created_at=NOW).rejected.to_pylist()}
    assert reasons == {"item01": ["duplicate: semantic copy of item00"], "item02": ["clip_embedding: missing"]}
    nan = e[2].copy()
    nan[5] = np.nan
    table = table.set_column(column, "clip_embedding", pa.array([e[0], e[0], nan], pa.list_(pa.float32())))
    reasons = {r["item_id"]: r["gate_reasons"] for r in apply_gates(table, settings, created_at=NOW).rejected.to_pylist()}
    assert reasons == {"item01": ["duplicate: semantic copy of item00"], "item02": ["clip_embedding: missing"]}


def test_nan_scores_and_pixel_statistics_are_rejected_not_passed():
    table = _rows([_noise(1), _noise(2), _noise(3)])
    table = table.set_column(table.schema.get_field_index("clip_score"), "clip_score",
                             pa.array([float("nan"), 0.3, 0.3], pa.float32()))
    table = table.set_column(table.schema.get_field_index("pixel_mean"), "pixel_mean",
                             pa.array([120.0, float("nan"), 120.0], table.schema.field("pixel_mean").type))
    result = apply_gates(table, GateSettings(min_clip_score=0.2, max_phash_distance=None), created_at=NOW)
    reasons = {r["item_id"]: r["gate_reasons"] for r in result.rejected.to_pylist()}
    assert reasons == {"item00": ["clip_score: missing"], "item01": ["sanity: no pixel statistics"]}
    assert result.accepted.column("item_id").to_pylist() == ["item02"]


def test_retries_take_the_next_attempt_and_seed():
    plan = pa.Table.from_pylist([
        {"item_id": f"i{i}", "shard_id": "shard-00000", "attempt": 0, "seed": seed_for(f"i{i}", 0),
         "prompt": "p", "width": 64, "height": 64} for i in range(3)], schema=ITEM_SCHEMA)
    failed = pa.Table.from_pylist([{"item_id": "i1", "attempt": 0}, {"item_id": "i2", "attempt": 0}])
    retries = plan_retries(plan, failed, shard_size=1)
    assert retries.column("item_id").to_pylist() == ["i1", "i2"]
    assert retries.column("attempt").to_pylist() == [1, 1]
    assert retries.column("seed").to_pylist() == [seed_for("i1", 1), seed_for("i2", 1)]
    assert retries.column("shard_id").to_pylist() == ["shard-a1-00000", "shard-a1-00001"]
    latest = latest_attempts(pa.concat_tables([plan, retries]))
    assert dict(zip(latest.column("item_id").to_pylist(), latest.column("attempt").to_pylist())) == \
        {"i0": 0, "i1": 1, "i2": 1}
    # a later round: i0 first fails now (a regenerated image made it a duplicate) and i1 fails
    # again; i0's retry gets a new shard, never one an earlier round already generated
    plan = pa.concat_tables([plan, retries])
    later = plan_retries(plan, pa.Table.from_pylist([{"item_id": "i0", "attempt": 0}, {"item_id": "i1", "attempt": 1}]),
                         shard_size=1)
    assert dict(zip(later.column("item_id").to_pylist(), later.column("shard_id").to_pylist())) == \
        {"i0": "shard-a1-00002", "i1": "shard-a2-00000"}
    assert not set(later.column("shard_id").to_pylist()) & set(plan.column("shard_id").to_pylist())


def test_retries_keep_each_generation_groups_rows_together():
    # every other failed item has a product photo: its retry needs a second, inpainting pass
    plan = pa.Table.from_pylist([
        {"item_id": f"i{i}", "shard_id": "shard-00000", "attempt": 0, "seed": seed_for(f"i{i}", 0), "prompt": "p",
         "width": 64, "height": 64, "product_image": "p.png" if i % 2 else None} for i in range(6)], schema=ITEM_SCHEMA)
    retries = plan_retries(plan, pa.Table.from_pylist([{"item_id": f"i{i}", "attempt": 0} for i in range(6)]),
                           shard_size=2)
    assert retries.column("item_id").to_pylist() == ["i0", "i2", "i4", "i1", "i3", "i5"]
    assert retries.column("shard_id").to_pylist() == [f"shard-a1-0000{k // 2}" for k in range(6)]
    assert retries.column("seed").to_pylist() == [seed_for(f"i{i}", 1) for i in (0, 2, 4, 1, 3, 5)]


def test_latest_attempts_keeps_each_items_highest_attempt():
    rows = pa.table({"item_id": ["i2", "i0", "i1", "i2", "i0"], "attempt": [0, 1, 0, 2, 0],
                     "pixels": [b"a", b"b", b"c", b"d", b"e"]})
    latest = latest_attempts(rows)
    assert latest.column("item_id").to_pylist() == ["i0", "i1", "i2"]  # the rows' own order
    assert latest.column("attempt").to_pylist() == [1, 0, 2]
    assert latest.column("pixels").to_pylist() == [b"b", b"c", b"d"]
    assert latest_attempts(latest) is latest  # one row per item already: nothing copied
    assert latest_attempts(rows.slice(0, 0)).num_rows == 0


def test_memorization_gate_against_a_built_reference_index(tmp_path, models_dir, capsys):
    from pipeline.cli import main
    from pipeline.errors import BadInputError
    from pipeline.reference import ReferenceIndex

    folder = tmp_path / "protected"
    folder.mkdir()
    images = [_noise(20 + i) for i in range(3)]
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / f"ref{i}.png")
    Image.fromarray(images[0]).save(folder / "copy-of-ref0.png")  # the same image twice: one entry
    assert main(["index", "build", str(folder), "--out", str(tmp_path / "index")]) == 0
    index = ReferenceIndex(tmp_path / "index", models_dir / "tiny" / "clip")
    assert len(index.ids) == 3 and index.description["images"] == 3

    stored = pq.read_table(tmp_path / "index" / index.files["parquet"])
    first = np.asarray(stored.column("embedding")[0].as_py(), np.float32)
    embeddings = np.stack([first, -first])  # a verbatim copy of a reference, and its opposite
    table = _rows([_noise(30), _noise(31)], embeddings)
    result = apply_gates(table, GateSettings(max_ref_similarity=0.99), created_at=NOW, reference=index)
    (rejected,) = result.rejected.to_pylist()
    assert rejected["gate_reasons"][0].startswith("memorization: cosine 1.000")
    assert rejected["ref_nearest_id"] == stored.column("ref_id")[0].as_py()
    (accepted,) = result.accepted.to_pylist()
    assert accepted["ref_similarity"] < 0.99 and accepted["ref_nearest_id"] is not None
    # without a threshold the evidence is recorded and nothing is rejected
    assert apply_gates(table, GateSettings(), created_at=NOW, reference=index).rejected.num_rows == 0
    with pytest.raises(BadInputError, match="rebuild the index"):
        ReferenceIndex(tmp_path / "index", models_dir / "vit-b-32" / "clip")
    # the scorer is matched by its weights wherever they lie, and other weights under the same
    # preset name (a retrained tiny) are refused: their cosines would compare unrelated spaces
    moved = tmp_path / "elsewhere" / "clip"
    shutil.copytree(models_dir / "tiny" / "clip", moved)
    assert ReferenceIndex.describe(tmp_path / "index", moved)["images"] == 3
    retrained = tmp_path / "tiny" / "clip"
    shutil.copytree(models_dir / "tiny" / "clip", retrained)
    weights = retrained / "open_clip_model.safetensors"
    changed = bytearray(weights.read_bytes())
    changed[-1] ^= 1
    weights.write_bytes(bytes(changed))
    with pytest.raises(BadInputError, match="other weights"):
        ReferenceIndex.describe(tmp_path / "index", retrained)
    # an index built before the weights were recorded: the preset's folder, and its embedding size
    description = json.loads((tmp_path / "index" / "index.json").read_text())
    del description["clip_sha256"]
    (tmp_path / "index" / "index.json").write_text(json.dumps({**description, "embedding_dim": 8}))
    with pytest.raises(BadInputError, match="8-d embeddings"):
        ReferenceIndex.describe(tmp_path / "index", models_dir / "tiny" / "clip")


def test_history_scored_by_another_clip_model_is_still_compared_by_bytes_and_phash(tmp_path):
    from pipeline.consolidate import published_history

    published = _rows([_noise(7), _noise(8)])
    published = published.set_column(published.schema.get_field_index("clip_model"), "clip_model",
                                     pa.array(["old-clip", "tiny-clip"]))
    partition = tmp_path / "data" / "run_date=2026-11-01" / "market=en-US"
    partition.mkdir(parents=True)
    pq.write_table(published.set_column(0, "item_id", pa.array(["old07", "new08"])), partition / "part-0.parquet")
    history = published_history(tmp_path, "2026-11-26", "tiny-clip")
    assert history.column("item_id").to_pylist() == ["old07", "new08"]
    assert [e is None for e in history.column("clip_embedding").to_pylist()] == [True, False]  # another space
    assert published_history(tmp_path, "2026-11-01", "tiny-clip").num_rows == 0  # the date being replaced
    run = _rows([_noise(7), _noise(9)], np.eye(8, dtype=np.float32)[[4, 5]])
    result = apply_gates(run, GateSettings(min_semantic_cosine=0.95), created_at=NOW, history=history)
    (rejected,) = result.rejected.to_pylist()
    assert (rejected["item_id"], rejected["dup_group"], rejected["dup_reason"]) == ("item00", "old07", "exact")


def test_a_run_resumed_under_other_gates_regenerates_retry_shards_left_with_other_items(tmp_path, models_dir,
                                                                                       monkeypatch):
    """A resume may gate otherwise (another `gates:` config) and so plan a retry shard of the same
    name for other items: the one on disk is not this round's and is made again, not taken as done."""
    import pipeline.steps.gate as gate_step
    from pipeline.config import parse_job_config
    from pipeline.copy_detection import thumbnail_png
    from pipeline.shards import ShardStore
    from pipeline.steps.prepare import prepare
    from pipeline.steps.state import RunRequest, read_state

    scores = {("AAA-1", 0): 0.40, ("BBB-2", 0): 0.30}  # every later attempt scores 0.50

    def generate(staging, shards=None, **_):  # the generator's part, without a model: each row's own image
        state, plan, store = read_state(staging), pq.read_table(staging / "plan.parquet"), ShardStore(staging / "shards")
        for shard in sorted(set(state["shards"] if shards is None else shards) - store.done()):
            rows = []
            for row in plan.filter(pc.equal(plan.column("shard_id"), shard)).to_pylist():
                pixels = _noise(row["seed"] % 2**32)
                embedding = np.random.default_rng(row["seed"] % 2**32).standard_normal(8)
                rows.append({**row, **_image(pixels), "clip_model": "tiny", "clip_embedding": list(embedding / np.linalg.norm(embedding)),
                             "clip_score": scores.get((row["sku"], row["attempt"]), 0.50), "copy_thumbnail": thumbnail_png(pixels),
                             "overlay_text": "x", "overlay_contrast": 10.0})
            store.write(shard, conform(pa.Table.from_pylist(rows), SHARD_SCHEMA))

    monkeypatch.setattr(gate_step, "generate_shards", generate)
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("sku,title,category\nAAA-1,Red mug,mug\nBBB-2,Blue bottle,bottle\n")

    def run(run_id: str, min_clip_score: float) -> list:
        config = parse_job_config({"dataset": "ds", "kinds": ["campaign"], "markets": ["en-US"], "executor": "local",
                                   "gates": {"min_clip_score": min_clip_score, "reference_index": "none"}})
        staging = Path(prepare(RunRequest(manifest=catalog, config=config, out=tmp_path / "out", run_date="2026-11-26",
                                          run_id=run_id, models_dir=models_dir, show_progress=False))["staging"])
        generate(staging)
        gate_step.consolidate(staging)
        accepted = pq.read_table(staging / "gated" / "accepted.parquet")
        return sorted(zip(*(accepted.column(c).to_pylist() for c in ("sku", "attempt"))))

    assert run("r1", 0.45) == [("AAA-1", 1), ("BBB-2", 1)]  # both retried once (shard-a1-00000)
    # resumed with a lower cut: only BBB-2 is retried, into a shard of the same name
    assert run("r1", 0.35) == run("r2", 0.35) == [("AAA-1", 0), ("BBB-2", 1)]  # as an undisturbed run


def test_weights_are_hashed_again_when_a_file_is_replaced_even_under_its_old_size_and_time(tmp_path):
    """The per-process hash cache keys on each file's size, times and inode: a same-size file
    written in place with its old modification time put back (`cp -p`, `rsync -a --inplace`)
    still changes its ctime, so it is hashed again."""
    import os

    from pipeline.models.presets import weights_sha256

    weights = tmp_path / "unet" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"a" * 4096)
    first, before = weights_sha256(tmp_path), weights.stat()
    assert weights_sha256(tmp_path) == first  # unchanged: the cached value
    with weights.open("r+b") as fh:  # in place: the same inode
        fh.write(b"b" * 4096)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))  # the old modification time back
    assert weights.stat().st_size == before.st_size and weights.stat().st_ino == before.st_ino
    assert weights_sha256(tmp_path) == hashlib.sha256(b"unet/model.safetensors\0" + b"b" * 4096).hexdigest() != first
