"""Contract tests of pipeline.publish: layout, readers, atomic replacement, the commit record."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import make_output_table
from pipeline import publish
from pipeline.errors import SynthcatError
from pipeline.publish import publish_run, read_published, stage_run
from pipeline.schema import OUTPUT_SCHEMA, REJECTED

D1, D2 = "2026-11-26", "2026-11-27"


def rejected_rows(n, run_date=D1, run_id="run-test", seed=99):
    table = make_output_table(n, run_date=run_date, run_id=run_id, seed=seed)
    table = table.set_column(table.schema.get_field_index("gate_status"), "gate_status",
                             pa.array([REJECTED] * n, pa.string()))
    reasons = pa.array([["clip_score_below_threshold"]] * n, pa.list_(pa.string()))
    return table.set_column(table.schema.get_field_index("gate_reasons"), "gate_reasons", reasons)


def publish_tables(root: Path, run_id: str, run_dates, accepted, rejected, **manifest):
    staging = root / "_staging" / run_id
    stage_run(staging, accepted, rejected, run_id)
    return publish_run(root, staging, run_id, list(run_dates), dict(manifest))


def item_ids(table: pa.Table) -> list[str]:
    return sorted(table["item_id"].to_pylist())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A dataset with two dates, 2 markets each, >100 rows in one partition, and rejects."""
    root = tmp_path_factory.mktemp("dataset")
    accepted = pa.concat_tables([make_output_table(220, run_date=D1, run_id="run-a", seed=1),
                                 make_output_table(6, run_date=D2, run_id="run-a", seed=2)])
    manifest = publish_tables(root, "run-a", [D1, D2], accepted,
                              rejected_rows(3, run_id="run-a"), config={"job": "test"})
    return root, accepted, manifest


# --- the helper ----------------------------------------------------------------------------------

def test_helper_table_is_plausible():
    table = make_output_table(5)
    assert table.schema.equals(OUTPUT_SCHEMA)
    assert len(set(table["item_id"].to_pylist())) == 5
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in table["item_id"].to_pylist())
    norms = [np.linalg.norm(e) for e in table["clip_embedding"].to_pylist()]
    assert np.allclose(norms, 1.0, atol=1e-5)
    assert make_output_table(5).column("image").equals(table.column("image"))  # seeded
    assert make_output_table(0).num_rows == 0


# --- staging -------------------------------------------------------------------------------------

def test_stage_run_writes_partitioned_files_with_records(tmp_path):
    accepted = make_output_table(230)  # 115 rows per market: two row groups
    records = stage_run(tmp_path, accepted, rejected_rows(4), "run-x")

    paths = [r["path"] for r in records]
    assert paths == sorted(paths)
    assert f"data/run_date={D1}/market=en-US/part-run-x-00000.parquet" in paths
    assert f"rejects/run_date={D1}/market=de-DE/part-run-x-00000.parquet" in paths
    assert sum(r["rows"] for r in records if r["path"].startswith("data/")) == 230
    assert sum(r["rows"] for r in records if r["path"].startswith("rejects/")) == 4
    for record in records:
        path = tmp_path / record["path"]
        assert record["bytes"] == path.stat().st_size
        assert record["sha256"] == sha256(path)
        meta = pq.ParquetFile(path).metadata
        assert meta.num_rows == record["rows"]
        groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
        assert all(g.num_rows <= 100 for g in groups)
        assert groups[0].column(0).compression == "ZSTD"
        assert b"huggingface" in meta.metadata
    assert max(pq.ParquetFile(tmp_path / p).metadata.num_row_groups for p in paths) >= 2
    assert not list(tmp_path.rglob("*.tmp*"))


def test_stage_run_splits_large_partitions_into_numbered_files(tmp_path):
    records = stage_run(tmp_path, make_output_table(30, markets=("en-US",)),
                        make_output_table(0), "run-x", rows_per_file=12)
    assert [Path(r["path"]).name for r in records] == [
        "part-run-x-00000.parquet", "part-run-x-00001.parquet", "part-run-x-00002.parquet"]
    assert [r["rows"] for r in records] == [12, 12, 6]


