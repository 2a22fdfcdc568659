"""Query a synthcat training dataset with DuckDB: counts per class and split, straight from Parquet.

    python examples/consume/duckdb_query.py out/catalog_images
"""

from __future__ import annotations

import sys

import duckdb


def class_split_counts(dataset_root: str) -> list[tuple[str, str, int, float]]:
    """(label, split, images, mean clip_score) for the training rows, sorted by label and split."""
    pattern = f"{dataset_root}/data/**/*.parquet"
    return duckdb.sql(
        "select label, split, count(*) as images, avg(clip_score) as mean_clip_score "
        # the partition columns are in the files: hive partitioning would retype run_date as DATE
        f"from read_parquet('{pattern}', hive_partitioning = false, union_by_name = true) "
        "where kind = 'training' group by label, split order by label, split"
    ).fetchall()


if __name__ == "__main__":
    for row in class_split_counts(sys.argv[1]):
        print(*row)
