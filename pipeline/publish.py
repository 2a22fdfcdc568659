"""Publish a run: stage Parquet files, then swap each run_date partition into the live dataset.

Layout (DESIGN.md "Output: the dataset"; `.<split>`: training rows of one split, pipeline/layout.py):
    data/run_date=<d>/market=<m>/part-<run_id>-<nnnnn>[.<split>].parquet      accepted rows
    rejects/run_date=<d>/market=<m>/part-<run_id>-<nnnnn>[.<split>].parquet   rejected rows
    _runs/<run_id>/manifest.json                                    commit record, written last

Partition columns: `run_date` and `market` stay *inside* every file (DESIGN: every row carries
its lineage, and Hugging Face `datasets` ignores hive paths, so it only sees columns in the files).
In the file's Arrow schema they are `dictionary<int32, string>` -- the exact type that
`pyarrow.parquet.read_table(dir)` and `pandas.read_parquet(dir)` infer for hive keys; with
plain `string` both readers fail with "Unable to merge: Field run_date has incompatible types".
The Parquet column is a plain UTF-8 string: Spark, `datasets` and DuckDB see strings (DuckDB with
`hive_partitioning = false`; with `true` it types `run_date` from the path, DATE). Last: pass
`pyarrow.dataset.dataset(dir)` no partitioning (the columns are in the files) or
`partitioning=ds.HivePartitioning.discover(infer_dictionary=True)`; bare `partitioning="hive"`
infers `string` and refuses the merge.

Atomicity: each (kind, run_date) partition is swapped whole (`renameat2(RENAME_EXCHANGE)` on Linux,
two renames elsewhere): a reader sees a date's old rows or its new ones, never a mix. The replaced
partitions wait in the staging folder until the manifest, the commit record, is written; a failure
before it swaps them back, and a re-run of a killed publish finishes it (or, failing, undoes it).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.errors import SynthcatError
from pipeline.fsops import exchange as _exchange
from pipeline.fsops import fsync as _fsync
from pipeline.fsops import sha256_file
from pipeline.fsops import write_json as _write_json
from pipeline.layout import RUN_DATE, check_name, is_run_file, part_name, partitions
from pipeline.schema import IMAGE_TYPE, OUTPUT_SCHEMA, PARTITION_COLUMNS, conform, with_hf_metadata

DATA_DIR, REJECTS_DIR, RUNS_DIR = "data", "rejects", "_runs"
STAGED_MARKER = "_staged.json"
ROW_GROUP_SIZE = 100      # rows carry image bytes; `datasets` writes image data in groups of 100
ROWS_PER_FILE = 1000
BUFFER_BYTES = 128 * 2**20  # images fetched for files whose row group is not yet complete
FETCH_ROWS = 25            # images fetched from the shards at a time (then copied out per file)
_PARTITION_TYPE = pa.dictionary(pa.int32(), pa.string())
FILE_SCHEMA = pa.schema(
    [f.with_type(_PARTITION_TYPE) if f.name in PARTITION_COLUMNS else f for f in OUTPUT_SCHEMA],
    metadata=with_hf_metadata(OUTPUT_SCHEMA).metadata,
)


def stage_run(staging_dir: Path, accepted: pa.Table, rejected: pa.Table, run_id: str,
              *, rows_per_file: int = ROWS_PER_FILE, images=None, buffer_bytes: int = BUFFER_BYTES) -> list[dict]:
    """Write a run's accepted and rejected rows as hive-partitioned Parquet under `staging_dir`.

    Rows without an `image` column (GATED_SCHEMA) get their images from `images`, where they lie
    (the run's `ShardStore`: `in_shard_order(rows)`, `images(rows)`). Each file's rows go in that
    order, and every file is written in one pass over the images: each is read once however the
    rows split into kinds, markets and files. A file's row group is written once it has its rows'
    images; at most `buffer_bytes` of images wait for theirs (past that, the file holding the most
    writes a shorter group). Returns one record per file: {"path": posix path relative to the
    dataset root, "rows", "bytes", "sha256"}. `staging_dir` belongs to this run: an earlier staging
    there is replaced. The marker `_staged.json` (the records) is written last; `publish_run`
    reads it.
    """
    staging_dir = Path(staging_dir)
    check_name("run_id", run_id)
    if (staging_dir / RUNS_DIR).exists():
        raise SynthcatError(f"staging folder {staging_dir} holds {RUNS_DIR}/: "
                            "it looks like a published dataset, not a staging folder")
    (staging_dir / STAGED_MARKER).unlink(missing_ok=True)
    for kind in (DATA_DIR, REJECTS_DIR):
        shutil.rmtree(staging_dir / kind, ignore_errors=True)

    files: list[_StagedFile] = []
    for kind, table in ((DATA_DIR, accepted), (REJECTS_DIR, rejected)):
        if "image" not in table.column_names and table.num_rows:
            if images is None:
                raise ValueError("stage_run: rows without images need `images` to fetch them")
            table = images.in_shard_order(table)
        for (run_date, market, split), part in partitions(table):
            folder = Path(kind, f"run_date={run_date}", f"market={market}")
            for number, start in enumerate(range(0, part.num_rows, rows_per_file)):
                relative = folder / part_name(run_id, number, split)
                files.append(_StagedFile(staging_dir, relative, part.slice(start, rows_per_file)))
    for file in files:
        if "image" in file.rows.column_names:
            file.add(file.rows.column("image"))
    _fetch_images([f for f in files if "image" not in f.rows.column_names], images, buffer_bytes)
    records = [file.record() for file in files]
    for folder in sorted({p for file in files for p in file.path.parents[:3]}, key=lambda p: -len(p.parts)):
        _fsync(folder)  # the files' names, then their folders' (market, date, kind)
    marker = {"run_id": run_id, "files": records}
    _write_json(staging_dir / STAGED_MARKER, marker)
    return records


def publish_run(dataset_root: Path, staging_dir: Path, run_id: str, run_dates: list[str],
                manifest: dict, *, lock_timeout_s: float = 600.0) -> dict:
    """Swap the staged partitions of `run_dates` into `dataset_root`, then commit the manifest.

    Each `data/run_date=<d>` and `rejects/run_date=<d>` is replaced by the staged one, or
    removed when the run staged no rows there; other dates are untouched. Writes
    `_runs/<run_id>/manifest.json` last and returns it.
    """
    dataset_root, staging_dir = Path(dataset_root), Path(staging_dir)
    # 1. Check inputs before anything moves.
    check_name("run_id", run_id)
    manifest_path = dataset_root / RUNS_DIR / run_id / "manifest.json"
    for run_date in run_dates:
        if not RUN_DATE.fullmatch(run_date):
            raise SynthcatError(f"run date {run_date!r} is not YYYY-MM-DD")
    if manifest_path.exists():
        raise SynthcatError(f"run {run_id} is already published ({manifest_path})")
    records = _staged_records(staging_dir, run_id, run_dates)
    final = dict(manifest)
    final["files"] = records
    final["rows"] = {
        "accepted": sum(r["rows"] for r in records if r["path"].startswith(DATA_DIR + "/")),
        "rejected": sum(r["rows"] for r in records if r["path"].startswith(REJECTS_DIR + "/")),
    }
    json.dumps(final, sort_keys=True)  # a manifest that cannot be written fails before the swap
    dataset_root.mkdir(parents=True, exist_ok=True)
    if os.stat(dataset_root).st_dev != os.stat(staging_dir).st_dev:
        raise SynthcatError(f"staging folder {staging_dir} is not on the filesystem of "
                            f"{dataset_root}: partitions cannot be renamed into place")

    with publish_lock(dataset_root, timeout_s=lock_timeout_s):
        if manifest_path.exists():  # a concurrent publisher of the same run id got there first
            raise SynthcatError(f"run {run_id} is already published ({manifest_path})")
        # 2. Swap every partition this run owns; the partitions they replace are kept aside until
        #    the commit, and swapped back if anything fails before it (a full disk, Ctrl-C).
        swaps = [dict(staged=staging_dir / kind / name, live=dataset_root / kind / name,
                      aside=staging_dir / f".replaced-{kind}-{name}", run_id=run_id,
                      wanted={r["path"].removeprefix(f"{kind}/{name}/"): (r["bytes"], r["sha256"]) for r in records
                              if r["path"].startswith(f"{kind}/{name}/")})
                 for kind in (DATA_DIR, REJECTS_DIR) for name in (f"run_date={d}" for d in sorted(set(run_dates)))]
        try:
            for swap in swaps:
                _swap_in(**swap)
            for folder in (dataset_root / DATA_DIR, dataset_root / REJECTS_DIR, dataset_root, staging_dir):
                if folder.is_dir():
                    _fsync(folder)  # the renames on the disk before the record that relies on them
            # 3. Commit: the manifest is written last.
            missing = [r["path"] for r in records if not (dataset_root / r["path"]).is_file()
                       or (dataset_root / r["path"]).stat().st_size != r["bytes"]]
            if missing:
                raise SynthcatError(f"run {run_id}: published files missing or changed after the swap: "
                                    f"{missing[:5]}")
            final["published_at"] = dt.datetime.now(dt.timezone.utc).isoformat()
            _write_json(manifest_path, final)
        except BaseException as exc:
            if not manifest_path.exists():
                _swap_back_all(swaps, exc)  # every partition of the run: one an earlier, killed attempt
            raise                           # swapped in is put back too
        for swap in swaps:  # committed: the replaced partitions go, and kind folders left empty
            shutil.rmtree(swap["aside"], ignore_errors=True)
            with contextlib.suppress(OSError):
                swap["live"].parent.rmdir()
    (staging_dir / STAGED_MARKER).unlink(missing_ok=True)
    return final


@contextlib.contextmanager
def publish_lock(dataset_root: Path, timeout_s: float = 600.0):
    """One publisher at a time per dataset: an exclusive `flock` on `_runs/.publish.lock`.

    Two runs publishing at once both succeed, one after the other; a publisher that cannot get
    the lock within `timeout_s` fails cleanly before touching anything. The kernel releases the
    lock if its holder dies, so a killed run never leaves the dataset locked.
    """
    path = Path(dataset_root) / RUNS_DIR / ".publish.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise SynthcatError(f"{dataset_root}: another run is publishing (lock {path} held "
                                        f"for more than {timeout_s:.0f} s); nothing was changed") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_published(dataset_root: Path, run_date: str | None = None) -> pa.Table:
    """The published accepted rows (all dates, or one), as an OUTPUT_SCHEMA table."""
    folder = Path(dataset_root) / DATA_DIR
    if run_date is not None:
        folder = folder / f"run_date={run_date}"
    if not folder.is_dir():
        return OUTPUT_SCHEMA.empty_table()
    # The partition columns are in the files, so no partitioning is needed to get them.
    table = ds.dataset(folder, format="parquet", schema=FILE_SCHEMA).to_table()
    return conform(table, OUTPUT_SCHEMA)


# --- staging -------------------------------------------------------------------------------------

class _StagedFile:
    """One staged Parquet file, written a row group (`ROW_GROUP_SIZE` rows) at a time as its rows'
    images come in, in its rows' order; closed and renamed into place when its last row is written."""

    def __init__(self, root: Path, relative: Path, rows: pa.Table) -> None:
        self.relative, self.rows = relative, rows
        self.path = root / relative
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")  # dot: ignored by pyarrow/pandas if left behind
        self._writer: pq.ParquetWriter | None = None
        self._written, self._pending = 0, []  # rows written; images of the next rows, not yet written

    @property
    def pending_bytes(self) -> int:
        return sum(chunk.nbytes for chunk in self._pending)

    def add(self, images: pa.Array | pa.ChunkedArray) -> None:
        """The images of this file's next rows; writes every row group they complete."""
        self._pending += images.chunks if isinstance(images, pa.ChunkedArray) else [images]
        while (ready := sum(map(len, self._pending))) >= ROW_GROUP_SIZE or (
                ready and self._written + ready == self.rows.num_rows):
            self.flush(min(ready, ROW_GROUP_SIZE))

    def flush(self, count: int | None = None) -> None:
        """Write a row group of the next `count` rows (default: all whose images are here)."""
        images = pa.chunked_array(self._pending) if self._pending else pa.chunked_array([], IMAGE_TYPE)
        count = len(images) if count is None else count
        if count == 0:
            return
        group = self.rows.slice(self._written, count)
        if "image" not in group.column_names:
            group = group.append_column("image", images.slice(0, count))
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = pq.ParquetWriter(self._tmp, FILE_SCHEMA, compression="zstd")
        self._writer.write_table(conform(group, OUTPUT_SCHEMA).cast(FILE_SCHEMA), row_group_size=ROW_GROUP_SIZE)
        self._written += count
        rest = images.slice(count)  # a slice holds its whole chunk: the rest is copied out (under a row group)
        self._pending = [pa.concat_arrays(rest.chunks)] if len(rest) else []
        if self._written == self.rows.num_rows:  # closed as soon as it is whole: a run's files are not all open
            self._writer.close()
            _fsync(self._tmp)  # on the disk before anything can list it (pipeline/fsops.py)
            os.replace(self._tmp, self.path)

    def record(self) -> dict:
        """The finished file's record for `_staged.json`."""
        if self._written != self.rows.num_rows:
            raise RuntimeError(f"{self.path}: {self._written} of {self.rows.num_rows} rows written")
        return {"path": self.relative.as_posix(), "rows": self.rows.num_rows, "bytes": self.path.stat().st_size,
                "sha256": sha256_file(self.path)}


def _fetch_images(files: list[_StagedFile], source, buffer_bytes: int) -> None:
    """Fetch every file's images from `source` in one pass, in the order they lie there, handing
    each file its own as they come (each file's rows are in that order already)."""
    if not files:
        return
    tags = pa.concat_tables(
        file.rows.select(["item_id", "attempt"]).append_column("file", pa.array([i] * file.rows.num_rows, pa.int32()))
        for i, file in enumerate(files))
    tags = source.in_shard_order(tags)
    for start in range(0, tags.num_rows, FETCH_ROWS):
        chunk = tags.slice(start, FETCH_ROWS)
        fetched, owners = source.images(chunk), chunk.column("file")
        for i in pc.unique(owners).to_pylist():
            files[i].add(fetched.filter(pc.equal(owners, i)))
        while sum(file.pending_bytes for file in files) > buffer_bytes:  # the fullest writes a short group
            max(files, key=lambda file: file.pending_bytes).flush()


def _staged_records(staging_dir: Path, run_id: str, run_dates: list[str]) -> list[dict]:
    marker_path = staging_dir / STAGED_MARKER
    if not marker_path.is_file():
        raise SynthcatError(f"nothing staged for run {run_id}: {marker_path} does not exist")
    marker = json.loads(marker_path.read_text())
    if marker.get("run_id") != run_id:
        raise SynthcatError(f"{marker_path} was staged by run {marker.get('run_id')!r}, "
                            f"not {run_id!r}")
    owned = {f"run_date={d}" for d in run_dates}
    stray = sorted({r["path"].split("/")[1] for r in marker["files"]} - owned)
    if stray:
        raise SynthcatError(f"run {run_id} staged rows for {stray}, which are not in its "
                            f"run dates {sorted(run_dates)}: they would never be published")
    return marker["files"]


# --- swapping partitions -------------------------------------------------------------------------

def _swap_in(*, staged: Path, live: Path, aside: Path, wanted: dict[str, tuple[int, str]], run_id: str) -> None:
    """Make `live` hold exactly `wanted` (file -> bytes and sha256, as `staged` holds them), or
    nothing when it is empty; the partition it held moves to `aside`, kept until the commit
    (`_swap_back` puts it back). In one atomic step where possible, and idempotent: a retry after a
    kill at any point of an earlier try, restaged or not, ends in the same state, the old partition
    aside. The old partition is never under `staged`, which a resumed run's `stage_run` clears."""
    if _holds(live, wanted):  # in place already: a retry after the swap
        return
    if wanted and not staged.exists() and _holds(aside, wanted):
        os.rename(aside, staged)  # killed between moving the run's files aside and the exchange
    if wanted and not _holds(staged, wanted, read=False):  # the run's own files: their names and sizes
        raise SynthcatError(f"{staged}: the staged files are missing or changed; stage the run again")
    if _earlier_attempt(live, aside, run_id):  # its files give way to this attempt's; the old partition stays aside
        shutil.rmtree(live)
    if live.exists():
        shutil.rmtree(aside, ignore_errors=True)  # not an old partition: `live` still is one
        if wanted:
            os.rename(staged, aside)  # the run's files wait beside the date, then trade places with it
            if _exchange(aside, live):
                return  # `aside` holds the old partition now
            os.rename(aside, staged)  # no atomic exchange on this filesystem: two renames
        os.rename(live, aside)  # readers briefly see no rows for this date, never a mix
    if wanted:
        live.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staged, live)