def test_stage_run_gives_each_training_split_files_of_its_own(tmp_path):
    """The split is in a file's name (pipeline/layout.py): a reader takes one split by pattern."""
    from pipeline.errors import SynthcatError
    from pipeline.layout import is_run_file, split_of

    table = make_output_table(9, markets=("global",))
    splits = ["train", None, "val", "train", "test", None, "train", "val", "train"]
    table = table.set_column(table.schema.get_field_index("split"), "split", pa.array(splits, pa.string()))
    records = stage_run(tmp_path, table, make_output_table(0), "run-x", rows_per_file=3)
    names = [Path(r["path"]).name for r in records]
    assert names == ["part-run-x-00000.parquet", "part-run-x-00000.test.parquet", "part-run-x-00000.train.parquet",
                     "part-run-x-00001.train.parquet", "part-run-x-00000.val.parquet"]
    for record, name in zip(records, names):
        rows = pq.read_table(tmp_path / record["path"], columns=["item_id", "split"])
        assert set(rows["split"].to_pylist()) == {split_of(name)} and is_run_file(name, "run-x")
    read = pq.read_table(tmp_path / "data", columns=["item_id"])["item_id"].to_pylist()
    assert sorted(read) == sorted(table["item_id"].to_pylist())  # every row once
    assert not is_run_file("part-run-x-00000.train.parquet", "run") and split_of("part-a.b-00000.parquet") is None
    bad = table.set_column(table.schema.get_field_index("split"), "split", pa.array(["holdout"] * 9))
    with pytest.raises(SynthcatError, match="split 'holdout'"):
        stage_run(tmp_path / "bad", bad, make_output_table(0), "run-x")


def test_stage_run_of_empty_tables_writes_no_data(tmp_path):
    empty = make_output_table(0)
    assert stage_run(tmp_path, empty, empty, "run-x") == []
    assert not list(tmp_path.rglob("*.parquet"))


def test_stage_run_refuses_unsafe_names(tmp_path):
    with pytest.raises(SynthcatError, match="run_id"):
        stage_run(tmp_path, make_output_table(1), make_output_table(0), "../evil")
    with pytest.raises(SynthcatError, match="market"):
        stage_run(tmp_path, make_output_table(1, markets=("en/US",)), make_output_table(0), "r")


# --- the four readers ----------------------------------------------------------------------------

def test_pyarrow_reads_the_data_folder(published):
    root, accepted, _ = published
    table = pq.read_table(root / "data")
    assert table.num_rows == accepted.num_rows
    assert item_ids(table) == item_ids(accepted)
    by_id = dict(zip(table["item_id"].to_pylist(), table["run_date"].cast(pa.string()).to_pylist()))
    assert by_id == dict(zip(accepted["item_id"].to_pylist(), accepted["run_date"].to_pylist()))
    image = Image.open(io.BytesIO(table["image"][0]["bytes"].as_py()))
    assert image.size == (64, 64)

    # pyarrow.dataset: no partitioning (the columns are in the files), or dictionary-typed keys.
    assert ds.dataset(root / "data", format="parquet").count_rows() == accepted.num_rows
    hive = ds.HivePartitioning.discover(infer_dictionary=True)
    dataset = ds.dataset(root / "data", format="parquet", partitioning=hive)
    assert dataset.to_table(filter=ds.field("run_date") == D2).num_rows == 6
    assert pq.read_table(root / "data", filters=[("run_date", "=", D2)]).num_rows == 6


def test_read_published_gives_output_schema_rows(published):
    root, accepted, _ = published
    everything = read_published(root)
    assert everything.schema.equals(OUTPUT_SCHEMA)
    assert item_ids(everything) == item_ids(accepted)
    assert read_published(root, D2).num_rows == 6
    assert read_published(root, "2030-01-01").num_rows == 0
    assert read_published(root.parent / "nowhere").schema.equals(OUTPUT_SCHEMA)


def test_pandas_reads_the_data_folder(published):
    pd = pytest.importorskip("pandas")
    root, accepted, _ = published
    frame = pd.read_parquet(root / "data")
    assert len(frame) == accepted.num_rows
    assert frame["item_id"].is_unique
    assert set(frame["run_date"].astype(str)) == {D1, D2}
    assert set(frame["market"].astype(str)) == {"en-US", "de-DE"}
    assert len(pd.read_parquet(root / "data", filters=[("run_date", "=", D2)])) == 6


