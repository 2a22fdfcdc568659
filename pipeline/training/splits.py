"""Train / val / test assignment by SKU: no SKU in two splits, stable across reruns and run dates."""

from __future__ import annotations

import hashlib
import math
import unicodedata
from collections.abc import Mapping
from pathlib import Path

SPLITS = ("train", "val", "test")
_SEP = "\x1f"


def sku_unit_interval(sku: str) -> float:
    """A uniform number in [0, 1) fixed by the SKU alone.

    It depends on nothing else (not the dataset, run date, catalog or quotas), so a SKU keeps
    its split when the catalog grows or a job is rerun, and images of one product never land
    on both sides of an evaluation.
    """
    digest = hashlib.sha256(f"split{_SEP}{sku}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for(sku: str, ratios: Mapping[str, float]) -> str:
    """The split of `sku` for `ratios` ({"train": 0.8, "val": 0.1, "test": 0.1}, summing to 1)."""
    point, cumulative = sku_unit_interval(sku), 0.0
    named = [name for name in SPLITS if ratios.get(name, 0.0) > 0]
    if not named:
        raise ValueError(f"split ratios {dict(ratios)} give no split a share")
    for name in named:
        cumulative += ratios[name]
        if point < cumulative:
            return name
    return named[-1]  # rounding: the ratios sum to 1 within float error


def check_ratios(ratios: Mapping[str, float]) -> Mapping[str, float]:
    """Raise ValueError unless `ratios` names only train/val/test, non-negative, summing to 1."""
    unknown = sorted(set(ratios) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown split {unknown[0]!r}; allowed: {', '.join(SPLITS)}")
    if any(not math.isfinite(value) or value < 0 for value in ratios.values()):  # NaN passes every comparison
        raise ValueError("split ratios must be finite numbers >= 0")
    total = sum(ratios.values())
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"split ratios must sum to 1, got {total:g}")
    return ratios


def moved_skus(dataset_root: Path, run_date: str, planned: Mapping[str, str]) -> list[tuple[str, str, str]]:
    """(sku, published split, planned split) of every SKU this run would put in another split than
    the dataset's published training rows of other dates (this date's partition is replaced).

    The split is fixed by the SKU and `training.splits`: new ratios move some SKUs, and one
    product would then be on both sides of an evaluation, across dates of one dataset."""
    import pyarrow.parquet as pq

    published: dict[str, str] = {}
    for path in sorted(Path(dataset_root, "data").glob("run_date=*/market=global/*.parquet")):  # training rows
        if path.parent.parent.name == f"run_date={run_date}" or not {"sku", "split"} <= set(pq.read_schema(path).names):
            continue
        table = pq.read_table(path, columns=["sku", "split"])
        for sku, split in zip(table.column("sku").to_pylist(), table.column("split").to_pylist()):
            if split:  # as ingest spells SKUs now (NFC): one published by a version before is the same SKU
                published.setdefault(unicodedata.normalize("NFC", sku), split)
    return [(sku, published[sku], planned[sku]) for sku in sorted(planned)
            if sku in published and published[sku] != planned[sku]]