def _swap_back(*, staged: Path, live: Path, aside: Path, wanted: dict[str, tuple[int, str]], run_id: str) -> None:
    """Undo `_swap_in`, from whatever point it reached (or an earlier, killed attempt reached): the
    run's files back in `staged` and the partition they replaced back in `live`."""
    if wanted and _holds(live, wanted):  # the run's files are live
        shutil.rmtree(staged, ignore_errors=True)  # a copy of them a resumed run staged again
        os.rename(live, staged)
    elif wanted and not staged.exists() and _holds(aside, wanted):
        os.rename(aside, staged)  # stopped before the exchange: `live` was never touched
        return
    elif _earlier_attempt(live, aside, run_id):
        shutil.rmtree(live)  # an earlier attempt's files, staged from other bytes: never committed
    if aside.exists() and not live.exists():
        os.rename(aside, live)


def _earlier_attempt(live: Path, aside: Path, run_id: str) -> bool:
    """`live` holds only this run's files, a partition waits `aside`: a killed attempt's swap."""
    if not (aside.exists() and live.is_dir()):
        return False
    names = [path.name for path in live.glob("market=*/*")]
    return bool(names) and all(is_run_file(name, run_id) for name in names)


def _swap_back_all(swaps: list[dict], cause: BaseException) -> None:
    """Before the commit, every partition swapped back, last first; one that cannot be (the
    error says which) is left for a retry of the run, which ends the swap."""
    for swap in reversed(swaps):
        try:
            _swap_back(**swap)
        except BaseException as exc:  # noqa: BLE001 - the first error is the one to raise
            cause.add_note(f"{swap['live']} could not be swapped back ({exc}); "
                           f"the partition it held is in {swap['aside']}")
    for folder in {swap["live"].parent for swap in swaps}:
        if folder.is_dir():
            _fsync(folder)


def _holds(partition: Path, wanted: dict[str, tuple[int, str]], read: bool = True) -> bool:
    """Whether `partition` holds exactly the Parquet files of `wanted` (`market=<m>/<name>`): the
    same names and sizes, then (`read`) the same bytes, read only when the names and sizes agree."""
    found = {f"{path.parent.name}/{path.name}": path for path in partition.glob("market=*/*.parquet")}
    return (found.keys() == wanted.keys() and all(found[n].stat().st_size == size for n, (size, _) in wanted.items())
            and (not read or all(sha256_file(found[n]) == sha for n, (_, sha) in wanted.items())))


# --- small helpers -------------------------------------------------------------------------------