def test_duckdb_reads_the_data_folder_with_hive_partitioning(published):
    duckdb = pytest.importorskip("duckdb")
    root, accepted, _ = published
    rows = duckdb.sql(
        f"SELECT CAST(run_date AS VARCHAR) AS d, market, count(*), count(DISTINCT item_id), "
        f"min(octet_length(image.bytes)) "
        f"FROM read_parquet('{root}/data/**/*.parquet', hive_partitioning=true) "
        f"GROUP BY ALL ORDER BY ALL").fetchall()
    assert [(d, m, n) for d, m, n, _, _ in rows] == [
        (D1, "de-DE", 110), (D1, "en-US", 110), (D2, "de-DE", 3), (D2, "en-US", 3)]
    assert all(n == distinct and size > 0 for _, _, n, distinct, size in rows)


def test_hugging_face_datasets_decodes_images(published, tmp_path, monkeypatch):
    for name, value in {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                        "HF_HOME": str(tmp_path / "hf"),
                        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}.items():
        monkeypatch.setenv(name, value)
    datasets = pytest.importorskip("datasets")
    root, accepted, _ = published
    loaded = datasets.load_dataset("parquet", data_files=f"{root}/data/**/*.parquet",
                                   split="train", cache_dir=str(tmp_path / "cache"))
    assert isinstance(loaded.features["image"], datasets.Image)
    assert loaded.features["run_date"] == datasets.Value("string")
    assert loaded.features["market"] == datasets.Value("string")
    assert loaded.num_rows == accepted.num_rows
    row = loaded[0]
    assert isinstance(row["image"], Image.Image) and row["image"].size == (64, 64)
    assert row["run_date"] in (D1, D2) and row["market"] in ("en-US", "de-DE")
    assert sorted(loaded["item_id"]) == item_ids(accepted)


# --- publishing ----------------------------------------------------------------------------------

