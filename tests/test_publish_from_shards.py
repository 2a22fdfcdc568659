"""Publish from a run's shards: gated rows leave their images there, and `stage_run` fetches them
back in one pass (each shard read once), with a bounded wait buffer."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from helpers import make_output_table
from pipeline import publish
from pipeline.errors import SynthcatError
from pipeline.publish import stage_run
from pipeline.schema import GATED_SCHEMA, conform


def test_gated_rows_leave_their_images_in_the_shards_and_publish_fetches_them_back(tmp_path, monkeypatch):
    from pipeline.copy_detection import thumbnail_png
    from pipeline.shards import ShardStore

    table = make_output_table(30)
    store = ShardStore(tmp_path / "shards")
    store.write("shard-00000", table.slice(0, 16))
    store.write("shard-00001", table.slice(16))
    sizes = [len(image["bytes"]) for image in table.column("image").to_pylist()]

    light = store.read_all(images=False)
    assert not {"image", "thumbnail"} & set(light.column_names)
    assert light.column("image_nbytes").to_pylist() == sizes
    # these shards hold no small images (as ones written before the encode stage made them):
    # they are made from each image, as the encode stage makes them
    first = Image.open(io.BytesIO(table.column("image")[0].as_py()["bytes"])).convert("RGB")
    assert light.column("copy_thumbnail")[0].as_py() == thumbnail_png(first)
    assert len(store.thumbnails()) == 30 and all(store.thumbnails().values())

    # a shard as the encode stage writes it (small images and sizes stored): its images are not read
    encoded = ShardStore(tmp_path / "encoded")
    encoded.write("shard-00000", light.append_column("image", table.column("image")))
    reads = []
    real_read = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, **kw: reads.append(kw.get("columns")) or real_read(path, **kw))
    assert encoded.read_all(images=False).equals(light)
    assert reads and all(columns is not None and not {"image", "thumbnail"} & set(columns) for columns in reads)
    monkeypatch.undo()

    # fetched back in any order, from both shards
    order = pa.array([29, 3, 17, 0, 16, 15], pa.int64())
    assert store.images(light.take(order)).to_pylist() == table.column("image").take(order).to_pylist()
    in_order = store.in_shard_order(light.take(order)).column("item_id").to_pylist()
    assert in_order == table.column("item_id").take(pa.array([0, 3, 15, 16, 17, 29])).to_pylist()
    with pytest.raises(RuntimeError, match="no shard holds"):
        store.images(make_output_table(1, seed=5))

    # stage_run writes the same files from gated rows without images as from rows with them
    gated = conform(table.drop_columns(["image"]).append_column("image_nbytes", pa.array(sizes, pa.int64())),
                    GATED_SCHEMA)
    with_images = stage_run(tmp_path / "a", table.slice(0, 20), table.slice(20), "run-x", rows_per_file=7)
    fetched = stage_run(tmp_path / "b", gated.slice(0, 20), gated.slice(20), "run-x", rows_per_file=7,
                        images=store)
    assert len(fetched) > 4 and fetched == with_images
    with pytest.raises(ValueError, match="need `images`"):
        stage_run(tmp_path / "c", gated, gated.slice(0, 0), "run-x")

    # a shard damaged after the gates passed its images: the publish stops, naming it
    damaged = table.slice(16)
    images = damaged.column("image").to_pylist()
    images[2] = {"bytes": images[2]["bytes"][:-8] + bytes(8), "path": None}
    store.write("shard-00001", damaged.set_column(damaged.schema.get_field_index("image"), "image",
                                                  pa.array(images, damaged.schema.field("image").type)))
    with pytest.raises(SynthcatError, match=rf"shard-00001.parquet: the image of item {damaged['item_id'][2].as_py()} "
                                            r"attempt 0 is not the one its image_sha256 records"):
        stage_run(tmp_path / "d", gated.slice(0, 20), gated.slice(20), "run-x", images=ShardStore(tmp_path / "shards"))


def test_publish_reads_each_shards_images_once_however_the_rows_split_into_files(tmp_path, monkeypatch):
    """Accepted and rejected rows of three markets, interleaved in every shard, more than a row group
    per file: one pass over the shards writes every file; a small buffer only shortens row groups."""
    from pipeline.shards import ShardStore

    table = make_output_table(700, markets=("en-US", "de-DE", "ja-JP"))
    store = ShardStore(tmp_path / "shards")
    for number, start in enumerate(range(0, 700, 250)):
        store.write(f"shard-{number:05d}", table.slice(start, 250))
    gated = store.read_all(images=False)
    rejected_rows = pa.array([i % 5 == 0 for i in range(700)])
    accepted, rejected = gated.filter(pc.invert(rejected_rows)), gated.filter(rejected_rows)
    whole = store.read_all()  # the same rows with their images
    reference = stage_run(tmp_path / "with-images", whole.filter(pc.invert(rejected_rows)),
                          whole.filter(rejected_rows), "run-x", rows_per_file=150)

    reads = []
    real_read = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, **kw: reads.append((path, kw.get("columns"))) or real_read(path, **kw))
    opened, most_open = set(), []  # writers open at once: a file closes as soon as it is whole

    class Writer(pq.ParquetWriter):
        def __init__(self, where, *args, **kwargs):
            super().__init__(where, *args, **kwargs)
            opened.add(where)
            most_open.append(len(opened))

        def close(self):
            super().close()
            opened.discard(self.where)

    monkeypatch.setattr(pq, "ParquetWriter", Writer)
    fetched = stage_run(tmp_path / "fetched", accepted, rejected, "run-x", rows_per_file=150, images=store)
    assert max(most_open) <= 6 and not opened  # one per kind and market, not one per file (9)
    image_reads = [path for path, columns in reads if columns and "image" in columns]
    assert sorted(image_reads) == sorted(store.path(f"shard-{n:05d}") for n in range(3))  # each once
    # accepted: 2 files per market (150 + 36 rows, the first in two row groups); rejected: 1 (47 rows)
    assert [(r["path"], r["rows"]) for r in fetched] == [(r["path"], r["rows"]) for r in reference]
    assert len(fetched) == 9
    _check_same_rows(tmp_path / "fetched", tmp_path / "with-images", fetched)

    reads.clear()
    tight = stage_run(tmp_path / "tight", accepted, rejected, "run-x", rows_per_file=150, images=store,
                      buffer_bytes=20_000)  # a few images: files write short row groups to stay under it
    assert len([path for path, columns in reads if columns and "image" in columns]) == 3
    monkeypatch.undo()
    assert [(r["path"], r["rows"]) for r in tight] == [(r["path"], r["rows"]) for r in reference]
    _check_same_rows(tmp_path / "tight", tmp_path / "with-images", tight, same_row_groups=False)


def test_the_images_a_staged_file_keeps_waiting_hold_only_their_own_bytes(tmp_path):
    """After a row group is written, the rest of the last chunk is copied out: a slice would hold
    its whole chunk, memory the wait buffer does not count."""
    table = make_output_table(130, markets=("en-US",))
    images = table.column("image").combine_chunks()
    file = publish._StagedFile(tmp_path, Path("data", "part.parquet"), table.drop_columns(["image"]))
    file.add(images.slice(0, 125))  # one row group of 100 written, 25 rows wait
    waiting = pa.chunked_array(file._pending)
    assert len(waiting) == 25 and waiting.equals(pa.chunked_array([images.slice(100, 25)]))
    assert sum(chunk.get_total_buffer_size() for chunk in file._pending) < 1.01 * file.pending_bytes  # (offsets: n + 1)
    file.add(images.slice(125))  # the last 5: the file is whole, closed and renamed
    assert file.record()["rows"] == 130
    assert pq.read_table(tmp_path / "data" / "part.parquet").column("image").equals(table.column("image"))


def _check_same_rows(root: Path, expected_root: Path, records: list[dict], same_row_groups: bool = True) -> None:
    """Every file holds the expected file's rows, in the same row groups or (same_row_groups=False)
    in more, shorter ones."""
    for record in records:
        written, expected = pq.ParquetFile(root / record["path"]), pq.ParquetFile(expected_root / record["path"])
        assert written.read().equals(expected.read()), record["path"]
        sizes, expected_sizes = ([f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)]
                                 for f in (written, expected))
        assert sizes == expected_sizes if same_row_groups else len(sizes) > len(expected_sizes), record["path"]


def test_a_shard_is_on_the_disk_before_its_name_says_it_is_done(tmp_path, monkeypatch):
    import os

    import pipeline.fsops as fsops
    from pipeline.shards import ShardStore

    events, real_fsync, real_replace = [], fsops.fsync, os.replace
    monkeypatch.setattr(fsops, "fsync", lambda path: (events.append(("fsync", Path(path).name)), real_fsync(path))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("rename", Path(b).name)), real_replace(a, b))[1])
    store = ShardStore(tmp_path / "shards")
    store.write("shard-00000", make_output_table(2))
    assert [kind for kind, _ in events] == ["fsync", "rename", "fsync"]  # the file, its name, the folder
    assert events[0][1].startswith(".shard-00000.parquet.tmp-") and events[2][1] == "shards"
    assert store.done() == {"shard-00000"}


def test_a_shard_write_that_fails_leaves_no_file_behind(tmp_path, monkeypatch):
    import pipeline.fsops as fsops
    from pipeline.shards import ShardStore

    def disk_full(path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fsops, "fsync", disk_full)  # the data written, then the flush fails
    store = ShardStore(tmp_path / "shards")
    with pytest.raises(OSError, match="No space"):
        store.write("shard-00000", make_output_table(2))
    assert list((tmp_path / "shards").iterdir()) == [] and store.done() == set()


def test_a_record_that_cannot_be_written_leaves_the_one_before_and_no_other_file(tmp_path):
    from pipeline.fsops import write_json

    write_json(tmp_path / "run.json", {"rounds": 1})
    with pytest.raises(TypeError):
        write_json(tmp_path / "run.json", {"rounds": 2, "started": object()})  # not JSON
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]
    assert (tmp_path / "run.json").read_text(encoding="utf-8").replace(" ", "").replace("\n", "") == '{"rounds":1}'


def test_product_photos_are_published_as_the_catalog_names_them_not_by_the_producers_paths(tmp_path):
    from pipeline.steps.publish import _photos_as_catalogued

    catalog_folder = tmp_path / "catalogs"
    photos = [str(catalog_folder / "products" / "SNK-001.png"), None, "/srv/shared/photos/BTL-002.png"]
    table = pa.table({"sku": ["SNK-001", "MUG-001", "BTL-002"], "product_image": photos})
    published = _photos_as_catalogued(table, str(catalog_folder))
    assert published.column("product_image").to_pylist() == ["products/SNK-001.png", None,
                                                               "/srv/shared/photos/BTL-002.png"]  # given absolute
    assert _photos_as_catalogued(table, None).equals(table)  # staged before the folder was recorded
