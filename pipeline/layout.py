"""The names of a published dataset's files, shared by the writer (pipeline/publish.py) and the card.

    <kind>/run_date=<d>/market=<m>/part-<run_id>-<nnnnn>.parquet           rows without a split (campaign)
    <kind>/run_date=<d>/market=<m>/part-<run_id>-<nnnnn>.<split>.parquet   training rows of one split

A training split is in its files' names, so a reader can take one split by a file pattern without
reading a row: the dataset card's `configs` give Hugging Face `datasets` its train / validation /
test splits that way (`load_dataset(<root>)` is a DatasetDict). Readers of the folder (pandas,
pyarrow, DuckDB, Spark) are unaffected: every file still matches `part-*.parquet`.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import SynthcatError
from pipeline.schema import PARTITION_COLUMNS
from pipeline.training.splits import SPLITS

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a run id or market: one folder or file name part
RUN_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
HF_SPLITS = {"train": "train", "val": "validation", "test": "test"}  # a `split` value → Hugging Face's name
_SUFFIX = re.compile(r"\.(?P<split>[a-z]+)\.parquet$")


def part_name(run_id: str, number: int, split: str | None = None) -> str:
    """The name of a run's `number`th file of a partition, for rows of `split` (None: no split)."""
    if split is not None and split not in SPLITS:
        raise SynthcatError(f"split {split!r} is none of {', '.join(SPLITS)}: it cannot name a file")
    return f"part-{run_id}-{number:05d}" + (f".{split}" if split else "") + ".parquet"


def split_of(name: str) -> str | None:
    """The split a file's name holds, None for a file without one (campaign rows, or training rows
    published before splits were named)."""
    match = _SUFFIX.search(name)
    return match["split"] if match and match["split"] in SPLITS else None


def is_run_file(name: str, run_id: str) -> bool:
    """Whether `name` is one of `part_name(run_id, ...)`'s names."""
    return re.fullmatch(rf"part-{re.escape(run_id)}-\d+(\.({'|'.join(SPLITS)}))?\.parquet", name) is not None


def partitions(table: pa.Table):
    """Yield ((run_date, market, split), rows) for every partition of `table` and training split
    in it (split None: rows without one), in sorted order."""
    if table.num_rows == 0:
        return
    for column in PARTITION_COLUMNS:
        if table[column].null_count:
            raise SynthcatError(f"{table[column].null_count} rows have no {column}: "
                                "every published row needs its partition values")
    keys = table.select(list(PARTITION_COLUMNS)).group_by(list(PARTITION_COLUMNS)).aggregate([])
    for run_date, market in sorted(zip(*(keys[c].to_pylist() for c in PARTITION_COLUMNS))):
        if not RUN_DATE.fullmatch(run_date):
            raise SynthcatError(f"run_date {run_date!r} is not YYYY-MM-DD")
        check_name("market", market)
        part = table.filter(pc.and_(pc.equal(table["run_date"], run_date), pc.equal(table["market"], market)))
        splits = part["split"] if "split" in part.column_names else pa.nulls(part.num_rows, pa.string())
        for split in sorted(set(splits.to_pylist()), key=lambda s: (s is not None, s)):
            yield (run_date, market, split), part.filter(pc.is_null(splits) if split is None else pc.equal(splits, split))


def check_name(what: str, value) -> None:
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise SynthcatError(f"{what} {value!r} cannot name a file or folder "
                            "(letters, digits and . _ - only)")
