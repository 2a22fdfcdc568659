"""The memorization evaluation: its statistics, and a real run on the embedded model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.memorization import roc_auc, tpr_at_fpr


def test_auc_and_tpr_at_fpr_on_known_scores():
    assert roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert roc_auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert roc_auc(np.array([1.0]), np.array([1.0])) == 0.5
    negatives = np.arange(100, dtype=float)          # threshold: the 99th of 100 -> 99
    tpr, threshold = tpr_at_fpr(np.array([50.0, 99.5, 120.0]), negatives, 0.01)
    assert threshold == 99.0 and tpr == pytest.approx(2 / 3)
    assert (negatives > threshold).mean() <= 0.01


def test_eval_memorization_writes_its_figures(tmp_path, models_dir, capsys):
    target = tmp_path / "mem.json"
    assert main(["eval", "memorization", "--json", str(target), "--seeds", "2", "--ordinary", "12",
                 "--calibration", "12", "--steps", "4"]) == 0
    result = json.loads(target.read_text())
    assert result["n_planted"] == 10 and result["n_ordinary"] == 12 and result["n_calibration"] == 12
    assert 0.0 <= result["auc"] <= 1.0 and 0.0 <= result["tpr_at_1pct_fpr"] <= 1.0
    assert result["planted_median"] > 0 and result["ordinary_median"] > 0
    assert set(result["signals"]) == {"combined", "mem_cfg_gap", "ref_tile_l2", "ref_similarity"}
    calibration = result["calibration"]
    assert result["threshold_at_1pct_fpr"] == calibration["mem_cfg_gap"]["p99"] > calibration["mem_cfg_gap"]["mean"]
    assert 0.0 < calibration["ref_tile_l2"]["mean"] < 1.0   # every image compared with the protected set
    assert 0.0 <= result["gate"]["fpr"] <= 1.0


# --- the memorization gate: copy descriptor, tiled pixel L2, CFG gap ---------------------------------
def _png(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_tiled_l2_is_the_worst_tile():
    from pipeline.copy_detection import comparison_pixels, tiled_l2

    base = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    one_tile = base.copy()
    one_tile[:16, :16] = 255 - one_tile[:16, :16]          # 1 of 16 tiles changed
    a, b = comparison_pixels(_png(base)), comparison_pixels(one_tile)
    assert tiled_l2(a, comparison_pixels(base)) == 0.0
    whole_image_rms = float(np.sqrt(np.square(a - b).mean()))
    assert tiled_l2(a, b) > 3 * whole_image_rms              # a global L2 would call it a near copy
    against_two = tiled_l2(a[None], np.stack([b, a]))       # one image against k candidates
    assert against_two.shape == (2,) and against_two[1] == 0.0 < against_two[0]


def test_the_encode_stage_copy_thumbnail_is_what_the_pixel_check_compares():
    """The gate reads the 64 px `copy_thumbnail` the encode stage made instead of decoding each
    full-size image again; both give the same pixels, so the same tiled L2."""
    import pyarrow as pa

    from pipeline.copy_detection import comparison_pixels
    from pipeline.stages.encode import EncodeStage
    from pipeline.stages.memorization_gate import _comparison_images

    pixels = np.random.default_rng(3).integers(0, 256, (512, 384, 3), dtype=np.uint8)
    table = pa.table({"item_id": ["a"], "pixels": [pixels.tobytes()], "width": [384], "height": [512]})
    encoded = EncodeStage()(table)
    small, image = encoded.column("copy_thumbnail")[0].as_py(), encoded.column("image")[0].as_py()["bytes"]
    assert np.array_equal(comparison_pixels(small), comparison_pixels(image))
    assert _comparison_images(encoded) == [small]
    assert _comparison_images(encoded.drop_columns(["copy_thumbnail"])) == [image]  # shards made before it


@pytest.mark.parametrize("chunk_rows", [1024, 3])  # one pass, or two: the same evidence
def test_memorization_gate_flags_pixel_copies_and_cfg_gaps(tmp_path, models_dir, monkeypatch, chunk_rows):
    import hashlib
    from datetime import datetime, timezone

    import pyarrow as pa
    from PIL import Image

    from pipeline.reference import ReferenceIndex, build_reference_index
    from pipeline.schema import SHARD_SCHEMA, conform
    from pipeline.stages import memorization_gate
    from pipeline.stages.gate import GateSettings, apply_gates

    monkeypatch.setattr(memorization_gate, "CHUNK_ROWS", chunk_rows)
    rng = np.random.default_rng(5)
    refs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    (tmp_path / "refs").mkdir()
    for i, pixels in enumerate(refs):
        Image.fromarray(pixels).save(tmp_path / "refs" / f"{i}.png")
    description = build_reference_index(tmp_path / "refs", tmp_path / "index", models_dir / "tiny" / "clip")
    assert description["search"]["kind"] == "flat" and (tmp_path / "index" / description["files"]["faiss"]).is_file()
    index = ReferenceIndex(tmp_path / "index", models_dir / "tiny" / "clip")

    edited = refs[1].copy()
    edited[16:32, 16:32] = 0                                  # one tile blacked out: not verbatim
    # i4: a copy whose embedding was never measured; i5: a gap that is NaN
    images = [refs[1], edited, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), refs[2], refs[0],
              rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)]
    embedding = np.zeros(64, np.float32)
    embedding[0] = 1.0                                        # the descriptor sees nothing special
    table = conform(pa.Table.from_pylist([
        {"item_id": f"i{k}", "sku": f"S{k}", "market": "en-US", "kind": "training", "variant": 0,
         "format": "1:1", "attempt": 0, "clip_score": 0.5, "clip_embedding": None if k == 4 else embedding.tolist(),
         "image": {"bytes": _png(p), "path": None}, "image_sha256": str(k), "image_phash": f"{k:016x}",
         "pixel_mean": 120.0, "pixel_std": 70.0, "mem_cfg_gap": gap}
        for k, (p, gap) in enumerate(zip(images, [1.0, 1.0, 1.0, 50.0, 1.0, float("nan")]))]), SHARD_SCHEMA)
    settings = GateSettings(max_phash_distance=None, max_ref_tile_l2=0.1, max_mem_cfg_gap=20.0)
    result = apply_gates(table, settings, created_at=datetime.now(timezone.utc), reference=index)
    rows = {r["item_id"]: r for r in result.accepted.to_pylist() + result.rejected.to_pylist()}
    memorized = {k: [x for x in r["gate_reasons"] if x.startswith("memorization:")] for k, r in rows.items()}
    assert rows["i0"]["ref_tile_l2"] == 0.0 and "near-verbatim copy" in memorized["i0"][0]
    ref1 = hashlib.sha256((tmp_path / "refs" / "1.png").read_bytes()).hexdigest()
    assert f"reference {ref1[:12]}" in memorized["i0"][0]
    assert rows["i1"]["ref_tile_l2"] > 0.1 and memorized["i1"] == []
    assert rows["i2"]["ref_tile_l2"] > 0.2 and memorized["i2"] == []
    assert rows["i3"]["ref_tile_l2"] == 0.0 and len(memorized["i3"]) == 2 and "cfg gap 50.00" in memorized["i3"][1]
    # nothing measured, nothing claimed: no nearest reference or distance for a row without an embedding
    assert rows["i4"]["ref_nearest_id"] is rows["i4"]["ref_similarity"] is rows["i4"]["ref_tile_l2"] is None
    assert memorized["i4"] == [] and "clip_embedding: missing" in rows["i4"]["gate_reasons"]
    assert memorized["i5"] == ["memorization: cfg gap not measurable (NaN)"]  # NaN never clears a threshold
    assert all(r["ref_nearest_id"] in index.ids and r["ref_similarity"] is not None for k, r in rows.items() if k != "i4")
    # no thresholds: every signal recorded, nothing rejected for memorization
    quiet = apply_gates(table, GateSettings(max_phash_distance=None), created_at=datetime.now(timezone.utc),
                        reference=index)
    assert not any(x.startswith("memorization:") for r in quiet.rejected.to_pylist() for x in r["gate_reasons"])
    assert quiet.accepted.num_rows + quiet.rejected.num_rows == 6


# --- the default reference: the tiny preset's own training set -------------------------------------
@pytest.fixture(scope="session")
def training_reference(models_dir):
    """The tiny training set's index, as a run resolves it: built once (about a minute on 2 CPU
    cores) under models/tiny-reference/ and reused by every later session and run."""
    from pipeline.config import Gates
    from pipeline.consolidate import resolve_reference

    return resolve_reference(Gates(), "tiny", models_dir, models_dir / "tiny" / "clip")


def test_a_run_without_reference_index_uses_the_tiny_training_set(training_reference, models_dir):
    from pipeline.config import Gates
    from pipeline.consolidate import resolve_reference
    from pipeline.models.training_reference import training_recipe, training_reference_dir

    recipe = training_recipe("tiny", models_dir)
    assert recipe == {"seed": 20261126, "n_ordinary": 16000, "hero_copies": 400, "size": 64}
    assert training_reference["origin"] == "tiny training set"
    assert training_reference["images"] == 16005  # 16,000 renders + the 5 heroes (400 copies: one entry each)
    assert training_reference["path"] == str(training_reference_dir("tiny", models_dir, models_dir / "tiny" / "clip"))
    assert len(training_reference["sha256"]) == 64
    assert not list(Path(training_reference["path"]).parent.glob(".*.tmp-*"))  # no half-built index left
    # opting out: no reference at all; an explicit path wins over the default; presets without one: none
    assert resolve_reference(Gates(reference_index="none"), "tiny", models_dir, models_dir / "tiny" / "clip") is None
    explicit = resolve_reference(Gates(reference_index=training_reference["path"]), "tiny", models_dir,
                                 models_dir / "tiny" / "clip")
    assert explicit["origin"] == "job" and explicit["sha256"] == training_reference["sha256"]
    assert training_reference_dir("sd15", models_dir, models_dir / "tiny" / "clip") is None


def test_planted_heroes_are_flagged_against_the_training_set(training_reference, models_dir):
    from datetime import datetime, timezone

    import pyarrow as pa

    from pipeline.config import Gates
    from pipeline.consolidate import memorization_thresholds, reference_index
    from pipeline.models.data import HERO_CAPTIONS, render_hero
    from pipeline.models.presets import resolve_model, resolve_scorer
    from pipeline.schema import SHARD_SCHEMA, conform
    from pipeline.stages.gate import GateSettings, apply_gates
    from pipeline.stages.score import ScoreStage

    config = type("Job", (), {"gates": Gates()})()
    index = reference_index(config, {"path": str(models_dir / "tiny" / "clip")}, training_reference)
    images = [np.asarray(render_hero(i)) for i in range(len(HERO_CAPTIONS))]
    images.append(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))  # no copy of anything
    table = pa.table({"item_id": [f"h{k}" for k in range(len(images))],
                      "prompt": list(HERO_CAPTIONS) + ["noise"], "pixels": [p.tobytes() for p in images],
                      "width": [64] * len(images), "height": [64] * len(images),
                      "image": [{"bytes": _png(p), "path": None} for p in images]})
    scorer = ScoreStage(models_dir / "tiny" / "clip", "tiny")
    scorer.setup()
    scored = scorer(table)
    rows = conform(pa.Table.from_pylist([
        {"item_id": r["item_id"], "sku": f"S{k}", "market": "en-US", "kind": "training", "variant": 0,
         "format": "1:1", "attempt": 0, "clip_score": 0.5, "clip_embedding": r["clip_embedding"],
         "image": r["image"], "image_sha256": str(k), "image_phash": f"{k:016x}",
         "pixel_mean": 120.0, "pixel_std": 70.0, "mem_cfg_gap": 1.0}
        for k, r in enumerate(scored.to_pylist())]), SHARD_SCHEMA)
    model, clip = resolve_model("tiny", models_dir), resolve_scorer("tiny", models_dir)
    thresholds = memorization_thresholds(Gates(), model, clip)   # the shipped thresholds
    result = apply_gates(rows, GateSettings(max_phash_distance=None, **thresholds),
                         created_at=datetime.now(timezone.utc), reference=index)
    out = {r["item_id"]: r for r in result.accepted.to_pylist() + result.rejected.to_pylist()}
    for k in range(len(HERO_CAPTIONS)):
        hero = out[f"h{k}"]
        assert hero["ref_tile_l2"] == 0.0 and hero["ref_similarity"] > 0.999
        assert any("near-verbatim copy" in x for x in hero["gate_reasons"])
    assert out["h5"]["ref_nearest_id"] is not None and out["h5"]["ref_tile_l2"] > thresholds["max_ref_tile_l2"]
    assert not any(x.startswith("memorization:") for x in out["h5"]["gate_reasons"])


def test_a_rebuild_never_takes_the_index_away_and_a_run_searches_the_build_it_was_prepared_with(tmp_path, models_dir,
                                                                                               monkeypatch):
    from PIL import Image

    import pipeline.reference as reference
    from pipeline.reference import ReferenceIndex, build_reference_index

    clip = models_dir / "tiny" / "clip"
    sets = []
    for k in range(3):  # three sets of reference images: three builds
        folder = tmp_path / f"refs{k}"
        folder.mkdir()
        for i in range(2 + k):
            Image.fromarray(np.random.default_rng(100 * k + i).integers(0, 256, (64, 64, 3), dtype=np.uint8)
                            ).save(folder / f"{i}.png")
        sets.append(folder)
    index_dir = tmp_path / "index"
    first = build_reference_index(sets[0], index_dir, clip)
    real_build, seen = reference.build_index, []

    def build_and_look(vectors):  # mid-rebuild, a run preparing or gating still finds the first build
        seen.append(ReferenceIndex(index_dir, clip).description["images"])
        return real_build(vectors)

    monkeypatch.setattr(reference, "build_index", build_and_look)
    second = build_reference_index(sets[1], index_dir, clip)
    assert seen == [2] and second["files"] != first["files"]
    # a run prepared with the first build still searches it; a new run gets the second
    assert len(ReferenceIndex(index_dir, clip, files=first["files"]).ids) == 2
    assert len(ReferenceIndex(index_dir, clip).ids) == 3
    build_reference_index(sets[2], index_dir, clip)  # a third build: the first one's files go
    assert not (index_dir / first["files"]["parquet"]).exists() and (index_dir / second["files"]["parquet"]).exists()
    fallback = ReferenceIndex(index_dir, clip, files=first["files"])  # gone: the current build, recorded as such
    assert len(fallback.ids) == 4 and fallback.lineage()["files"] == fallback.description["files"]
    assert fallback.lineage()["sha256"] == fallback.description["sha256"]


@pytest.mark.parametrize("content", ["bomb", "truncated"])
def test_a_reference_image_that_cannot_be_decoded_safely_is_named(tmp_path, models_dir, monkeypatch, content):
    from PIL import Image

    from pipeline.errors import BadInputError
    from pipeline.reference import build_reference_index

    (tmp_path / "refs").mkdir()
    Image.new("RGB", (64, 64), "white").save(tmp_path / "refs" / "a.png")
    Image.new("RGB", (96, 96), "red").save(tmp_path / "refs" / "b.png")
    if content == "bomb":  # Pillow refuses images over twice its limit before decoding them
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    else:
        data = (tmp_path / "refs" / "b.png").read_bytes()
        (tmp_path / "refs" / "b.png").write_bytes(data[:60])
    with pytest.raises(BadInputError, match=r"refs: b\.png is not a readable image"):
        build_reference_index(tmp_path / "refs", tmp_path / "index", models_dir / "tiny" / "clip")
    assert not (tmp_path / "index").exists()


def test_a_parquet_reference_set_is_read_a_batch_at_a_time_with_its_rows_named(tmp_path):
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    from pipeline.errors import BadInputError
    from pipeline.reference import iter_reference_images

    def png(shade):
        buffer = io.BytesIO()
        Image.new("L", (8, 8), shade).save(buffer, format="PNG")
        return buffer.getvalue()

    images = [None if row % 50 == 7 else {"bytes": png(row), "path": None} for row in range(150)]
    path = tmp_path / "protected.parquet"
    pq.write_table(pa.table({"image": images}), path, row_group_size=40)
    read = list(iter_reference_images(path))
    assert [label for label, _ in read] == [f"protected.parquet#{r}" for r in range(150) if r % 50 != 7]
    assert [data for _, data in read] == [image["bytes"] for image in images if image]
    second = pq.ParquetFile(path).metadata.row_group(1).column(0)
    damaged = bytearray(path.read_bytes())
    damaged[second.data_page_offset:second.data_page_offset + 64] = bytes(64)  # a page header, not the footer
    path.write_bytes(bytes(damaged))
    with pytest.raises(BadInputError, match=r"(?s)protected\.parquet: not a readable Parquet file \(.*page header"):
        list(iter_reference_images(path))
