"""Shard store: a run's generated rows, one Parquet file per shard, written when the shard is whole.

The shard is the unit of work and of resume (as in img2dataset): a shard file appears
only by an atomic rename once every item of the shard is in it, so "done" is simply "its
file exists", and a resumed run skips those shards; no database, no partial files.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.schema import SHARD_SCHEMA, conform


def shard_sizes(items: pa.Table) -> dict[str, int]:
    """Planned items per shard (`shard_id`)."""
    counts = pc.value_counts(items.column("shard_id"))
    return dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))


class ShardStore:
    """The `shards/` folder of one run's staging area."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, shard: str) -> Path:
        return self.root / f"{shard}.parquet"

    def done(self) -> set[str]:
        """Shards whose file exists: their items need no more work."""
        if not self.root.is_dir():
            return set()
        return {p.stem for p in self.root.glob("shard-*.parquet")}

    def write(self, shard: str, table: pa.Table) -> Path:
        """Write one complete shard: temporary name first, then an atomic rename."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(shard)
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        pq.write_table(conform(table, SHARD_SCHEMA), tmp, row_group_size=100, compression="zstd")
        os.replace(tmp, final)
        return final

    def read_all(self, shards: list[str] | None = None) -> pa.Table:
        """The rows of the listed shards (default: every finished one), in shard order."""
        files = (sorted(self.root.glob("shard-*.parquet")) if shards is None
                 else [self.path(s) for s in sorted(shards)])
        if not files:
            return SHARD_SCHEMA.empty_table()
        return pa.concat_tables(conform(pq.read_table(f), SHARD_SCHEMA) for f in files)

    def thumbnails(self) -> dict[tuple[str, int], bytes]:
        """The report thumbnails the encode stage stored, by (item_id, attempt); shards written
        before thumbnails were stored have none (the report then makes them)."""
        found: dict[tuple[str, int], bytes] = {}
        for path in sorted(self.root.glob("shard-*.parquet")):
            if "thumbnail" not in pq.read_schema(path).names:
                continue
            part = pq.read_table(path, columns=["item_id", "attempt", "thumbnail"])
            found |= {(i, a): t for i, a, t in zip(*(part.column(c).to_pylist() for c in part.column_names)) if t}
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