def test_manifest_lists_files_rows_and_matching_sha256(published):
    root, accepted, manifest = published
    on_disk = json.loads((root / "_runs" / "run-a" / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["config"] == {"job": "test"}
    assert manifest["rows"] == {"accepted": accepted.num_rows, "rejected": 3}
    assert manifest["published_at"].endswith("+00:00")
    listed = {r["path"] for r in manifest["files"]}
    assert listed == {p.relative_to(root).as_posix()
                      for p in root.glob("*/run_date=*/market=*/*.parquet")}
    for record in manifest["files"]:
        assert sha256(root / record["path"]) == record["sha256"]
    manifest_mtime = (root / "_runs" / "run-a" / "manifest.json").stat().st_mtime_ns
    assert all((root / p).stat().st_mtime_ns <= manifest_mtime for p in listed)


def test_manifest_is_written_after_every_partition_moved(tmp_path, monkeypatch):
    events = []
    swap, write_json = publish._swap_in, publish._write_json
    monkeypatch.setattr(publish, "_swap_in",
                        lambda **kw: (events.append("swap"), swap(**kw))[1])
    monkeypatch.setattr(publish, "_write_json",
                        lambda path, value: (events.append(path.name), write_json(path, value))[1])
    publish_tables(tmp_path, "run-a", [D1], make_output_table(4), rejected_rows(1))
    assert events[-1] == "manifest.json" and events.count("swap") == 2
    assert events.index("manifest.json") > max(i for i, e in enumerate(events) if e == "swap")


def test_files_and_the_folders_renamed_into_are_flushed_to_disk_before_the_manifest(tmp_path, monkeypatch):
    """A power cut after the commit must not find the manifest without its files: each file is
    flushed before its rename, its folders before the marker, the live folders before the manifest."""
    events = []
    swap, write_json, fsync = publish._swap_in, publish._write_json, publish._fsync
    monkeypatch.setattr(publish, "_fsync", lambda path: (events.append(("fsync", Path(path))), fsync(path))[1])
    monkeypatch.setattr(publish, "_swap_in", lambda **kw: (events.append(("swap", kw["live"])), swap(**kw))[1])
    monkeypatch.setattr(publish, "_write_json", lambda path, value: (events.append(("write", path)), write_json(path, value))[1])
    manifest = publish_tables(tmp_path, "run-a", [D1], make_output_table(4), rejected_rows(1))
    flushed = [path for event, path in events if event == "fsync"]
    for record in manifest["files"]:
        staged = tmp_path / "_staging" / "run-a" / record["path"]
        assert staged.with_name(f".{staged.name}.tmp") in flushed and staged.parent in flushed
    commit = events.index(("write", tmp_path / "_runs" / "run-a" / "manifest.json"))
    last_swap = max(i for i, (event, _) in enumerate(events) if event == "swap")
    assert {path for _, path in events[last_swap:commit]} >= {tmp_path / "data", tmp_path / "rejects"}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_republishing_a_date_replaces_it_and_keeps_other_dates(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(publish, "_exchange", lambda a, b: False)
    first_d1 = make_output_table(8, run_date=D1, run_id="run-a", seed=1)
    first_d2 = make_output_table(4, run_date=D2, run_id="run-a", seed=2)
    publish_tables(tmp_path, "run-a", [D1, D2], pa.concat_tables([first_d1, first_d2]),
                   rejected_rows(2, run_id="run-a"))

    second_d1 = make_output_table(5, run_date=D1, run_id="run-b", seed=3, markets=("en-US",))
    manifest = publish_tables(tmp_path, "run-b", [D1], second_d1, make_output_table(0))

    assert item_ids(read_published(tmp_path, D1)) == item_ids(second_d1)
    assert item_ids(read_published(tmp_path, D2)) == item_ids(first_d2)
    assert not (tmp_path / "data" / f"run_date={D1}" / "market=de-DE").exists()
    assert not (tmp_path / "rejects" / f"run_date={D1}").exists()  # replaced by "nothing"
    assert manifest["rows"] == {"accepted": 5, "rejected": 0}
    assert pq.read_table(tmp_path / "data").num_rows == 9
    assert not list((tmp_path / "_staging").rglob("*.parquet"))  # old partitions deleted


def test_a_date_without_any_rows_removes_its_partition(tmp_path):
    publish_tables(tmp_path, "run-a", [D1], make_output_table(4), rejected_rows(1))
    manifest = publish_tables(tmp_path, "run-b", [D1], make_output_table(0), make_output_table(0))
    assert manifest["files"] == [] and manifest["rows"] == {"accepted": 0, "rejected": 0}
    assert read_published(tmp_path).num_rows == 0
    assert not (tmp_path / "rejects" / f"run_date={D1}").exists()


def test_a_run_id_publishes_once(published, tmp_path):
    root, accepted, _ = published
    staging = tmp_path / "staging"
    stage_run(staging, make_output_table(2, seed=7), make_output_table(0), "run-a")
    with pytest.raises(SynthcatError, match="already published"):
        publish_run(root, staging, "run-a", [D1], {})
    assert item_ids(read_published(root)) == item_ids(accepted)


def test_staged_dates_outside_the_run_dates_are_refused(tmp_path):
    staging = tmp_path / "_staging"
    stage_run(staging, make_output_table(2, run_date=D2), make_output_table(0), "run-a")
    with pytest.raises(SynthcatError, match="run_date=2026-11-27"):
        publish_run(tmp_path, staging, "run-a", [D1], {})
    assert not (tmp_path / "data").exists()


def test_publishing_without_staging_fails(tmp_path):
    with pytest.raises(SynthcatError, match="nothing staged"):
        publish_run(tmp_path, tmp_path / "_staging", "run-a", [D1], {})


def test_exchange_swaps_two_directories(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "from-a").touch(), (b / "from-b").touch()
    if not publish._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (a / "from-b").exists() and (b / "from-a").exists()


def test_published_rows_round_trip_every_column(tmp_path):
    accepted = make_output_table(7, markets=("en-US",))
    publish_tables(tmp_path, "run-a", [D1], accepted, make_output_table(0))
    back = read_published(tmp_path)
    assert back.sort_by("item_id").equals(accepted.sort_by("item_id"))
    assert pc.all(pc.equal(back["gate_status"], "accepted")).as_py()


# Failures mid-publish and concurrent publishers: tests/reliability/test_atomic_publish.py


def test_names_that_end_in_a_newline_are_refused(tmp_path):
    with pytest.raises(SynthcatError, match="cannot name a file"):
        publish_tables(tmp_path, "run-a\n", [D1], make_output_table(1), make_output_table(0))
    with pytest.raises(SynthcatError, match="is not YYYY-MM-DD"):
        publish_tables(tmp_path, "run-a", [D1 + "\n"], make_output_table(1), make_output_table(0))
