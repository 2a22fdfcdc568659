"""Shard store: a run's generated rows, one Parquet file per shard, written when the shard is whole.

The shard is the unit of work and of resume (as in img2dataset): a shard file appears
only by an atomic rename once every item of the shard is in it, so "done" is simply "its
file exists", and a resumed run skips those shards; no database, no partial files.
"""

from __future__ import annotations

import hashlib
import io
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import SynthcatError
from pipeline.schema import IMAGE_TYPE, SHARD_SCHEMA, conform


# What `read_all(images=False)` leaves in the shards: the encoded image and the report's thumbnail
# (publish and the report read them there, for the rows they need).
_LEFT_IN_SHARDS = ("image", "thumbnail")


def shard_sizes(items: pa.Table) -> dict[str, int]:
    """Planned items per shard (`shard_id`)."""
    counts = pc.value_counts(items.column("shard_id"))
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


class ShardStore:
    """The `shards/` folder of one run's staging area."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._locations: dict[tuple[str, int], tuple[Path, int]] | None = None  # built by `_where`
        self._last: tuple[Path | None, pa.Table | None] = (None, None)  # the shard `images` read last

    def path(self, shard: str) -> Path:
        return self.root / f"{shard}.parquet"

    def done(self) -> set[str]:
        """Shards whose file exists: their items need no more work."""
        if not self.root.is_dir():
            return set()
        return {p.stem for p in self.root.glob("shard-*.parquet")}

    def write(self, shard: str, table: pa.Table) -> Path:
        """Write one complete shard: temporary name first, flushed to the disk, then an atomic
        rename (a shard file is trusted as done on resume: after a power cut it must be whole)."""
        from pipeline.fsops import replacing

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(shard)
        with replacing(final) as tmp:  # a kill leaves a dot name that resume ignores, until publish
            pq.write_table(conform(table, SHARD_SCHEMA), tmp, row_group_size=100, compression="zstd")
        return final

    def read_all(self, shards: list[str] | None = None, *, images: bool = True) -> pa.Table:
        """The rows of the listed shards (default: every finished one), in shard order.

        `images=False` reads every column but the encoded image and the report's thumbnail,
        most of a row's bytes: the gate step's rows, kilobytes each however large a run's images
        are (`image_nbytes` gives their sizes); publish fetches the images back a row group at a
        time (`images`).
        """
        files = (sorted(self.root.glob("shard-*.parquet")) if shards is None
                 else [self.path(s) for s in sorted(shards)])
        read = (lambda f: conform(pq.read_table(f), SHARD_SCHEMA)) if images else _without_images
        if not files:
            empty = SHARD_SCHEMA.empty_table()
            return empty if images else empty.drop_columns(list(_LEFT_IN_SHARDS))
        return pa.concat_tables(read(f) for f in files)

    def images(self, rows: pa.Table) -> pa.ChunkedArray:
        """The encoded images of `rows` (rows of this run: `item_id`, `attempt`), in their order.

        Each shard that holds some of them is read once per call (the last one read is kept for
        the next call), its `image` column only: in memory, one shard's images and `rows`' own.
        Rows in shard order (`in_shard_order`) read each shard about once over a run's calls.
        """
        keys = self._keys(rows)
        where = self._where()
        wanted: dict[Path, list] = defaultdict(list)
        for key in keys:
            wanted[where[key][0]].append(key)
        chunks, found = [], {}
        for path, part_keys in wanted.items():
            if self._last[0] != path:  # consecutive row groups share a shard
                self._last = (path, pq.read_table(path, columns=["image", "image_sha256"]))
            positions = pa.array([where[k][1] for k in part_keys], pa.int64())
            taken = self._last[1].column("image").take(positions)
            _check_images(path, part_keys, taken, self._last[1].column("image_sha256").take(positions))
            offset = len(found)
            found.update((k, offset + j) for j, k in enumerate(part_keys))
            chunks += taken.cast(IMAGE_TYPE).chunks
        return pa.chunked_array(chunks, IMAGE_TYPE).take(pa.array([found[k] for k in keys], pa.int64()))

    def in_shard_order(self, rows: pa.Table) -> pa.Table:
        """`rows` sorted as their images lie in the shards, so `images` reads each shard once."""
        where = self._where()
        places = [where[key] for key in self._keys(rows)]
        return rows.take(pa.array(sorted(range(len(places)), key=places.__getitem__), pa.int64()))

    def _keys(self, rows: pa.Table) -> list[tuple[str, int]]:
        keys = list(zip(rows.column("item_id").to_pylist(), rows.column("attempt").to_pylist()))
        if missing := next((key for key in keys if key not in self._where()), None):
            raise RuntimeError(f"{self.root}: no shard holds item {missing[0]} attempt {missing[1]}")
        return keys

    def _where(self) -> dict[tuple[str, int], tuple[Path, int]]:
        """(item_id, attempt) -> (the shard file holding it, its row there), from the key columns."""
        if self._locations is None:
            self._locations = {}
            for path in sorted(self.root.glob("shard-*.parquet")):
                part = pq.read_table(path, columns=["item_id", "attempt"])
                keys = zip(part.column("item_id").to_pylist(), part.column("attempt").to_pylist())
                self._locations.update((key, (path, row)) for row, key in enumerate(keys))
        return self._locations

    def thumbnails(self, keys=None) -> dict[tuple[str, int], bytes]:
        """The report thumbnails the encode stage stored, by (item_id, attempt), of the rows of
        `keys` (default: all); a shard written before the encode stage made them gets them made
        here, from its images."""
        found: dict[tuple[str, int], bytes] = {}
        wanted = None if keys is None else set(keys)
        for path in sorted(self.root.glob("shard-*.parquet")):
            stored = "thumbnail" in pq.read_schema(path).names
            part = pq.read_table(path, columns=["item_id", "attempt", "thumbnail"]) if stored else None
            if part is None or part.column("thumbnail").null_count:
                part = _with_small_images(conform(pq.read_table(path), SHARD_SCHEMA))
                part = part.select(["item_id", "attempt", "thumbnail"])
            found |= {(i, a): t for i, a, t in zip(*(part.column(c).to_pylist() for c in part.column_names))
                      if t and (wanted is None or (i, a) in wanted)}
        return found

    def collect(self, batches: Iterable[pa.Table], expected: dict[str, int]) -> Iterator[tuple[str, int]]:
        """Buffer streamed rows per shard; write each shard as soon as it is complete.

        Yields (shard id, rows in the batch) as batches arrive, for progress reporting.
        Raises if the stream ends with a shard still incomplete: an item was lost.
        """
        pending: dict[str, list[pa.Table]] = defaultdict(list)
        counts: dict[str, int] = defaultdict(int)
        for batch in batches:
            for shard in pc.unique(batch.column("shard_id")).to_pylist():
                part = batch.filter(pc.equal(batch.column("shard_id"), shard))
                pending[shard].append(part)
                counts[shard] += part.num_rows
                if counts[shard] == expected[shard]:
                    self.write(shard, pa.concat_tables(pending.pop(shard)))
            yield batch.column("shard_id")[0].as_py(), batch.num_rows
        missing = {s: expected[s] - counts[s] for s in pending}
        if missing:
            raise RuntimeError(f"stream ended with incomplete shards (items missing): {missing}")


def _without_images(path: Path) -> pa.Table:
    """One shard's rows without `image` and the report's `thumbnail`, neither read; a shard written
    before the encode stage stored the copy-check image and the image's size is read whole, and
    they are made here."""
    names = [name for name in pq.read_schema(path).names if name not in _LEFT_IN_SHARDS]
    table = conform(pq.read_table(path, columns=names), SHARD_SCHEMA)
    if any(table.column(name).null_count for name in ("copy_thumbnail", "image_nbytes")):
        table = _with_small_images(conform(pq.read_table(path), SHARD_SCHEMA))
    return table.drop_columns(list(_LEFT_IN_SHARDS))


def _with_small_images(table: pa.Table) -> pa.Table:
    """Shard rows whose report thumbnail, copy-check image or image size is missing (a shard
    written before the encode stage made them) get them from their image, as encode makes them."""
    thumbnails, copies = table.column("thumbnail").to_pylist(), table.column("copy_thumbnail").to_pylist()
    images = table.column("image").to_pylist()
    sizes = [len(image["bytes"]) if image and image["bytes"] is not None else None for image in images]
    index = table.schema.get_field_index("image_nbytes")
    table = table.set_column(index, "image_nbytes", pa.array(sizes, pa.int64()))
    missing = [i for i, (t, c, image) in enumerate(zip(thumbnails, copies, images))
               if (t is None or c is None) and image and image["bytes"]]
    if not missing:
        return table
    from PIL import Image

    from pipeline.copy_detection import thumbnail_png
    from pipeline.thumbnail import report_thumbnail, thumbnail_side

    texts = table.column("overlay_text").to_pylist()
    for i in missing:
        with Image.open(io.BytesIO(images[i]["bytes"])) as opened:
            image = opened.convert("RGB")
        thumbnails[i] = thumbnails[i] or report_thumbnail(image, thumbnail_side(bool(texts[i])))
        copies[i] = copies[i] or thumbnail_png(image)
    for name, values in (("thumbnail", thumbnails), ("copy_thumbnail", copies)):
        index = table.schema.get_field_index(name)
        table = table.set_column(index, table.schema.field(index), pa.array(values, pa.binary()))
    return table


def _check_images(path: Path, keys: list, images: pa.ChunkedArray, digests: pa.ChunkedArray) -> None:
    """The images a publish copies are the ones the gates and validation passed: each has the
    sha256 its row recorded when it was encoded (a shard damaged since fails the publish)."""
    data = pc.struct_field(images, "bytes").to_pylist()
    for (item, attempt), image, digest in zip(keys, data, digests.to_pylist()):
        if digest is not None and (image is None or hashlib.sha256(image).hexdigest() != digest):
            raise SynthcatError(f"{path}: the image of item {item} attempt {attempt} is not the one its "
                                f"image_sha256 records (the shard is damaged): delete {path.name} and resume "
                                "the run, which generates it again")

